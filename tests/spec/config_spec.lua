local config = require "moonops.config"
local yaml = require "moonops.yaml"
local json = require "moonops.json"
local T = require "support.t"

local function load(text, name)
  return assert(yaml.load(text, name))
end

-- A canonical text for comparing values: sorted JSON.
local function canon(v)
  return json.encode(v)
end

describe("moonops.config", function()
  describe("merge", function()
    it("merges nested mappings leaf by leaf", function()
      local base = load("a:\n  b:\n    c: 1\n    d: 2\n  e: 3\n")
      local overlay = load("a:\n  b:\n    d: 20\n    x: 9\n")
      assert.same({ a = { b = { c = 1, d = 20, x = 9 }, e = 3 } }, config.merge(base, overlay))
    end)

    it("replaces lists whole", function()
      local base = load("files: [a, b, c]\nselect: [x]\n")
      local overlay = load("files: [z]\n")
      local m = config.merge(base, overlay)
      assert.same({ files = { "z" }, select = { "x" } }, m)
      assert.is_true(yaml.is_array(m.files))
      -- plain Lua lists count as lists too
      assert.same({ l = { 3 } }, config.merge({ l = { 1, 2 } }, { l = { 3 } }))
    end)

    it("lets null fall through to the layer below", function()
      local m = config.merge(load("a: 1\nb: {c: 2}\n"), load("a: ~\nb: null\nn: null\n"))
      assert.same({ a = 1, b = { c = 2 }, n = yaml.null }, m)
    end)

    it("hides the layer below with an empty mapping", function()
      local m = config.merge(load("a: {b: 1, c: 2}\nk: v\n"), load("a: {}\n"))
      assert.same({ a = {}, k = "v" }, m)
      assert.equal("{}", canon(m.a))
    end)

    it("replaces a scalar with a mapping and a mapping with a scalar or list", function()
      assert.same({ a = { b = 1 } }, config.merge({ a = "x" }, { a = { b = 1 } }))
      assert.same({ a = "x" }, config.merge({ a = { b = 1 } }, { a = "x" }))
      assert.same({ a = { 1, 2 } }, config.merge({ a = { b = 1 } }, { a = { 1, 2 } }))
    end)

    it("leaves its inputs untouched and shares nothing with them", function()
      local base = load("a:\n  b: [1, 2]\n  c: {d: 1}\n")
      local overlay = load("a:\n  e: 5\n")
      local before = canon(base) .. canon(overlay)
      local m = config.merge(base, overlay)
      m.a.b[1] = 100
      m.a.c.d = 100
      m.a.e = 100
      assert.equal(before, canon(base) .. canon(overlay))
      assert.are_not.equal(base.a.c, m.a.c)
      local only = config.merge(base, nil)
      assert.same(base, only)
      assert.are_not.equal(base, only)
    end)

    it("keeps key order: the base's keys, then the overlay's new ones", function()
      local m = config.merge(load("z: 1\ny: 2\nx: 3\n"), load("w: 0\ny: 20\n"))
      assert.same({ "z", "y", "x", "w" }, yaml.keys(m))
    end)

    it("keeps yaml provenance on parts that come from one layer", function()
      local base = load("a:\n  b:\n    c: 1\n", "base.yml")
      local m = config.merge(base, load("x: 1\n"))
      assert.equal(3, yaml.line(m.a.b, "c"))
      assert.equal("base.yml", yaml.source(m.a.b))
    end)

    it("handles non-table values", function()
      assert.equal(2, config.merge(1, 2))
      assert.equal(1, config.merge(1, yaml.null))
      assert.equal(1, config.merge(1, nil))
      assert.same({ a = 1 }, config.merge(5, { a = 1 }))
      assert.is_nil(config.merge(nil, nil))
    end)

    it("raises for a table that contains itself", function()
      local t = {}
      t.t = t
      assert.has_error(function() config.merge({}, t) end)
    end)
  end)

  describe("flatten and nest", function()
    it("flattens to dotted names, with arrays and empty mappings as leaves", function()
      local v = load("a:\n  b:\n    c: 1\n  l: [1, {x: 2}]\n  e: {}\nn: null\ns: str\n")
      local flat, names = config.flatten(v)
      assert.same({ ["a.b.c"] = 1, ["a.l"] = { 1, { x = 2 } }, ["a.e"] = {}, n = yaml.null, s = "str" }, flat)
      assert.same({ "a.b.c", "a.l", "a.e", "n", "s" }, names)
      assert.is_true(yaml.is_array(flat["a.l"]))
    end)

    it("writes a literal dot in a key as \\. and a backslash as \\\\", function()
      local flat = config.flatten({ ["airbyte_config.api_key"] = "k", m = { ["x.y"] = { z = 1 } }, ["a\\b"] = 2 })
      assert.same({ ["airbyte_config\\.api_key"] = "k", ["m.x\\.y.z"] = 1, ["a\\\\b"] = 2 }, flat)
    end)

    it("nests back to the same value", function()
      local v = load("a:\n  b: {c: 1, 'd.e': 2}\n  l: [1, 2]\n  e: {}\nx\\y: 3\n")
      local flat = config.flatten(v)
      local back = assert(config.nest(flat))
      assert.same(v, back)
      assert.same({}, assert(config.nest({})))
      assert.same({ a = { b = 1, c = { d = 2 } } }, assert(config.nest({ ["a.b"] = 1, ["a.c.d"] = 2 })))
    end)

    it("round-trips empty keys", function()
      local v = { [""] = { [""] = 1, x = { [""] = 2 } } }
      local flat = config.flatten(v)
      assert.same({ ["."] = 1, [".x."] = 2 }, flat)
      assert.same(v, assert(config.nest(flat)))
    end)

    it("fills an empty mapping leaf without touching the input", function()
      local empty = {}
      local n = assert(config.nest({ a = empty, ["a.b"] = 1 }))
      assert.same({ a = { b = 1 } }, n)
      assert.is_nil(next(empty))
    end)

    it("nests only the names given, in their order", function()
      local flat = { ["a.b"] = 1, ["a.c\\.d"] = 2, x = 3, ["y\\\\z"] = 4 }
      assert.same({ a = { b = 1, ["c.d"] = 2 } }, assert(config.nest(flat, { "a.b", "a.c\\.d" })))
      assert.same({ x = 3, ["y\\z"] = 4, a = { b = 1, ["c.d"] = 2 } },
        assert(config.nest(flat, { "x", "y\\\\z", "a.c\\.d", "a.b" })))
      local _, err = config.nest({ a = 1, ["a.b"] = 2 }, { "a.b", "a" })
      assert.equal('config.nest: "a" is given twice (as a value and as a mapping)', err)
      assert.has_error(function() config.nest(flat, "a.b") end)
      assert.has_error(function() config.nest(flat, { 1 }) end)
    end)

    it("reports names that conflict", function()
      local n, err = config.nest({ a = 1, ["a.b"] = 2 })
      assert.is_nil(n)
      assert.equal('config.nest: "a.b" goes inside a value that is not a mapping', err)
    end)

    it("raises for a non-table", function()
      assert.has_error(function() config.flatten("x") end)
      assert.has_error(function() config.nest(nil) end)
      assert.has_error(function() config.nest({ [1] = "x" }) end)
    end)
  end)

  describe("resolve", function()
    local base_text = [[
plugins:
  extractors:
  - name: tap-auth0
    config:
      domain: matatika-staging.eu.auth0.com
      client_id: base-id
      stream_maps:
        users:
          email: __NULL__
          name: keep
      select_list: [a, b]
      nothing: null
      hidden:
        deep: 1
]]
    local env_text = [[
environments:
- name: prod
  config:
    plugins:
      extractors:
      - name: tap-auth0
        config:
          client_id: u4kcVHKUD9lkbUbXA3eXCt88scStaqHM
          domain: matatika.eu.auth0.com
          stream_maps:
            users:
              email: hashed
          select_list: [c]
          nothing: null
          hidden: {}
]]

    local function layers()
      local base = load(base_text, "meltano.yml").plugins.extractors[1].config
      local env = load(env_text, "environments.yml").environments[1].config.plugins.extractors[1].config
      return {
        { name = "env", value = { client_id = "from-env" } },
        { name = "environment", value = env, file = "meltano.yml" },
        { name = "base", value = base, file = "meltano.yml" },
      }
    end

    it("gives the merged value and, for each flattened leaf, its layer and file:line", function()
      local value, sources = config.resolve(layers())
      assert.same({
        domain = "matatika.eu.auth0.com",
        client_id = "from-env",
        stream_maps = { users = { email = "hashed", name = "keep" } },
        select_list = { "c" },
        nothing = yaml.null,
        hidden = {},
      }, value)
      assert.same({ layer = "environment", origin = "meltano.yml:9" }, sources.domain)
      assert.same({ layer = "env" }, sources.client_id)
      assert.same({ layer = "environment", origin = "meltano.yml:12" }, sources["stream_maps.users.email"])
      assert.same({ layer = "base", origin = "meltano.yml:10" }, sources["stream_maps.users.name"])
      -- a list is one leaf, with the line of its key
      assert.same({ layer = "environment", origin = "meltano.yml:13" }, sources.select_list)
      assert.same({ layer = "environment", origin = "meltano.yml:14" }, sources.nothing)
      assert.same({ layer = "environment", origin = "meltano.yml:15" }, sources.hidden)
      assert.is_nil(sources["hidden.deep"])
      local n = 0
      for _ in pairs(sources) do n = n + 1 end
      assert.equal(7, n)
    end)

    it("reproduces the seed-auth0 example", function()
      local doc = assert(yaml.load_file(T.fixtures .. "/seed-auth0/meltano.yml"))
      local base = doc.plugins.extractors[1].config
      local function env_config(name)
        for _, e in ipairs(doc.environments) do
          if e.name == name then return e.config.plugins.extractors[1].config end
        end
      end
      local file = T.fixtures .. "/seed-auth0/meltano.yml"
      local v, src = config.resolve({
        { name = "environment", value = env_config("dev"), file = file },
        { name = "base", value = base, file = file },
      })
      assert.equal("39Pu9tTomnTv594VAFYnmRvkEpSlI7a6", v.client_id)
      assert.equal("matatika-staging.eu.auth0.com", v.domain)
      assert.equal("base", src.domain.layer)
      assert.equal(file .. ":31", src.domain.origin)
      v, src = config.resolve({
        { name = "environment", value = env_config("prod"), file = file },
        { name = "base", value = base, file = file },
      })
      assert.equal("u4kcVHKUD9lkbUbXA3eXCt88scStaqHM", v.client_id)
      assert.equal("matatika.eu.auth0.com", v.domain)
      assert.same({ layer = "environment", origin = file .. ":26" }, src.domain)
    end)

    it("lets null fall through and names the layer that held the value", function()
      local _, src = config.resolve({
        { name = "high", value = load("a: ~\n", "h.yml") },
        { name = "low", value = load("\na: 1\n", "l.yml") },
      })
      assert.same({ layer = "low", origin = "l.yml:2" }, src.a)
    end)

    it("skips layers without a value and gives an empty mapping when there is none", function()
      local v, src = config.resolve({ { name = "x" }, { name = "y", value = yaml.null } })
      assert.same({}, v)
      assert.same({}, src)
      v = config.resolve({ { name = "x" }, { name = "y", value = { a = 1 } } })
      assert.same({ a = 1 }, v)
    end)

    it("is merge applied from the lowest layer up", function()
      local a, b, c = load("x: {p: 1, q: 2}\nl: [1]\n"), load("x: {q: 3}\nz: ~\n"), load("x: {r: 4}\nl: [2]\n")
      local v = config.resolve({ { name = "a", value = c }, { name = "b", value = b }, { name = "c", value = a } })
      assert.same(config.merge(config.merge(a, b), c), v)
    end)

    it("raises for malformed layers", function()
      assert.has_error(function() config.resolve({ "x" }) end)
      assert.has_error(function() config.resolve({ { name = 5, value = {} } }) end)
      assert.has_error(function() config.resolve({ { file = {}, value = {} } }) end)
      assert.has_error(function() config.resolve(nil) end)
    end)

    -- resolve_leaves must give exactly what flatten(resolve(layers)) gives, sorted by name
    local function same_as_resolve(ls)
      local value, sources = config.resolve(ls)
      local flat, expected = config.flatten(value)
      table.sort(expected)
      local names, values, from, lines = config.resolve_leaves(ls)
      assert.same(expected, names)
      for i, name in ipairs(names) do
        assert.equal(canon(flat[name]), canon(values[i]), name)
        local layer = ls[from[i]]
        assert.equal(sources[name].layer, layer.name, name)
        -- resolve's origin, from the layer's file (or the YAML's name) and the line
        local file = layer.file or (type(layer.value) == "table" and yaml.source(layer.value))
        local origin = file
        if lines[i] > 0 then origin = file and (file .. ":" .. lines[i]) or ("line " .. lines[i]) end
        assert.equal(sources[name].origin, origin, name)
      end
      return names, values, from, lines
    end

    it("resolve_leaves gives the flattened leaves of resolve, sorted, with layer and line", function()
      local ls = layers()
      local names, _, from, lines = same_as_resolve(ls)
      assert.same({ "client_id", "domain", "hidden", "nothing", "select_list", "stream_maps.users.email",
        "stream_maps.users.name" }, names)
      assert.same({ 1, 2, 2, 2, 2, 2, 3 }, from)
      assert.same({ 0, 9, 15, 14, 13, 12, 10 }, lines) -- the env layer was built in Lua: no line
    end)

    it("resolve_leaves agrees with resolve on generated layers", function()
      local keys = { "a", "b", "c.d", "e\\f", "1" }
      local seed = 7
      local function rand(n) -- a small deterministic generator, independent of math.random
        seed = (seed * 1103515245 + 12345) % 2147483648
        return seed % n + 1
      end
      local function gen(depth)
        local t = {}
        for _ = 1, rand(4) - 1 do
          local k, kind = keys[rand(#keys)], rand(depth < 3 and 7 or 5)
          if kind == 1 then t[k] = rand(100)
          elseif kind == 2 then t[k] = "s" .. rand(9)
          elseif kind == 3 then t[k] = yaml.null
          elseif kind == 4 then t[k] = json.array({ rand(9), "x" })
          elseif kind == 5 then t[k] = {}
          else t[k] = gen(depth + 1) end
        end
        return t
      end
      for case = 1, 300 do
        local ls = {}
        for i = 1, rand(4) do
          local v = gen(1)
          -- half of the layers come from YAML text, so their leaves have lines
          if rand(2) == 1 then v = load(yaml.dump(v), "l" .. i .. ".yml") end
          ls[i] = { name = "layer" .. i, value = v, file = rand(3) == 1 and ("f" .. i .. ".yml") or nil }
        end
        local ok, err = pcall(same_as_resolve, ls)
        if not ok then error("case " .. case .. ": " .. tostring(err), 0) end
      end
    end)

    it("resolve_leaves hands back the layers' own lists, and grows past many leaves", function()
      local list = json.array({ 1, 2 })
      local _, values = config.resolve_leaves({ { name = "x", value = { l = list } } })
      assert.equal(list, values[1])
      local big = {}
      for i = 1, 1000 do big[string.format("k%04d", i)] = { v = i } end
      local names, vals = same_as_resolve({ { name = "a", value = big }, { name = "b", value = { k0001 = { w = 0 } } } })
      assert.equal(1001, #names)
      assert.equal("k0001.v", names[1])
      assert.equal(1, vals[1])
      assert.equal("k0001.w", names[2])
    end)

    it("resolve_leaves gives nothing for no mapping, and raises for malformed layers", function()
      assert.same({}, (config.resolve_leaves({ { name = "x" }, { name = "y", value = yaml.null } })))
      assert.same({}, (config.resolve_leaves({ { name = "x", value = {} }, { name = "y", value = { a = 1 } } })))
      assert.has_error(function() config.resolve_leaves({ "x" }) end,
        "bad argument #1 to 'resolve_leaves' (layer 1 is not a table)")
      assert.has_error(function() config.resolve_leaves(nil) end)
      local many = {}
      for i = 1, 65 do many[i] = { value = {} } end
      assert.has_error(function() config.resolve_leaves(many) end,
        "bad argument #1 to 'resolve_leaves' (too many layers (at most 64))")
    end)
  end)

  describe("expand", function()
    local env = { HOME = "/home/me", USER = "me", EMPTY = "", NUM = 42, lower_case = "lc" }

    it("replaces $VAR and ${VAR}, also mid-string", function()
      assert.equal("/home/me/x", config.expand("$HOME/x", env))
      assert.equal("pre-me-post", config.expand("pre-${USER}-post", env))
      assert.equal("me_suffix", config.expand("${USER}_suffix", env))
      assert.equal("", config.expand("$USER_suffix", env)) -- the name runs to USER_suffix
      assert.equal("42/lc", config.expand("$NUM/$lower_case", env))
      assert.equal("[]", config.expand("[$EMPTY]", env))
    end)

    it("keeps \\$ as a literal $", function()
      assert.equal("cost: $HOME", config.expand("cost: \\$HOME", env))
      assert.equal("a\\b $", config.expand("a\\b \\$", env))
    end)

    it("leaves a $ that does not start a name alone", function()
      assert.equal("$.items[*]", config.expand("$.items[*]", env))
      assert.equal("$1 $ $$ ${} ${ HOME} ${HOME", config.expand("$1 $ $$ ${} ${ HOME} ${HOME", env))
    end)

    it("makes a missing variable empty, or an error naming it in strict mode", function()
      assert.equal("a--b", config.expand("a-$NOPE-b", env))
      local v, err = config.expand("a-${NOPE}-b", env, { strict = true })
      assert.is_nil(v)
      assert.equal("variable NOPE is not set", err)
      v, err = config.expand({ x = { y = "$MISSING" } }, env, { strict = true })
      assert.is_nil(v)
      assert.equal("variable MISSING is not set (in x.y)", err)
      assert.equal("/home/me", config.expand("$HOME", env, { strict = true }))
    end)

    it("expands strings in nested tables and leaves other values and keys alone", function()
      local input = load("a:\n  $HOME: ${USER}\n  n: 5\n  b: true\n  z: ~\n  l: [$HOME, 1]\n", "e.yml")
      local before = canon(input)
      local out = config.expand(input, env)
      assert.same({ a = { ["$HOME"] = "me", n = 5, b = true, z = yaml.null, l = { "/home/me", 1 } } }, out)
      assert.equal(before, canon(input))
      assert.are_not.equal(input.a, out.a)
      assert.is_true(yaml.is_array(out.a.l))
      assert.same(yaml.keys(input.a), yaml.keys(out.a))
      assert.equal(2, yaml.line(out.a, "$HOME"))
      assert.equal(5, config.expand(5, env))
      assert.equal(yaml.null, config.expand(yaml.null, env))
    end)

    it("reads the environment through __index", function()
      local lazy = setmetatable({}, { __index = function(_, k) return k == "X" and "lazy" or nil end })
      assert.equal("lazy!", config.expand("$X!", lazy))
    end)

    it("raises for a non-table environment", function()
      assert.has_error(function() config.expand("x", nil) end)
      assert.has_error(function() config.expand("x", {}, "strict") end)
    end)
  end)
end)
