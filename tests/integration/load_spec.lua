-- Load: `wrk` with 256 connections of mixed webhook deliveries against a real
-- `moonops serve` whose deploy worker keeps deploying from a real `git daemon`.
--
-- A quarter of the requests carry a wrong signature, a quarter no signature, a
-- quarter are valid pushes of another branch and a quarter valid pushes of the
-- deployed branch, each with its own X-GitHub-Delivery. Checked: only the status
-- codes each kind should get, the server survives, its resident memory grows by
-- less than 5 MB from the warm-up point to the end, and every delivery answered
-- 202 is in the state database afterwards.
--
-- MOONOPS_LOAD_SECONDS sets the duration (default 15; the `load` ctest label runs
-- 60). The memory bound is skipped under AddressSanitizer, whose quarantine keeps
-- freed memory resident on purpose.
local T = require "support.t"
local server = require "support.server"
local crypto = require "moonops.crypto"

local SECONDS = tonumber(os.getenv("MOONOPS_LOAD_SECONDS")) or 15
local CONNECTIONS = 256
local RSS_LIMIT_KB = 5 * 1024

-- One wrk script: four request kinds in turn, a unique delivery id per request,
-- status codes counted per thread and written to a file per thread when done.
local WRK = [[
kinds = {
  { sig = "sha256=%s", body = %q },  -- a wrong signature
  { body = %q },                     -- no signature
  { sig = "sha256=%s", body = %q },  -- a valid push of another branch
  { sig = "sha256=%s", body = %q },  -- a valid push of the deployed branch
}
out_dir = %q
threads, counter = {}, 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  threads[#threads + 1] = thread
end

n, counts = 0, {}

function request()
  n = n + 1
  local k = kinds[n %% 4 + 1]
  local headers = { ["Content-Type"] = "application/json", ["X-GitHub-Event"] = "push",
    ["X-GitHub-Delivery"] = string.format("load-%%d-%%d", id, n) }
  if k.sig then headers["X-Hub-Signature-256"] = k.sig end
  return wrk.format("POST", %q, headers, k.body)
end

function response(status)
  counts[status] = (counts[status] or 0) + 1
end

function done()
  for _, t in ipairs(threads) do
    local f = io.open(out_dir .. "/thread-" .. t:get("id"), "w")
    for status, count in pairs(t:get("counts")) do f:write(status, " ", count, "\n") end
    f:write("requests ", t:get("n"), "\n")
    f:close()
  end
end
]]

describe("moonops serve under load", function()
  local s
  after_each(function()
    if s then s.stop() end
    s = nil
    T.cleanup()
  end)

  it(string.format("answers %d connections of mixed deliveries for %d s without losing one", CONNECTIONS, SECONDS),
    function()
      s = server.setup({ server_yaml = "  queue_size: 1000" })
      s.start()
      local sha = s.push("load.sql", "select 1;\n")
      local push = server.push_payload("refs/heads/main", sha)
      local other = server.push_payload("refs/heads/feature", sha)
      local wrong = crypto.hmac("sha256", "not-the-secret", push)
      local d = T.tmpdir()
      T.write(d .. "/load.lua", string.format(WRK, wrong, push, push, crypto.hmac("sha256", server.SECRET, other), other,
        crypto.hmac("sha256", server.SECRET, push), push, d, s.hook_path))
      local wrk_pid = T.spawn(string.format("exec wrk -t 4 -c %d -d %ds --timeout 10s -s %s %s", CONNECTIONS, SECONDS,
        T.q(d .. "/load.lua"), T.q(s.url)), d .. "/wrk.out")
      -- RSS once a second while wrk runs; the growth counts from the end of the
      -- warm-up (the first sixth: 10 s of 60) to the last sample under load.
      local samples, started = {}, os.time()
      local warm_at = started + math.ceil(SECONDS / 6)
      local rss_start, rss_end
      while server.alive(wrk_pid) and os.time() < started + SECONDS + 60 do
        local rss = server.rss_kb(s.pid)
        assert.truthy(rss, "the server died under load: " .. (T.read(s.log) or ""):sub(-2000))
        if os.time() >= warm_at and not rss_start then rss_start = rss end
        if rss_start then rss_end = rss end
        samples[#samples + 1] = string.format("%ds:%dkB", os.time() - started, rss)
        T.sleep(1)
      end
      assert.falsy(server.alive(wrk_pid), "wrk did not finish")
      assert.truthy(server.alive(s.pid), "the server died under load: " .. (T.read(s.log) or ""):sub(-2000))
      rss_start = rss_start or server.rss_kb(s.pid)
      rss_end = rss_end or rss_start
      local summary = T.read(d .. "/wrk.out") or ""

      local counts, requests = {}, 0
      for name in (T.sh("ls " .. T.q(d)) or ""):gmatch("thread%-%d+") do
        for status, count in (T.read(d .. "/" .. name) or ""):gmatch("(%w+) (%d+)") do
          if status == "requests" then
            requests = requests + tonumber(count)
          else
            counts[tonumber(status)] = (counts[tonumber(status)] or 0) + tonumber(count)
          end
        end
      end
      local answered = 0
      for status, count in pairs(counts) do
        answered = answered + count
        assert.truthy(status == 200 or status == 202 or status == 401,
          string.format("unexpected status %d (%d times)\n%s", status, count, summary))
      end
      assert.truthy(answered > 1000, "too few requests answered:\n" .. summary)
      -- half of the kinds are refused: 401 is about half of what was answered
      -- (in-flight requests cut off at the end make it inexact)
      local accepted = counts[202] or 0
      assert.truthy(accepted > 0, "no delivery accepted:\n" .. summary)
      assert.truthy(math.abs((counts[401] or 0) - answered / 2) < answered / 10 + CONNECTIONS,
        string.format("401 for %d of %d answers", counts[401] or 0, answered))
      -- every accepted delivery is recorded, each with its own deployment. The store
      -- may hold a few more: requests in flight when wrk stopped were accepted by
      -- the server, but wrk closed the connection before reading the answer.
      local rows = s.db_rows([[SELECT count(*) AS n, count(DISTINCT deployment_id) AS deployments
        FROM deliveries WHERE workspace_id = ?]], server.WS_ID)
      local recorded = rows[1].n
      assert.truthy(recorded >= accepted and recorded <= accepted + CONNECTIONS,
        string.format("%d deliveries answered 202, %d recorded", accepted, recorded))
      assert.equal(recorded, rows[1].deployments)
      local deps = s.db_rows("SELECT count(*) AS n FROM deployments WHERE trigger = 'webhook'")
      assert.equal(recorded, deps[1].n)
      -- and each one is a delivery id the client sent for a valid push
      local odd = s.db_rows([[SELECT delivery FROM deliveries WHERE delivery NOT GLOB 'load-*' LIMIT 1]])
      assert.same({}, odd)
      -- the queue drains: everything is COMPLETE or SUPERSEDED, the pushed commit live
      local final = s.wait_idle(120)
      local by = {}
      for _, r in ipairs(final) do by[r.status] = (by[r.status] or 0) + 1 end
      assert.equal(recorded, (by.COMPLETE or 0) + (by.SUPERSEDED or 0))
      local ws = s.db_rows("SELECT current_commit FROM workspaces WHERE id = ?", server.WS_ID)
      assert.equal(sha, ws[1].current_commit)
      local growth = rss_end - rss_start
      print(string.format("\nload: %d s, %d connections: %d answers (%d accepted, %d refused, %d ignored), "
        .. "%d deployments ran, %d requests sent, RSS %d kB -> %d kB (%+d kB)\n%s", SECONDS, CONNECTIONS, answered, accepted,
        counts[401] or 0, counts[200] or 0, by.COMPLETE or 0, requests, rss_start, rss_end, growth,
        summary:match("Requests/sec:%s*[%d.]+") or "") .. "\nRSS samples: " .. table.concat(samples, " "))
      if not server.sanitized() then
        assert.truthy(growth < RSS_LIMIT_KB, string.format("RSS grew by %d kB under load", growth))
      end
      -- still healthy, and a clean stop
      assert.equal(200, (s.request({ path = "/healthz" })))
      assert.truthy(s.signal_and_wait("TERM", 60), "the server did not stop on SIGTERM")
    end)
end)
