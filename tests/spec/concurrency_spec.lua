-- The server under load, from several threads at once: the state database's WAL stays
-- bounded while worker threads and the deploy worker keep writing, every accepted delivery
-- is recorded, log lines written by different threads never run into each other, and the
-- direct JSON of an accepted deployment is the one moonops.json would write.
local T = require "support.t"
local crypto = require "moonops.crypto"
local json = require "moonops.json"

local SECRET = "concurrency-secret-0123456789"
local WS_ID = "3d5e7f90-1a2b-4c3d-8e4f-5a6b7c8d9e0f"
local HERE = debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]+$") or "tests"
local PUSH_LUA = HERE .. "/../bench/server/push.lua"

local function push_body(ref)
  return string.format('{"ref":"%s","after":"%s","deleted":false,"repository":{"full_name":"org/ws"}}', ref,
    string.rep("4f2c9e1d", 5))
end

local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return 0 end
  local n = f:seek("end")
  f:close()
  return n
end

describe("the server under concurrent load", function()
  after_each(T.cleanup)

  it("keeps the WAL bounded and records every accepted delivery of a burst", function()
    local root = T.tmpdir()
    T.sh("git init -q -b main " .. T.q(root .. "/src"))
    T.write(root .. "/src/meltano.yml", "version: 1\ndefault_environment: dev\nenvironments:\n- name: dev\n")
    T.sh("cd " .. T.q(root .. "/src") .. " && git add -A && git -c user.name=t -c user.email=t@example.com "
      .. "commit -q -m init && git clone -q --bare . " .. T.q(root .. "/ws.git"))
    local port = T.free_port()
    T.write(root .. "/moonops.yml", table.concat({
      "data_dir: " .. root .. "/data",
      "server:",
      "  workers: 2",
      "workspaces:",
      "  - id: " .. WS_ID,
      "    name: ws",
      "    repository: " .. root .. "/ws.git",
      "    secret_env: CONCURRENCY_SECRET",
      "",
    }, "\n"))
    local pid = T.spawn(string.format("cd %s && CONCURRENCY_SECRET=%s exec %s --quiet serve --listen 127.0.0.1:%d",
      T.q(root), T.q(SECRET), T.q(T.bin), port), root .. "/serve.log")
    finally(function() T.kill(pid) end)
    assert.truthy(T.wait_for(function() return T.port_open(port) end, 20), T.read(root .. "/serve.log"))

    local body = push_body("refs/heads/main")
    T.write(root .. "/push.json", body)
    local wrk = T.spawn(string.format("BENCH_BODY=%s BENCH_SIG=%s exec wrk -t2 -c16 -d4s -s %s %s",
      T.q(root .. "/push.json"), T.q("sha256=" .. crypto.hmac("sha256", SECRET, body)), T.q(PUSH_LUA),
      T.q(string.format("http://127.0.0.1:%d/api/workspaces/%s/deployments/github-webhook", port, WS_ID))),
      root .. "/wrk.out")
    local wal, biggest = root .. "/data/moonops.db-wal", 0
    while T.alive(wrk) do
      biggest = math.max(biggest, file_size(wal))
      T.sleep(0.05)
    end
    local out = T.read(root .. "/wrk.out") or ""
    local total = tonumber(out:match("(%d+) requests in"))
    assert.truthy(total and total > 1000, out)
    assert.is_nil(out:match("Non%-2xx"), out)
    assert.is_nil(out:match("Socket errors"), out)

    -- 1000 pages are checkpointed by the writer that grew the WAL, and a WAL that was
    -- started over is cut back to 8 MiB: it never grows with the number of deliveries.
    assert.truthy(biggest > 0)
    assert.truthy(biggest <= 10 * 1024 * 1024, "the WAL grew to " .. biggest .. " bytes")

    local counts = T.sh(string.format("sqlite3 %s %s", T.q(root .. "/data/moonops.db"),
      T.q("SELECT (SELECT count(*) FROM deliveries) || ' ' || (SELECT count(*) FROM deployments)")))
    local deliveries, deployments = counts:match("(%d+) (%d+)")
    deliveries, deployments = tonumber(deliveries), tonumber(deployments)
    -- wrk counts the answers it read; the last few it sent as it stopped were answered too
    assert.truthy(deliveries >= total and deliveries <= total + 16, counts .. " for " .. total .. " answers")
    assert.equal(deliveries, deployments)
    T.kill(pid)
    assert.is_false(T.alive(pid))
  end)

  it("never interleaves log lines written by different worker threads", function()
    local root = T.tmpdir()
    T.write(root .. "/spec_logger.lua", [[
local log = require "moonops.log"
local M = {}
local index
function M.init(_, i) index = i end
function M.handle(req)
  for i = 1, 1500 do
    log.info("concurrent line", { worker = index, i = i, request = req.id, pad = string.rep("x", 180) })
  end
  return 200, {}, "ok\n"
end
return M
]])
    T.write(root .. "/run.lua", string.format([[
package.path = %q .. "/?.lua;" .. package.path
local server = require "moonops.server"
local srv = assert(server.listen({ addr = "127.0.0.1:0", workers = 4, handler = "spec_logger" }))
local url = "http://127.0.0.1:" .. srv:port() .. "/"
local clients = {}
for c = 1, 8 do clients[c] = "curl -s -o /dev/null " .. url .. " &" end
os.execute(table.concat(clients, " ") .. " wait")
srv:close()
]], root))
    local r = T.moonops({ "lua", root .. "/run.lua" })
    assert.equal(0, r.code, r.stderr)
    local n = 0
    for line in (r.stderr .. ""):gmatch("([^\n]*)\n") do
      n = n + 1
      assert.truthy(line:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ INFO concurrent line i=%d+ pad=x+ request=%x+ worker=%d$"),
        "a broken line: " .. line)
      assert.equal(180, #line:match("pad=(x+)"))
    end
    assert.equal(8 * 1500, n)
  end)

  it("hands each log line to its stream as one write, newline included", function()
    local log = require "moonops.log"
    local writes = {}
    local stream = {
      write = function(_, ...)
        writes[#writes + 1] = table.concat({ ... })
        assert.equal(1, select("#", ...))
      end,
      flush = function() end,
    }
    log.configure({ stream = stream, format = "json" })
    finally(function() log.configure({ stream = io.stderr, format = "text" }) end)
    log.info("one", { a = 1 })
    log.warn("two")
    log.write_line("three")
    assert.equal(3, #writes)
    for _, w in ipairs(writes) do assert.truthy(w:match("^[^\n]+\n$"), w) end
    assert.equal("one", json.decode(writes[1]).msg)
  end)

  it("answers an accepted delivery with exactly the JSON moonops.json writes", function()
    local deploy = require "moonops.deploy"
    local rows = {
      { id = 5, workspace_id = WS_ID, workspace = "ws", status = "QUEUED", trigger = "webhook",
        delivery = "d-1", ref = "refs/heads/main", after = string.rep("ab", 20), created_at = "2026-11-26T12:00:00Z" },
      { id = 7, workspace_id = WS_ID, workspace = 'quo"te\n', status = "ERROR", error = "bad \\ thing\t\127",
        rollback_of = 3, commit_sha = "abc", after = "é ünicode" },
      { id = 9, workspace_id = WS_ID, status = "COMPLETE", release = 1.5 },
    }
    for _, row in ipairs(rows) do
      local text = deploy.json_text(row)
      assert.equal(json.encode(deploy.to_json(row)) .. "\n", text)
      assert.same(deploy.to_json(row), json.decode(text))
    end
  end)
end)
