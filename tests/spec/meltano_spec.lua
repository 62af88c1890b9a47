-- The meltano.yml model: what each setting resolves to in an environment, which layer
-- it came from and where (file:line), with every rule of design §5 tested on small
-- projects written here.
local T = require "support.t"
local errors = require "moonops.errors"
local meltano = require "moonops.meltano"

local function project(files)
  local dir = T.tmpdir()
  for name, text in pairs(files) do T.write(dir .. "/" .. name, text) end
  return dir
end

-- The line of `text` holding `needle` (plain), for origin checks.
local function line_of(text, needle)
  local n = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if line:find(needle, 1, true) then return n end
  end
  error("no line with " .. needle)
end

-- Load and resolve; the process environment is `opts.env` (default: empty), so the
-- test runner's own variables never leak in. Returns plugin name -> setting name -> setting.
local function resolve(dir, opts)
  opts = opts or {}
  opts.env = opts.env or {}
  local p = assert(meltano.load(dir, { env = opts.env }))
  if opts.environment == nil then opts.environment = meltano.active_environment(p, { env = opts.env }) end
  local r = assert(meltano.resolve(p, opts))
  local out = {}
  for _, pl in ipairs(r.plugins) do
    local s = {}
    for _, x in ipairs(pl.settings) do s[x.name] = x end
    out[pl.name] = s
  end
  return out, r, p
end

local function values(settings)
  local out = {}
  for name, s in pairs(settings) do out[name] = s.value end
  return out
end

local function load_error(dir)
  local p, err = meltano.load(dir, { env = {} })
  assert.is_nil(p)
  assert.is_string(err)
  return err
end

local function resolve_error(dir, opts)
  opts = opts or {}
  opts.env = opts.env or {}
  local p = assert(meltano.load(dir, { env = opts.env }))
  local r, err = meltano.resolve(p, opts)
  assert.is_nil(r)
  assert.is_string(err)
  return err
end

describe("moonops.meltano", function()
  after_each(T.cleanup)

  describe("loading", function()
    it("keeps plugins and environments in document order", function()
      local dir = project({ ["meltano.yml"] = [[
version: 1
default_environment: dev
environments:
- name: dev
- name: staging
- name: prod
plugins:
  loaders:
  - name: target-jsonl
  extractors:
  - name: tap-b
  - name: tap-a
]] })
      local p = assert(meltano.load(dir, { env = {} }))
      assert.are.same({ "dev", "staging", "prod" }, p.environments)
      assert.are.equal("dev", p.default_environment)
      local names = {}
      for _, pl in ipairs(p.plugins) do names[#names + 1] = pl.type .. "/" .. pl.name end
      assert.are.same({ "loaders/target-jsonl", "extractors/tap-b", "extractors/tap-a" }, names)
    end)

    it("says so when there is no meltano.yml", function()
      local dir = T.tmpdir()
      assert.matches("no meltano.yml in " .. dir, load_error(dir), 1, true)
    end)

    it("reports malformed YAML with file:line:col", function()
      local dir = project({ ["meltano.yml"] = "plugins:\n  extractors:\n  - name: [tap\n" })
      assert.matches("meltano.yml:%d+:%d+: ", load_error(dir))
    end)

    it("rejects a top level that is not a mapping and a plugin entry without a name, with file:line", function()
      assert.matches("expected a mapping at the top", load_error(project({ ["meltano.yml"] = "- a\n" })), 1, true)
      local err = load_error(project({ ["meltano.yml"] = "plugins:\n  extractors:\n  - variant: x\n" }))
      assert.matches("meltano.yml:3", err, 1, true)
      assert.matches("needs a name", err, 1, true)
      err = load_error(project({ ["meltano.yml"] = "plugins:\n  extractors: {name: x}\n" }))
      assert.matches("meltano.yml:2", err, 1, true)
      assert.matches("must be a list", err, 1, true)
    end)

    it("rejects an unknown plugin type, suggesting the close one", function()
      local err = load_error(project({ ["meltano.yml"] = "plugins:\n  extractor:\n  - name: tap-x\n" }))
      assert.matches('meltano.yml:2: unknown plugin type "extractor" - did you mean extractors?', err, 1, true)
    end)

    it("merges the same plugin declared twice in one file, later keys winning, with a warning", function()
      local text = [[
plugins:
  extractors:
  - name: tap-postgres
    variant: meltanolabs
    config:
      host: first
      port: 5432
  - name: tap-other
  - name: tap-postgres
    config:
      host: second
]]
      local dir = project({ ["meltano.yml"] = text })
      local s, r, p = resolve(dir)
      assert.are.equal(2, #r.plugins)
      assert.are.same({ host = "second", port = 5432 }, values(s["tap-postgres"]))
      assert.are.equal("meltano.yml:" .. line_of(text, "host: second"), s["tap-postgres"].host.origin)
      assert.are.equal(1, #p.warnings)
      assert.matches("tap-postgres is declared twice", p.warnings[1], 1, true)
    end)

    it("keeps one name under two plugin types apart", function()
      local dir = project({ ["meltano.yml"] = [[
plugins:
  transformers:
  - name: dbt
    config: {project_dir: transform}
  files:
  - name: dbt
    config: {bundle: files-dbt}
]] })
      local _, r = resolve(dir)
      assert.are.equal(2, #r.plugins)
      assert.are.equal("transformers", r.plugins[1].type)
      assert.are.equal("project_dir", r.plugins[1].settings[1].name)
      assert.are.equal("files", r.plugins[2].type)
      assert.are.equal("bundle", r.plugins[2].settings[1].name)
    end)
  end)

  describe("include_paths", function()
    it("merges included files: plugin lists concatenate, environments add up, origins name the file", function()
      local inc = "plugins:\n  extractors:\n  - name: tap-included\n    config:\n      from: include\n"
        .. "environments:\n- name: prod\n  config:\n    plugins:\n      extractors:\n      - name: tap-main\n"
        .. "        config: {host: prod-host}\n"
      local dir = project({
        ["meltano.yml"] = [[
include_paths:
- ./extract/*.meltano.yml
- loaders.meltano.yml
environments:
- name: dev
plugins:
  extractors:
  - name: tap-main
    config: {host: base-host}
]],
        ["extract/a.meltano.yml"] = inc,
        ["extract/b.meltano.yml"] = "plugins:\n  extractors:\n  - name: tap-b\n",
        ["extract/ignored.yml"] = "plugins:\n  extractors:\n  - name: tap-ignored\n",
        ["loaders.meltano.yml"] = "plugins:\n  loaders:\n  - name: target-x\n",
      })
      local s, r, p = resolve(dir, { environment = "prod" })
      local names = {}
      for _, pl in ipairs(r.plugins) do names[#names + 1] = pl.name end
      assert.are.same({ "tap-main", "tap-included", "tap-b", "target-x" }, names)
      assert.are.same({ "dev", "prod" }, p.environments)
      assert.are.equal("extract/a.meltano.yml:5", s["tap-included"].from.origin)
      assert.are.equal("prod-host", s["tap-main"].host.value)
      assert.are.equal("environment", s["tap-main"].host.source)
      assert.are.equal("extract/a.meltano.yml:12", s["tap-main"].host.origin)
    end)

    it("rejects the same plugin or environment in two files, naming both", function()
      local err = load_error(project({
        ["meltano.yml"] = "include_paths: ['*.meltano.yml']\nplugins:\n  extractors:\n  - name: tap-x\n",
        ["more.meltano.yml"] = "plugins:\n  extractors:\n  - name: tap-y\n  - name: tap-x\n",
      }))
      assert.matches("extractors tap-x is declared in both meltano.yml:4 and more.meltano.yml:4", err, 1, true)
      err = load_error(project({
        ["meltano.yml"] = "include_paths: ['envs/*.yml']\nenvironments:\n- name: prod\n",
        ["envs/prod.yml"] = "environments:\n- name: prod\n",
      }))
      assert.matches("environment prod is declared in both meltano.yml:3 and envs/prod.yml:2", err, 1, true)
    end)

    it("refuses paths that leave the project", function()
      local outside = T.tmpdir()
      T.write(outside .. "/evil.meltano.yml", "plugins:\n  extractors:\n  - name: tap-evil\n")
      local err = load_error(project({ ["meltano.yml"] = "include_paths:\n- ../*/evil.meltano.yml\n" }))
      assert.matches("meltano.yml:2: include path", err, 1, true)
      assert.matches("leaves the project", err, 1, true)
      err = load_error(project({ ["meltano.yml"] = "include_paths:\n- " .. outside .. "/*.meltano.yml\n" }))
      assert.matches("must be relative to the project", err, 1, true)
      local dir = project({ ["meltano.yml"] = "include_paths:\n- linked/*.meltano.yml\n" })
      os.execute("ln -s " .. T.q(outside) .. " " .. T.q(dir .. "/linked"))
      err = load_error(dir)
      assert.matches("outside the project", err, 1, true)
    end)

    it("reads `**` as Meltano does: any number of directories, meltano.yml itself left out", function()
      local shallow = "plugins:\n  extractors:\n  - name: tap-shallow\n    config:\n      depth: one\n"
      local deep = "environments:\n- name: prod\n  config:\n    plugins:\n      extractors:\n"
        .. "      - name: tap-shallow\n        config:\n          depth: three\n"
      local dir = project({
        ["meltano.yml"] = "version: 1\ninclude_paths: ['./conf/**/*.meltano.yml', '**/*.yml']\nenvironments:\n"
          .. "- name: dev\n",
        ["conf/a.meltano.yml"] = shallow,
        ["conf/more/deeper/b.meltano.yml"] = deep,
        ["conf/more/deeper/notes.txt"] = "not yaml: [",
      })
      local s, _, p = resolve(dir, { environment = "dev" })
      assert.are.same({ "meltano.yml", "conf/a.meltano.yml", "conf/more/deeper/b.meltano.yml" }, p.files)
      assert.are.equal("one", s["tap-shallow"].depth.value)
      assert.are.equal("conf/a.meltano.yml:5", s["tap-shallow"].depth.origin)
      s = resolve(dir, { environment = "prod" })
      assert.are.equal("three", s["tap-shallow"].depth.value)
      assert.are.equal("conf/more/deeper/b.meltano.yml:8", s["tap-shallow"].depth.origin)
    end)

    it("rejects a pattern that matches a directory or a broken link, at the pattern's line", function()
      local files = {
        ["meltano.yml"] = "version: 1\ninclude_paths:\n- conf/*.meltano.yml\n- conf/*\n",
        ["conf/a.meltano.yml"] = "plugins:\n  loaders:\n  - name: target-a\n",
        ["conf/sub/b.meltano.yml"] = "plugins:\n  loaders:\n  - name: target-b\n",
      }
      local err = load_error(project(files))
      assert.matches('meltano.yml:4: include path "conf/*" matches conf/sub, a directory', err, 1, true)
      files["meltano.yml"] = "version: 1\ninclude_paths:\n- conf/**\n"
      err = load_error(project(files))
      assert.matches('meltano.yml:3: include path "conf/**" matches conf, a directory', err, 1, true)
      files["meltano.yml"] = "version: 1\ninclude_paths: ['conf/**/', '*.yml']\n"
      assert.matches("meltano.yml:2: include path", load_error(project(files)), 1, true)
      files["meltano.yml"] = "version: 1\ninclude_paths:\n- conf/**/*.meltano.yml\n- '*.meltano.yml'\n"
      local dir = project(files)
      assert(require("moonops.fs").symlink("gone.yml", dir .. "/broken.meltano.yml"))
      err = load_error(dir)
      assert.matches('meltano.yml:4: include path "*.meltano.yml" matches broken.meltano.yml, a broken symbolic link',
        err, 1, true)
    end)
  end)

  describe("the active environment", function()
    local dir
    before_each(function()
      dir = project({ ["meltano.yml"] = "default_environment: dev\nenvironments:\n- name: dev\n- name: staging\n"
        .. "- name: prod\n" })
    end)

    it("is --environment, then $MELTANO_ENVIRONMENT, then the workspace's, then default_environment", function()
      local p = assert(meltano.load(dir, { env = {} }))
      local env = { MELTANO_ENVIRONMENT = "staging" }
      assert.are.equal("prod", meltano.active_environment(p, { flag = "prod", env = env, state = "dev" }))
      assert.are.equal("staging", meltano.active_environment(p, { env = env, state = "prod" }))
      assert.are.equal("staging", meltano.active_environment(p, { env = "staging", state = "prod" }))
      assert.are.equal("prod", meltano.active_environment(p, { env = { MELTANO_ENVIRONMENT = "" }, state = "prod" }))
      assert.are.equal("dev", meltano.active_environment(p, { env = {} }))
      local name, how = meltano.active_environment(p, {})
      assert.are.equal("dev", name)
      assert.are.equal("default_environment", how)
    end)

    it("is none for the name null, or without a default", function()
      local p = assert(meltano.load(dir, { env = {} }))
      assert.is_nil(meltano.active_environment(p, { flag = "null" }))
      assert.is_nil(meltano.active_environment(p, { env = { MELTANO_ENVIRONMENT = "null" } }))
      local q = assert(meltano.load(project({ ["meltano.yml"] = "default_environment: null\nenvironments:\n- name: a\n" }),
        { env = {} }))
      assert.is_nil(meltano.active_environment(q, {}))
    end)

    it("rejects an unknown name, listing the known ones", function()
      local p = assert(meltano.load(dir, { env = {} }))
      local ok, e = pcall(meltano.active_environment, p, { flag = "qa" })
      assert.is_false(ok)
      assert.is_true(errors.is(e))
      assert.are.equal(errors.USAGE, e.code)
      assert.matches('environment "qa" (from --environment) not found in', e.message, 1, true)
      assert.matches("(known: dev, staging, prod)", e.message, 1, true)
      assert.matches('environment "qa" not found', resolve_error(dir, { environment = "qa" }), 1, true)
    end)
  end)

  describe("setting precedence", function()
    local text = [[
environments:
- name: prod
  env:
    TAP_CHILD_S_BLOCK: from-block
  config:
    plugins:
      extractors:
      - name: tap-child
        config:
          s_environment: from-environment
          s_block: from-environment
plugins:
  extractors:
  - name: tap-parent
    config:
      s_inherited: from-parent
      s_base: from-parent
  - name: tap-child
    inherit_from: tap-parent
    settings:
    - name: s_default
      value: from-default
    - name: s_base
      value: from-default
    config:
      s_base: from-base
      s_environment: from-base
      s_env: from-base
      s_dotenv: from-base
]]

    it("is env: blocks > dotenv > process env > environment > base > inherited > default", function()
      local dir = project({ ["meltano.yml"] = text,
        [".env"] = "# local overrides\nTAP_CHILD_S_DOTENV=from-dotenv\nTAP_CHILD_S_BLOCK=from-dotenv\n" })
      local s = resolve(dir, { environment = "prod", env = { TAP_CHILD_S_ENV = "from-env",
        TAP_CHILD_S_DOTENV = "from-env", TAP_CHILD_S_BLOCK = "from-env" } })
      local c = s["tap-child"]
      local function check(name, value, source, origin)
        assert.are.equal(value, c[name].value, name)
        assert.are.equal(source, c[name].source, name)
        assert.are.equal(origin, c[name].origin, name)
      end
      check("s_env", "from-env", "env", "$TAP_CHILD_S_ENV")
      check("s_dotenv", "from-dotenv", "dotenv", ".env:2")
      check("s_block", "from-block", "env", "meltano.yml:" .. line_of(text, "TAP_CHILD_S_BLOCK"))
      check("s_environment", "from-environment", "environment", "meltano.yml:" .. line_of(text, "s_environment: from-env"))
      check("s_base", "from-base", "base", "meltano.yml:" .. line_of(text, "s_base: from-base"))
      check("s_inherited", "from-parent", "inherited", "meltano.yml:" .. line_of(text, "s_inherited: from-parent"))
      check("s_default", "from-default", "default", "meltano.yml:" .. line_of(text, "value: from-default"))
    end)

    it("without the active environment falls back to base", function()
      local dir = project({ ["meltano.yml"] = text })
      local s = resolve(dir, { environment = false })
      assert.are.equal("from-base", s["tap-child"].s_environment.value)
      assert.is_nil(s["tap-child"].s_block)
    end)

    it("ranks env: blocks plugin-in-environment > plugin > environment > top level", function()
      local t = [[
env:
  TAP_X_A: top
  TAP_X_B: top
  TAP_X_C: top
  TAP_X_D: top
environments:
- name: prod
  env:
    TAP_X_A: environment
    TAP_X_B: environment
    TAP_X_C: environment
  config:
    plugins:
      extractors:
      - name: tap-x
        env:
          TAP_X_A: plugin-in-environment
plugins:
  extractors:
  - name: tap-x
    env:
      TAP_X_A: plugin
      TAP_X_B: plugin
    config: {a: 0, b: 0, c: 0, d: 0}
]]
      local s = resolve(project({ ["meltano.yml"] = t }), { environment = "prod" })
      assert.are.same({ a = "plugin-in-environment", b = "plugin", c = "environment", d = "top" }, values(s["tap-x"]))
      assert.are.equal("meltano.yml:" .. line_of(t, "TAP_X_A: plugin-in-environment"), s["tap-x"].a.origin)
      assert.are.equal("meltano.yml:" .. line_of(t, "TAP_X_D: top"), s["tap-x"].d.origin)
    end)

    it("names variables <PLUGIN_NAME>_<SETTING>, upper-cased, non-alphanumerics as _", function()
      local dir = project({ ["meltano.yml"] = [[
plugins:
  extractors:
  - name: tap-my.source
    config:
      api-url: base
      nested: {deep-name: base}
]] })
      local s = resolve(dir, { env = { TAP_MY_SOURCE_API_URL = "env", TAP_MY_SOURCE_NESTED_DEEP_NAME = "env-deep",
        ["tap-my.source_api-url"] = "wrong" } })
      assert.are.equal("env", s["tap-my.source"]["api-url"].value)
      assert.are.equal("env-deep", s["tap-my.source"]["nested.deep-name"].value)
      assert.are.equal("$TAP_MY_SOURCE_NESTED_DEEP_NAME", s["tap-my.source"]["nested.deep-name"].origin)
    end)

    it("reads declared kinds from variables: booleans, integers, arrays, objects", function()
      local dir = project({ ["meltano.yml"] = [[
plugins:
  loaders:
  - name: target-x
    settings:
    - {name: flag, kind: boolean}
    - {name: count, kind: integer}
    - {name: list, kind: array}
    - {name: obj, kind: object}
    - {name: text}
    config: {flag: true, count: 1, list: [a], obj: {k: v}, text: plain}
]] })
      local s = resolve(dir, { env = { TARGET_X_FLAG = "false", TARGET_X_COUNT = "42", TARGET_X_LIST = '["b","c"]',
        TARGET_X_OBJ = '{"k": "w", "n": 1}', TARGET_X_TEXT = "[not json]" } })
      local v = values(s["target-x"])
      assert.are.equal(false, v.flag)
      assert.are.equal(42, v.count)
      assert.are.same({ "b", "c" }, v.list)
      assert.are.equal("w", v["obj.k"])
      assert.are.equal(1, v["obj.n"])
      assert.are.equal("[not json]", v.text)
    end)
  end)

  describe("merging layers", function()
    it("merges mappings leaf by leaf, replaces lists, lets null fall through and {} hide", function()
      local dir = project({ ["meltano.yml"] = [[
environments:
- name: prod
  config:
    plugins:
      extractors:
      - name: tap-x
        config:
          nested: {b: prod-b, c: prod-c}
          list: [prod]
          port:
          hidden: {}
plugins:
  extractors:
  - name: tap-x
    config:
      nested: {a: base-a, b: base-b}
      list: [one, two]
      port: 5432
      hidden: {x: 1, y: {z: 2}}
]] })
      local s = resolve(dir, { environment = "prod" })
      local x = s["tap-x"]
      assert.are.same({ ["nested.a"] = "base-a", ["nested.b"] = "prod-b", ["nested.c"] = "prod-c", list = { "prod" },
        port = 5432, hidden = {} }, values(x))
      assert.are.equal("base", x["nested.a"].source)
      assert.are.equal("environment", x["nested.b"].source)
      assert.are.equal("base", x.port.source)
      assert.are.equal("environment", x.hidden.source)
    end)

    it("does not let an empty environment entry hide the base config", function()
      local dir = project({ ["meltano.yml"] = "environments:\n- name: prod\n  config:\n    plugins:\n      extractors:\n"
        .. "      - name: tap-x\n        config: {}\nplugins:\n  extractors:\n  - name: tap-x\n    config: {a: 1}\n" })
      assert.are.same({ a = 1 }, values(resolve(dir, { environment = "prod" })["tap-x"]))
    end)

    it("writes a literal dot in a key as \\. in the flattened name", function()
      local dir = project({ ["meltano.yml"] = "plugins:\n  mappers:\n  - name: m\n    config:\n"
        .. "      stream_maps:\n        'public.users': {id: str(id)}\n" })
      assert.are.equal("str(id)", resolve(dir).m["stream_maps.public\\.users.id"].value)
    end)
  end)

  describe("extras", function()
    it("resolve as _select, _metadata... and read <PLUGIN>__SELECT variables", function()
      local text = [[
environments:
- name: dev
  config:
    plugins:
      extractors:
      - name: tap-github
        select: [issues.*]
plugins:
  extractors:
  - name: tap-github
    variant: meltanolabs
    pip_url: tap-github
    select:
    - repositories.*
    - issues.*
    metadata:
      issues:
        replication-key: updated_at
    schema:
      issues: {id: {type: integer}}
]]
      local dir = project({ ["meltano.yml"] = text })
      local s = resolve(dir)
      local g = s["tap-github"]
      assert.are.same({ "repositories.*", "issues.*" }, g._select.value)
      assert.are.equal("base", g._select.source)
      assert.are.equal("meltano.yml:" .. (line_of(text, "- repositories.*") - 1), g._select.origin)
      assert.are.equal("updated_at", g["_metadata.issues.replication-key"].value)
      assert.is_false(g["_metadata.issues.replication-key"].redacted)
      assert.are.equal("integer", g["_schema.issues.id.type"].value)
      assert.is_nil(g.variant)
      assert.is_nil(g._variant)
      assert.is_nil(g._pip_url)
      s = resolve(dir, { environment = "dev" })
      assert.are.same({ "issues.*" }, s["tap-github"]._select.value)
      assert.are.equal("environment", s["tap-github"]._select.source)
      s = resolve(dir, { env = { TAP_GITHUB__SELECT = '["pulls.*"]' } })
      assert.are.same({ "pulls.*" }, s["tap-github"]._select.value)
      assert.are.equal("env", s["tap-github"]._select.source)
    end)
  end)

  describe("$VAR expansion", function()
    local text = [[
env:
  BASE_DIR: ${MELTANO_PROJECT_ROOT}/data
  DERIVED: $BASE_DIR/sub
plugins:
  loaders:
  - name: target-x
    env:
      OWN: own-value
    config:
      plain: $FROM_PROCESS
      braced: pre-${FROM_DOTENV}-post
      block: $DERIVED
      own: $OWN
      escaped: 'cost \$AMOUNT'
      jsonpath: $.items[*]
      missing: x${NOT_SET}y
      env_name: $MELTANO_ENVIRONMENT
      list: [$FROM_PROCESS, literal]
]]

    it("expands $VAR and ${VAR} from the process, .env and env: blocks; \\$ escapes", function()
      local dir = project({ ["meltano.yml"] = text .. "environments:\n- name: dev\n",
        [".env"] = "FROM_DOTENV=dotenv-value\n" })
      local s = resolve(dir, { environment = "dev", env = { FROM_PROCESS = "process-value" } })
      local root = assert(require("moonops.fs").realpath(dir))
      assert.are.same({
        plain = "process-value",
        braced = "pre-dotenv-value-post",
        block = root .. "/data/sub",
        own = "own-value",
        escaped = "cost $AMOUNT",
        jsonpath = "$.items[*]",
        missing = "xy",
        env_name = "dev",
        list = { "process-value", "literal" },
      }, values(s["target-x"]))
    end)

    it("leaves values that come from variables as they are", function()
      local dir = project({ ["meltano.yml"] = "plugins:\n  loaders:\n  - name: target-x\n    config: {a: x}\n" })
      assert.are.equal("p@$$w0rd$X", resolve(dir, { env = { TARGET_X_A = "p@$$w0rd$X" } })["target-x"].a.value)
    end)

    it("with strict, a missing variable is an error naming it and where", function()
      local dir = project({ ["meltano.yml"] = text })
      local err = resolve_error(dir, { strict = true, env = { FROM_PROCESS = "p", FROM_DOTENV = "d",
        MELTANO_ENVIRONMENT = "x" } })
      assert.matches("meltano.yml:" .. line_of(text, "NOT_SET"), err, 1, true)
      assert.matches("NOT_SET", err, 1, true)
    end)
  end)

  describe("inherit_from", function()
    it("takes the parent's resolved values, through a chain, with the parent's origin", function()
      local text = [[
plugins:
  loaders:
  - name: target-postgres--dwh-a
    inherit_from: target-postgres--dwh
    config: {schema: a}
  - name: target-postgres
    config: {host: db, port: 5432, nested: {x: 1, y: 2}}
  - name: target-postgres--dwh
    inherit_from: target-postgres
    config: {load_method: upsert, nested: {y: 3}}
]]
      local s = resolve(project({ ["meltano.yml"] = text }), { env = { TARGET_POSTGRES_HOST = "from-env" } })
      local a = s["target-postgres--dwh-a"]
      assert.are.same({ schema = "a", host = "from-env", port = 5432, load_method = "upsert", ["nested.x"] = 1,
        ["nested.y"] = 3 }, values(a))
      assert.are.equal("inherited", a.host.source)
      assert.are.equal("$TARGET_POSTGRES_HOST", a.host.origin)
      assert.are.equal("meltano.yml:" .. line_of(text, "load_method: upsert"), a.load_method.origin)
      assert.are.equal("base", a.schema.source)
    end)

    it("allows a parent that is not declared in the project", function()
      local s = resolve(project({ ["meltano.yml"] = "plugins:\n  loaders:\n  - name: target-parquet--x\n"
        .. "    inherit_from: target-parquet\n    config: {path: out}\n" }))
      assert.are.same({ path = "out" }, values(s["target-parquet--x"]))
    end)

    it("rejects a cycle, naming it", function()
      local err = resolve_error(project({ ["meltano.yml"] = "plugins:\n  extractors:\n  - name: a\n    inherit_from: b\n"
        .. "  - name: b\n    inherit_from: c\n  - name: c\n    inherit_from: a\n" }))
      assert.matches("inherit_from cycle: a -> b -> c -> a", err, 1, true)
      err = resolve_error(project({ ["meltano.yml"] = "plugins:\n  extractors:\n  - name: a\n    inherit_from: a\n" }))
      assert.matches("inherit_from cycle: a -> a", err, 1, true)
    end)
  end)

  describe("sensitive settings", function()
    local text = [[
plugins:
  extractors:
  - name: tap-x
    settings:
    - {name: declared, sensitive: true}
    - {name: pw_field, kind: password}
    - {name: oauth_field, kind: oauth}
    - {name: creds, sensitive: true}
    config:
      declared: d1
      pw_field: p1
      oauth_field: o1
      creds: {user: u, pass: p}
      db_password: secret1
      client_secret: secret2
      access_token: secret3
      api_key: secret4
      private_key: secret5
      API_KEY_SECRET: secret6
      primary_keys: [id]
      tokenizer: whitespace
      user: alice
]]

    it("are declared ones and names ending in password, secret, token or key, shown as (redacted)", function()
      local s = resolve(project({ ["meltano.yml"] = text }))
      local x = s["tap-x"]
      for _, name in ipairs({ "declared", "pw_field", "oauth_field", "creds.user", "creds.pass", "db_password",
        "client_secret", "access_token", "api_key", "private_key", "API_KEY_SECRET" }) do
        assert.is_true(x[name].sensitive, name)
        assert.is_true(x[name].redacted, name)
        assert.are.equal("(redacted)", x[name].value, name)
        assert.matches("^%x+$", x[name].hash, name)
      end
      for _, name in ipairs({ "primary_keys", "tokenizer", "user" }) do
        assert.is_false(x[name].sensitive, name)
        assert.is_false(x[name].redacted, name)
      end
      assert.are.equal("alice", x.user.value)
    end)

    it("are shown with unsafe, and hash the same value the same way", function()
      local dir = project({ ["meltano.yml"] = text })
      local s = resolve(dir, { unsafe = true })
      assert.are.equal("secret1", s["tap-x"].db_password.value)
      assert.is_false(s["tap-x"].db_password.redacted)
      assert.is_true(s["tap-x"].db_password.sensitive)
      local again = resolve(dir)
      assert.are.equal(s["tap-x"].db_password.hash, again["tap-x"].db_password.hash)
      assert.are_not.equal(s["tap-x"].db_password.hash, again["tap-x"].client_secret.hash)
    end)
  end)

  describe("diff", function()
    it("lists changed settings, comparing secrets by hash without showing them", function()
      local dir = project({ ["meltano.yml"] = [[
environments:
- name: dev
- name: prod
  config:
    plugins:
      extractors:
      - name: tap-x
        config: {host: prod-db, password: prod-pw, only_prod: 1}
plugins:
  extractors:
  - name: tap-x
    config: {host: dev-db, password: dev-pw, same: s, token: same-token}
]] })
      local p = assert(meltano.load(dir, { env = {} }))
      local dev = assert(meltano.resolve(p, { environment = "dev", env = {} }))
      local prod = assert(meltano.resolve(p, { environment = "prod", env = {} }))
      local changes = meltano.diff(dev, prod)
      assert.are.same({
        { type = "extractors", plugin = "tap-x", setting = "host", from = "dev-db", to = "prod-db" },
        { type = "extractors", plugin = "tap-x", setting = "only_prod", from = nil, to = 1 },
        { type = "extractors", plugin = "tap-x", setting = "password", from = "(redacted)", to = "(redacted)" },
      }, changes)
      assert.are.same({}, meltano.diff(prod, prod))
    end)
  end)

  describe("workspace.yml", function()
    it("is overlaid by workspace-<env>.yml", function()
      local dir = project({
        ["meltano.yml"] = "environments:\n- name: prod\n",
        ["workspace.yml"] = "pipelines_image: acme/pipelines:latest\nowner: data\nnested: {a: 1, b: 2}\n",
        ["workspace-prod.yml"] = "pipelines_image: acme/pipelines-prod:v2\nnested: {b: 3}\n",
      })
      local cfg = assert(meltano.workspace_config(dir, "prod"))
      assert.are.equal("acme/pipelines-prod:v2", cfg.pipelines_image)
      assert.are.equal("data", cfg.owner)
      assert.are.same({ a = 1, b = 3 }, cfg.nested)
      assert.are.equal("acme/pipelines:latest", assert(meltano.workspace_config(dir, "dev")).pipelines_image)
      assert.are.same({}, assert(meltano.workspace_config(T.tmpdir(), "prod")))
    end)

    it("reports a malformed file", function()
      local dir = project({ ["workspace.yml"] = "pipelines_image: [a\n" })
      local cfg, err = meltano.workspace_config(dir, nil)
      assert.is_nil(cfg)
      assert.matches("workspace.yml:%d+:%d+:", err)
    end)
  end)

  describe("validate", function()
    it("accepts a project that resolves and rejects what would break a deployment", function()
      local good = project({ ["meltano.yml"] = "default_environment: dev\nenvironments:\n- name: dev\n"
        .. "plugins:\n  extractors:\n  - name: tap-x\n" })
      assert.is_true(meltano.validate(good, nil))
      assert.is_true(meltano.validate(good, "dev"))
      local ok, err = meltano.validate(good, "prod")
      assert.is_nil(ok)
      assert.matches('environment "prod"', err, 1, true)
      ok, err = meltano.validate(project({ ["meltano.yml"] = "plugins:\n  extractors:\n  - name: a\n    inherit_from: a\n" }))
      assert.is_nil(ok)
      assert.matches("cycle", err, 1, true)
      T.write(good .. "/workspace.yml", "a: [\n")
      ok, err = meltano.validate(good, "dev")
      assert.is_nil(ok)
      assert.matches("workspace.yml", err, 1, true)
    end)
  end)

  describe(".env files", function()
    it("understand export, comments and quotes", function()
      local vars, lines = meltano.parse_dotenv(table.concat({
        "# comment",
        "A=plain value # trailing comment",
        "export B='single $NOT # kept'",
        'C="double \\"quoted\\"\\nline"',
        "  D = spaced  ",
        "not a line",
        "E=",
        "1BAD=x",
      }, "\n"))
      assert.are.same({ A = "plain value", B = "single $NOT # kept", C = 'double "quoted"\nline', D = "spaced", E = "" },
        vars)
      assert.are.equal(2, lines.A)
      assert.are.equal(5, lines.D)
    end)
  end)

  describe("a multi-file project", function()
    it("resolves every rule together", function()
      local main = [[
version: 1
default_environment: dev
include_paths:
- environments/*.meltano.yml
- plugins/**.meltano.yml
env:
  WAREHOUSE: wh_${MELTANO_ENVIRONMENT}
plugins:
  extractors:
  - name: tap-base
    settings:
    - {name: start_date, value: '2020-01-01'}
    - {name: api_token, kind: password}
    config:
      api_url: https://api.example.org
      api_token: $API_TOKEN
      streams: {users: {limit: 10}, orders: {limit: 20}}
    select: [users.*, orders.*]
]]
      local dir = project({
        ["meltano.yml"] = main,
        ["environments/dev.meltano.yml"] = [[
environments:
- name: dev
  env:
    API_TOKEN: dev-token
]],
        ["environments/prod.meltano.yml"] = [[
environments:
- name: prod
  env:
    API_TOKEN: prod-token-from-block
  config:
    plugins:
      extractors:
      - name: tap-child
        config:
          streams: {orders: {limit: 500}, users: {}}
        select: [orders.*]
      loaders:
      - name: target-wh
        config: {database: $WAREHOUSE}
]],
        ["plugins/extract.meltano.yml"] = [[
plugins:
  extractors:
  - name: tap-child
    inherit_from: tap-base
    config:
      api_url: https://eu.api.example.org
]],
        ["plugins/load.meltano.yml"] = [[
plugins:
  loaders:
  - name: target-wh
    config:
      database: $WAREHOUSE
      password: ${WH_PASSWORD}
]],
        [".env"] = "WH_PASSWORD=from-dotenv\nTAP_CHILD_START_DATE=2024-06-01\n",
      })
      local s, r = resolve(dir, { environment = "prod", unsafe = true,
        env = { API_TOKEN = "process-token", WH_PASSWORD = "process-password" } })
      assert.are.equal("prod", r.environment)
      local child, wh = s["tap-child"], s["target-wh"]
      assert.are.same({
        api_url = "https://eu.api.example.org",
        api_token = "prod-token-from-block",
        start_date = "2024-06-01",
        ["streams.orders.limit"] = 500,
        ["streams.users"] = {},
        _select = { "orders.*" },
      }, values(child))
      assert.are.equal("base", child.api_url.source)
      assert.are.equal("plugins/extract.meltano.yml:6", child.api_url.origin)
      assert.are.equal("inherited", child.api_token.source)
      assert.is_true(child.api_token.sensitive)
      assert.are.equal("dotenv", child.start_date.source)
      assert.are.equal(".env:2", child.start_date.origin)
      assert.are.equal("environment", child["streams.orders.limit"].source)
      assert.are.equal("environments/prod.meltano.yml:10", child["streams.orders.limit"].origin)
      assert.are.same({ database = "wh_prod", password = "from-dotenv" }, values(wh))
      -- without the environment's env: block, the process environment counts
      s = resolve(dir, { environment = false, unsafe = true, env = { API_TOKEN = "process-token" } })
      assert.are.equal("process-token", s["tap-child"].api_token.value)
      assert.are.equal("environment", wh.database.source)

      s = resolve(dir, { environment = "dev" })
      assert.are.equal("(redacted)", s["tap-base"].api_token.value)
      assert.are.equal("2020-01-01", s["tap-base"].start_date.value)
      assert.are.equal("default", s["tap-base"].start_date.source)
      assert.are.equal("2024-06-01", s["tap-child"].start_date.value)
      assert.are.equal("dotenv", s["tap-child"].start_date.source)
      assert.are.equal("wh_dev", s["target-wh"].database.value)
      assert.are.equal(10, s["tap-child"]["streams.users.limit"].value)
      assert.are.equal("inherited", s["tap-child"]["streams.users.limit"].source)
    end)
  end)
end)
