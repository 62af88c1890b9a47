local T = require "support.t"
local json = require "moonops.json"
local log = require "moonops.log"

local TIME = "%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ"

describe("moonops.log", function()
  local path, stream

  local function lines()
    stream:flush()
    local out = {}
    for line in (T.read(path) or ""):gmatch("[^\n]+") do out[#out + 1] = line end
    return out
  end

  before_each(function()
    path = T.tmpdir() .. "/log"
    stream = assert(io.open(path, "w"))
    log.configure({ format = "text", level = "info", stream = stream })
  end)

  after_each(function()
    log.configure({ format = "text", level = "info", stream = io.stderr })
    stream:close()
    T.cleanup()
  end)

  it("writes text lines: time, level, message, sorted fields", function()
    log.info("deployment started", { workspace = "dev", id = 7 })
    log.warn("slow hook", { cmd = "meltano install", seconds = 1.5 })
    local got = lines()
    assert.equal(2, #got)
    assert.matches("^" .. TIME .. " INFO deployment started id=7 workspace=dev$", got[1])
    assert.matches("^" .. TIME .. ' WARN slow hook cmd="meltano install" seconds=1.5$', got[2])
  end)

  it("writes JSON lines with time, level, msg and the fields", function()
    log.configure({ format = "json", fields = { service = "moonops" } })
    log.error("push rejected", { ref = "refs/heads/main", files = json.array({ "a", "b" }) })
    local got = lines()
    assert.equal(1, #got)
    local rec = assert(json.decode(got[1]))
    assert.equal("error", rec.level)
    assert.equal("push rejected", rec.msg)
    assert.equal("refs/heads/main", rec.ref)
    assert.same({ "a", "b" }, rec.files)
    assert.equal("moonops", rec.service)
    assert.matches("^" .. TIME .. "$", rec.time)
    assert.equal("json", log.format())
  end)

  it("drops lines below the level; quiet keeps warnings and errors", function()
    log.debug("hidden at info")
    log.info("shown")
    log.configure({ level = "debug" })
    log.debug("shown at debug")
    log.configure({ quiet = true })
    log.info("hidden when quiet")
    log.warn("warning stays")
    log.error("error stays")
    local got = lines()
    assert.equal(4, #got)
    assert.matches(" INFO shown$", got[1])
    assert.matches(" DEBUG shown at debug$", got[2])
    assert.matches(" WARN warning stays$", got[3])
    assert.matches(" ERROR error stays$", got[4])
  end)

  it("rejects an unknown format or level", function()
    assert.has_error(function() log.configure({ format = "xml" }) end)
    assert.has_error(function() log.configure({ level = "loud" }) end)
  end)

  describe("secrets", function()
    it("are masked in messages and in fields, text and JSON", function()
      local secret = "s3cr3t-token-value"
      log.secret(secret)
      log.info("calling with " .. secret .. " twice " .. secret, { header = "Bearer " .. secret,
        nested = { deeper = secret }, n = 1 })
      log.configure({ format = "json" })
      log.info("json " .. secret, { header = "Bearer " .. secret, list = json.array({ secret }) })
      local text = table.concat(lines(), "\n")
      assert.is_nil(text:find(secret, 1, true))
      local got = lines()
      assert.matches("calling with %*%*%* twice %*%*%*", got[1])
      assert.matches('header="Bearer %*%*%*"', got[1])
      local rec = json.decode(got[2])
      assert.equal("json ***", rec.msg)
      assert.equal("Bearer ***", rec.header)
      assert.same({ "***" }, rec.list)
    end)

    it("mask the longest secret first and treat secrets as plain text", function()
      log.secret("abcd")
      log.secret("abcd-efgh.ij")
      log.secret("a.b%c")
      assert.equal("x *** y *** z", log.mask("x abcd-efgh.ij y abcd z"))
      assert.equal("*** aXb%c", log.mask("a.b%c aXb%c"))
    end)

    it("ignore secrets too short to mask safely", function()
      log.secret("abc")
      log.secret(nil)
      log.secret(12345)
      assert.equal("abc 12345", log.mask("abc 12345"))
    end)
  end)

  describe("from the command line", function()
    local dir
    before_each(function()
      dir = T.tmpdir()
      T.write(dir .. "/talk.lua", [[
        return { run = function(ctx)
          ctx.log.secret("hunter2-password")
          ctx.log.debug("debug line")
          ctx.log.info("info line uses hunter2-password")
          ctx.log.warn("warn line", { n = 1 })
        end }
      ]])
    end)

    it("logs info and up as text by default", function()
      local r = T.moonops({ "run", "talk.lua" }, { cwd = dir })
      assert.equal(0, r.code)
      assert.matches("INFO info line uses %*%*%*\n", r.stderr)
      assert.matches("WARN warn line n=1\n", r.stderr)
      assert.is_nil(r.stderr:find("debug line", 1, true))
      assert.is_nil(r.stderr:find("hunter2", 1, true))
      assert.equal("", r.stdout)
    end)

    it("--quiet keeps only warnings, --debug adds debug lines", function()
      local quiet = T.moonops({ "--quiet", "run", "talk.lua" }, { cwd = dir })
      assert.is_nil(quiet.stderr:find("info line", 1, true))
      assert.matches("WARN warn line", quiet.stderr)
      local debug = T.moonops({ "--debug", "run", "talk.lua" }, { cwd = dir })
      assert.matches("DEBUG debug line", debug.stderr)
    end)

    it("--log-format json writes one JSON object per line", function()
      local r = T.moonops({ "--log-format", "json", "run", "talk.lua" }, { cwd = dir })
      assert.equal(0, r.code)
      local recs = {}
      for line in r.stderr:gmatch("[^\n]+") do recs[#recs + 1] = assert(json.decode(line)) end
      assert.equal(2, #recs)
      assert.equal("info line uses ***", recs[1].msg)
      assert.equal("warn", recs[2].level)
      assert.equal(1, recs[2].n)
      local bad = T.moonops({ "--log-format", "xml", "run", "talk.lua" }, { cwd = dir })
      assert.equal(2, bad.code)
      assert.matches("%-%-log%-format must be one of text, json", bad.stderr)
    end)
  end)
end)
