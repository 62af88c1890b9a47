local yaml = require "moonops.yaml"
local json = require "moonops.json"
local engine = require "moonops.engine"
local T = require "support.t"

-- Byte offset where a and b first differ (nil when equal).
local function first_diff(a, b)
  for i = 1, math.max(#a, #b) do
    if a:byte(i) ~= b:byte(i) then return i end
  end
end

-- Assert that `after` is `before` with exactly `old` (at its only occurrence) replaced by `new`.
local function assert_spliced(before, after, old, new)
  local s, e = before:find(old, 1, true)
  assert(s, "test bug: " .. old .. " not in the text")
  assert.is_nil(before:find(old, e + 1, true), "test bug: " .. old .. " is not unique")
  assert.equal(before:sub(1, s - 1) .. new .. before:sub(e + 1), after)
end

describe("moonops.yaml", function()
  after_each(T.cleanup)

  describe("load: the YAML 1.2 core schema", function()
    local cases = {
      -- plain scalar, expected value, expected math.type or type
      { "~", yaml.null }, { "null", yaml.null }, { "Null", yaml.null }, { "NULL", yaml.null },
      { "true", true }, { "True", true }, { "TRUE", true }, { "false", false }, { "FALSE", false },
      { "0", 0, "integer" }, { "-17", -17, "integer" }, { "+5", 5, "integer" }, { "012", 12, "integer" },
      { "0o17", 15, "integer" }, { "0x1F", 31, "integer" }, { "0xff", 255, "integer" },
      { "9223372036854775807", math.maxinteger, "integer" },
      { "-9223372036854775808", math.mininteger, "integer" },
      { "1e3", 1000.0, "float" }, { ".5", 0.5, "float" }, { "-1.25", -1.25, "float" }, { "1.", 1.0, "float" },
      { "2.5E-3", 0.0025, "float" }, { ".inf", math.huge, "float" }, { "-.Inf", -math.huge, "float" },
      { "+.INF", math.huge, "float" },
      -- YAML 1.1 words and other near misses stay strings
      { "yes", "yes" }, { "No", "No" }, { "on", "on" }, { "off", "off" }, { "y", "y" },
      { "2023-02-05", "2023-02-05" }, { "2017-01-01T00:00:00Z", "2017-01-01T00:00:00Z" },
      { "1_000", "1_000" }, { "0b101", "0b101" }, { "0o8", "0o8" }, { "0x", "0x" }, { "-0x1F", "-0x1F" },
      { "1:30", "1:30" }, { ".", "." }, { "-x", "-x" }, { "1e", "1e" }, { "e3", "e3" }, { "nul", "nul" },
      { "truex", "truex" }, { "tRUE", "tRUE" }, { "+.nan", "+.nan" },
      { "9223372036854775808", "9223372036854775808" }, -- too big for an integer: kept exactly
      { "12345678901234567890123", "12345678901234567890123" },
    }
    for _, c in ipairs(cases) do
      it("reads plain " .. c[1], function()
        local v = assert(yaml.load("v: " .. c[1] .. "\n")).v
        assert.equal(c[2], v)
        if c[3] then assert.equal(c[3], math.type(v)) end
        if type(c[2]) == "string" then assert.equal("string", type(v)) end
      end)
    end

    it("reads .nan as NaN", function()
      local v = assert(yaml.load("a: .nan\nb: .NaN\nc: .NAN"))
      assert.is_true(v.a ~= v.a and v.b ~= v.b and v.c ~= v.c)
    end)

    it("keeps every quoted or block scalar a string", function()
      local v = assert(yaml.load([[
a: "true"
b: '123'
c: "null"
d: ''
e: |
  42
f: >-
  1e3
]]))
      assert.same({ a = "true", b = "123", c = "null", d = "", e = "42\n", f = "1e3" }, v)
    end)

    it("makes an empty value null inside containers and an empty document null", function()
      local v = assert(yaml.load("a:\nb: [~, ]\n"))
      assert.equal(yaml.null, v.a)
      assert.equal(yaml.null, v.b[1])
      assert.equal(yaml.null, assert(yaml.load("")))
      assert.equal(yaml.null, assert(yaml.load("# only a comment\n")))
      assert.equal(yaml.null, assert(yaml.load("---\n")))
    end)

    it("honours the core tags and ignores others", function()
      local v = assert(yaml.load([[
a: !!str 123
b: !!int "42"
c: !!float 1
d: !!bool "true"
e: !!null ""
f: ! 12
g: !custom 7
]]))
      assert.equal("123", v.a)
      assert.equal(42, v.b)
      assert.equal("float", math.type(v.c))
      assert.is_true(v.d)
      assert.equal(yaml.null, v.e)
      assert.equal("12", v.f)
      assert.equal(7, v.g)
      local _, err = yaml.load("a: !!int x1\n", "t.yml")
      assert.equal("t.yml:1:4: 'x1' is not a valid !!int", err)
    end)

    it("gives mapping keys as strings, whatever their scalar type", function()
      local v = assert(yaml.load("1: a\ntrue: b\n~: c\n0x10: d\n'q': e\n"))
      assert.same({ ["1"] = "a", ["true"] = "b", ["~"] = "c", ["0x10"] = "d", q = "e" }, v)
    end)

    it("has a null sentinel that is json.null and nothing else", function()
      assert.equal("userdata", type(yaml.null))
      assert.equal(json.null, yaml.null)
      assert.is_true(yaml.null ~= nil and yaml.null ~= false and yaml.null ~= 0 and yaml.null ~= "")
      assert.equal('{"a":null}', json.encode(assert(yaml.load("a: ~"))))
    end)
  end)

  describe("load: structure", function()
    it("marks sequences as arrays, so [] and {} stay apart", function()
      local v = assert(yaml.load("a: []\nb: {}\nc: [1, 2]\nd:\n  - x\n"))
      assert.equal(engine.array_mt, getmetatable(v.a))
      assert.equal(yaml.array_mt, engine.array_mt)
      assert.is_true(yaml.is_array(v.a))
      assert.is_false(yaml.is_array(v.b))
      assert.is_nil(getmetatable(v.b))
      assert.is_true(yaml.is_array(v.c) and yaml.is_array(v.d))
      assert.is_false(yaml.is_array(v))
      assert.is_false(yaml.is_array("x"))
      assert.equal('{"a":[],"b":{},"c":[1,2],"d":["x"]}', json.encode(v))
    end)

    it("skips a byte order mark and reads --- starts, comments and non-ASCII text", function()
      local v = assert(yaml.load("\239\187\191---\n# café ünïcode\nname: Zoë # ok\nlist: [ä, 'ö']\n", "bom.yml"))
      assert.same({ name = "Zoë", list = { "ä", "ö" } }, v)
      assert.equal(3, yaml.line(v, "name"))
    end)

    it("reads CRLF line endings", function()
      local v = assert(yaml.load("a: 1\r\nb:\r\n  c: x\r\n"))
      assert.same({ a = 1, b = { c = "x" } }, v)
      assert.equal(3, yaml.line(v.b, "c"))
    end)

    it("loads every real meltano.yml of the fixtures", function()
      local files = {}
      local p = assert(io.popen("ls " .. T.fixtures .. "/real/*/meltano.yml " .. T.fixtures .. "/seed-auth0/meltano.yml"))
      for f in p:lines() do files[#files + 1] = f end
      p:close()
      assert.is_true(#files >= 30)
      for _, f in ipairs(files) do
        local v, err = yaml.load_file(f)
        assert(v, err)
        assert.equal("table", type(v), f)
        assert.equal(f, yaml.source(v))
        -- and it survives a dump and a reload unchanged
        local again = assert(yaml.load(yaml.dump(v), "dump of " .. f))
        assert.equal(json.encode(v), json.encode(again))
      end
    end)

    it("reads the real quirks as a 1.2 reader must", function()
      local v = assert(yaml.load_file(T.fixtures .. "/real/yugasun__etl-starter-kit/meltano.yml"))
      local tap
      for _, p in ipairs(v.plugins.extractors) do
        if p.name == "tap-github" then tap = p end
      end
      assert.equal("2023-02-05", tap.config.start_date) -- an unquoted date stays a string
      local bom = assert(yaml.load_file(T.fixtures .. "/real/Anas-elkhabbaz__BigDataProject/meltano.yml"))
      assert.equal("table", type(bom.plugins))
      assert.is_nil(rawget(bom, "\239\187\191plugins"))
    end)
  end)

  describe("provenance", function()
    local text = [[
# comment
version: 1
plugins:
  extractors:
  - name: tap-a
    config:
      z: 1
      a: 2
  - name: tap-b
environments: [dev,
  prod]
]]

    it("keeps key order, the line of every key and item, node positions and the source", function()
      local v = assert(yaml.load(text, "meltano.yml"))
      assert.same({ "version", "plugins", "environments" }, yaml.keys(v))
      assert.same({ "z", "a" }, yaml.keys(v.plugins.extractors[1].config))
      assert.equal(2, yaml.line(v, "version"))
      assert.equal(3, yaml.line(v, "plugins"))
      assert.equal(7, yaml.line(v.plugins.extractors[1].config, "z"))
      assert.equal(5, yaml.line(v.plugins.extractors, 1))
      assert.equal(9, yaml.line(v.plugins.extractors, 2))
      assert.equal(11, yaml.line(v.environments, 2))
      assert.is_nil(yaml.line(v, "nope"))
      assert.is_nil(yaml.line(v.plugins.extractors, 3))
      assert.is_nil(yaml.line(v, 1))
      local line, col = yaml.pos(v.plugins.extractors[1])
      assert.equal(5, line)
      assert.equal(5, col)
      assert.equal("meltano.yml", yaml.source(v.plugins))
      assert.equal("<string>", yaml.source(assert(yaml.load("a: {}")).a))
    end)

    it("is invisible: no extra keys and no metatable on mappings", function()
      local v = assert(yaml.load(text))
      local n = 0
      for _ in pairs(v) do n = n + 1 end
      assert.equal(3, n)
      assert.is_nil(getmetatable(v))
    end)

    it("answers nil for tables it did not load", function()
      local t = { b = 1, a = 2, [3] = "x" }
      assert.is_nil(yaml.line(t, "a"))
      assert.is_nil(yaml.pos(t))
      assert.is_nil(yaml.source(t))
      assert.same({ 3, "a", "b" }, yaml.keys(t)) -- unknown order: numbers, then sorted strings
    end)

    it("lists keys added after loading after the loaded ones, and drops removed keys", function()
      local v = assert(yaml.load("b: 1\na: 2\nc: 3\n"))
      v.c = nil
      v.zz, v.aa = 1, 2
      assert.same({ "b", "a", "aa", "zz" }, yaml.keys(v))
    end)

    it("finds lines in large mappings", function()
      local lines = {}
      for i = 1, 500 do lines[#lines + 1] = ("k%d: %d"):format(i, i) end
      local v = assert(yaml.load(table.concat(lines, "\n")))
      for i = 1, 500 do assert.equal(i, yaml.line(v, "k" .. i)) end
      assert.equal(500, #yaml.keys(v))
    end)

    it("raises for a non-table", function()
      assert.has_error(function() yaml.keys("x") end)
      assert.has_error(function() yaml.line(nil, "a") end)
    end)

    it("keeps order and lines in long nested mappings and sequences", function()
      -- long enough that the loader moves entries into their tables in several batches
      local lines = { "top:" }
      for i = 1, 700 do lines[#lines + 1] = ("  k%d: {n: %d, l: [%d]}"):format(i, i, i) end
      lines[#lines + 1] = "list:"
      for i = 1, 900 do lines[#lines + 1] = ("- {i: %d}"):format(i) end
      lines[#lines + 1] = "after: 1"
      local v = assert(yaml.load(table.concat(lines, "\n")))
      local keys = yaml.keys(v.top)
      assert.equal(700, #keys)
      for i = 1, 700 do
        assert.equal("k" .. i, keys[i])
        assert.equal(i + 1, yaml.line(v.top, "k" .. i))
        assert.same({ n = i, l = { i } }, v.top["k" .. i])
      end
      assert.equal(900, #v.list)
      for i = 1, 900 do
        assert.equal(i, v.list[i].i)
        assert.equal(702 + i, yaml.line(v.list, i))
      end
      assert.same({ "top", "list", "after" }, yaml.keys(v))
      assert.equal(1603, yaml.line(v, "after"))
    end)

    it("finds a duplicate key far into a long mapping", function()
      local lines = {}
      for i = 1, 600 do lines[#lines + 1] = ("k%d: %d"):format(i, i) end
      lines[#lines + 1] = "  # a comment"
      lines[#lines + 1] = "k300: again"
      local v, err = yaml.load(table.concat(lines, "\n"), "big.yml")
      assert.is_nil(v)
      assert.equal('big.yml:602:1: duplicate key "k300" (first defined on line 300)', err)
    end)
  end)

  describe("anchors, aliases and merge keys", function()
    it("copies an aliased value, so changing one copy leaves the other", function()
      local v = assert(yaml.load("base: &b {x: 1, l: [1]}\nother: *b\ns: &s str\nt: *s\n"))
      assert.same(v.base, v.other)
      assert.are_not.equal(v.base, v.other)
      v.other.x = 2
      v.other.l[1] = 9
      assert.equal(1, v.base.x)
      assert.equal(1, v.base.l[1])
      assert.equal("str", v.t)
      assert.is_true(yaml.is_array(v.other.l))
      assert.equal(1, yaml.line(v.other, "x")) -- the copy points at the anchored text
    end)

    it("merges one mapping or a list of them, explicit keys winning", function()
      local v = assert(yaml.load([[
defaults: &d
  retries: 3
  timeout: 10
  nested: {a: 1}
fast: &f
  timeout: 1
  mode: fast
job:
  <<: [*f, *d]
  retries: 5
one:
  <<: *d
]], "m.yml"))
      assert.same({ retries = 5, timeout = 1, mode = "fast", nested = { a = 1 } }, v.job)
      assert.same({ retries = 3, timeout = 10, nested = { a = 1 } }, v.one)
      assert.is_nil(rawget(v.job, "<<"))
      assert.same({ "retries", "timeout", "mode", "nested" }, yaml.keys(v.job))
      assert.equal(10, yaml.line(v.job, "retries"))
      assert.equal(6, yaml.line(v.job, "timeout")) -- from the anchored mapping that supplied it
      v.one.nested.a = 2
      assert.equal(1, v.defaults.nested.a)
    end)

    it("keeps a quoted << an ordinary key", function()
      local v = assert(yaml.load("'<<': 1\n"))
      assert.equal(1, v["<<"])
    end)

    it("rejects a merge of something that is not a mapping", function()
      local _, err = yaml.load("a: &a [1]\nb:\n  <<: *a\n", "m.yml")
      assert.equal("m.yml:3:3: the merge key << needs a mapping or a list of mappings", err)
      _, err = yaml.load("b:\n  <<: 5\n", "m.yml")
      assert.matches("^m.yml:2:3: the merge key", err)
    end)

    it("rejects an unknown or not-yet-defined anchor", function()
      local _, err = yaml.load("a: *x\nb: &x 1\n", "a.yml")
      assert.equal("a.yml:1:4: alias *x refers to no anchor defined before it", err)
      _, err = yaml.load("a: &x [*x]\n", "a.yml")
      assert.matches("^a.yml:1:8: alias %*x refers to no anchor", err)
    end)

    it("stops a billion-laughs alias bomb with a clear error", function()
      local lines = { 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]' }
      local prev = "a"
      for i = 2, 9 do
        local name = string.char(96 + i)
        lines[#lines + 1] = ("%s: &%s [%s]"):format(name, name, ("*" .. prev .. ","):rep(9):sub(1, -2))
        prev = name
      end
      local v, err = yaml.load(table.concat(lines, "\n") .. "\n", "bomb.yml")
      assert.is_nil(v)
      assert.matches("^bomb.yml:%d+:%d+: alias %*%a expands the document beyond 1000000 nodes", err)
    end)
  end)

  describe("load: errors carry name:line:col", function()
    local function err_of(text, name)
      local v, err = yaml.load(text, name or "f.yml")
      assert.is_nil(v)
      assert.equal("string", type(err))
      return err
    end

    it("for malformed YAML", function()
      assert.equal("f.yml:1:5: mapping values are not allowed in this context", err_of("a: b: c"))
      assert.equal("f.yml:3:1: did not find expected ',' or ']' while parsing a flow sequence (started on line 1)",
        err_of("a: [1,\n  2\n"))
      assert.matches("^f.yml:1:8: found unexpected end of stream", err_of('a: "abc'))
      assert.matches("^<string>:1:5: ", select(2, yaml.load("a: b: c")))
    end)

    it("for tab indentation", function()
      assert.equal("f.yml:2:1: tab character where indentation is expected (YAML allows only spaces)",
        err_of("a:\n\tb: 1\n"))
    end)

    it("for a duplicate key, naming both lines", function()
      assert.equal('f.yml:4:3: duplicate key "x" (first defined on line 2)', err_of("m:\n  x: 1\n  y: 2\n  x: 3\n"))
      assert.matches('duplicate key "1"', err_of("1: a\n'1': b\n"))
    end)

    it("for a second document", function()
      assert.equal("f.yml:2:1: a second YAML document (---) where one was expected", err_of("a: 1\n---\nb: 2\n"))
    end)

    it("for complex keys and non-scalar alias keys", function()
      assert.equal("f.yml:1:3: mapping keys must be scalars (complex keys are not supported)", err_of("? [a]\n: 1\n"))
      assert.matches("mapping keys must be scalars, %*m is not", err_of("x: &m {a: 1}\n*m : 2\n"))
    end)

    it("for invalid UTF-8 and control characters", function()
      assert.equal("f.yml:2:6: invalid leading UTF-8 octet (byte 0xFF)", err_of("a: b\nc: d \255\n"))
      assert.matches("^f.yml:1:4: control characters are not allowed", err_of("a: \1\n"))
    end)

    it("for nesting deeper than 1000 levels, without crashing", function()
      assert.matches("^f.yml:1:1001: nesting deeper than 1000 levels", err_of(("["):rep(5000) .. ("]"):rep(5000)))
      local ok = assert(yaml.load(("["):rep(1000) .. ("]"):rep(1000)))
      assert.is_true(yaml.is_array(ok))
      local deep = {}
      for i = 1, 1200 do deep[#deep + 1] = (" "):rep(i - 1) .. "k:" end
      assert.matches("nesting deeper than 1000 levels", err_of(table.concat(deep, "\n")))
    end)

    it("raises for arguments of the wrong type", function()
      assert.has_error(function() yaml.load(nil) end)
      assert.has_error(function() yaml.load({}) end)
    end)
  end)

  describe("load_file", function()
    it("names the file in errors", function()
      local d = T.tmpdir()
      T.write(d .. "/bad.yml", "ok: 1\nbad: [\n")
      local v, err = yaml.load_file(d .. "/bad.yml")
      assert.is_nil(v)
      assert.equal(d .. "/bad.yml:3:1: did not find expected node content while parsing a flow node", err)
    end)

    it("reports a missing file or a directory as an expected failure", function()
      local d = T.tmpdir()
      local v, err, code = yaml.load_file(d .. "/none.yml")
      assert.is_nil(v)
      assert.equal("read " .. d .. "/none.yml: No such file or directory", err)
      assert.equal("ENOENT", code)
      v, err, code = yaml.load_file(d)
      assert.is_nil(v)
      assert.equal("read " .. d .. ": Is a directory", err)
      assert.equal("EISDIR", code)
    end)

    it("reads a 50 MB file correctly", function()
      local d = T.tmpdir()
      local f = assert(io.open(d .. "/big.yml", "wb"))
      local value = ("x"):rep(1000)
      for i = 1, 50000 do f:write("k", i, ": ", value, "\n") end
      f:close()
      local v = assert(yaml.load_file(d .. "/big.yml"))
      assert.equal(value, v.k1)
      assert.equal(value, v.k50000)
      assert.equal(50000, yaml.line(v, "k50000"))
      assert.equal(50000, #yaml.keys(v))
    end)
  end)

  describe("dump", function()
    it("writes keys in document order and round-trips types", function()
      local text = "zeta: 1\nalpha:\n  list:\n  - 1\n  - two\n  - 3.5\n  - true\n  - null\n  empty_list: []\n  empty_map: {}\n"
      local v = assert(yaml.load(text))
      assert.equal(text, yaml.dump(v))
    end)

    it("sorts keys of tables it did not load and writes Lua sequences as sequences", function()
      assert.equal("a: 1\nb:\n- x\n- 'y'\nc: {}\n", yaml.dump({ c = {}, b = { "x", "y" }, a = 1 }))
      assert.equal("[]\n", yaml.dump(setmetatable({}, yaml.array_mt)))
      assert.equal("{}\n", yaml.dump({}))
    end)

    it("quotes strings that would read back as another type", function()
      local strings = { "true", "False", "null", "~", "", "123", "0x1F", "1e3", ".inf", "yes", "no", "on",
        "2023-02-05", "0777", "1:30", "<<", " lead", "trail ", "a: b", "# c", "- x", "[x]", "{x}", "'q'",
        '"d"', "@at", "`tick", "%pct", "multi\nline\n", "tab\there", "nul\0byte", "ctrl\1x", "ünï",
        "$.items[*]", "${VAR}", "!tag", "&anchor", "*alias", "|", ">", "?" }
      local t = {}
      for i, s in ipairs(strings) do t[i] = s end
      local back = assert(yaml.load(yaml.dump(t)))
      for i, s in ipairs(strings) do
        assert.equal(s, back[i])
      end
      assert.equal("'true'\n", yaml.dump("true"))
      assert.equal("plain words\n", yaml.dump("plain words"))
    end)

    it("writes numbers so they read back with their type", function()
      local t = { i = 42, neg = -7, f = 1.0, g = 0.1, big = 1e300, tiny = 5e-324, inf = math.huge,
        ninf = -math.huge, maxi = math.maxinteger }
      local back = assert(yaml.load(yaml.dump(t)))
      for k, v in pairs(t) do
        assert.equal(v, back[k])
        assert.equal(math.type(v), math.type(back[k]))
      end
      assert.equal("0.1\n", yaml.dump(0.1))
      assert.equal("1.0\n", yaml.dump(1.0))
      assert.matches("^%.nan", yaml.dump(0 / 0))
    end)

    it("writes null for yaml.null and nil", function()
      assert.equal("a: null\n", yaml.dump({ a = yaml.null }))
      assert.equal("null\n", yaml.dump(nil))
    end)

    it("raises for values it cannot write", function()
      assert.has_error(function() yaml.dump({ f = print }) end, "yaml.dump: cannot dump a function")
      assert.has_error(function() yaml.dump({ [true] = 1 }) end, "yaml.dump: cannot dump a key of type boolean")
      local t = {}
      t.self = t
      assert.has_error(function() yaml.dump(t) end, "yaml.dump: a table contains itself")
      assert.has_error(function() yaml.dump("\255") end)
    end)
  end)

  describe("edit", function()
    local text = table.concat({
      "# Meltano project — ünïcode comment",
      "version: 1",
      "default_environment: dev   # the default",
      "project_id: 'abc'",
      "plugins:",
      "  extractors:",
      "  - name: tap-a",
      "    config: {flow: x, other: \"dq\"}",
      "  - name: tap-b",
      "    anchored: &an value",
      "    block: |",
      "      line one",
      "      line two",
      "",
      "    after: 1",
      "environments:",
      "- name: dev",
      "- name: prod",
      "",
    }, "\n")

    local function edit(path, v, opts)
      local out, err = yaml.edit(text, path, v, opts)
      assert(out, err)
      return out
    end

    it("changes only the scalar's bytes and the result reloads to the new value", function()
      local out = edit({ "default_environment" }, "prod")
      assert_spliced(text, out, "default_environment: dev ", "default_environment: prod ")
      assert.equal("prod", assert(yaml.load(out)).default_environment)
      assert.equal(yaml.dump(assert(yaml.load(text)).plugins), yaml.dump(assert(yaml.load(out)).plugins))
    end)

    it("counts bytes correctly after non-ASCII text", function()
      local out = edit({ "environments", 2, "name" }, "staging")
      assert_spliced(text, out, "- name: prod", "- name: staging")
    end)

    it("keeps quoting styles and quotes a plain value when it would change type", function()
      assert_spliced(text, edit({ "project_id" }, "xyz"), "'abc'", "'xyz'")
      assert_spliced(text, edit({ "project_id" }, "it's"), "'abc'", "'it''s'")
      assert_spliced(text, edit({ "plugins", "extractors", 1, "config", "other" }, 'say "hi"\n'),
        '"dq"', '"say \\"hi\\"\\n"')
      assert_spliced(text, edit({ "default_environment" }, "yes"), "dev ", "'yes' ")
      assert_spliced(text, edit({ "default_environment" }, "123"), "dev ", "'123' ")
      assert_spliced(text, edit({ "default_environment" }, "a: b"), "dev ", "'a: b' ")
      assert_spliced(text, edit({ "default_environment" }, "tab\there"), "dev ", '"tab\\there" ')
      -- in a flow mapping a comma must not end up plain
      local out = edit({ "plugins", "extractors", 1, "config", "flow" }, "a,b")
      assert_spliced(text, out, "flow: x", "flow: 'a,b'")
      assert.equal("a,b", assert(yaml.load(out)).plugins.extractors[1].config.flow)
    end)

    it("writes numbers, booleans and null plain", function()
      assert_spliced(text, edit({ "version" }, 2), "version: 1", "version: 2")
      assert_spliced(text, edit({ "version" }, 2.5), "version: 1", "version: 2.5")
      assert_spliced(text, edit({ "project_id" }, true), "'abc'", "true")
      local out = edit({ "default_environment" }, yaml.null)
      assert_spliced(text, out, "dev ", "null ")
      assert.equal(yaml.null, assert(yaml.load(out)).default_environment)
    end)

    it("keeps an anchor and replaces a block scalar, keeping the lines after it", function()
      local out = edit({ "plugins", "extractors", 2, "anchored" }, "new")
      assert_spliced(text, out, "&an value", "&an new")
      out = edit({ "plugins", "extractors", 2, "block" }, "flat")
      assert_spliced(text, out, "|\n      line one\n      line two", "flat")
      local v = assert(yaml.load(out))
      assert.equal("flat", v.plugins.extractors[2].block)
      assert.equal(1, v.plugins.extractors[2].after)
    end)

    it("fills an empty value", function()
      local src = "version: 1\ndefault_environment:\n# trailing comment\n"
      local out = assert(yaml.edit(src, { "default_environment" }, "prod"))
      assert.equal("version: 1\ndefault_environment: prod\n# trailing comment\n", out)
      out = assert(yaml.edit("a: # note\nb: 2\n", { "a" }, "x"))
      assert.equal("a: x # note\nb: 2\n", out)
      out = assert(yaml.edit("a: &k\nb: 2\n", { "a" }, "x"))
      assert.equal("a: &k x\nb: 2\n", out)
      out = assert(yaml.edit("a: !!str\nb: 2\n", { "a" }, 5))
      assert.equal("a: 5\nb: 2\n", out)
    end)

    it("drops a tag that would contradict the new value, keeping the anchor", function()
      local out = assert(yaml.edit("a: !!int &k 5\nb: *k\n", { "a" }, "five"))
      assert.equal("a: &k five\nb: *k\n", out)
      assert.same({ a = "five", b = "five" }, assert(yaml.load(out)))
    end)

    it("refuses the empty value of an explicit key written as a block scalar, instead of corrupting it", function()
      -- "?\n>-": the key is an empty folded scalar; its '-' is not a sequence indicator
      local out, err = yaml.edit("?\n>-", { "" }, "fuzz value")
      assert.is_nil(out)
      assert.matches("has no ':' or '%-' to write it after", err)
      assert.equal("a:\n- x\n- v\n", assert(yaml.edit("a:\n- x\n-\n", { "a", 2 }, "v")))
    end)

    it("quotes a value that would run into what follows it, or refuses when quoting would change it", function()
      -- an empty tagged value, a line break, then a byte order mark at the start of the next
      -- line (skipped there as white space): written plain, the value would go on over the
      -- line break and take the mark in
      local src = "[!e~2\r\239\187\191]"
      assert.equal("[\"fuzz value\"\r\239\187\191]", assert(yaml.edit(src, { 1 }, "fuzz value")))
      local out, err = yaml.edit(src, { 1 }, true) -- "true" quoted would be a string
      assert.is_nil(out)
      assert.equal("yaml.edit 1: the value cannot be written there without changing what the text means", err)
      assert.equal("[x2, y]", assert(yaml.edit("[x, y]", { 1 }, "x2"))) -- no quotes where plain is safe
    end)

    it("keeps a byte order mark", function()
      local out = assert(yaml.edit("\239\187\191a: b\n", { "a" }, "ü"))
      assert.equal("\239\187\191a: ü\n", out)
    end)

    it("adds a missing key only when asked to", function()
      local out, err = yaml.edit(text, { "missing" }, "x")
      assert.is_nil(out)
      assert.equal('yaml.edit missing: no key "missing"', err)
      out = edit({ "default_env2" }, "prod", { create = true })
      assert.equal(text .. "default_env2: prod\n", out)
      out = assert(yaml.edit("a: 1", { "b" }, "yes", { create = true }))
      assert.equal("a: 1\nb: 'yes'\n", out)
      out = assert(yaml.edit("m:\n  x: 1\n# c\nn: 2\n", { "m", "w" }, 2, { create = true }))
      assert.equal("m:\n  x: 1\n# c\n  w: 2\nn: 2\n", out)
      assert.same({ x = 1, w = 2 }, assert(yaml.load(out)).m)
    end)

    it("fails clearly for a path that does not lead to a scalar", function()
      local cases = {
        { { "plugins" }, "yaml.edit plugins: the value is a mapping, not a scalar" },
        { { "environments" }, "yaml.edit environments: the value is a sequence, not a scalar" },
        { { "environments", 3 }, "yaml.edit environments.3: index 3 is past the end of the sequence" },
        { { "environments", "x" },
          "yaml.edit environments.x: element 2 of the path must be an index (1, 2, ...) into a sequence" },
        { { "version", "x" }, "yaml.edit version.x: element 2 of the path indexes into a scalar" },
      }
      for _, c in ipairs(cases) do
        local out, err = yaml.edit(text, c[1], "v")
        assert.is_nil(out)
        assert.equal(c[2], err)
      end
      local out, err = yaml.edit("a: &x 1\nb: *x\n", { "b" }, 2)
      assert.is_nil(out)
      assert.equal("yaml.edit b: the value is an alias, not a scalar", err)
    end)

    it("reports a parse error anywhere in the text, and a second document", function()
      local out, err = yaml.edit("a: 1\nb: [\n", { "a" }, 2, { name = "m.yml" })
      assert.is_nil(out)
      assert.matches("^m.yml:3:1: did not find expected node content", err)
      out, err = yaml.edit("a: 1\n---\nb: 2\n", { "a" }, 2)
      assert.is_nil(out)
      assert.equal("<string>:2:1: a second YAML document (---) where one was expected", err)
      out, err = yaml.edit("", { "a" }, 2)
      assert.is_nil(out)
      assert.equal("yaml.edit a: the document is empty", err)
    end)

    it("refuses a value that is not valid UTF-8", function()
      local out, err = yaml.edit("a: 1\n", { "a" }, "\255")
      assert.is_nil(out)
      assert.equal("yaml.edit a: the value is not valid UTF-8", err)
    end)

    it("raises for arguments of the wrong type", function()
      assert.has_error(function() yaml.edit(text, "version", 1) end)
      assert.has_error(function() yaml.edit(text, { "version" }, {}) end)
      assert.has_error(function() yaml.edit(text, { "version" }, nil) end)
      assert.has_error(function() yaml.edit(text, { true }, 1) end)
    end)

    it("edits default_environment in every real fixture that has one, touching nothing else", function()
      local p = assert(io.popen("grep -l '^default_environment:' " .. T.fixtures .. "/real/*/meltano.yml"))
      local n = 0
      for f in p:lines() do
        local before = assert(T.read(f))
        local after = assert(yaml.edit(before, { "default_environment" }, "other-env", { name = f }))
        assert.equal("other-env", assert(yaml.load(after)).default_environment)
        local i = assert(first_diff(before, after))
        -- everything after the changed value is byte-identical
        local old_v = before:match("^[^\n]*", i)
        local new_v = after:match("^[^\n]*", i)
        assert.equal(before:sub(i + #old_v), after:sub(i + #new_v))
        n = n + 1
      end
      p:close()
      assert.is_true(n > 10)
    end)
  end)
end)
