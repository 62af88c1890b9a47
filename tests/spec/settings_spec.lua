-- moonops.yml: defaults, validation with file:line (a typo must never silently disable a
-- setting), workspaces, promotion chain, schedules, plugins and webhook secrets.
local T = require "support.t"
local errors = require "moonops.errors"
local log = require "moonops.log"
local settings = require "moonops.settings"

local function write_config(text)
  local dir = T.tmpdir()
  local path = dir .. "/moonops.yml"
  T.write(path, text)
  return path, dir
end

-- Load text as moonops.yml; returns the settings or the raised error object.
local function try(text)
  local path = write_config(text)
  local ok, res = pcall(settings.load, path)
  if ok then return res, nil, path end
  return nil, res, path
end

-- The error raised for `text`: a moonops.errors object with code 2 whose message
-- names file:line.
local function err_of(text, line)
  local s, e, path = try(text)
  assert.is_nil(s, "expected an error")
  assert.is_true(errors.is(e), tostring(e))
  assert.are.equal(errors.USAGE, e.code)
  if line then assert.are.equal(path .. ":" .. line .. ":", e.message:sub(1, #path + #tostring(line) + 2)) end
  return e.message
end

local WS = [[
workspaces:
  - id: 7d1c0f7e-2f4e-4e55-9d7a-0c51a5d7c001
    name: acme-dev
    repository: https://git.example.org/acme/dev.git
    environment: dev
    secret_env: ACME_DEV_SECRET
  - id: 7d1c0f7e-2f4e-4e55-9d7a-0c51a5d7c002
    name: acme
    repository: ./repos/acme.git
]]

describe("moonops.settings", function()
  after_each(T.cleanup)

  it("fills in the documented defaults", function()
    local path, dir = write_config(WS)
    local s = settings.load(path)
    assert.are.equal(path, s.path)
    assert.are.equal(dir, s.dir)
    assert.are.equal(dir .. "/.moonops", s.data_dir)
    assert.are.same({ listen = "127.0.0.1:8080", workers = 2, max_body = 25 * 1024 * 1024 }, s.server)
    assert.are.equal(2, #s.workspaces)
    local dev = s.workspaces[1]
    assert.are.equal("main", dev.branch)
    assert.are.equal(5, dev.keep_releases)
    assert.are.equal("dev", dev.environment)
    assert.are.equal(600, dev.hook_timeout)
    assert.is_false(dev.image.build_on_deploy)
    assert.are.equal(dev, s.by_name["acme-dev"])
    assert.are.equal(dev, s.by_id["7d1c0f7e-2f4e-4e55-9d7a-0c51a5d7c001"])
    -- a repository path is relative to moonops.yml
    assert.are.equal(dir .. "/repos/acme.git", s.workspaces[2].repository)
    assert.is_nil(s.workspaces[2].environment)
    assert.are.same({}, s.promotion)
    assert.are.same({}, s.schedules)
    assert.are.same({}, s.plugins)
  end)

  it("reads every documented key", function()
    local path, dir = write_config([[
data_dir: /var/lib/moonops-test
server:
  listen: 0.0.0.0:9000
  workers: 8
  max_body: 1MB
  api_tokens_env: MOONOPS_API_TOKENS
workspaces:
  - id: 11111111-1111-4111-8111-111111111111
    name: w-dev
    repository: https://git.example.org/w.git
    branch: develop
    environment: dev
    secret_file: secrets/dev.secret
    git_token_env: GITHUB_TOKEN
    git_username: bot
    on_deploy:
      - [meltano, install]
      - image
    keep_releases: 3
    image: { build_on_deploy: true, base: "meltano/meltano:v3", registry: reg.local, builder: buildah }
    hook_timeout: 10m
    provider: gitea
    legacy_sha1: true
  - { id: 2, name: w-prod, repository: "ssh://git@git.example.org/w.git", environment: prod }
promotion: [w-dev, w-prod]
schedules:
  - { name: nightly-image, cron: "0 2 * * *", recipe: image, args: [--workspace, w-prod], timezone: UTC,
      env: { LEVEL: debug, RETRIES: 3 } }
plugins:
  - notify-webhook: { url_env: SLACK_WEBHOOK_URL, events: [deployment, promotion] }
  - hello-native
]])
    local s = settings.load(path)
    assert.are.equal("/var/lib/moonops-test", s.data_dir)
    assert.are.same({ listen = "0.0.0.0:9000", workers = 8, max_body = 1048576, api_tokens_env = "MOONOPS_API_TOKENS" },
      s.server)
    local ws = s.by_name["w-dev"]
    assert.are.equal("develop", ws.branch)
    assert.are.equal(3, ws.keep_releases)
    assert.are.equal(600, ws.hook_timeout)
    assert.are.equal("gitea", ws.provider)
    assert.is_true(ws.legacy_sha1)
    assert.are.same({ build_on_deploy = true, base = "meltano/meltano:v3", registry = "reg.local", builder = "buildah" },
      ws.image)
    assert.are.same({ { "meltano", "install" }, "image" }, ws.on_deploy)
    assert.are.equal(dir .. "/secrets/dev.secret", ws.secret_sources[1].file)
    assert.are.equal("2", s.by_name["w-prod"].id)
    assert.are.equal(s.by_name["w-prod"], s.by_id["2"])
    assert.are.same({ "w-dev", "w-prod" }, s.promotion)
    local sch = s.schedules[1]
    assert.are.equal("nightly-image", sch.name)
    assert.are.equal("0 2 * * *", sch.cron)
    assert.are.equal("image", sch.recipe)
    assert.are.same({ "--workspace", "w-prod" }, sch.args)
    assert.are.same({ LEVEL = "debug", RETRIES = "3" }, sch.env)
    assert.are.equal("UTC", sch.timezone)
    assert.are.equal(2, #s.plugins)
    assert.are.equal("notify-webhook", s.plugins[1].name)
    assert.are.equal("SLACK_WEBHOOK_URL", s.plugins[1].config.url_env)
    assert.are.same({ name = "hello-native", config = {} }, s.plugins[2])
  end)

  it("parses sizes and durations", function()
    assert.are.equal(25 * 1024 * 1024, settings.parse_size("25MB"))
    assert.are.equal(512 * 1024, settings.parse_size("512k"))
    assert.are.equal(1024 ^ 3, settings.parse_size("1GiB"))
    assert.are.equal(100, settings.parse_size(100))
    assert.is_nil(settings.parse_size("lots"))
    assert.is_nil(settings.parse_size("25XB"))
    assert.are.equal(90, settings.parse_duration("90s"))
    assert.are.equal(600, settings.parse_duration("10m"))
    assert.are.equal(7200, settings.parse_duration("2h"))
    assert.are.equal(30, settings.parse_duration(30))
    assert.is_nil(settings.parse_duration("soon"))
    assert.is_nil(settings.parse_duration(0))
  end)

  describe("rejects with file:line", function()
    it("an unknown top-level key, suggesting the close one", function()
      local msg = err_of("workspace:\n  - name: x\n", 1)
      assert.matches('unknown key "workspace"', msg, 1, true)
      assert.matches("did you mean workspaces?", msg, 1, true)
    end)

    it("an unknown key in server, in a workspace, in image, in a secrets entry and in a schedule", function()
      assert.matches("did you mean listen?", err_of("server:\n  workers: 2\n  listne: 1.2.3.4:80\n", 3), 1, true)
      assert.matches("did you mean branch?", err_of(WS .. "    brnach: main\n", 10), 1, true)
      assert.matches('unknown key "build_on_push"', err_of(WS .. "    image: {build_on_push: true}\n", 10), 1, true)
      assert.matches('unknown key "path"', err_of(WS .. "    secrets:\n      - {path: /x}\n", 11), 1, true)
      assert.matches("did you mean recipe?", err_of(WS .. "schedules:\n  - {name: a, cron: '* * * * *', recipes: x}\n", 11),
        1, true)
    end)

    it("wrong types", function()
      assert.matches("server.workers must be a whole number, got a string",
        err_of("server:\n  workers: many\n", 2), 1, true)
      assert.matches("server.workers must be at least 1", err_of("server:\n  workers: 0\n", 2), 1, true)
      assert.matches("server.max_body must be a size", err_of("server:\n  max_body: huge\n", 2), 1, true)
      assert.matches("server.listen must be HOST:PORT", err_of("server:\n  listen: localhost\n", 2), 1, true)
      assert.matches("workspaces must be a list", err_of("workspaces: {a: 1}\n", 1), 1, true)
      assert.matches("keep_releases must be a whole number", err_of(WS .. "    keep_releases: five\n", 10), 1, true)
      assert.matches("legacy_sha1 must be true or false", err_of(WS .. "    legacy_sha1: 'yes'\n", 10), 1, true)
      assert.matches("provider must be one of", err_of(WS .. "    provider: githbu\n", 10), 1, true)
      assert.matches("on_deploy entries are commands", err_of(WS .. "    on_deploy: [{run: x}]\n", 10), 1, true)
      assert.matches("data_dir must be a string", err_of("data_dir: [a]\n", 1), 1, true)
      assert.matches("expected a mapping at the top", err_of("- a\n- b\n"), 1, true)
    end)

    it("ssh keys given wrongly, never showing what was given", function()
      assert.matches("did you mean ssh_key_file?", err_of(WS .. "    ssh_keyfile: id_ed25519\n", 10), 1, true)
      assert.matches("ssh_key_file must be a string, got a list", err_of(WS .. "    ssh_key_file: [a, b]\n", 10), 1, true)
      assert.matches("ssh_key_file is empty", err_of(WS .. "    ssh_key_file: ''\n", 10), 1, true)
      local msg = err_of(WS .. "    ssh_key_passphrase_env: open sesame 99\n", 10)
      assert.matches("ssh_key_passphrase_env must be the name of an environment variable", msg, 1, true)
      assert.is_nil(msg:find("open sesame 99", 1, true))
    end)

    it("a workspace without a name or a repository", function()
      assert.matches("needs a name", err_of("workspaces:\n  - repository: x.git\n", 2), 1, true)
      assert.matches("needs a repository", err_of("workspaces:\n  - name: a\n", 2), 1, true)
    end)

    it("duplicate workspace names and ids", function()
      local msg = err_of(WS .. "  - {id: x3, name: acme, repository: y.git}\n", 10)
      assert.matches('workspace name "acme" is used twice', msg, 1, true)
      assert.matches("moonops.yml:7", msg, 1, true)
      msg = err_of(WS .. "  - {id: 7d1c0f7e-2f4e-4e55-9d7a-0c51a5d7c001, name: other, repository: y.git}\n", 10)
      assert.matches("is used twice", msg, 1, true)
    end)

    it("a promotion chain naming an unknown workspace", function()
      local msg = err_of(WS .. "promotion: [acme-dev, acme-stagin, acme]\n", 10)
      assert.matches('promotion names workspace "acme-stagin"', msg, 1, true)
      assert.matches("known: acme-dev, acme", msg, 1, true)
      assert.matches("appears twice", err_of(WS .. "promotion: [acme-dev, acme, acme-dev]\n", 10), 1, true)
    end)

    it("a schedule that names something invalid", function()
      assert.matches('names workspace "acme-prod"',
        err_of(WS .. "schedules:\n  - {name: n, cron: '0 2 * * *', recipe: image, args: [--workspace, acme-prod]}\n", 11),
        1, true)
      assert.matches("is not a recipe name",
        err_of(WS .. "schedules:\n  - {name: n, cron: '0 2 * * *', recipe: '../evil'}\n", 11), 1, true)
      assert.matches("needs a cron expression", err_of("schedules:\n  - {name: n, recipe: image}\n", 2), 1, true)
      assert.matches("is defined twice", err_of(
        "schedules:\n  - {name: n, cron: '@daily', recipe: a}\n  - {name: n, cron: '@daily', recipe: b}\n", 3), 1, true)
      assert.matches("args must be strings", err_of("schedules:\n  - {name: n, cron: '@daily', recipe: a, args: [[x]]}\n",
        2), 1, true)
    end)

    it("plugins entries that are neither a name nor a one-key mapping", function()
      assert.matches("one-key mapping", err_of("plugins:\n  - {a: {}, b: {}}\n", 2), 1, true)
      assert.matches("enabled twice", err_of("plugins:\n  - a\n  - a\n", 3), 1, true)
    end)

    it("malformed YAML with file:line:col", function()
      local msg = err_of("server:\n  listen: [1, 2\n")
      assert.matches("moonops.yml:%d+:%d+:", msg)
    end)
  end)

  it("a missing file is a usage error that says what to do", function()
    local ok, e = pcall(settings.load, T.tmpdir() .. "/moonops.yml")
    assert.is_false(ok)
    assert.are.equal(errors.USAGE, e.code)
    assert.matches("moonops init", e.message, 1, true)
  end)

  it("finds a workspace by name or id, or lists the known ones", function()
    local s = settings.load((write_config(WS)))
    assert.are.equal("acme", settings.workspace(s, "acme").name)
    assert.are.equal("acme-dev", settings.workspace(s, "7d1c0f7e-2f4e-4e55-9d7a-0c51a5d7c001").name)
    local ok, e = pcall(settings.workspace, s, "acme-dve")
    assert.is_false(ok)
    assert.are.equal(errors.USAGE, e.code)
    assert.matches('workspace "acme-dve" not found', e.message, 1, true)
    assert.matches("did you mean acme-dev?", e.message, 1, true)
    assert.matches("known: acme-dev, acme", e.message, 1, true)
  end)

  it("reads a workspace's ssh key file and passphrase variable into its git credentials", function()
    local dir = T.tmpdir()
    T.write(dir .. "/moonops.yml", [[
workspaces:
  - name: rel
    repository: ssh://git@git.example.org/w.git
    ssh_key_file: keys/deploy_ed25519
    ssh_key_passphrase_env: TEST_KEY_PASSPHRASE
  - name: home
    repository: git@git.example.org:w.git
    ssh_key_file: ~/.ssh/deploy
    git_username: deployer
  - name: abs
    repository: ssh://git@git.example.org/w.git
    ssh_key_file: /etc/moonops/key
    ssh_key_passphrase_env: TEST_KEY_PASSPHRASE_UNSET
  - name: plain
    repository: https://git.example.org/w.git
]])
    -- in a process of its own: the passphrase comes from its environment, HOME expands ~
    local r = T.moonops({ "lua", "-e", [[
      local json = require "moonops.json"
      local log = require "moonops.log"
      local settings = require "moonops.settings"
      local workspace = require "moonops.workspace"
      local s = settings.load(arg[1])
      local out = {}
      for _, ws in ipairs(s.workspaces) do out[ws.name] = workspace.git_credentials(ws) or "none" end
      out.masked = log.mask("key opened with the passphrase under lock 7")
      print(json.encode(out))
    ]], dir .. "/moonops.yml" }, { env = { TEST_KEY_PASSPHRASE = "the passphrase under lock 7", HOME = dir .. "/home",
      TEST_KEY_PASSPHRASE_UNSET = false } })
    assert.are.equal(0, r.code, r.stderr)
    local out = require("moonops.json").decode(r.stdout)
    -- the file need not exist yet: it is read when used
    assert.are.same({ ssh_key = dir .. "/keys/deploy_ed25519", ssh_passphrase = "the passphrase under lock 7" }, out.rel)
    assert.are.same({ ssh_key = dir .. "/home/.ssh/deploy", username = "deployer" }, out.home)
    assert.are.same({ ssh_key = "/etc/moonops/key" }, out.abs)
    assert.are.equal("none", out.plain)
    assert.are.equal("key opened with ***", out.masked)
    assert.matches("$TEST_KEY_PASSPHRASE_UNSET (ssh_key_passphrase_env) is not set", r.stderr, 1, true)
  end)

  describe("webhook secrets", function()
    it("come from variables and files, several for rotation, each masked in logs", function()
      local dir = T.tmpdir()
      T.write(dir .. "/old.secret", "old-secret-value\n")
      T.write(dir .. "/moonops.yml", [[
workspaces:
  - name: w
    repository: https://git.example.org/w.git
    secret_env: [MOONOPS_TEST_SECRET_A]
    secret_file: old.secret
    secrets:
      - {env: MOONOPS_TEST_SECRET_UNSET}
]])
      local r = T.moonops({ "lua", "-e", [[
        local settings = require "moonops.settings"
        local log = require "moonops.log"
        local s = settings.load(arg[1])
        local list, problems = settings.workspace_secrets(s.workspaces[1])
        io.write(table.concat(list, ","), "\n", table.concat(problems, ","), "\n")
        io.write(log.mask("sig new-secret-value and old-secret-value"), "\n")
      ]], dir .. "/moonops.yml" }, { env = { MOONOPS_TEST_SECRET_A = "new-secret-value" } })
      assert.are.equal(0, r.code, r.stderr)
      local lines = {}
      for l in r.stdout:gmatch("[^\n]*") do lines[#lines + 1] = l end
      assert.are.equal("new-secret-value,old-secret-value", lines[1])
      assert.matches("$MOONOPS_TEST_SECRET_UNSET is not set", lines[2], 1, true)
      assert.are.equal("sig *** and ***", lines[3])
    end)

    it("inline secrets are accepted with a warning that never shows the value", function()
      local lines = {}
      log.configure({ stream = { write = function(_, ...) lines[#lines + 1] = table.concat({ ... }) end,
        flush = function() end } })
      local ok, s = pcall(settings.load, (write_config(
        "workspaces:\n  - name: w\n    repository: r.git\n    secret: inline-secret-123\n")))
      log.configure({ stream = io.stderr })
      assert.is_true(ok, tostring(s))
      assert.are.equal(1, #s.warnings)
      assert.matches("moonops.yml:4:", s.warnings[1], 1, true)
      assert.matches("inline", s.warnings[1], 1, true)
      assert.is_nil(s.warnings[1]:find("inline-secret-123", 1, true))
      assert.is_nil(table.concat(lines):find("inline-secret-123", 1, true))
      assert.are.same({ "inline-secret-123" }, (settings.workspace_secrets(s.workspaces[1])))
    end)
  end)
end)
