-- wrk script: POST the same signed push body with a unique X-GitHub-Delivery per request.
-- Environment: BENCH_BODY (file with the JSON body), BENCH_SIG (sha256=<hex> of it).
-- luacheck: globals wrk request
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
local body = f:read("a")
f:close()
local counter = 0
local prefix = (tostring({}):match("0x(%x+)") or "t") .. "-" .. os.time()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "push"
wrk.headers["X-Hub-Signature-256"] = os.getenv("BENCH_SIG")

function request()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = prefix .. "-" .. counter
  return wrk.format()
end
