local cron = require "moonops.cron"
local T = require "support.t"

-- UTC epoch of a wall-clock time, for readable expectations.
local function utc(y, mo, d, h, mi, s)
  local t = os.time({ year = y, month = mo, day = d, hour = h, min = mi or 0, sec = s or 0 })
  local lt, gt = os.date("*t", t), os.date("!*t", t)
  lt.isdst = false
  return t + (os.time(lt) - os.time(gt))
end

local function fmt(t) return os.date("!%Y-%m-%d %H:%M:%S %a", t) end

local function runs(expr, from, n)
  local s = assert(cron.parse(expr))
  local out, t = {}, from
  for i = 1, n do
    t = assert(cron.next(s, t, true))
    out[i] = fmt(t)
  end
  return out
end

describe("cron expressions", function()
  local thu = utc(2026, 11, 26, 12, 0)

  it("runs a daily job at the next 02:00", function()
    assert.same({ "2026-11-27 02:00:00 Fri", "2026-11-28 02:00:00 Sat" }, runs("0 2 * * *", thu, 2))
  end)

  it("handles steps, lists, ranges and names", function()
    assert.same({ "2026-11-26 12:15:00 Thu", "2026-11-26 12:30:00 Thu" }, runs("*/15 * * * *", thu, 2))
    assert.same({ "2027-01-01 09:00:00 Fri", "2027-01-01 11:00:00 Fri" },
      runs("0 9-17/2 * JAN-MAR mon-fri", thu, 2))
    assert.same({ "2026-11-26 12:05:00 Thu", "2026-11-26 12:10:00 Thu", "2026-11-26 12:40:00 Thu" },
      runs("5,10,40 * * * *", thu, 3))
  end)

  it("treats 7 as Sunday, like 0", function()
    assert.same(runs("0 0 * * 0", thu, 3), runs("0 0 * * 7", thu, 3))
    assert.same(runs("0 0 * * 0", thu, 3), runs("0 0 * * SUN", thu, 3))
  end)

  it("matches either day field when both are restricted (Vixie cron)", function()
    assert.same({ "2026-11-30 00:00:00 Mon", "2026-12-01 00:00:00 Tue", "2026-12-07 00:00:00 Mon" },
      runs("0 0 1,15 * MON", thu, 3))
  end)

  it("requires both day fields when one is a wildcard", function()
    assert.same({ "2026-11-30 00:00:00 Mon", "2026-12-07 00:00:00 Mon" }, runs("0 0 * * MON", thu, 2))
    assert.same({ "2026-12-01 00:00:00 Tue", "2027-01-01 00:00:00 Fri" }, runs("0 0 1 * *", thu, 2))
  end)

  it("crosses month ends and leap years", function()
    assert.same({ "2026-11-30 00:00:00 Mon", "2026-12-31 00:00:00 Thu", "2027-01-31 00:00:00 Sun" },
      runs("0 0 L * *", thu, 3))
    assert.same({ "2026-12-31 00:00:00 Thu", "2027-01-31 00:00:00 Sun", "2027-03-31 00:00:00 Wed" },
      runs("0 0 31 * *", thu, 3))
    assert.same({ "2028-02-29 00:00:00 Tue", "2032-02-29 00:00:00 Sun" }, runs("0 0 29 2 *", thu, 2))
    assert.same({ "2027-02-28 00:00:00 Sun", "2028-02-29 00:00:00 Tue" }, runs("0 0 L 2 *", thu, 2))
  end)

  it("supports the aliases", function()
    assert.same(runs("0 * * * *", thu, 2), runs("@hourly", thu, 2))
    assert.same(runs("0 0 * * *", thu, 2), runs("@daily", thu, 2))
    assert.same(runs("0 0 * * *", thu, 2), runs("@midnight", thu, 2))
    assert.same(runs("0 0 * * 0", thu, 2), runs("@weekly", thu, 2))
    assert.same(runs("0 0 1 * *", thu, 2), runs("@monthly", thu, 2))
    assert.same({ "2027-01-01 00:00:00 Fri" }, runs("@yearly", thu, 1))
    assert.same(runs("@yearly", thu, 2), runs("@annually", thu, 2))
  end)

  it("supports a leading seconds field (6 fields)", function()
    assert.same({ "2026-11-26 12:00:30 Thu", "2026-11-26 12:01:30 Thu" }, runs("30 * * * * *", thu, 2))
    assert.same({ "2026-11-27 00:00:10 Fri" }, runs("10 0 0 * * *", thu, 1))
  end)

  it("always answers a time strictly later that matches", function()
    for _, expr in ipairs({ "*/7 */5 * * *", "0 12 1-7 * 1", "59 23 31 12 *", "* * * * *", "15 10 L 2 *" }) do
      local s = assert(cron.parse(expr))
      local t = thu
      for _ = 1, 20 do
        local n = assert(cron.next(s, t, true))
        assert.is_true(n > t, expr)
        assert.is_true(cron.matches(s, n, true), expr .. " at " .. fmt(n))
        t = n
      end
    end
  end)

  it("names the field and the range in errors", function()
    local cases = {
      ["0 24 * * *"] = "hour 24 is out of range 0-23",
      ["60 * * * *"] = "minute 60 is out of range 0-59",
      ["0 0 0 * *"] = "day-of-month 0 is out of range 1-31",
      ["0 0 * 13 *"] = "month 13 is out of range 1-12",
      ["0 0 * * 8"] = "day-of-week 8 is out of range 0-7",
      ["0 0 * * FUNDAY"] = "day-of-week: \"FUNDAY\" is not a number or a name",
      ["0 0 5-1 * *"] = "day-of-month: range 5-1 is backwards",
      ["*/0 * * * *"] = "minute: bad step in \"*/0\"",
      ["* * *"] = "has 3 fields",
      ["@reboot"] = "unknown cron alias \"@reboot\"",
      ["1,,2 * * * *"] = "minute: empty list item",
    }
    for expr, want in pairs(cases) do
      local s, err = cron.parse(expr)
      assert.is_nil(s, expr)
      assert.truthy(err:find(want, 1, true), expr .. " -> " .. tostring(err))
    end
  end)

  it("says when an expression never fires", function()
    local s = assert(cron.parse("0 0 30 2 *"))
    local n, err = cron.next(s, thu, true)
    assert.is_nil(n)
    assert.matches("never fires", err)
  end)

  describe("in local time across daylight-saving changes (Europe/London)", function()
    local code = [[
      local cron = require "moonops.cron"
      local s = assert(cron.parse(arg[1]))
      local t = os.time({ year = tonumber(arg[2]), month = tonumber(arg[3]), day = tonumber(arg[4]),
        hour = tonumber(arg[5]), min = tonumber(arg[6]) })
      local out = {}
      for i = 1, 4 do t = assert(cron.next(s, t)); out[i] = os.date("%m-%d %H:%M %Z", t) end
      print(table.concat(out, " | "))
    ]]
    local function local_runs(expr, y, m, d, h, mi)
      local f = os.tmpname()
      T.write(f, code)
      local r = T.moonops({ "lua", f, expr, tostring(y), tostring(m), tostring(d),
        tostring(h or 12), tostring(mi or 0) }, { env = { TZ = "Europe/London" } })
      os.remove(f)
      assert.equal(0, r.code, r.stderr)
      return (r.stdout:gsub("\n$", ""))
    end

    it("skips a daily time that does not exist on the spring-forward day", function()
      assert.equal("03-28 01:30 GMT | 03-30 01:30 BST | 03-31 01:30 BST | 04-01 01:30 BST",
        local_runs("30 1 * * *", 2026, 3, 27))
    end)

    it("runs a daily time once on the fall-back day", function()
      assert.equal("10-25 01:30 BST | 10-26 01:30 GMT | 10-27 01:30 GMT | 10-28 01:30 GMT",
        local_runs("30 1 * * *", 2026, 10, 24))
    end)

    it("keeps every real half hour for a wildcard hour", function()
      assert.equal("10-25 01:00 BST | 10-25 01:30 BST | 10-25 01:00 GMT | 10-25 01:30 GMT",
        local_runs("*/30 * * * *", 2026, 10, 25, 0, 45))
      assert.equal("03-29 00:30 GMT | 03-29 02:00 BST | 03-29 02:30 BST | 03-29 03:00 BST",
        local_runs("*/30 * * * *", 2026, 3, 29, 0, 15))
    end)
  end)
end)
