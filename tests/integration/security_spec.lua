-- Security checks over a representative full flow:
--
--   * no configured secret (the webhook secret, an API token, a git token, a
--     registry password, a notifier URL, a sensitive meltano.yml setting that a
--     deploy hook prints) appears in any log line, error, --json output, API
--     answer, notification, or the argument list of any process (`ps` sampled
--     every 50 ms while the flow runs);
--   * what moonops writes under data_dir is not readable by others (umask 077);
--   * pruning releases never follows a symlink planted in a release out of data_dir.
local T = require "support.t"
local server = require "support.server"
local gitserve = require "support.gitserve"
local registry = require "support.registry"
local json = require "moonops.json"

local GIT_TOKEN = "git-token-hardening-5c1d9e"
local REG_PASSWORD = "registry-pw-hardening-8b2f"
local NOTIFY_TOKEN = "T0notify-hardening-3e7a"
local MELTANO_SECRET = "auth0-client-secret-hardening-9d4c"

local function find_any(text, secrets)
  for name, secret in pairs(secrets) do
    local at = text:find(secret, 1, true)
    if at then return name, text:sub(math.max(1, at - 120), at + #secret + 40) end
  end
end

describe("security", function()
  local s, web, reg, pids = nil, nil, nil, {}
  after_each(function()
    for _, pid in ipairs(pids) do T.kill(pid) end
    pids = {}
    if s then s.stop() end
    if web then web.stop() end
    if reg then reg:stop() end
    s, web, reg = nil, nil, nil
    T.cleanup()
  end)

  it("keeps every configured secret out of logs, errors, JSON, notifications and ps", function()
    local notify_port = T.free_port()
    local notify_url = string.format("http://127.0.0.1:%d/services/%s", notify_port, NOTIFY_TOKEN)
    s = server.setup({
      hook = "echo deploying; grep client_secret meltano.yml; echo done",
      workspace_yaml = "    git_token_env: GIT_TOKEN",
      top_yaml = "plugins:\n  - notify-webhook: { url_env: NOTIFY_URL, retries: 1 }",
      env = { GIT_TOKEN = GIT_TOKEN, NOTIFY_URL = notify_url },
    })
    local secrets = { webhook_secret = server.SECRET, api_token = server.TOKEN, git_token = GIT_TOKEN,
      registry_password = REG_PASSWORD, notify_url = notify_url, notify_token = NOTIFY_TOKEN,
      meltano_secret = MELTANO_SECRET }
    -- the workspace comes over smart HTTP with Basic auth, the token from GIT_TOKEN
    os.execute("git -C " .. T.q(s.repos .. "/ws.git") .. " config http.receivepack true")
    server.git(s.root, "init -q --bare -b main " .. T.q(s.repos .. "/prod.git"))
    os.execute("git -C " .. T.q(s.repos .. "/prod.git") .. " config http.receivepack true")
    web = gitserve.http(s.repos, { user = "x-access-token", token = GIT_TOKEN })
    s.write_config(web.url("ws.git"))
    T.write(s.src .. "/meltano.yml", server.MELTANO .. "      client_secret: " .. MELTANO_SECRET .. "\n")
    server.git(s.src, "push -q " .. T.q(s.git.url("prod.git")) .. " HEAD:refs/heads/main")
    local sha = s.push("meltano.yml", T.read(s.src .. "/meltano.yml"))
    local notes = s.root .. "/notifications"
    pids[#pids + 1] = T.spawn(string.format("exec python3 %s %d %s", T.q(T.root .. "/tests/support/recorder.py"),
      notify_port, T.q(notes)))
    assert.truthy(T.wait_for(function() return T.port_open(notify_port) end, 10))

    -- sample every process's arguments while the flow runs
    local ps_file = s.root .. "/ps.txt"
    pids[#pids + 1] = T.spawn("exec sh -c 'while :; do ps -eo args; sleep 0.05; done' >" .. T.q(ps_file))

    local captured = {}
    local function keep(what, text) captured[#captured + 1] = { what = what, text = tostring(text or "") } end

    s.start({ global = { "--log-format", "json" } })
    local status, doc = s.post_push(sha)
    assert.equal(202, status)
    keep("webhook answer", json.encode(doc))
    status, doc = s.post_push(sha, { secret = "not-the-secret" })
    assert.equal(401, status)
    keep("refused webhook", json.encode(doc))
    local rows = s.wait_idle(60)
    assert.equal("COMPLETE", rows[1].status, rows[1].error)
    local bearer = { Authorization = "Bearer " .. server.TOKEN }
    for _, path in ipairs({ "/api/workspaces", "/api/workspaces/ws", "/api/workspaces/ws/deployments",
      "/api/workspaces/ws/deployments/" .. rows[1].id, "/metrics" }) do
      local st, body = s.request({ path = path, headers = bearer })
      assert.equal(200, st, path)
      keep("GET " .. path, type(body) == "table" and json.encode(body) or body)
    end
    local st, body = s.request({ path = "/api/workspaces", headers = { Authorization = "Bearer wrong-" .. server.TOKEN } })
    assert.equal(401, st)
    keep("refused API call", json.encode(body))
    -- the deployment log holds the hook's output, with the secret masked
    local _, dep = s.request({ path = "/api/workspaces/ws/deployments/" .. rows[1].id, headers = bearer })
    assert.matches("client_secret: %*%*%*", dep.log)
    assert.truthy(s.signal_and_wait("TERM", 60))

    -- CLI: deploy (text and JSON), history, a failing fetch with a wrong token
    for _, args in ipairs({ { "deploy", "ws", "--json" }, { "deploy", "ws" }, { "deploy", "ws", "--list", "--json" },
      { "--log-format", "json", "deploy", "ws", "--show", tostring(rows[1].id), "--json" },
      { "env", "show", "--workspace", "ws", "--json" }, { "env", "show", "--workspace", "ws" } }) do
      local r = s.run(args)
      keep(table.concat(args, " ") .. " (stdout)", r.stdout)
      keep(table.concat(args, " ") .. " (stderr)", r.stderr)
    end
    local bad = s.run({ "deploy", "ws" }, { GIT_TOKEN = "wrong-" .. GIT_TOKEN })
    assert.equal(1, bad.code)
    keep("deploy with a wrong token", bad.stdout .. bad.stderr)

    -- promotion over HTTP with the token from the environment
    local r = s.run({ "promote", "--from", web.url("ws.git"), "--to", web.url("prod.git"), "--yes", "--json" },
      { MOONOPS_GIT_TOKEN = GIT_TOKEN })
    assert.equal(0, r.code, r.stderr)
    keep("promote (stdout)", r.stdout)
    keep("promote (stderr)", r.stderr)
    r = s.run({ "promote", "--from", web.url("ws.git"), "--to", web.url("prod.git"), "--yes" },
      { MOONOPS_GIT_TOKEN = "wrong-" .. GIT_TOKEN })
    keep("promote with a wrong token", r.stdout .. r.stderr)

    -- image build and push to a registry with a password
    if T.sh("command -v buildah"):match("%S") then
      reg = registry.start("basic", { user = "bot", password = REG_PASSWORD })
      local docker = s.root .. "/docker"
      os.execute("mkdir -p " .. T.q(docker))
      T.write(docker .. "/config.json", json.encode({ auths = { [reg.host] = {
        auth = require("moonops.crypto").base64("bot:" .. REG_PASSWORD) } } }))
      T.write(s.src .. "/workspace.yml", "pipelines_image: hardening/pipelines\n")
      T.write(s.src .. "/Dockerfile", "FROM scratch\nCOPY meltano.yml /meltano.yml\n")
      s.push("workspace.yml", "pipelines_image: hardening/pipelines\n")
      assert.equal(0, s.run({ "deploy", "ws" }).code)
      local env = { DOCKER_CONFIG = docker, MELTANO_DATAFLOW_DOCKERREGISTRY = reg.host, BUILDAH_ISOLATION = "chroot",
        STORAGE_DRIVER = "vfs" }
      r = s.run({ "image", "--workspace", "ws", "--builder", "buildah", "--json" }, env)
      assert.equal(0, r.code, r.stderr)
      keep("image (stdout)", r.stdout)
      keep("image (stderr)", r.stderr)
      env.DOCKER_CONFIG = s.root .. "/nowhere"
      r = s.run({ "image", "--workspace", "ws", "--builder", "buildah", "--force" }, env)
      keep("image without credentials", r.stdout .. r.stderr)
    end

    -- the notifier: deployment, promotion and image flows do not emit events yet,
    -- so emit them the way they will, then once more with the listener gone
    T.write(s.dir .. "/emit.lua", [[
      local plugins = require "moonops.plugins"
      local errs = plugins.load_enabled(require("moonops.settings").load("moonops.yml"))
      assert(#errs == 0, errs[1])
      plugins.emit("deployment", { id = 1, workspace = "ws", status = "COMPLETE", commit = string.rep("a", 40) })
      print("emitted")
    ]])
    r = s.run({ "lua", "emit.lua" })
    assert.equal(0, r.code, r.stderr)
    keep("notify (stdout)", r.stdout)
    keep("notify (stderr)", r.stderr)
    T.kill(pids[1])
    r = s.run({ "lua", "emit.lua" })
    keep("notify to a dead listener", r.stdout .. r.stderr)

    T.kill(pids[2])
    keep("serve log", T.read(s.log))
    keep("ps", T.read(ps_file))
    -- notifications carry results, not the secrets (the URL itself is where they go)
    local sent = {}
    for line in (T.read(notes) or ""):gmatch("[^\n]+") do
      local n = json.decode(line)
      sent[#sent + 1] = type(n) == "table" and tostring(n.body) or line
    end
    assert.truthy(#sent >= 1, "no notification was sent")
    keep("notifications", table.concat(sent, "\n"))

    local ps_lines = 0
    for _ in (T.read(ps_file) or ""):gmatch("moonops") do ps_lines = ps_lines + 1 end
    assert.truthy(ps_lines > 0, "ps never saw moonops running")
    for _, c in ipairs(captured) do
      local name, around = find_any(c.text, secrets)
      assert.falsy(name, string.format("%s shows the %s: ...%s...", c.what, name, around))
    end
  end)

  it("creates data_dir and everything moonops writes there without access for others", function()
    s = server.setup()
    assert.equal(0, s.run({ "deploy", "ws" }).code)
    s.start()
    assert.equal(202, (s.post_push(s.push("m.sql", "select 1;\n"))))
    s.wait_idle(60)
    assert.truthy(s.signal_and_wait("TERM", 30))
    assert.equal("700", (T.sh("stat -c %a " .. T.q(s.data)):gsub("%s+$", "")))
    assert.equal("600", (T.sh("stat -c %a " .. T.q(s.data .. "/moonops.db")):gsub("%s+$", "")))
    local open = T.sh("find " .. T.q(s.data) .. " -perm /o=rwx ! -type l")
    assert.equal("", open)
    local files = T.sh("find " .. T.q(s.data) .. " | wc -l")
    assert.truthy(tonumber(files) > 10)
  end)

  it("never follows a symlink planted in a release out of data_dir when pruning", function()
    s = server.setup({ keep_releases = 1 })
    local outside = T.tmpdir()
    T.write(outside .. "/keep.txt", "precious\n")
    T.write(outside .. "/nested/keep2.txt", "precious too\n")
    assert.equal(0, s.run({ "deploy", "ws" }).code)
    local releases = s.ws_root .. "/releases"
    local first = T.sh("readlink " .. T.q(s.ws_root .. "/current")):match("releases/(%S+)")
    assert.truthy(first)
    -- symlinks to the outside directory: inside the release, as a nested entry, and
    -- a fake release that is itself a symlink
    os.execute(string.format("ln -s %s %s/%s/escape && mkdir -p %s/%s/deep && ln -s %s %s/%s/deep/escape2",
      T.q(outside), T.q(releases), first, T.q(releases), first, T.q(outside .. "/nested"), T.q(releases), first))
    os.execute(string.format("ln -s %s %s/20000101T000000Z-000000000000", T.q(outside), T.q(releases)))
    for i = 1, 3 do
      s.push("p" .. i .. ".sql", "select " .. i .. ";\n")
      local r = s.run({ "deploy", "ws" })
      assert.equal(0, r.code, r.stderr)
    end
    assert.falsy(T.read(releases .. "/" .. first .. "/meltano.yml"), "the planted release was not pruned")
    assert.equal("precious\n", T.read(outside .. "/keep.txt"))
    assert.equal("precious too\n", T.read(outside .. "/nested/keep2.txt"))
    -- fs.remove_tree itself on a tree holding such a symlink
    local fs = require "moonops.fs"
    local victim = T.tmpdir()
    os.execute(string.format("mkdir -p %s/a && ln -s %s %s/a/out", T.q(victim), T.q(outside), T.q(victim)))
    assert.truthy(fs.remove_tree(victim))
    assert.falsy(T.read(victim .. "/a/out/keep.txt"))
    assert.equal("precious\n", T.read(outside .. "/keep.txt"))
  end)
end)
