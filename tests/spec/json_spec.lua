local engine = require "moonops.engine"
local json = require "moonops.json"

describe("moonops.json", function()
  describe("encode", function()
    it("writes sequences as arrays and other tables as objects with sorted keys", function()
      assert.equal("[1,2,3]", json.encode({ 1, 2, 3 }))
      assert.equal('{"a":1,"b":[true,false],"c":{"d":"e"}}',
        json.encode({ c = { d = "e" }, b = { true, false }, a = 1 }))
      assert.equal('{"1":"a","3":"c"}', json.encode({ [1] = "a", [3] = "c" }))
      assert.equal('{"1":"x","k":"v"}', json.encode({ "x", k = "v" }))
    end)

    it("writes an unmarked empty table as {} and a marked one as []", function()
      assert.equal("{}", json.encode({}))
      assert.equal("[]", json.encode(json.array()))
      assert.equal('{"list":[],"map":{}}', json.encode({ list = json.array({}), map = {} }))
      assert.equal(engine.array_mt, json.array_mt)
      assert.equal("[]", json.encode(setmetatable({}, engine.array_mt)))
    end)

    it("writes null for nil and json.null", function()
      assert.equal("null", json.encode(nil))
      assert.equal("null", json.encode(json.null))
      assert.equal('{"a":null}', json.encode({ a = json.null }))
      assert.equal("[1,null,3]", json.encode(json.array({ 1, json.null, 3 })))
    end)

    it("escapes quotes, backslashes and control characters, and keeps UTF-8", function()
      assert.equal([["say \"hi\"\\ now"]], json.encode('say "hi"\\ now'))
      assert.equal([["a\nb\tc\r\b\f"]], json.encode("a\nb\tc\r\b\f"))
      assert.equal([["\u0000\u0001\u001f\u007f"]], json.encode("\0\1\31\127"))
      assert.equal('"grüße ✓ /path"', json.encode("grüße ✓ /path"))
    end)

    it("writes integers exactly and floats in their shortest form", function()
      assert.equal("[0,-7,9007199254740993]", json.encode({ 0, -7, 9007199254740993 }))
      assert.equal("[0.1,2.5,1e+300,0.30000000000000004]", json.encode({ 0.1, 2.5, 1e300, 0.1 + 0.2 }))
    end)

    it("raises on what JSON cannot hold", function()
      assert.has_error(function() json.encode(0 / 0) end, "json: cannot encode " .. tostring(0 / 0))
      assert.has_error(function() json.encode(math.huge) end, "json: cannot encode inf")
      assert.has_error(function() json.encode(print) end, "json: cannot encode a function")
      assert.has_error(function() json.encode({ [true] = 1 }) end, "json: cannot encode a key of type boolean")
      local loop = {}
      loop.self = loop
      assert.has_error(function() json.encode(loop) end, "json: cannot encode a table that contains itself")
    end)

    it("allows the same table twice when it is not a cycle", function()
      local shared = { x = 1 }
      assert.equal('{"a":{"x":1},"b":{"x":1}}', json.encode({ a = shared, b = shared }))
    end)
  end)

  describe("pretty", function()
    it("indents by two spaces and ends with a newline", function()
      assert.equal('{\n  "a": [\n    1,\n    2\n  ],\n  "b": {},\n  "c": []\n}\n',
        json.pretty({ a = { 1, 2 }, b = {}, c = json.array() }))
      assert.equal("[]\n", json.pretty(json.array()))
      assert.equal('"x"\n', json.pretty("x"))
    end)
  end)

  describe("decode", function()
    it("reads objects, arrays, strings, numbers, booleans and null", function()
      local v = assert(json.decode('{"s": "a\\u00e9\\n", "n": 12, "f": 1.5, "t": true, "z": null, "l": [1, "two"]}'))
      assert.equal("aé\n", v.s)
      assert.equal(12, v.n)
      assert.equal("integer", math.type(v.n))
      assert.equal(1.5, v.f)
      assert.is_true(v.t)
      assert.equal(json.null, v.z)
      assert.same({ 1, "two" }, v.l)
    end)

    it("marks decoded arrays, so an empty array stays an array", function()
      local v = assert(json.decode('{"added": [], "removed": [ ], "meta": {}, "nested": [[]], "msg": "a [] b"}'))
      assert.is_true(json.is_array(v.added))
      assert.is_true(json.is_array(v.nested))
      assert.is_false(json.is_array(v.meta))
      assert.equal(0, #v.added)
      assert.equal("a [] b", v.msg)
      assert.equal('{"added":[],"meta":{},"msg":"a [] b","nested":[[]],"removed":[]}', json.encode(v))
      assert.equal("[]", json.encode(json.decode("[]")))
      assert.equal("{}", json.encode(json.decode("{}")))
    end)

    it("keeps brackets inside strings, including after escaped quotes", function()
      local v = assert(json.decode('["x\\"[]", "\\\\", []]'))
      assert.same({ 'x"[]', "\\", {} }, v)
      assert.is_true(json.is_array(v[3]))
    end)

    it("returns nil and a message for invalid JSON", function()
      for _, bad in ipairs({ "", "{", "[1,]", "{'a': 1}", '{"a" 1}', "nul", '"unterminated' }) do
        local v, err = json.decode(bad)
        assert.is_nil(v, bad)
        assert.matches("^invalid JSON: ", err)
      end
      local v, err = json.decode(42)
      assert.is_nil(v)
      assert.equal("json: expected a string", err)
    end)

    it("round-trips what encode writes", function()
      local value = { name = "ws", tags = json.array({ "a", "b" }), empty = json.array(), count = 3,
        ratio = 0.25, on = false, nested = { deeper = { "x" } } }
      assert.same(value, json.decode(json.encode(value)))
      assert.equal(json.encode(value), json.encode(json.decode(json.pretty(value))))
    end)
  end)
end)
