-- `moonops serve` end to end: a workspace repository on a real `git daemon`, a push
-- made with the git CLI, a signed webhook, and the release going live as seen
-- through the REST API; hostile deliveries; signals.
local T = require "support.t"
local gitserve = require "support.gitserve"
local crypto = require "moonops.crypto"
local json = require "moonops.json"

local SECRET = "whsec-integration-0123456789"
local TOKEN = "api-token-integration-abcdef"
local WS_ID = "5b7f1d2e-3c4a-4e5f-8a9b-0c1d2e3f4a5b"
local WS2_ID = "6c8a2e3f-4d5b-4f6a-9b0c-1d2e3f4a5b6c"

-- Git with a private HOME and no system config, and the example project: tests/support/server.lua.
local support = require "support.server"
local git, MELTANO = support.git, support.MELTANO


--- A workspace repository on git daemon, a moonops.yml and a running `moonops serve`.
-- opts: {server_yaml = extra lines under server:, hook_sleep = seconds, hook = the hook script's text
-- (instead of sleeping hook_sleep seconds), grace = seconds}
local function setup(opts)
  opts = opts or {}
  local root = T.tmpdir()
  local s = { root = root, repos = root .. "/repos", src = root .. "/src", dir = root .. "/ops" }
  os.execute("mkdir -p " .. T.q(s.repos) .. " " .. T.q(s.dir))
  git(root, "init -q --bare -b main " .. T.q(s.repos .. "/ws.git"))
  s.git = gitserve.daemon(s.repos)
  git(root, "init -q -b main " .. T.q(s.src))
  T.write(s.src .. "/meltano.yml", MELTANO)
  T.write(s.src .. "/hooks/wait.sh", opts.hook or ("#!/bin/sh\nsleep " .. (opts.hook_sleep or 0) .. "\n"))
  os.execute("chmod +x " .. T.q(s.src .. "/hooks/wait.sh"))
  git(s.src, "add -A")
  git(s.src, "commit -q -m initial")
  git(s.src, "remote add origin " .. T.q(s.git.url("ws.git")))
  git(s.src, "push -q origin main")
  s.port = T.free_port()
  function s.write_config(extra_ws)
    T.write(s.dir .. "/moonops.yml", table.concat({
      "data_dir: data",
      "server:",
      "  listen: 127.0.0.1:" .. s.port,
      "  workers: 2",
      "  max_body: 64KB",
      "  api_tokens_env: TEST_API_TOKENS",
      opts.server_yaml or "",
      "workspaces:",
      "  - id: " .. WS_ID,
      "    name: ws",
      "    repository: " .. s.git.url("ws.git"),
      "    secret_env: TEST_WS_SECRET",
      "    on_deploy:",
      "      - [./hooks/wait.sh]",
      "  - id: " .. WS2_ID,
      "    name: ws2",
      "    repository: " .. s.git.url("ws.git"),
      "    secret_env: TEST_WS_SECRET",
      extra_ws or "",
      "",
    }, "\n"))
  end
  s.write_config()
  s.log = root .. "/serve.log"
  function s.start(args)
    local cmd = { "cd", T.q(s.dir), "&&", "exec env", "HOME=" .. T.q(root), "GIT_CONFIG_NOSYSTEM=1",
      "TEST_WS_SECRET=" .. SECRET, "TEST_API_TOKENS=" .. T.q("other-token," .. TOKEN), T.q(T.bin) }
    for _, a in ipairs(args or {}) do cmd[#cmd + 1] = T.q(a) end
    cmd[#cmd + 1] = "serve"
    if opts.grace then cmd[#cmd + 1] = "--grace " .. opts.grace end
    s.pid = T.spawn(table.concat(cmd, " "), s.log)
    local up = T.wait_for(function() return T.port_open(s.port) end, 20)
    assert(up, "moonops serve did not start: " .. (T.read(s.log) or ""))
  end
  function s.stop()
    if s.pid then T.kill(s.pid) end
    s.pid = nil
    s.git.stop()
  end
  function s.push(path, text, branch)
    T.write(s.src .. "/" .. path, text)
    git(s.src, "add -A")
    git(s.src, "commit -q -m " .. T.q("change " .. path))
    git(s.src, "push -q -f origin HEAD:" .. (branch or "main"))
    return git(s.src, "rev-parse HEAD")
  end
  return s
end

--- curl a request: {method=, path=, body=, headers={}} -> status, decoded JSON (or text), headers text
local function request(s, r)
  local d = T.tmpdir()
  local args = { "curl -s -m 30 -X", r.method or "GET", "-D", T.q(d .. "/h"), "-o", T.q(d .. "/b"), "-w '%{http_code}'" }
  for k, v in pairs(r.headers or {}) do args[#args + 1] = "-H " .. T.q(k .. ": " .. v) end
  if r.body then
    T.write(d .. "/req", r.body)
    args[#args + 1] = "--data-binary @" .. T.q(d .. "/req")
  end
  args[#args + 1] = T.q("http://127.0.0.1:" .. s.port .. r.path)
  local status = tonumber((T.sh(table.concat(args, " "))))
  local text = T.read(d .. "/b") or ""
  return status, json.decode(text) or text, T.read(d .. "/h") or ""
end

local function push_payload(ref, after, extra)
  local doc = { ref = ref, after = after, before = string.rep("0", 40), repository = { full_name = "org/ws" } }
  for k, v in pairs(extra or {}) do doc[k] = v end
  return json.encode(doc)
end

local delivery_n = 0
local function signed(body, opts)
  opts = opts or {}
  delivery_n = delivery_n + 1
  return {
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = opts.event or "push",
    ["X-GitHub-Delivery"] = opts.delivery or ("delivery-" .. delivery_n .. "-" .. crypto.uuid()),
    ["X-Hub-Signature-256"] = "sha256=" .. crypto.hmac("sha256", opts.secret or SECRET, body),
  }
end

local function hook_path(id)
  return "/api/workspaces/" .. (id or WS_ID) .. "/deployments/github-webhook"
end

local function bearer(token)
  return { Authorization = "Bearer " .. (token or TOKEN) }
end

local function wait_deployment(s, id, statuses)
  local found
  T.wait_for(function()
    local status, doc = request(s, { path = "/api/workspaces/" .. WS_ID .. "/deployments/" .. id, headers = bearer() })
    if status == 200 and statuses[doc.status] then
      found = doc
      return true
    end
  end, 60, 0.2)
  return found
end

describe("moonops serve", function()
  local s
  after_each(function()
    if s then s.stop() end
    s = nil
    T.cleanup()
  end)

  it("deploys a pushed commit after a signed webhook and shows it through the API", function()
    s = setup()
    s.start()
    local sha = s.push("extract/a.sql", "select 1;\n")
    local body = push_payload("refs/heads/main", sha)
    local headers = signed(body)
    -- sign independently with openssl
    local f = T.tmpdir() .. "/body"
    T.write(f, body)
    local hex = T.sh("openssl dgst -sha256 -hmac " .. T.q(SECRET) .. " -r " .. T.q(f)):match("^(%x+)")
    assert.equal(headers["X-Hub-Signature-256"], "sha256=" .. hex)
    local status, doc, raw = request(s, { method = "POST", path = hook_path(), body = body, headers = headers })
    assert.equal(202, status)
    assert.equal("QUEUED", doc.status)
    assert.equal("webhook", doc.trigger)
    assert.equal(headers["X-GitHub-Delivery"], doc.delivery)
    assert.matches("X%-Request%-Id: %x+", raw)
    local done = wait_deployment(s, doc.id, { COMPLETE = true, ERROR = true })
    assert.is_table(done)
    assert.equal("COMPLETE", done.status, done.error)
    assert.equal(sha, done.commit)
    local st, ws = request(s, { path = "/api/workspaces/" .. WS_ID, headers = bearer() })
    assert.equal(200, st)
    assert.equal(sha, ws.current_commit)
    assert.equal("ws", ws.name)
    local _, list = request(s, { path = "/api/workspaces", headers = bearer() })
    assert.equal(2, #list)
    local _, deps = request(s, { path = "/api/workspaces/ws/deployments?limit=5", headers = bearer() })
    assert.equal(doc.id, deps[1].id)
    -- the log never shows the secret, the token or a signature
    local log = T.read(s.log)
    assert.falsy(log:find(SECRET, 1, true))
    assert.falsy(log:find(TOKEN, 1, true))
    assert.falsy(log:find(hex, 1, true))
    assert.matches("request", log)
  end)

  it("answers hostile and filtered deliveries without deploying", function()
    s = setup()
    s.start()
    local sha = string.rep("a", 40)
    local body = push_payload("refs/heads/main", sha)
    local function post(b, h, path) return request(s, { method = "POST", path = path or hook_path(), body = b, headers = h }) end

    local status, doc = post(body, signed(body, { secret = "wrong-secret" }))
    assert.equal(401, status)
    assert.equal("invalid X-Hub-Signature-256", doc.error)
    status = post(body, signed(push_payload("refs/heads/main", string.rep("b", 40))))
    assert.equal(401, status) -- a signature made for another body
    local h = signed(body)
    h["X-Hub-Signature-256"] = nil
    status, doc = post(body, h)
    assert.equal(401, status)
    assert.equal("missing X-Hub-Signature-256", doc.error)
    h["X-Hub-Signature"] = "sha1=" .. crypto.hmac("sha1", SECRET, body)
    status = post(body, h)
    assert.equal(401, status) -- sha1 is not configured
    for _, bad in ipairs({ string.rep("a", 63), string.rep("a", 65), string.rep("z", 64) }) do
      h = signed(body)
      h["X-Hub-Signature-256"] = "sha256=" .. bad
      status, doc = post(body, h)
      assert.equal(401, status)
      assert.equal("malformed X-Hub-Signature-256", doc.error)
    end
    status = post("{oops", signed("{oops"))
    assert.equal(400, status)
    local other = push_payload("refs/heads/feature", sha)
    status, doc = post(other, signed(other))
    assert.equal(200, status)
    assert.equal("ref refs/heads/feature is not the deployed branch main", doc.ignored)
    local deleted = push_payload("refs/heads/main", string.rep("0", 40), { deleted = true })
    status, doc = post(deleted, signed(deleted))
    assert.equal(200, status)
    assert.equal("branch main was deleted", doc.ignored)
    local ping = json.encode({ zen = "hi", hook_id = 7 })
    status, doc = post(ping, signed(ping, { event = "ping" }))
    assert.equal(200, status)
    assert.is_true(doc.pong)
    local issue = json.encode({ action = "opened" })
    status, doc = post(issue, signed(issue, { event = "issues" }))
    assert.equal(200, status)
    assert.equal("event issues is not a push", doc.ignored)
    status = post(body, signed(body), hook_path("no-such-workspace"))
    assert.equal(404, status)
    status = request(s, { path = hook_path() })
    assert.equal(405, status)
    local big = push_payload("refs/heads/main", sha, { padding = string.rep("x", 70 * 1024) })
    status = post(big, signed(big))
    assert.equal(413, status)
    status = request(s, { path = "/nothing/here" })
    assert.equal(404, status)
    -- none of this queued anything
    local _, list = request(s, { path = "/api/workspaces/" .. WS_ID .. "/deployments", headers = bearer() })
    assert.same({}, list)
    assert.equal(200, (request(s, { path = "/healthz" })))
  end)

  it("answers a replayed delivery with the original deployment and queues it once", function()
    s = setup()
    s.start()
    local body = push_payload("refs/heads/main", string.rep("c", 40))
    local headers = signed(body, { delivery = "replayed-delivery-1" })
    local d = T.tmpdir()
    T.write(d .. "/body", body)
    local hargs = {}
    for k, v in pairs(headers) do hargs[#hargs + 1] = "-H " .. T.q(k .. ": " .. v) end
    local cmd = string.format("seq 100 | xargs -P 8 -I{} curl -s -m 30 -o /dev/null -w '%%{http_code}\\n' %s "
      .. "--data-binary @%s %s", table.concat(hargs, " "), T.q(d .. "/body"),
      T.q("http://127.0.0.1:" .. s.port .. hook_path()))
    local out = T.sh(cmd)
    local codes = {}
    for c in out:gmatch("%d+") do codes[c] = (codes[c] or 0) + 1 end
    assert.equal(1, codes["202"])
    assert.equal(99, codes["200"])
    local _, list = request(s, { path = "/api/workspaces/" .. WS_ID .. "/deployments?limit=1000", headers = bearer() })
    assert.equal(1, #list)
    assert.equal("replayed-delivery-1", list[1].delivery)
    local status, again = request(s, { method = "POST", path = hook_path(), body = body, headers = headers })
    assert.equal(200, status)
    assert.equal(list[1].id, again.id)
    -- all 101 went through the batch thread's transactions
    local _, metrics = request(s, { path = "/metrics" })
    assert.matches("moonops_accept_batch_deliveries_total 101\n", metrics, 1, true)
    local batches = tonumber(metrics:match("moonops_accept_batches_total (%d+)"))
    assert.is_true(batches >= 1 and batches <= 101)
  end)

  it("coalesces a burst of 50 pushes: the newest commit goes live", function()
    s = setup({ hook_sleep = 1 })
    s.start()
    local shas = {}
    for i = 1, 50 do
      T.write(s.src .. "/burst/f" .. i .. ".sql", "select " .. i .. ";\n")
      git(s.src, "add -A")
      git(s.src, "commit -q -m burst" .. i)
      shas[i] = git(s.src, "rev-parse HEAD")
    end
    git(s.src, "push -q origin HEAD:main")
    local d = T.tmpdir()
    local lines = {}
    for i = 1, 50 do
      local body = push_payload("refs/heads/main", shas[i])
      T.write(d .. "/b" .. i, body)
      local h = signed(body)
      lines[#lines + 1] = string.format("-s -m 30 -o /dev/null -w '%%{http_code}\\n' -H %s -H %s -H %s -H %s "
        .. "--data-binary @%s http://127.0.0.1:%d%s", T.q("Content-Type: application/json"),
        T.q("X-GitHub-Event: push"), T.q("X-GitHub-Delivery: " .. h["X-GitHub-Delivery"]),
        T.q("X-Hub-Signature-256: " .. h["X-Hub-Signature-256"]), T.q(d .. "/b" .. i), s.port, hook_path())
    end
    T.write(d .. "/curl.args", table.concat(lines, "\n") .. "\n")
    local out = T.sh("xargs -P 10 -L 1 curl < " .. T.q(d .. "/curl.args"))
    local accepted = 0
    for c in out:gmatch("%d+") do
      if c == "202" then accepted = accepted + 1 end
    end
    assert.equal(50, accepted, out .. (T.read(s.log) or ""))
    local list
    T.wait_for(function()
      local _
      _, list = request(s, { path = "/api/workspaces/" .. WS_ID .. "/deployments?limit=1000", headers = bearer() })
      for _, dep in ipairs(list) do
        if dep.status == "QUEUED" or dep.status == "RUNNING" then return false end
      end
      return true
    end, 120, 0.3)
    local by = {}
    for _, dep in ipairs(list) do by[dep.status] = (by[dep.status] or 0) + 1 end
    assert.equal(50, #list)
    assert.equal(50, (by.COMPLETE or 0) + (by.SUPERSEDED or 0))
    assert.truthy((by.SUPERSEDED or 0) >= 1, "queued deployments were coalesced")
    local _, ws = request(s, { path = "/api/workspaces/" .. WS_ID, headers = bearer() })
    assert.equal(shas[50], ws.current_commit)
  end)

  it("keeps answering a signed push while 500 idle connections are open", function()
    s = setup()
    s.start()
    local ready = T.tmpdir() .. "/ready"
    local f = T.tmpdir() .. "/hold.py"
    T.write(f, [[
import socket, sys, time
socks = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(500)]
open(sys.argv[2], "w").write("ok")
time.sleep(30)
]])
    local pid = T.spawn("python3 " .. T.q(f) .. " " .. s.port .. " " .. T.q(ready))
    assert.truthy(T.wait_for(function() return T.read(ready) end, 30))
    local body = push_payload("refs/heads/main", string.rep("d", 40))
    local status = request(s, { method = "POST", path = hook_path(), body = body, headers = signed(body) })
    T.kill(pid)
    assert.equal(202, status)
  end)

  it("guards the REST API with bearer tokens: manual deploys, environments, metrics", function()
    s = setup()
    s.start()
    assert.equal(401, (request(s, { path = "/api/workspaces" })))
    assert.equal(401, (request(s, { path = "/api/workspaces", headers = bearer("not-a-token") })))
    assert.equal(401, (request(s, { path = "/api/workspaces", headers = { Authorization = "Basic " .. TOKEN } })))
    assert.equal(200, (request(s, { path = "/api/workspaces", headers = bearer("other-token") })))
    assert.equal(401, (request(s, { method = "POST", path = "/api/workspaces/ws/deployments" })))
    local status, doc = request(s, { method = "POST", path = "/api/workspaces/ws/deployments", headers = bearer(),
      body = '{"ref": "main"}' })
    assert.equal(202, status)
    assert.equal("manual", doc.trigger)
    assert.equal(400, (request(s, { method = "POST", path = "/api/workspaces/ws/deployments", headers = bearer(),
      body = '{"ref": "--upload-pack=evil"}' })))
    assert.equal(400, (request(s, { method = "POST", path = "/api/workspaces/ws/deployments", headers = bearer(),
      body = "{bad" })))
    local done = wait_deployment(s, doc.id, { COMPLETE = true, ERROR = true })
    assert.equal("COMPLETE", done.status, done.error)
    assert.is_string(done.log)
    status, doc = request(s, { method = "PUT", path = "/api/workspaces/ws/environment", headers = bearer(),
      body = '{"environment": "prod"}' })
    assert.equal(200, status)
    assert.equal("prod", doc.environment)
    status, doc = request(s, { method = "PUT", path = "/api/workspaces/ws/environment", headers = bearer(),
      body = '{"environment": "qa"}' })
    assert.equal(422, status)
    assert.matches("qa", doc.error)
    assert.equal(409, (request(s, { method = "PUT", path = "/api/workspaces/ws2/environment", headers = bearer(),
      body = '{"environment": "prod"}' })))
    assert.equal(404, (request(s, { path = "/api/workspaces/ws/deployments/99999", headers = bearer() })))
    assert.equal(405, (request(s, { method = "DELETE", path = "/api/workspaces/ws", headers = bearer() })))
    local mstatus, metrics = request(s, { path = "/metrics" })
    assert.equal(200, mstatus)
    assert.matches('moonops_http_requests_total{route="deploy",outcome="accepted",status="202"} 1', metrics, 1, true)
    assert.matches('moonops_deployments{status="COMPLETE"} 1', metrics, 1, true)
    assert.matches("moonops_queue_depth 0", metrics, 1, true)
    assert.matches('moonops_deploy_duration_seconds_bucket{le="+Inf"} 1', metrics, 1, true)
  end)

  it("refuses deliveries with 503 and Retry-After when the queue is full", function()
    s = setup({ hook_sleep = 4, server_yaml = "  queue_size: 1" })
    s.start()
    local body = push_payload("refs/heads/main", string.rep("e", 40))
    local status, doc = request(s, { method = "POST", path = hook_path(), body = body, headers = signed(body) })
    assert.equal(202, status)
    assert.truthy(wait_deployment(s, doc.id, { RUNNING = true }))
    local raw
    status, doc, raw = request(s, { method = "POST", path = hook_path(WS2_ID), body = body, headers = signed(body) })
    assert.equal(503, status)
    assert.matches("Retry%-After: %d+", raw)
    assert.matches("full", doc.error)
  end)

  it("reloads moonops.yml on SIGHUP and keeps the old settings when it is broken", function()
    s = setup()
    s.start()
    T.write(s.dir .. "/moonops.yml", "workspaces: [\n")
    os.execute("kill -HUP " .. s.pid)
    assert.truthy(T.wait_for(function() return (T.read(s.log) or ""):find("keeping the old settings", 1, true) end, 10))
    local body = push_payload("refs/heads/main", string.rep("f", 40))
    assert.equal(202, (request(s, { method = "POST", path = hook_path(), body = body, headers = signed(body) })))
    -- a valid file with a third workspace takes effect
    s.write_config(table.concat({ "  - id: ws3-id", "    name: ws3", "    repository: /nonexistent",
      "    secret_env: TEST_WS_SECRET" }, "\n"))
    os.execute("kill -HUP " .. s.pid)
    assert.truthy(T.wait_for(function()
      return request(s, { method = "POST", path = hook_path("ws3-id"), body = body, headers = signed(body) }) == 202
    end, 10))
  end)

  it("finishes a running deployment on SIGTERM, exits 0, and runs what was queued after a restart", function()
    s = setup({ hook_sleep = 2 })
    s.start()
    local a = push_payload("refs/heads/main", string.rep("1", 40))
    local status, first = request(s, { method = "POST", path = hook_path(), body = a, headers = signed(a) })
    assert.equal(202, status)
    assert.truthy(wait_deployment(s, first.id, { RUNNING = true }))
    local b = push_payload("refs/heads/main", string.rep("2", 40))
    local _, second = request(s, { method = "POST", path = hook_path(), body = b, headers = signed(b) })
    assert.equal("QUEUED", second.status)
    os.execute("kill -TERM " .. s.pid)
    local exited = T.wait_for(function()
      local _, alive = T.sh("kill -0 " .. s.pid .. " 2>/dev/null")
      return not alive
    end, 40)
    assert.truthy(exited)
    assert.matches("stopped", T.read(s.log))
    s.pid = nil
    s.start()
    local done = wait_deployment(s, first.id, { COMPLETE = true, ERROR = true, INTERRUPTED = true })
    assert.equal("COMPLETE", done.status)
    done = wait_deployment(s, second.id, { COMPLETE = true, ERROR = true })
    assert.equal("COMPLETE", done.status)
  end)

  it("records a deployment that outlives the grace period as INTERRUPTED and stops its hook", function()
    -- the hook writes its pid and the pid of a child that ignores TERM, then waits
    local pids = T.tmpdir()
    s = setup({ grace = 1, hook = table.concat({
      "#!/bin/sh",
      "echo $$ > " .. pids .. "/hook.tmp && mv " .. pids .. "/hook.tmp " .. pids .. "/hook",
      "(trap '' TERM; exec sleep 60) &",
      "echo $! > " .. pids .. "/child.tmp && mv " .. pids .. "/child.tmp " .. pids .. "/child",
      "wait",
      "",
    }, "\n") })
    local hook, child
    finally(function()
      for _, pid in ipairs({ hook, child }) do os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
    end)
    s.start()
    local a = push_payload("refs/heads/main", string.rep("3", 40))
    local _, dep = request(s, { method = "POST", path = hook_path(), body = a, headers = signed(a) })
    assert.truthy(wait_deployment(s, dep.id, { RUNNING = true }))
    assert.truthy(T.wait_for(function()
      hook, child = tonumber(T.read(pids .. "/hook") or ""), tonumber(T.read(pids .. "/child") or "")
      return hook and child
    end, 20))
    local out = T.sh("kill -TERM " .. s.pid .. "; for i in $(seq 100); do kill -0 " .. s.pid
      .. " 2>/dev/null || break; sleep 0.1; done; kill -0 " .. s.pid .. " 2>/dev/null && echo alive || echo gone")
    assert.equal("gone\n", out)
    s.pid = nil
    -- nothing of the hook outlives the server: TERM, then KILL for the child that ignores it
    assert.truthy(T.wait_for(function() return not T.alive(hook) and not T.alive(child) end, 5),
      "the hook outlived moonops serve")
    assert.matches("stopped 1 running command", T.read(s.log))
    -- the worker saw its hook killed; that is the interruption, not a failed deployment
    assert.is_nil(T.read(s.log):find("deployment error", 1, true), T.read(s.log))
    s.start()
    local done = wait_deployment(s, dep.id, { INTERRUPTED = true, COMPLETE = true, ERROR = true })
    assert.equal("INTERRUPTED", done.status)
    assert.matches("moonops serve stopped before it finished", done.error)
  end)
end)
