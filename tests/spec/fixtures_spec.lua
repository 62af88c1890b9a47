-- Real projects: every meltano.yml of the corpus (../shared/fixtures/real) loads and
-- resolves in every environment it defines, and the seed-auth0 example resolves to its
-- expected.tsv through `moonops env show --json`.
local T = require "support.t"
local fs = require "moonops.fs"
local json = require "moonops.json"
local meltano = require "moonops.meltano"

local REAL = T.fixtures .. "/real"
local SEED = T.fixtures .. "/seed-auth0"

-- Directories of the corpus (each holds meltano.yml, sometimes under meltano/).
local function corpus()
  local out = {}
  for _, name in ipairs(assert(fs.list(REAL))) do
    local dir = REAL .. "/" .. name
    if fs.exists(dir .. "/meltano.yml") then
      out[#out + 1] = { name = name, dir = dir }
    elseif fs.exists(dir .. "/meltano/meltano.yml") then
      out[#out + 1] = { name = name, dir = dir .. "/meltano" }
    end
  end
  return out
end

-- Resolve one project in one environment with an empty process environment:
-- plugin name (type-qualified) -> setting name -> setting.
local function settings_of(dir, environment)
  local p = assert(meltano.load(dir, { env = {} }))
  local r = assert(meltano.resolve(p, { environment = environment, env = {} }))
  local out = {}
  for _, pl in ipairs(r.plugins) do
    local s = {}
    for _, x in ipairs(pl.settings) do s[x.name] = x end
    out[pl.type .. "/" .. pl.name] = s
  end
  return out, r, p
end

describe("the real-world corpus", function()
  local projects = corpus()

  it("has all 29 projects", function()
    assert.are.equal(29, #projects)
  end)

  for _, proj in ipairs(projects) do
    it(proj.name .. " resolves in every environment", function()
      local p, err = meltano.load(proj.dir, { env = {} })
      assert.is_not_nil(p, err)
      local envs = { false }
      for _, e in ipairs(p.environments) do envs[#envs + 1] = e end
      local declared = #p.plugins
      for _, e in ipairs(envs) do
        local r, rerr = meltano.resolve(p, { environment = e or nil, env = {} })
        assert.is_not_nil(r, rerr)
        assert.are.equal(declared, #r.plugins)
        for _, pl in ipairs(r.plugins) do
          for _, s in ipairs(pl.settings) do
            assert.is_string(s.name)
            assert.is_string(s.source)
            assert.is_string(s.origin)
            if s.redacted then assert.are.equal("(redacted)", s.value) end
          end
        end
      end
      -- and the default environment is one of them (or none)
      local active = meltano.active_environment(p, { env = {} })
      assert.is_true(active == nil or p.environment_index[active] ~= nil)
    end)
  end

  it("merges tap-postgres, declared twice in one file, and says so", function()
    local s, _, p = settings_of(REAL .. "/MTES-MCT__trackdechets-meltano-workspace", "prod")
    assert.is_not_nil(s["extractors/tap-postgres"])
    local dup = false
    for _, w in ipairs(p.warnings) do dup = dup or w:find("tap-postgres is declared twice", 1, true) ~= nil end
    assert.is_true(dup)
    -- prod overrides an inheriting extractor; the `$default` in stream names stays literal
    local td = s["extractors/tap-postgres--td-database"]
    assert.is_true(td.ssl.value)
    assert.are.equal("environment", td.ssl.source)
    assert.are.equal("default$default-Company.*", td._select.value[1])
    -- a three-level inherit_from chain: target-postgres -> --dwh -> --dwh-trackdechets
    local dwh = s["loaders/target-postgres--dwh-trackdechets"]
    assert.are.equal("upsert", dwh.load_method.value)
    assert.are.equal("inherited", dwh.load_method.source)
    assert.is_true(dwh.ssl.value) -- prod's override of the intermediate parent flows down
  end)

  it("keeps dbt as a transformer and as a file", function()
    local s = settings_of(REAL .. "/Darren-DSAID__meltano-demo", nil)
    assert.is_not_nil(s["transformers/dbt"])
    assert.is_not_nil(s["files/dbt"])
  end)

  it("overrides an extra (select) per environment", function()
    local s = settings_of(REAL .. "/yugasun__etl-starter-kit", "dev")
    local sel = s["extractors/tap-github"]._select
    assert.are.equal("environment", sel.source)
    assert.are.same({ "commits.url", "commits.sha", "commits.commit_timestamp" }, sel.value)
    s = settings_of(REAL .. "/yugasun__etl-starter-kit", "prod")
    assert.are_not.equal("environment", (s["extractors/tap-github"]._select or {}).source)
  end)

  it("merges an inherited nested mapping leaf by leaf", function()
    local s = settings_of(REAL .. "/smitimus__data-lab", "dev")
    local g = s["loaders/target-postgres-grocery"]
    assert.are.equal("raw_fuel", g["schema_mapping.fuel.target_schema"].value)
    assert.are.equal("inherited", g["schema_mapping.fuel.target_schema"].source)
    assert.are.equal("raw_timeclock", g["schema_mapping.timeclock.target_schema"].value)
    assert.are.equal("base", g["schema_mapping.timeclock.target_schema"].source)
    assert.are.equal("grocery", g.dbname.value)
    assert.is_true(g.password.redacted)
  end)

  it("reads an unquoted timestamp as the string it is in YAML 1.2", function()
    local s = settings_of(REAL .. "/Bartman0__hubspot-twinfield", "dev")
    local found
    for _, settings in pairs(s) do
      if settings.start_date then found = settings.start_date.value end
    end
    assert.are.equal("2017-01-01T00:00:00Z", found)
  end)
end)

describe("the seed-auth0 example", function()
  local text = assert(T.read(SEED .. "/meltano.yml"))
  local lines = {}
  for l in (text .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end

  -- expected.tsv: environment, setting, value, source ("environment <name>" or "base")
  local expected = {}
  for line in assert(T.read(SEED .. "/expected.tsv")):gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" then
      local env, setting, value, source = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t([^\t]+)$")
      assert(env, "bad line in expected.tsv: " .. line)
      expected[env] = expected[env] or {}
      expected[env][#expected[env] + 1] = { setting = setting, value = value, source = source }
    end
  end

  for _, env in ipairs({ "dev", "staging", "prod" }) do
    it("resolves " .. env .. " to expected.tsv through env show --json", function()
      assert.is_not_nil(expected[env])
      local r = T.moonops({ "env", "show", "--json", "--project", SEED, "--environment", env },
        { env = { MELTANO_ENVIRONMENT = false, TAP_AUTH0_CLIENT_ID = false, TAP_AUTH0_DOMAIN = false } })
      assert.are.equal(0, r.code, r.stderr)
      local doc = assert(json.decode(r.stdout))
      assert.are.equal(env, doc.environment)
      assert.are.equal(1, #doc.plugins)
      local plugin = doc.plugins[1]
      assert.are.equal("extractors", plugin.type)
      assert.are.equal("tap-auth0", plugin.name)
      local by_name = {}
      for _, s in ipairs(plugin.settings) do by_name[s.name] = s end
      assert.are.equal(#expected[env], #plugin.settings)
      for _, e in ipairs(expected[env]) do
        local s = by_name[e.setting]
        assert.is_not_nil(s, e.setting)
        assert.are.equal(e.value, s.value)
        local want_source = e.source:match("^environment ") and "environment" or e.source
        assert.are.equal(want_source, s.source)
        if want_source == "environment" then assert.are.equal("environment " .. env, e.source) end
        assert.is_false(s.redacted)
        -- the origin points at the line that holds the value
        local n = tonumber(s.origin:match("^meltano%.yml:(%d+)$"))
        assert.is_not_nil(n, s.origin)
        assert.matches(e.setting .. ": " .. e.value, lines[n], 1, true)
      end
    end)
  end

  it("uses default_environment (dev) when nothing else is given", function()
    local r = T.moonops({ "env", "show", "--json" }, { cwd = SEED, env = { MELTANO_ENVIRONMENT = false } })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("dev", json.decode(r.stdout).environment)
  end)
end)
