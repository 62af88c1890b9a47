-- Plugins through the real binary: the bundled native plugin, an ABI mismatch built here,
-- a broken Lua plugin, and notify-webhook posting to a real listener on loopback.
local T = require "support.t"
local json = require "moonops.json"

local function plugins_json(dir, env)
  local r = T.moonops({ "plugins", "--json" }, { cwd = dir, env = env })
  return assert(json.decode(r.stdout), r.stderr), r
end

local function by_name(list)
  local out = {}
  for _, p in ipairs(list) do out[p.name] = p end
  return out
end

describe("plugins", function()
  after_each(T.cleanup)

  it("finds the bundled plugins and lists them as available", function()
    local dir = T.tmpdir()
    local list = by_name(plugins_json(dir))
    assert.equal("native", list["hello-native"].kind)
    assert.equal("lua", list["notify-webhook"].kind)
    assert.is_false(list["hello-native"].enabled)
  end)

  it("loads the native example when enabled: its module and recipe work", function()
    local dir = T.tmpdir()
    T.write(dir .. "/moonops.yml", "plugins:\n  - hello-native\n")
    local r = T.moonops({ "hello-native", "--name", "data team" }, { cwd = dir })
    assert.equal(0, r.code, r.stderr)
    assert.equal("hello, data team (from C)\n", r.stdout)
    local list = by_name(plugins_json(dir))
    assert.is_true(list["hello-native"].loaded)
    assert.equal("1.0.0", list["hello-native"].version)
  end)

  it("passes a plugin its config from the one-key mapping form", function()
    local dir = T.tmpdir()
    T.write(dir .. "/moonops.yml", "plugins:\n  - hello-native: { name: config }\n")
    local r = T.moonops({ "hello-native" }, { cwd = dir })
    assert.equal(0, r.code, r.stderr)
    assert.equal("hello, config (from C)\n", r.stdout)
  end)

  it("refuses a native plugin built for another ABI, naming both versions, and keeps working", function()
    local dir = T.tmpdir()
    T.write(dir .. "/src/plugin.c", [[
      #include <lua.h>
      const int moonops_plugin_abi = 99;
      int moonops_plugin_open(lua_State *L, const void *host) { (void)host; lua_newtable(L); return 1; }
    ]])
    T.sh(string.format("mkdir -p %s/plugins/old-abi", T.q(dir)))
    local _, ok = T.sh(string.format(
      "cc -shared -fPIC $(pkg-config --cflags lua5.4) -o %s/plugins/old-abi/plugin.so %s/src/plugin.c 2>&1",
      T.q(dir), T.q(dir)))
    assert.is_true(ok, "could not build the test plugin")
    T.write(dir .. "/moonops.yml", "plugins:\n  - old-abi\n  - hello-native\n")
    local list, r = plugins_json(dir)
    assert.equal(1, r.code)
    local p = by_name(list)
    assert.matches("built for plugin ABI 99, this moonops has ABI 1", p["old-abi"].error)
    assert.is_true(p["hello-native"].loaded)
    r = T.moonops({ "hello-native" }, { cwd = dir })
    assert.equal(0, r.code, r.stderr)
    assert.matches("plugin old%-abi: ", r.stderr)
  end)

  it("names a Lua plugin whose setup raises, and the engine goes on", function()
    local dir = T.tmpdir()
    T.write(dir .. "/plugins/broken/plugin.lua",
      "return { name = 'broken', version = '0', setup = function() error('no config for you', 0) end }\n")
    T.write(dir .. "/moonops.yml", "plugins:\n  - broken\n  - hello-native\n")
    local p = by_name((plugins_json(dir)))
    assert.matches("plugin broken: setup failed: no config for you", p.broken.error)
    local r = T.moonops({ "hello-native" }, { cwd = dir })
    assert.equal(0, r.code, r.stderr)
  end)

  it("says where it looked for a plugin that is not there", function()
    local dir = T.tmpdir()
    T.write(dir .. "/moonops.yml", "plugins:\n  - nowhere\n")
    local p = by_name((plugins_json(dir)))
    assert.matches("plugin nowhere not found %(searched ", p.nowhere.error)
  end)

  it("finds plugins on --plugins and $MOONOPS_PLUGIN_PATH first", function()
    local dir, extra = T.tmpdir(), T.tmpdir()
    T.write(extra .. "/hello-native/plugin.lua", [[
      return { name = "hello-native", version = "9.9", setup = function(engine)
        engine.register_recipe("hello-native", { run = function(ctx) ctx.print("shadowed\n") end })
      end }
    ]])
    T.write(dir .. "/moonops.yml", "plugins:\n  - hello-native\n")
    local r = T.moonops({ "--plugins", extra, "hello-native" }, { cwd = dir })
    assert.equal("shadowed\n", r.stdout)
    r = T.moonops({ "hello-native" }, { cwd = dir, env = { MOONOPS_PLUGIN_PATH = extra } })
    assert.equal("shadowed\n", r.stdout)
  end)

  it("lets a plugin stop a deployment before validation, and hears about switches and failures", function()
    local dir = T.tmpdir()
    local repo = dir .. "/repo"
    T.write(repo .. "/meltano.yml", "version: 1\nplugins: {}\n")
    local _, ok = T.sh(string.format("cd %s && git init -q -b main && git -c user.name=t -c user.email=t@e " ..
      "add -A && git -c user.name=t -c user.email=t@e commit -qm init", T.q(repo)))
    assert.is_true(ok)
    T.write(dir .. "/plugins/gate/plugin.lua", [[
      return { name = "gate", version = "1", setup = function(engine, config)
        engine.register_deploy_hook("before_validate", function(d)
          if os.getenv("GATE_CLOSED") then return false, "the gate is closed for " .. d.workspace end
        end)
        engine.register_deploy_hook("after_switch", function(d)
          local f = assert(io.open(config.out, "a")) f:write("live ", d.workspace, "\n") f:close()
        end)
        engine.register_deploy_hook("on_failure", function(d)
          local f = assert(io.open(config.out, "a")) f:write("failed ", d.status, "\n") f:close()
          error("a broken failure hook must not matter")
        end)
      end }
    ]])
    local out = dir .. "/hooks.txt"
    T.write(dir .. "/moonops.yml", "workspaces:\n  - { name: ws, repository: ./repo }\nplugins:\n" ..
      "  - gate: { out: " .. out .. " }\n")
    local r = T.moonops({ "deploy", "ws" }, { cwd = dir, env = { GATE_CLOSED = "1" } })
    assert.equal(1, r.code)
    assert.matches("plugin gate: before_validate hook failed: the gate is closed for ws", r.stderr .. r.stdout)
    assert.is_nil(T.sh("readlink " .. T.q(dir .. "/.moonops/workspaces/ws/current")):match("releases"))
    r = T.moonops({ "deploy", "ws" }, { cwd = dir, env = { GATE_CLOSED = false } })
    assert.equal(0, r.code, r.stderr)
    assert.equal("failed ERROR\nlive ws\n", T.read(out))
  end)

  it("accepts webhooks from a provider a plugin registers", function()
    local dir = T.tmpdir()
    T.write(dir .. "/plugins/acme-git/plugin.lua", [[
      return { name = "acme-git", version = "1", setup = function(engine)
        engine.register_webhook_provider({
          name = "acme",
          detect = function(h) return h["x-acme-event"] ~= nil end,
          verify = function(h, body, secrets)
            for _, s in ipairs(secrets) do if h["x-acme-token"] == s then return true end end
            return false, "X-Acme-Token"
          end,
          parse = function(h, body)
            return { event = "push", delivery = h["x-acme-delivery"], ref = "refs/heads/main", after = body }
          end,
        })
      end }
    ]])
    T.write(dir .. "/moonops.yml", "plugins:\n  - acme-git\n")
    T.write(dir .. "/check.lua", [[
      local settings = require("moonops.settings").load("moonops.yml")
      require("moonops.plugins").load_enabled(settings)
      local webhook = require "moonops.webhook"
      print(webhook.provider("acme") and "registered" or "missing")
    ]])
    local r = T.moonops({ "lua", "check.lua" }, { cwd = dir })
    assert.equal(0, r.code, r.stderr)
    assert.equal("registered\n", r.stdout)
  end)

  describe("notify-webhook", function()
    local port, pid, out

    local function listen(fail_first)
      local dir = T.tmpdir()
      port, out = T.free_port(), dir .. "/requests.jsonl"
      pid = T.spawn(string.format("exec python3 %s/tests/support/recorder.py %d %s %d", T.q(T.root), port, T.q(out),
        fail_first or 0))
      assert.truthy(T.wait_for(function() return T.port_open(port) end, 10))
    end

    after_each(function() T.kill(pid) end)

    local EMIT = [[
      local settings = require("moonops.settings").load("moonops.yml")
      local plugins = require "moonops.plugins"
      local errs = plugins.load_enabled(settings)
      assert(#errs == 0, errs[1])
      plugins.emit(arg[1], { id = 7, workspace = "ws-dev", status = "COMPLETE", commit = "0123456789abcdef" })
      print("emitted")
    ]]

    it("posts a Slack-style JSON message for subscribed events only, and never logs the URL", function()
      listen()
      local dir = T.tmpdir()
      local url = string.format("http://127.0.0.1:%d/services/T000/B000/sekrit-token-123", port)
      T.write(dir .. "/moonops.yml", "plugins:\n  - notify-webhook: { url_env: HOOK_URL, events: [deployment] }\n")
      T.write(dir .. "/emit.lua", EMIT)
      local r = T.moonops({ "lua", "emit.lua", "deployment" }, { cwd = dir, env = { HOOK_URL = url } })
      assert.equal(0, r.code, r.stderr)
      r = T.moonops({ "lua", "emit.lua", "image" }, { cwd = dir, env = { HOOK_URL = url } })
      assert.equal(0, r.code, r.stderr)
      local lines = {}
      for line in (T.read(out) or ""):gmatch("[^\n]+") do lines[#lines + 1] = assert(json.decode(line)) end
      assert.equal(1, #lines)
      assert.equal("/services/T000/B000/sekrit-token-123", lines[1].path)
      assert.equal("application/json", lines[1].content_type)
      local body = assert(json.decode(lines[1].body))
      assert.equal("deployment", body.event)
      assert.equal("Deployment 7 of ws-dev: COMPLETE (0123456789ab)", body.text)
    end)

    it("retries with backoff on 5xx, and a dead listener does not fail the caller", function()
      listen(2)
      local dir = T.tmpdir()
      local url = string.format("http://127.0.0.1:%d/hook/sekrit-token-456", port)
      T.write(dir .. "/moonops.yml", "plugins:\n  - notify-webhook: { url_env: HOOK_URL, retries: 3 }\n")
      T.write(dir .. "/emit.lua", EMIT)
      local r = T.moonops({ "lua", "emit.lua", "promotion" }, { cwd = dir, env = { HOOK_URL = url } })
      assert.equal(0, r.code, r.stderr)
      local n = select(2, (T.read(out) or ""):gsub("\n", ""))
      assert.equal(3, n)
      T.kill(pid)
      local dead = string.format("http://127.0.0.1:%d/hook/sekrit-token-789", port)
      T.write(dir .. "/moonops.yml", "plugins:\n  - notify-webhook: { url_env: HOOK_URL, retries: 1 }\n")
      r = T.moonops({ "lua", "emit.lua", "deployment" }, { cwd = dir, env = { HOOK_URL = dead } })
      assert.equal(0, r.code, r.stderr)
      assert.matches("emitted", r.stdout)
      assert.matches("notify%-webhook: deployment not delivered", r.stderr)
      assert.is_nil(r.stderr:find("sekrit-token-789", 1, true))
    end)

    -- A workspace repository on a plain path, and a moonops.yml deploying it.
    local function workspace_project(plugins_yaml)
      local dir = T.tmpdir()
      local repo = dir .. "/repo"
      T.write(repo .. "/meltano.yml", "version: 1\ndefault_environment: dev\nenvironments:\n  - name: dev\n" ..
        "plugins:\n  extractors:\n    - name: tap-x\n      config: { a: 1 }\n")
      local _, ok = T.sh(string.format("cd %s && git init -q -b main && git -c user.name=t -c user.email=t@e " ..
        "add -A && git -c user.name=t -c user.email=t@e commit -qm init", T.q(repo)))
      assert.is_true(ok)
      T.write(dir .. "/moonops.yml", "workspaces:\n  - { name: ws, repository: ./repo, branch: main }\n" ..
        "plugins:\n" .. plugins_yaml)
      return dir
    end

    it("is told about a real deployment, and a dead listener does not fail the deployment", function()
      listen()
      local dir = workspace_project("  - notify-webhook: { url_env: HOOK_URL, retries: 0 }\n")
      local url = string.format("http://127.0.0.1:%d/hook/sekrit-token-000", port)
      local r = T.moonops({ "deploy", "ws" }, { cwd = dir, env = { HOOK_URL = url } })
      assert.equal(0, r.code, r.stderr)
      local line = assert(json.decode((T.read(out) or ""):match("[^\n]+")))
      local body = assert(json.decode(line.body))
      assert.equal("deployment", body.event)
      assert.equal("COMPLETE", body.status)
      assert.matches("^Deployment 1 of ws: COMPLETE %(%x+%)$", body.text)
      T.kill(pid)
      r = T.moonops({ "deploy", "ws" }, { cwd = dir, env = { HOOK_URL = url } })
      assert.equal(0, r.code, r.stderr)
      assert.matches("notify%-webhook: deployment not delivered", r.stderr)
      assert.is_nil(r.stderr:find("sekrit-token-000", 1, true))
    end)

    it("rejects a config without a URL, naming the plugin", function()
      local dir = T.tmpdir()
      T.write(dir .. "/moonops.yml", "plugins:\n  - notify-webhook: { url_env: NOT_SET_ANYWHERE }\n")
      local p = by_name((plugins_json(dir, { NOT_SET_ANYWHERE = false })))
      assert.matches("plugin notify%-webhook: setup failed: environment variable NOT_SET_ANYWHERE is not set",
        p["notify-webhook"].error)
    end)
  end)
end)
