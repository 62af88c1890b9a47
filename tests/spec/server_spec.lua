-- moonops.server and moonops.notify: the libmicrohttpd server with one Lua state
-- per worker, its limits, draining, the background thread, signals; the
-- wake-up channels between threads. Clients are curl and raw sockets (python3).
local T = require "support.t"
local notify = require "moonops.notify"
local server = require "moonops.server"

local HANDLER = [[
local server = require "moonops.server"
local M = {}
local ctx, index
function M.init(c, i)
  ctx, index = c, i
  server.count("test_init_" .. tostring(c.tag))
end
function M.handle(req)
  server.count("test_requests_" .. tostring(ctx.tag))
  if req.path == "/boom" then error("handler exploded") end
  if req.path == "/nostatus" then return "x" end
  if req.path == "/slow" then os.execute("sleep " .. (req.query.s or "1")) end
  local keys = {}
  for k in pairs(req.headers) do keys[#keys + 1] = k end
  table.sort(keys)
  local lines = {
    "method=" .. req.method, "path=" .. req.path, "q=" .. tostring(req.query.q),
    "body=" .. req.body, "remote=" .. req.remote, "id=" .. req.id,
    "gen=" .. req.generation, "tag=" .. tostring(ctx.tag), "nested=" .. tostring(ctx.nested and ctx.nested.x),
    "xa=" .. tostring(req.headers["x-a"]), "worker=" .. tostring(index),
  }
  return 201, { ["Content-Type"] = "text/plain", ["X-Handler"] = "yes" }, table.concat(lines, "\n") .. "\n"
end
function M.rejected(req, status, reason)
  server.count("test_rejected_" .. status .. "_" .. tostring(ctx.tag))
  server.count("test_rejected_reason_" .. tostring(reason):sub(1, 40):gsub("[^%w]", "_"))
end
return M
]]

local BACKGROUND = [[
local notify = require "moonops.notify"
local server = require "moonops.server"
local M = {}
function M.run(ctx, control)
  local ch <close> = notify.channel(ctx.channel)
  server.count("bg_started")
  while not control.stopping() do
    if ch:wait(ctx.tick or 30) and not control.stopping() then server.count("bg_woken") end
  end
  server.count("bg_finished")
end
function M.stubborn(ctx)
  os.execute("sleep " .. ctx.seconds)
  server.count("bg_stubborn_done")
end
function M.broken() error("background exploded") end
return M
]]

-- Defers every request except /now to M.batch, which answers each job with what it was
-- given, how many jobs its call had and the reload generation.
local DEFERRING = [[
local server = require "moonops.server"
local M = {}
local ctx
function M.init(c, i)
  ctx = c
  server.count("defer_init_" .. tostring(c.tag) .. "_" .. i)
end
function M.handle(req)
  if req.path == "/now" then return 200, {}, "now\n" end
  if req.path == "/badjob" then return server.DEFER, 42 end
  return server.DEFER, req.path .. "\0" .. req.body
end
function M.batch(jobs, generation)
  server.count("batch_calls_" .. tostring(ctx.tag))
  server.count("batch_jobs_" .. tostring(ctx.tag), #jobs)
  if ctx.batch_sleep then os.execute("sleep " .. ctx.batch_sleep) end
  local out = {}
  for i, job in ipairs(jobs) do
    local path, body = job:match("^(.-)%z(.*)$")
    if path == "/explode" then error("batch exploded") end
    if path == "/nostatus" then
      out[i] = { "x" }
    else
      out[i] = { 202, { ["X-Batch"] = tostring(#jobs), ["Content-Type"] = "text/plain" },
        "job=" .. path .. "\nbody=" .. body .. "\nn=" .. #jobs .. "\ngen=" .. generation .. "\n" }
    end
  end
  return out
end
function M.rejected(_, status, reason)
  server.count("defer_rejected_" .. status)
  server.count("defer_rejected_reason_" .. tostring(reason):sub(1, 30):gsub("[^%w]", "_"))
end
return M
]]

local dir
local function setup_modules()
  dir = T.sh("mktemp -d /tmp/moonops-server-spec.XXXXXX"):gsub("%s+$", "")
  T.write(dir .. "/spec_handler.lua", HANDLER)
  T.write(dir .. "/spec_background.lua", BACKGROUND)
  T.write(dir .. "/spec_deferring.lua", DEFERRING)
  T.write(dir .. "/spec_nohandle.lua", "return { init = function() end }")
  T.write(dir .. "/spec_badinit.lua", "return { handle = function() end, init = function() error('init failed here') end }")
  T.write(dir .. "/spec_syntax.lua", "return {")
  package.path = dir .. "/?.lua;" .. package.path
end

local function listen(opts)
  opts.addr = opts.addr or "127.0.0.1:0"
  opts.handler = opts.handler or "spec_handler"
  return assert(server.listen(opts))
end

local function url(srv, path)
  return "http://127.0.0.1:" .. srv:port() .. path
end

--- curl: returns status, headers text, body
local function curl(args)
  local d = T.tmpdir()
  local cmd = "curl -s -m 20 -D " .. T.q(d .. "/h") .. " -o " .. T.q(d .. "/b") .. " -w '%{http_code}' " .. args
  local out = T.sh(cmd)
  return tonumber(out), T.read(d .. "/h") or "", T.read(d .. "/b") or ""
end

local function field(body, name)
  return body:match("\n?" .. name .. "=([^\n]*)")
end

--- Run a python3 socket script; returns its stdout.
local function py(script, ...)
  local f = T.tmpdir() .. "/client.py"
  T.write(f, script)
  local args = {}
  for i, a in ipairs({ ... }) do args[i] = T.q(a) end
  return (T.sh("timeout 60 python3 " .. T.q(f) .. " " .. table.concat(args, " ")))
end

describe("moonops.server", function()
  setup(setup_modules)
  teardown(function() os.execute("rm -rf " .. T.q(dir)) end)
  after_each(T.cleanup)

  it("answers through the handler with method, path, query, lower-cased headers, body, remote and id", function()
    local srv <close> = listen({ workers = 2, context = { tag = "basic", nested = { x = 42 } } })
    local status, headers, body = curl("-H 'X-A: one' -H 'x-a: two' --data-binary 'hello body' " ..
      T.q(url(srv, "/some/path?q=v%20w&flag")))
    assert.equal(201, status)
    assert.equal("POST", field(body, "method"))
    assert.equal("/some/path", field(body, "path"))
    assert.equal("v w", field(body, "q"))
    assert.equal("hello body", field(body, "body"))
    assert.equal("127.0.0.1", field(body, "remote"))
    assert.equal("one, two", field(body, "xa"))
    assert.equal("basic", field(body, "tag"))
    assert.equal("42", field(body, "nested"))
    assert.matches("X%-Handler: yes", headers)
    local id = field(body, "id")
    assert.matches("^%x+$", id)
    assert.matches("X%-Request%-Id: " .. id, headers)
    local _, _, body2 = curl(T.q(url(srv, "/")))
    assert.not_equal(id, field(body2, "id"))
    assert.equal("GET", field(body2, "method"))
  end)

  it("loads the handler once per worker and calls init with the context", function()
    local srv <close> = listen({ workers = 3, context = { tag = "init3" } })
    assert.equal(3, server.counts().test_init_init3)
    for _ = 1, 6 do curl(T.q(url(srv, "/"))) end
    assert.equal(3, server.counts().test_init_init3)
    assert.equal(6, server.counts().test_requests_init3)
    assert.equal(3, srv:info().workers)
  end)

  it("answers 500 when the handler raises or returns no status, and tells rejected()", function()
    local srv <close> = listen({ workers = 1, context = { tag = "boom" } })
    local status, _, body = curl(T.q(url(srv, "/boom")))
    assert.equal(500, status)
    assert.equal("internal server error\n", body)
    assert.equal(500, (curl(T.q(url(srv, "/nostatus")))))
    assert.equal(2, server.counts().test_rejected_500_boom)
    assert.equal(201, (curl(T.q(url(srv, "/")))), "the worker survives")
  end)

  it("answers 413 to an announced body over max_body without reading it", function()
    local srv <close> = listen({ workers = 1, max_body = 1000, context = { tag = "big" } })
    local out = py([[
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(20)
s.sendall(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 50000000\r\n\r\n" + b"a" * 100)
data = b""
while True:
    try:
        chunk = s.recv(4096)
    except Exception as e:
        break
    if not chunk:
        break
    data += chunk
print(data.split(b"\r\n")[0].decode())
]], srv:port())
    assert.matches("^HTTP/1%.1 413", out)
    assert.equal(1, server.counts().test_rejected_413_big)
    assert.is_nil(server.counts().test_requests_big)
    -- a body just under the limit still goes through
    local okfile = T.tmpdir() .. "/ok.txt"
    T.write(okfile, string.rep("z", 999))
    local status, _, body = curl("--data-binary @" .. T.q(okfile) .. " " .. T.q(url(srv, "/")))
    assert.equal(201, status)
    assert.equal(string.rep("z", 999), field(body, "body"))
    status = curl("--data-binary @/etc/services " .. T.q(url(srv, "/")))
    assert.equal(413, status)
  end)

  it("drops a chunked body that grows over max_body", function()
    local srv <close> = listen({ workers = 1, max_body = 1000, context = { tag = "chunked" } })
    local status = curl("-H 'Transfer-Encoding: chunked' --data-binary @/etc/services " .. T.q(url(srv, "/")))
    assert.not_equal(201, status)
    assert.is_nil(server.counts().test_requests_chunked)
  end)

  it("refuses headers over header_limit", function()
    local srv <close> = listen({ workers = 1, header_limit = 8192, context = { tag = "hdr" } })
    local status = curl("-H " .. T.q("X-Big: " .. string.rep("h", 20000)) .. " " .. T.q(url(srv, "/")))
    assert.truthy(status == 0 or status >= 400)
    assert.is_nil(server.counts().test_requests_hdr)
  end)

  it("cuts off a client trickling its request one byte per second while others are served", function()
    local srv <close> = listen({ workers = 2, timeout = 10, read_timeout = 2, context = { tag = "slow" } })
    local log = T.tmpdir() .. "/slow.out"
    local f = T.tmpdir() .. "/slow.py"
    T.write(f, [[
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
req = b"GET /trickle HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"p" * 40 + b"\r\n\r\n"
sent = 0
try:
    for i in range(len(req)):
        s.send(req[i:i + 1])
        sent += 1
        time.sleep(1)
        s.setblocking(False)
        try:
            if s.recv(100) == b"":
                break
        except BlockingIOError:
            pass
        s.setblocking(True)
except Exception:
    pass
print("cut" if sent < len(req) else "complete", sent, flush=True)
]])
    local pid = T.spawn("timeout 90 python3 " .. T.q(f) .. " " .. srv:port(), log)
    -- others are served meanwhile
    for _ = 1, 3 do assert.equal(201, (curl(T.q(url(srv, "/"))))) end
    local out = T.wait_for(function()
      local s = T.read(log)
      return s and s ~= "" and s
    end, 60)
    T.kill(pid)
    assert.matches("^cut", out)
    assert.is_nil(server.counts().test_rejected_slow)
  end)

  it("closes idle connections after the idle timeout", function()
    local srv <close> = listen({ workers = 1, timeout = 1, context = { tag = "idle" } })
    local out = py([[
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(30)
try:
    print("closed" if s.recv(10) == b"" else "data")
except socket.timeout:
    print("still open")
except ConnectionResetError:
    print("closed")
]], srv:port())
    assert.equal("closed\n", out)
  end)

  it("keeps serving while 500 idle connections are open", function()
    local srv <close> = listen({ workers = 2, timeout = 30, context = { tag = "many" } })
    local ready = T.tmpdir() .. "/ready"
    local f = T.tmpdir() .. "/hold.py"
    T.write(f, [[
import socket, sys, time
socks = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(500)]
open(sys.argv[2], "w").write("ok")
time.sleep(30)
]])
    local pid = T.spawn("python3 " .. T.q(f) .. " " .. srv:port() .. " " .. T.q(ready))
    assert.truthy(T.wait_for(function() return T.read(ready) end, 30))
    assert.truthy(T.wait_for(function() return srv:info().connections >= 500 end, 10))
    local status, _, body = curl(T.q(url(srv, "/while-busy")))
    T.kill(pid)
    assert.equal(201, status)
    assert.equal("/while-busy", field(body, "path"))
  end)

  it("caps the number of connections", function()
    local srv <close> = listen({ workers = 1, conn_limit = 2, timeout = 30, context = { tag = "cap" } })
    local ready = T.tmpdir() .. "/ready"
    local f = T.tmpdir() .. "/hold.py"
    T.write(f, [[
import socket, sys, time
socks = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(2)]
open(sys.argv[2], "w").write("ok")
time.sleep(30)
]])
    local pid = T.spawn("python3 " .. T.q(f) .. " " .. srv:port() .. " " .. T.q(ready))
    assert.truthy(T.wait_for(function() return T.read(ready) end, 30))
    assert.truthy(T.wait_for(function() return srv:info().connections == 2 end, 10))
    local status = curl(T.q(url(srv, "/over")))
    T.kill(pid)
    assert.not_equal(201, status)
    assert.truthy(T.wait_for(function() return srv:info().connections == 0 end, 10))
    assert.equal(201, (curl(T.q(url(srv, "/after")))))
  end)

  it("drains in-flight requests on stop, then stops listening", function()
    local srv = listen({ workers = 2, context = { tag = "drain" } })
    local port = srv:port()
    local out = T.tmpdir() .. "/slow.out"
    local pid = T.spawn("curl -s -m 30 -o /dev/null -w '%{http_code}' " .. T.q(url(srv, "/slow?s=2")), out)
    assert.truthy(T.wait_for(function() return srv:info().inflight == 1 end, 10))
    assert.is_true(srv:stop({ drain = 20 }))
    assert.truthy(T.wait_for(function() return T.read(out) == "201" end, 10))
    T.kill(pid)
    assert.is_false(T.port_open(port))
    assert.is_true(srv:stop()) -- stopping twice is harmless
    srv:close()
    srv:close()
    assert.has_error(function() srv:port() end, "use of a closed server")
  end)

  it("carries the reload generation into every request", function()
    local srv <close> = listen({ workers = 2, context = { tag = "gen" } })
    assert.equal("0", field(select(3, curl(T.q(url(srv, "/")))), "gen"))
    assert.equal(1, srv:reload())
    assert.equal(2, srv:reload())
    assert.equal("2", field(select(3, curl(T.q(url(srv, "/")))), "gen"))
    assert.equal(2, srv:info().generation)
  end)

  it("reports configuration errors as nil, message", function()
    local ok, err = server.listen({ addr = "127.0.0.1:0", handler = "spec_no_such_module" })
    assert.is_nil(ok)
    assert.matches("loading spec_no_such_module", err)
    ok, err = server.listen({ addr = "127.0.0.1:0", handler = "spec_nohandle" })
    assert.is_nil(ok)
    assert.matches("no handle", err)
    ok, err = server.listen({ addr = "127.0.0.1:0", handler = "spec_badinit" })
    assert.is_nil(ok)
    assert.matches("init failed here", err)
    ok, err = server.listen({ addr = "127.0.0.1:0", handler = "spec_syntax" })
    assert.is_nil(ok)
    assert.matches("spec_syntax", err)
    ok, err = server.listen({ addr = "nonsense:http", handler = "spec_handler" })
    assert.is_nil(ok)
    assert.matches("not an address", err)
    ok, err = server.listen({ addr = "127.0.0.1:0", handler = "spec_handler", context = { f = print } })
    assert.is_nil(ok)
    assert.matches("context", err)
    ok, err = server.listen({ addr = "127.0.0.1:0", handler = "spec_handler", context = { tag = "nofn" },
      background = { module = "spec_background", fn = "missing" } })
    assert.is_nil(ok)
    assert.matches("no function missing", err)
    local srv <close> = listen({ workers = 1, context = { tag = "inuse" } })
    ok, err = server.listen({ addr = "127.0.0.1:" .. srv:port(), handler = "spec_handler", context = { tag = "x" } })
    assert.is_nil(ok)
    assert.matches("listen 127%.0%.0%.1:%d+: Address already in use", err)
    assert.has_error(function() server.listen({ addr = "127.0.0.1:0" }) end)
    assert.has_error(function() server.listen({ handler = "spec_handler", workers = 0 }) end)
    assert.has_error(function() server.listen("127.0.0.1:0") end)
  end)

  it("runs a background task in its own state, woken by its channel, finished by stop", function()
    local srv = listen({ workers = 1, context = { tag = "bg" },
      background = { module = "spec_background", channel = "spec-bg", context = { channel = "spec-bg" } } })
    assert.truthy(T.wait_for(function() return server.counts().bg_started == 1 end, 10))
    assert.equal("running", srv:info().background)
    local ch <close> = notify.channel("spec-bg")
    ch:signal()
    assert.truthy(T.wait_for(function() return server.counts().bg_woken == 1 end, 10))
    assert.is_true(srv:stop({ grace = 10 }))
    assert.equal(1, server.counts().bg_finished)
    srv:close()
  end)

  it("reports a background task that raised", function()
    local srv <close> = listen({ workers = 1, context = { tag = "bgerr" },
      background = { module = "spec_background", fn = "broken" } })
    assert.truthy(T.wait_for(function() return srv:info().background == "failed" end, 10))
    assert.matches("background exploded", srv:info().background_error)
  end)

  it("leaves a background task that outlives the grace period running, and says so", function()
    local srv = listen({ workers = 1, context = { tag = "stubborn" },
      background = { module = "spec_background", fn = "stubborn", context = { seconds = 2 } } })
    local ok, err = srv:stop({ grace = 0 })
    assert.is_false(ok)
    assert.matches("still running", err)
    srv:close()
    assert.truthy(T.wait_for(function() return server.counts().bg_stubborn_done == 1 end, 20))
  end)

  it("turns TERM, INT and HUP into srv:wait results when asked to", function()
    local pid = assert(tonumber(T.read("/proc/self/stat"):match("^(%d+)")))
    local srv <close> = listen({ workers = 1, signals = true, context = { tag = "sig" } })
    assert.is_nil(srv:wait({ timeout = 0.1 }))
    for _, name in ipairs({ "HUP", "TERM", "INT" }) do
      os.execute("kill -" .. name .. " " .. pid)
      assert.equal(name, srv:wait({ timeout = 10 }))
    end
    assert.equal(201, (curl(T.q(url(srv, "/")))))
  end)

  describe("deferred requests", function()
    it("are answered by the batch function, one result per job, in its own state", function()
      local srv <close> = listen({ handler = "spec_deferring", batch = "batch", workers = 2, context = { tag = "b1" } })
      local status, headers, body = curl("--data-binary 'payload one' " .. T.q(url(srv, "/first")))
      assert.equal(202, status)
      assert.equal("/first", field(body, "job"))
      assert.equal("payload one", field(body, "body"))
      assert.equal("1", field(body, "n"))
      assert.matches("X%-Batch: 1", headers)
      assert.matches("X%-Request%-Id: %x+", headers)
      -- the batch state was set up like a worker, with index 0
      assert.equal(1, server.counts().defer_init_b1_0)
      assert.equal(1, server.counts().defer_init_b1_1)
      srv:reload()
      local _, _, again = curl("--data-binary x " .. T.q(url(srv, "/second")))
      assert.equal("1", field(again, "gen"))
      -- requests the handler answers itself are not deferred
      local now_status, _, now_body = curl(T.q(url(srv, "/now")))
      assert.equal(200, now_status)
      assert.equal("now\n", now_body)
    end)

    it("group the jobs that arrive while a batch runs into the next call", function()
      local srv <close> = listen({ handler = "spec_deferring", batch = "batch", workers = 2,
        context = { tag = "b2", batch_sleep = 0.5 } })
      local d = T.tmpdir()
      T.sh("for i in $(seq 20); do curl -s -m 30 -o " .. T.q(d) .. "/$i --data-binary body-$i " ..
        T.q(url(srv, "/burst")) .. "/$i & done; wait")
      for i = 1, 20 do
        local body = T.read(d .. "/" .. i) or ""
        assert.equal("/burst/" .. i, field(body, "job"))
        assert.equal("body-" .. i, field(body, "body"))
      end
      assert.equal(20, server.counts().batch_jobs_b2)
      -- 20 jobs that arrive while a 0.5 s batch runs cannot each have had a call of their own
      assert.is_true(server.counts().batch_calls_b2 < 20)
    end)

    it("answer 500 when the batch function raises or gives no status, and keep serving", function()
      local srv <close> = listen({ handler = "spec_deferring", batch = "batch", workers = 1, context = { tag = "b3" } })
      local status, _, body = curl("-d x " .. T.q(url(srv, "/explode")))
      assert.equal(500, status)
      assert.equal("internal server error\n", body)
      assert.equal(500, (curl("-d x " .. T.q(url(srv, "/nostatus")))))
      assert.equal(202, (curl("-d x " .. T.q(url(srv, "/fine")))))
    end)

    it("answer 500 without a batch function or without a job string", function()
      local srv <close> = listen({ handler = "spec_deferring", workers = 1, context = { tag = "b4" } })
      assert.equal(500, (curl("-d x " .. T.q(url(srv, "/nobatch")))))
      assert.equal(1, server.counts().defer_rejected_500)
      assert.equal(1, server.counts().defer_rejected_reason_handler_deferred_a_request_but)
      local srv2 <close> = listen({ handler = "spec_deferring", batch = "batch", workers = 1, context = { tag = "b5" } })
      assert.equal(500, (curl("-d x " .. T.q(url(srv2, "/badjob")))))
      assert.equal(1, server.counts().defer_rejected_reason_handler_deferred_a_request_wit)
    end)

    it("refuse a batch function the handler module does not have", function()
      local srv, err = server.listen({ addr = "127.0.0.1:0", handler = "spec_deferring", batch = "nothing",
        context = { tag = "b7" } })
      assert.is_nil(srv)
      assert.matches("handler spec_deferring has no nothing%(jobs%) function", err)
    end)

    it("are all answered when the server stops while a batch runs", function()
      local srv = listen({ handler = "spec_deferring", batch = "batch", workers = 2,
        context = { tag = "b6", batch_sleep = 1 } })
      local d = T.tmpdir()
      local port = srv:port()
      T.sh("(for i in $(seq 6); do curl -s -m 30 -o " .. T.q(d) .. "/$i -w '%{http_code}' " ..
        "--data-binary b$i http://127.0.0.1:" .. port .. "/stop/$i >" .. T.q(d) .. "/code-$i & done; wait; " ..
        "touch " .. T.q(d) .. "/all) >/dev/null 2>&1 & sleep 0.4")
      assert.is_true(srv:stop({ drain = 10, grace = 1 }))
      T.sh("for _ in $(seq 300); do [ -e " .. T.q(d) .. "/all ] && break; sleep 0.1; done")
      for i = 1, 6 do
        assert.equal("202", T.read(d .. "/code-" .. i))
        assert.equal("/stop/" .. i, field(T.read(d .. "/" .. i), "job"))
      end
      assert.equal(6, server.counts().batch_jobs_b6)
      srv:close()
    end)
  end)

  it("aggregates counters from every thread", function()
    server.count("spec_total", 2)
    server.count("spec_total")
    server.count("spec_float", 0.5)
    local c = server.counts()
    assert.equal(3, c.spec_total)
    assert.equal(0.5, c.spec_float)
  end)
end)

describe("moonops.notify", function()
  it("times out when nobody signals and wakes up when someone does", function()
    local a <close> = notify.channel("spec-n1")
    local b <close> = notify.channel("spec-n1")
    assert.equal("spec-n1", a:name())
    assert.is_false(a:wait(0.05))
    b:signal()
    b:signal()
    assert.is_true(a:wait(1))
    assert.is_false(a:wait(0), "pending signals are consumed together")
    assert.is_true(notify.signal("spec-n1"))
    assert.is_true(b:wait(0))
  end)

  it("keeps channels of different names apart and frees them with the last handle", function()
    local a = notify.channel("spec-n2")
    local other <close> = notify.channel("spec-n3")
    a:signal()
    assert.is_false(other:wait(0))
    a:close()
    a:close()
    assert.has_error(function() a:signal() end, "use of a closed notify channel")
    assert.is_false(notify.signal("spec-n2"))
    local again <close> = notify.channel("spec-n2")
    assert.is_false(again:wait(0), "a fresh channel carries no old signal")
    assert.has_error(function() notify.channel("") end)
    assert.has_error(function() notify.channel() end)
  end)
end)
