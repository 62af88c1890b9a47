-- `moonops env list|show|diff|use`: what a data engineer runs against a Meltano project.
local T = require "support.t"
local json = require "moonops.json"

local MELTANO = [[
# the analytics project
version: 1
default_environment: dev   # used when nothing else picks one
environments:
- name: dev
- name: staging
  config:
    plugins:
      extractors:
      - name: tap-shop
        config:
          host: staging.db.internal
- name: prod
  config:
    plugins:
      extractors:
      - name: tap-shop
        config:
          host: prod.db.internal
          password: $PROD_DB_PASSWORD
plugins:
  extractors:
  - name: tap-shop
    config:
      host: dev.db.internal
      password: dev-password-123
      path: ${DATA_ROOT}/shop
    select: [orders.*]
  loaders:
  - name: target-jsonl
    config:
      destination_path: output
]]

-- Clean variables so the caller's environment never changes an answer.
local CLEAN = { MELTANO_ENVIRONMENT = false, PROD_DB_PASSWORD = false, DATA_ROOT = false, NO_COLOR = false }

local function env(extra)
  local e = {}
  for k, v in pairs(CLEAN) do e[k] = v end
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

local function make_project()
  local dir = T.tmpdir()
  T.write(dir .. "/meltano.yml", MELTANO)
  T.write(dir .. "/.env", "DATA_ROOT=/srv/data\n")
  return dir
end

local function run(args, opts)
  opts = opts or {}
  opts.env = env(opts.env)
  return T.moonops(args, opts)
end

describe("moonops env", function()
  after_each(T.cleanup)

  describe("list", function()
    it("shows the environments, the default and the active one", function()
      local dir = make_project()
      local r = run({ "env", "list", "--project", dir })
      assert.are.equal(0, r.code, r.stderr)
      assert.matches("%* +dev +active, default\n", r.stdout)
      assert.matches("\n +staging\n", r.stdout)
      r = run({ "env", "list", "--project", dir, "--json" }, { env = { MELTANO_ENVIRONMENT = "prod" } })
      assert.are.equal(0, r.code, r.stderr)
      assert.are.same({ active = "prod", default = "dev", environments = { "dev", "staging", "prod" } },
        json.decode(r.stdout))
    end)

    it("works in the current directory and says what to do without a project", function()
      local dir = make_project()
      local r = run({ "env", "list", "--json" }, { cwd = dir })
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal("dev", json.decode(r.stdout).active)
      r = run({ "env", "list" }, { cwd = T.tmpdir() })
      assert.are.equal(2, r.code)
      assert.matches("no meltano.yml in the current directory: use --project DIR or --workspace W", r.stderr, 1, true)
    end)
  end)

  describe("show", function()
    it("prints the design's JSON shape, secrets redacted", function()
      local dir = make_project()
      local r = run({ "env", "show", "--project", dir, "--environment", "prod", "--json" },
        { env = { PROD_DB_PASSWORD = "prod-secret-456" } })
      assert.are.equal(0, r.code, r.stderr)
      assert.is_nil(r.stdout:find("prod-secret-456", 1, true))
      local doc = json.decode(r.stdout)
      assert.are.equal("prod", doc.environment)
      assert.are.equal(2, #doc.plugins)
      local shop = doc.plugins[1]
      assert.are.same({ "name", "settings", "type" }, (function()
        local k = {}
        for key in pairs(shop) do k[#k + 1] = key end
        table.sort(k)
        return k
      end)())
      assert.are.equal("extractors", shop.type)
      assert.are.equal("tap-shop", shop.name)
      local names = {}
      for i, s in ipairs(shop.settings) do names[i] = s.name end
      assert.are.same({ "_select", "host", "password", "path" }, names)
      assert.are.same({ name = "host", value = "prod.db.internal", source = "environment", origin = "meltano.yml:19",
        redacted = false }, shop.settings[2])
      assert.are.same({ name = "password", value = "(redacted)", source = "environment", origin = "meltano.yml:20",
        redacted = true }, shop.settings[3])
      assert.are.same({ name = "path", value = "/srv/data/shop", source = "base", origin = "meltano.yml:27",
        redacted = false }, shop.settings[4])
      assert.are.same({ "orders.*" }, shop.settings[1].value)
      assert.are.equal("target-jsonl", doc.plugins[2].name)
    end)

    it("writes exactly what the general JSON encoder writes, escapes included", function()
      local dir = T.tmpdir()
      T.write(dir .. "/meltano.yml", table.concat({
        "include_paths: ['./more/*.yml']",
        "plugins:",
        "  extractors:",
        "  - name: tap-plain",
        "    config: {host: db, port: 5432, ratio: 1.5, on: true, off: false, none: null, empty: {}}",
        "    select: [a.*, b.*]",
        "  - name: tap-odd",
        "    config:",
        [[      quote: "say \"hi\""]],
        [[      backslash: 'C:\dir\file']],
        [[      lines: "one\ntwo\tthree"]],
        [[      control: "bell\x07 del\x7f"]],
        "      accent: café",
        "      slash: a/b",
        "      mixed: [1, \"x\\\"y\", true, {k: v}]",
        "    metadata: {s: {replication-key: \"k\\\\1\"}}",
        "",
      }, "\n"))
      T.write(dir .. "/more/we\"ird\\name.yml", "plugins:\n  loaders:\n  - name: target-odd\n    config: {path: out}\n")
      local r = run({ "env", "show", "--project", dir, "--json" })
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal(json.pretty(json.decode(r.stdout)), r.stdout)
      local doc = json.decode(r.stdout)
      local by = {}
      for _, p in ipairs(doc.plugins) do
        by[p.name] = {}
        for _, st in ipairs(p.settings) do by[p.name][st.name] = st end
      end
      assert.are.equal('say "hi"', by["tap-odd"].quote.value)
      assert.are.equal("C:\\dir\\file", by["tap-odd"].backslash.value)
      assert.are.equal("one\ntwo\tthree", by["tap-odd"].lines.value)
      assert.are.equal("bell\7 del\127", by["tap-odd"].control.value)
      assert.are.equal("café", by["tap-odd"].accent.value)
      assert.are.equal("a/b", by["tap-odd"].slash.value)
      assert.are.same({ 1, 'x"y', true, { k = "v" } }, by["tap-odd"].mixed.value)
      assert.are.equal("k\\1", by["tap-odd"]["_metadata.s.replication-key"].value)
      assert.are.equal('more/we"ird\\name.yml:4', by["target-odd"].path.origin)
      assert.are.equal(1.5, by["tap-plain"].ratio.value)
      assert.are.equal(json.null, by["tap-plain"].none.value)
      assert.are.same({ "a.*", "b.*" }, by["tap-plain"]._select.value)
      assert.is_nil(r.stdout:find("\7", 1, true))
    end)

    it("writes a plugin with many settings whole, in order", function()
      local lines = { "plugins:", "  extractors:", "  - name: tap-wide", "    config:" }
      for i = 1, 900 do lines[#lines + 1] = string.format("      s%04d: v%d", i, i) end
      lines[#lines + 1] = [[      s0850: "needs \"escaping\""]]
      table.remove(lines, 4 + 850)
      local dir = T.tmpdir()
      T.write(dir .. "/meltano.yml", table.concat(lines, "\n") .. "\n")
      local r = run({ "env", "show", "--project", dir, "--json" })
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal(json.pretty(json.decode(r.stdout)), r.stdout)
      local settings = json.decode(r.stdout).plugins[1].settings
      assert.are.equal(900, #settings)
      for i = 1, 900 do assert.are.equal(string.format("s%04d", i), settings[i].name) end
      assert.are.equal('needs "escaping"', settings[850].value)
      assert.are.equal("v851", settings[851].value)
    end)

    it("shows sensitive values with --unsafe", function()
      local dir = make_project()
      local r = run({ "env", "show", "--project", dir, "--environment", "prod", "--json", "--unsafe" },
        { env = { PROD_DB_PASSWORD = "prod-secret-456" } })
      assert.are.equal(0, r.code, r.stderr)
      assert.matches('"value": "prod-secret-456"', r.stdout, 1, true)
    end)

    it("prints an aligned table without colour when not on a terminal", function()
      local dir = make_project()
      local r = run({ "env", "show", "--project", dir })
      assert.are.equal(0, r.code, r.stderr)
      assert.is_nil(r.stdout:find("\27", 1, true))
      assert.is_nil(r.stdout:find("dev-password-123", 1, true))
      local lines = {}
      for l in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.are.equal("environment: dev (default_environment)", lines[1])
      assert.matches("^PLUGIN +SETTING +VALUE +SOURCE +ORIGIN$", lines[2])
      local col = lines[2]:find("SOURCE", 1, true)
      local found = 0
      for i = 3, #lines do
        assert.are.equal(" ", lines[i]:sub(col - 1, col - 1), lines[i])
        assert.matches("^%a+ +%S+$", lines[i]:sub(col), lines[i])
        if lines[i]:match("^tap%-shop +password +%(redacted%) +base +meltano%.yml:26$") then found = found + 1 end
        if lines[i]:match("^target%-jsonl +destination_path +output +base +meltano%.yml:32$") then found = found + 1 end
      end
      assert.are.equal(2, found, r.stdout)
    end)

    it("shows one plugin with --plugin, and suggests a name for a typo", function()
      local dir = make_project()
      local r = run({ "env", "show", "--project", dir, "--plugin", "target-jsonl", "--json" })
      assert.are.equal(0, r.code, r.stderr)
      local doc = json.decode(r.stdout)
      assert.are.equal(1, #doc.plugins)
      assert.are.equal("target-jsonl", doc.plugins[1].name)
      r = run({ "env", "show", "--project", dir, "--plugin", "tap-shp" })
      assert.are.equal(2, r.code)
      assert.matches('plugin "tap-shp" not found', r.stderr, 1, true)
      assert.matches("did you mean tap-shop?", r.stderr, 1, true)
    end)

    it("takes $MELTANO_ENVIRONMENT, and --environment over it", function()
      local dir = make_project()
      local r = run({ "env", "show", "--project", dir, "--json" }, { env = { MELTANO_ENVIRONMENT = "staging" } })
      assert.are.equal("staging", json.decode(r.stdout).environment)
      r = run({ "env", "show", "--project", dir, "--json", "-e", "prod" }, { env = { MELTANO_ENVIRONMENT = "staging" } })
      assert.are.equal("prod", json.decode(r.stdout).environment)
      r = run({ "env", "show", "--project", dir, "--json", "-e", "null" })
      assert.are.equal(json.null, json.decode(r.stdout).environment)
    end)

    it("rejects an unknown environment with exit 2, listing the known ones", function()
      local r = run({ "env", "show", "--project", make_project(), "--environment", "qa" })
      assert.are.equal(2, r.code)
      assert.matches('environment "qa" (from --environment) not found', r.stderr, 1, true)
      assert.matches("(known: dev, staging, prod)", r.stderr, 1, true)
    end)

    it("fails on a variable that is not set with --strict", function()
      local dir = make_project()
      local r = run({ "env", "show", "--project", dir, "--environment", "prod", "--strict" })
      assert.are.equal(1, r.code)
      assert.matches("meltano.yml:20", r.stderr, 1, true)
      assert.matches("PROD_DB_PASSWORD is not set", r.stderr, 1, true)
      r = run({ "env", "show", "--project", dir, "--environment", "prod", "--strict" },
        { env = { PROD_DB_PASSWORD = "x1234" } })
      assert.are.equal(0, r.code, r.stderr)
    end)

    it("reports a broken meltano.yml with file:line:col and exit 2", function()
      local dir = T.tmpdir()
      T.write(dir .. "/meltano.yml", "plugins:\n  extractors:\n  - name: [oops\n")
      local r = run({ "env", "show", "--project", dir })
      assert.are.equal(2, r.code)
      assert.matches("meltano.yml:%d+:%d+:", r.stderr)
    end)
  end)

  describe("diff", function()
    it("lists what changes between two environments, secrets compared but not shown", function()
      local dir = make_project()
      local r = run({ "env", "diff", "dev", "prod", "--project", dir, "--json" },
        { env = { PROD_DB_PASSWORD = "prod-secret-456" } })
      assert.are.equal(0, r.code, r.stderr)
      assert.is_nil(r.stdout:find("secret-456", 1, true))
      assert.is_nil(r.stdout:find("dev-password-123", 1, true))
      local doc = json.decode(r.stdout)
      assert.are.equal("dev", doc.from)
      assert.are.equal("prod", doc.to)
      assert.are.same({
        { type = "extractors", plugin = "tap-shop", setting = "host", from = "dev.db.internal", to = "prod.db.internal" },
        { type = "extractors", plugin = "tap-shop", setting = "password", from = "(redacted)", to = "(redacted)" },
      }, doc.changes)
      r = run({ "env", "diff", "dev", "prod", "--project", dir }, { env = { PROD_DB_PASSWORD = "prod-secret-456" } })
      assert.are.equal(0, r.code, r.stderr)
      assert.matches("^PLUGIN +SETTING +DEV +PROD\n", r.stdout)
      assert.matches("tap%-shop +host +dev%.db%.internal +prod%.db%.internal\n", r.stdout)
      r = run({ "env", "diff", "dev", "dev", "--project", dir })
      assert.are.equal("no differences between dev and dev\n", r.stdout)
    end)

    it("needs two known environments", function()
      local dir = make_project()
      assert.are.equal(2, run({ "env", "diff", "dev", "--project", dir }).code)
      local r = run({ "env", "diff", "dev", "qa", "--project", dir })
      assert.are.equal(2, r.code)
      assert.matches('environment "qa"', r.stderr, 1, true)
    end)
  end)

  describe("use", function()
    it("changes only default_environment's bytes with --project --write", function()
      local dir = make_project()
      local r = run({ "env", "use", "prod", "--project", dir, "--write" })
      assert.are.equal(0, r.code, r.stderr)
      assert.matches("default_environment: dev -> prod", r.stdout, 1, true)
      local after = T.read(dir .. "/meltano.yml")
      assert.are.equal(MELTANO:gsub("default_environment: dev   #", "default_environment: prod   #"), after)
      -- a byte-level diff: one line changed, nothing else
      T.write(dir .. "/before.yml", MELTANO)
      local out = T.sh("diff " .. T.q(dir .. "/before.yml") .. " " .. T.q(dir .. "/meltano.yml"))
      assert.are.equal("3c3\n< default_environment: dev   # used when nothing else picks one\n---\n"
        .. "> default_environment: prod   # used when nothing else picks one\n", out)
      r = run({ "env", "list", "--project", dir, "--json" })
      assert.are.equal("prod", json.decode(r.stdout).default)
    end)

    it("keeps quoting and adds the key when it is missing", function()
      local dir = T.tmpdir()
      local text = "version: 1\ndefault_environment: 'dev'\nenvironments:\n- name: dev\n- name: prod\n"
      T.write(dir .. "/meltano.yml", text)
      assert.are.equal(0, run({ "env", "use", "prod", "--project", dir, "--write" }).code)
      local after = T.read(dir .. "/meltano.yml")
      assert.are.equal(text:gsub("'dev'", "prod"), after:gsub("'prod'", "prod"))
      local dir2 = T.tmpdir()
      T.write(dir2 .. "/meltano.yml", "version: 1\nenvironments:\n- name: dev\n")
      local r = run({ "env", "use", "dev", "--project", dir2, "--write" })
      assert.are.equal(0, r.code, r.stderr)
      assert.matches("default_environment: %(none%) %-> dev", r.stdout)
      r = run({ "env", "list", "--project", dir2, "--json" })
      assert.are.equal("dev", json.decode(r.stdout).default)
    end)

    it("refuses without --write, for an unknown environment, and changes nothing", function()
      local dir = make_project()
      local r = run({ "env", "use", "prod", "--project", dir })
      assert.are.equal(2, r.code)
      assert.matches("add --write", r.stderr, 1, true)
      r = run({ "env", "use", "qa", "--project", dir, "--write" })
      assert.are.equal(2, r.code)
      assert.matches("(known: dev, staging, prod)", r.stderr, 1, true)
      r = run({ "env", "use", "prod" }, { cwd = dir })
      assert.are.equal(2, r.code)
      assert.matches("--workspace W", r.stderr, 1, true)
      assert.are.equal(MELTANO, T.read(dir .. "/meltano.yml"))
    end)
  end)

  describe("--workspace", function()
    it("needs a deployed workspace", function()
      local dir = T.tmpdir()
      T.write(dir .. "/moonops.yml", "data_dir: state\nworkspaces:\n  - name: acme\n    repository: repo.git\n")
      for _, args in ipairs({ { "env", "show", "--workspace", "acme" }, { "env", "list", "--workspace", "acme" },
        { "env", "use", "prod", "--workspace", "acme" } }) do
        local r = run(args, { cwd = dir })
        assert.are.equal(1, r.code, table.concat(args, " "))
        assert.matches("--workspace needs a deployed workspace: run 'moonops deploy acme' first", r.stderr, 1, true)
      end
      local r = run({ "env", "show", "--workspace", "acme-prod" }, { cwd = dir })
      assert.are.equal(2, r.code)
      assert.matches('workspace "acme-prod" not found', r.stderr, 1, true)
    end)
  end)
end)
