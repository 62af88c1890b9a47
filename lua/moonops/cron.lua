--- Cron expressions: 5 fields (minute hour day-of-month month day-of-week), an optional
-- leading seconds field, names, lists, ranges, steps, `L` (last day of the month) and the
-- @hourly/@daily/@midnight/@weekly/@monthly/@yearly/@annually aliases.
--
-- Day fields follow Vixie cron: when both day-of-month and day-of-week are restricted,
-- a day matching either one is enough.
--
-- Next-run times are computed on the wall clock of the local time zone (or UTC). Around
-- daylight-saving changes: a time that does not exist that day (skipped hour) does not
-- run that day; a time that happens twice (repeated hour) runs once, unless the hour
-- field is `*`, in which case each real hour runs.
local M = {}

local ALIASES = {
  ["@hourly"] = "0 * * * *",
  ["@daily"] = "0 0 * * *",
  ["@midnight"] = "0 0 * * *",
  ["@weekly"] = "0 0 * * 0",
  ["@monthly"] = "0 0 1 * *",
  ["@yearly"] = "0 0 1 1 *",
  ["@annually"] = "0 0 1 1 *",
}

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6, jul = 7, aug = 8, sep = 9, oct = 10,
  nov = 11, dec = 12 }
local DAYS = { sun = 0, mon = 1, tue = 2, wed = 3, thu = 4, fri = 5, sat = 6 }

local FIELDS = {
  second = { min = 0, max = 59 },
  minute = { min = 0, max = 59 },
  hour = { min = 0, max = 23 },
  ["day-of-month"] = { min = 1, max = 31 },
  month = { min = 1, max = 12, names = MONTHS },
  ["day-of-week"] = { min = 0, max = 7, names = DAYS },
}

local function value(field, spec, text)
  local v = tonumber(text)
  if not v and spec.names then v = spec.names[text:lower()] end
  if not v or math.type(v) ~= "integer" then
    return nil, string.format("%s: %q is not a number%s", field, text,
      spec.names and " or a name" or "")
  end
  if v < spec.min or v > spec.max then
    return nil, string.format("%s %d is out of range %d-%d", field, v, spec.min, spec.max)
  end
  return v
end

-- Parse one field into a set {[n] = true}; also returns whether it was restricted (not `*`).
local function parse_field(field, text)
  local spec = FIELDS[field]
  local set, last = {}, false
  if text == "" then return nil, field .. " is empty" end
  for item in (text .. ","):gmatch("([^,]*),") do
    if item == "" then return nil, string.format("%s: empty list item in %q", field, text) end
    local range, step = item:match("^([^/]+)/(.+)$")
    if not range then range = item end
    local lo, hi
    if step then
      step = tonumber(step)
      if not step or math.type(step) ~= "integer" or step < 1 then
        return nil, string.format("%s: bad step in %q", field, item)
      end
    end
    if range == "*" or range == "?" then
      lo, hi = spec.min, spec.max
      if field == "day-of-week" then hi = 6 end
    elseif range == "L" and field == "day-of-month" then
      if step then return nil, field .. ": L takes no step" end
      last = true
      goto next_item
    else
      local a, b = range:match("^([^-]+)-([^-]+)$")
      local err
      if a then
        lo, err = value(field, spec, a)
        if not lo then return nil, err end
        hi, err = value(field, spec, b)
        if not hi then return nil, err end
        if hi < lo then return nil, string.format("%s: range %s is backwards", field, range) end
      else
        lo, err = value(field, spec, range)
        if not lo then return nil, err end
        hi = step and (field == "day-of-week" and 6 or spec.max) or lo
      end
    end
    for v = lo, hi, step or 1 do
      set[(field == "day-of-week" and v == 7) and 0 or v] = true
    end
    ::next_item::
  end
  local restricted = not (text == "*" or text == "?")
  return { set = set, last = last, restricted = restricted, text = text }
end

--- Parse an expression: a schedule table, or nil and a message naming the field.
function M.parse(expr)
  if type(expr) ~= "string" then return nil, "cron expression must be a string" end
  local text = expr:gsub("^%s+", ""):gsub("%s+$", "")
  if text:sub(1, 1) == "@" then
    local alias = ALIASES[text:lower()]
    if not alias then
      return nil, string.format("unknown cron alias %q (known: @hourly, @daily, @midnight, @weekly, " ..
        "@monthly, @yearly, @annually)", text)
    end
    text = alias
  end
  local parts = {}
  for p in text:gmatch("%S+") do parts[#parts + 1] = p end
  local names
  if #parts == 5 then
    names = { "minute", "hour", "day-of-month", "month", "day-of-week" }
  elseif #parts == 6 then
    names = { "second", "minute", "hour", "day-of-month", "month", "day-of-week" }
  else
    return nil, string.format("cron expression %q has %d fields; expected 5 (minute hour day-of-month " ..
      "month day-of-week) or 6 (with seconds first)", expr, #parts)
  end
  local sched = { expr = expr, seconds = #parts == 6 }
  for i, name in ipairs(names) do
    local f, err = parse_field(name, parts[i])
    if not f then return nil, err end
    sched[name] = f
  end
  if not sched.second then sched.second = { set = { [0] = true }, restricted = true } end
  return sched
end

-- Days in a month (month 1-12).
local function days_in(year, month)
  local d = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
  if month == 2 and (year % 4 == 0 and (year % 100 ~= 0 or year % 400 == 0)) then return 29 end
  return d[month]
end

-- UTC broken-down time -> epoch (no time-zone involvement).
local function timegm(t)
  local y, m = t.year, t.month
  if m <= 2 then y, m = y - 1, m + 12 end
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m - 3) + 2) // 5 + t.day - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + (t.hour or 0) * 3600 + (t.min or 0) * 60 + (t.sec or 0)
end

local function day_matches(s, t)
  local dom = s["day-of-month"]
  local dow = s["day-of-week"]
  local dom_ok = dom.set[t.day] or (dom.last and t.day == days_in(t.year, t.month))
  local dow_ok = dow.set[t.wday - 1]
  if dom.restricted and dow.restricted then return dom_ok or dow_ok end
  return dom_ok and dow_ok
end

--- Does epoch time `t` match the schedule? `utc` selects UTC instead of local time.
function M.matches(s, t, utc)
  local lt = os.date(utc and "!*t" or "*t", t)
  return s.month.set[lt.month] and day_matches(s, lt) and s.hour.set[lt.hour] and s.minute.set[lt.min]
    and s.second.set[lt.sec] and true or false
end

--- The first time strictly after `after` (epoch seconds) that the schedule fires, or nil
-- and a message when it never does (e.g. 30 February). `utc` selects UTC wall-clock time.
function M.next(s, after, utc)
  local fmt = utc and "!*t" or "*t"
  local function mktime(t)
    if utc then return timegm(t) end
    return os.time({ year = t.year, month = t.month, day = t.day, hour = t.hour, min = t.min, sec = t.sec })
  end
  local step = s.seconds and 1 or 60
  local t = (math.floor(after) // step) * step + step
  local limit = after + 8 * 366 * 86400
  while t <= limit do
    local lt = os.date(fmt, t)
    if not s.month.set[lt.month] then
      t = mktime({ year = lt.year, month = lt.month + 1, day = 1, hour = 0, min = 0, sec = 0 })
    elseif not day_matches(s, lt) then
      t = mktime({ year = lt.year, month = lt.month, day = lt.day + 1, hour = 0, min = 0, sec = 0 })
    elseif not s.hour.set[lt.hour] then
      t = t - lt.min * 60 - lt.sec + 3600
    elseif not s.minute.set[lt.min] then
      t = t - lt.sec + 60
    elseif not s.second.set[lt.sec] then
      t = t + 1
    else
      -- The second occurrence of a repeated wall-clock hour runs only for hourly-or-finer jobs.
      local before = os.date(fmt, t - 3600)
      if s.hour.restricted and not utc and before.hour == lt.hour and before.min == lt.min
        and before.day == lt.day and before.isdst ~= lt.isdst then
        t = t + step
      else
        return t
      end
    end
  end
  return nil, string.format("cron expression %q never fires", s.expr)
end

return M
