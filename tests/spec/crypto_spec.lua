local crypto = require "moonops.crypto"

describe("moonops.crypto", function()
  describe("hmac", function()
    it("reproduces GitHub's webhook signature example", function()
      assert.equal("757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        crypto.hmac("sha256", "It's a Secret to Everybody", "Hello, World!"))
    end)

    it("agrees with openssl for every algorithm, with binary keys and data", function()
      -- key "k\0e\255y" is 6b0065ff79 in hex; the data goes through printf
      for _, alg in ipairs { "sha1", "sha256", "sha512" } do
        local p = assert(io.popen("printf 'da\\0ta\\n' | openssl dgst -" .. alg
          .. " -mac HMAC -macopt hexkey:6b0065ff79 -r"))
        local hex = p:read("a"):match("^(%x+)")
        p:close()
        assert.equal(hex, crypto.hmac(alg, "k\0e\255y", "da\0ta\n"))
      end
    end)

    it("gives lowercase hex of the right length", function()
      assert.matches("^[0-9a-f]+$", crypto.hmac("sha512", "k", "d"))
      assert.equal(40, #crypto.hmac("sha1", "k", "d"))
      assert.equal(64, #crypto.hmac("sha256", "", ""))
      assert.equal(128, #crypto.hmac("sha512", "k", "d"))
    end)

    it("raises for an unknown algorithm or a non-string argument", function()
      assert.has_error(function() crypto.hmac("md5", "k", "d") end)
      assert.has_error(function() crypto.hmac("sha256", nil, "d") end)
      assert.has_error(function() crypto.hmac("sha256", "k", {}) end)
    end)
  end)

  describe("hmac_key", function()
    it("signs like hmac for every algorithm, short, block-sized and long keys", function()
      for _, alg in ipairs { "sha1", "sha256", "sha384", "sha512" } do
        for _, key in ipairs { "", "k\0e\255y", string.rep("b", 64), string.rep("c", 128), string.rep("x", 200) } do
          local k = crypto.hmac_key(alg, key)
          for _, data in ipairs { "", "Hello, World!", string.rep("d", 1000) } do
            assert.equal(crypto.hmac(alg, key, data), k:hex(data))
          end
          k:close()
        end
      end
      -- and against openssl with a key longer than the block (hashed first)
      local p = assert(io.popen("printf 'data' | openssl dgst -sha256 -mac HMAC -macopt key:" .. string.rep("z", 100)
        .. " -r"))
      local hex = p:read("a"):match("^(%x+)")
      p:close()
      assert.equal(hex, crypto.hmac_key("sha256", string.rep("z", 100)):hex("data"))
    end)

    it("matches a signature in either case and nothing else", function()
      local k = crypto.hmac_key("sha256", "It's a Secret to Everybody")
      local good = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
      assert.is_true(k:matches("Hello, World!", good))
      assert.is_true(k:matches("Hello, World!", good:upper()))
      assert.is_false(k:matches("Hello, World?", good))
      assert.is_false(k:matches("Hello, World!", good:sub(1, 63)))
      assert.is_false(k:matches("Hello, World!", good .. "0"))
      assert.is_false(k:matches("Hello, World!", ""))
      assert.is_false(k:matches("Hello, World!", good:sub(1, 63) .. "g"))
      assert.is_false(k:matches("Hello, World!", string.rep("\0", 64)))
    end)

    it("raises on misuse and after close", function()
      assert.has_error(function() crypto.hmac_key("md5", "k") end)
      assert.has_error(function() crypto.hmac_key("sha256", nil) end)
      local k = crypto.hmac_key("sha256", "k")
      assert.has_error(function() k:hex({}) end)
      assert.has_error(function() k:matches("d", nil) end)
      k:close()
      k:close()
      assert.has_error(function() k:hex("d") end, "use of a closed hmac key")
      assert.has_error(function() k:matches("d", "00") end, "use of a closed hmac key")
      do
        local scoped <close> = crypto.hmac_key("sha1", "k")
        assert.equal(crypto.hmac("sha1", "k", "d"), scoped:hex("d"))
      end
    end)
  end)

  describe("digest and hasher", function()
    it("hash known vectors", function()
      assert.equal("a9993e364706816aba3e25717850c26c9cd0d89d", crypto.digest("sha1", "abc"))
      assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", crypto.digest("sha256", ""))
    end)

    it("streams to the same answer as one call", function()
      local h = crypto.hasher("sha512")
      assert.equal(h, h:update("hello "))
      h:update(""):update("world")
      assert.equal(crypto.digest("sha512", "hello world"), h:final())
    end)

    it("is closed after final, and closing twice is harmless", function()
      local h = crypto.hasher("sha256")
      h:final()
      assert.has_error(function() h:update("x") end, "use of a closed hasher")
      assert.has_error(function() h:final() end, "use of a closed hasher")
      h:close()
      h:close()
    end)

    it("works with <close>", function()
      local h
      do
        local x <close> = crypto.hasher("sha1")
        h = x
        x:update("a")
      end
      assert.has_error(function() h:update("b") end, "use of a closed hasher")
    end)

    it("raises on misuse", function()
      assert.has_error(function() crypto.hasher("crc32") end)
      assert.has_error(function() crypto.digest("sha256") end)
      assert.has_error(function() crypto.hasher("sha1"):update(nil) end)
    end)
  end)

  describe("equal", function()
    it("compares strings", function()
      assert.is_true(crypto.equal("same", "same"))
      assert.is_true(crypto.equal("", ""))
      assert.is_false(crypto.equal("same", "sane"))
      assert.is_false(crypto.equal("same", "same!"))
      assert.is_false(crypto.equal("", "x"))
      assert.is_false(crypto.equal("x", ""))
      assert.is_false(crypto.equal("ab", "abab"))
    end)

    it("raises on non-strings", function()
      assert.has_error(function() crypto.equal("a", nil) end)
    end)
  end)

  describe("random and uuid", function()
    it("gives the bytes asked for", function()
      assert.equal(0, #crypto.random(0))
      assert.equal(32, #crypto.random(32))
      assert.not_equal(crypto.random(16), crypto.random(16))
      assert.has_error(function() crypto.random(-1) end)
      assert.has_error(function() crypto.random("x") end)
    end)

    it("makes version 4 UUIDs", function()
      local seen = {}
      for _ = 1, 100 do
        local u = crypto.uuid()
        assert.matches("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$", u)
        assert.is_nil(seen[u])
        seen[u] = true
      end
    end)
  end)

  describe("hex", function()
    it("round-trips every byte", function()
      local all = {}
      for i = 0, 255 do all[#all + 1] = string.char(i) end
      local s = table.concat(all)
      assert.equal(s, crypto.unhex(crypto.hex(s)))
      assert.equal("00ff", crypto.hex("\0\255"))
      assert.equal("\171\205", crypto.unhex("AbCd"))
    end)

    it("returns nil, err for bad input", function()
      local v, err = crypto.unhex("abc")
      assert.is_nil(v)
      assert.matches("odd number", err)
      v, err = crypto.unhex("zz")
      assert.is_nil(v)
      assert.matches("invalid hex digit at position 1", err)
    end)
  end)

  describe("base64", function()
    it("round-trips random data in both alphabets", function()
      for n = 0, 40 do
        local s = crypto.random(n)
        assert.equal(s, crypto.unbase64(crypto.base64(s)))
        assert.equal(s, crypto.unbase64(crypto.base64(s, { url = true }), { url = true }))
      end
    end)

    it("matches base64(1)", function()
      local f = assert(io.popen("printf 'hello, moonops\\377' | base64 -w0"))
      local want = f:read("a")
      f:close()
      assert.equal(want, crypto.base64("hello, moonops\255"))
    end)

    it("uses -_ without padding in the URL alphabet", function()
      assert.equal("__8", crypto.base64("\255\255", { url = true }))
      assert.equal("//8=", crypto.base64("\255\255"))
      assert.equal("\255\255", crypto.unbase64("__8", { url = true }))
      assert.equal("\255\255", crypto.unbase64("__8=", { url = true }))
    end)

    it("accepts missing padding and line breaks", function()
      assert.equal("foob", crypto.unbase64("Zm9vYg"))
      assert.equal("foob", crypto.unbase64("Zm9vYg=="))
      assert.equal("foobar", crypto.unbase64("Zm9v\nYmFy\n"))
    end)

    it("returns nil, err for bad input", function()
      for _, bad in ipairs { "Zm9v!", "Z", "Zm9vY===", "Zg==Zg==", "__8" } do
        local v, err = crypto.unbase64(bad)
        assert.is_nil(v, bad)
        assert.matches("^unbase64: ", err)
      end
      assert.is_nil((crypto.unbase64("//8", { url = true })))
    end)

    it("raises on misuse", function()
      assert.has_error(function() crypto.base64(nil) end)
      assert.has_error(function() crypto.base64("x", "url") end)
    end)
  end)
end)
