--- Schedules: any recipe from cron or from `serve --scheduler`, never overlapping, every
-- run recorded in the store (schedule_runs) with its exit code and log file.
local cron = require "moonops.cron"
local engine = require "moonops.engine"
local errors = require "moonops.errors"
local fs = require "moonops.fs"
local log = require "moonops.log"
local proc = require "moonops.proc"

local M = {}

M.LOG_MAX_BYTES = 1024 * 1024 -- a schedule's log is rotated past this size
M.LOG_KEEP = 3                -- rotated files kept: NAME.log.1 .. NAME.log.3

local function now_rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", t or os.time())
end

local function parse_time(s)
  local y, mo, d, h, mi, se = tostring(s or ""):match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)")
  if not y then return nil end
  local t = { year = tonumber(y), month = tonumber(mo), day = tonumber(d), hour = tonumber(h), min = tonumber(mi),
    sec = tonumber(se) }
  local lt = os.time(t)
  local utc_as_local = os.time(os.date("!*t", lt))
  return lt + (lt - utc_as_local)
end
M.parse_time = parse_time

--- The schedule named `name` from settings, or a usage error listing the known ones.
function M.find(settings, name)
  local names = {}
  for _, s in ipairs(settings.schedules or {}) do
    if s.name == name then return s end
    names[#names + 1] = s.name
  end
  errors.raise(string.format("no schedule named %q in %s (known: %s)", tostring(name), settings.path or "moonops.yml",
    #names > 0 and table.concat(names, ", ") or "none"), errors.USAGE)
end

local function is_utc(s)
  return s.timezone == "UTC" or s.timezone == "utc" or s.timezone == "Etc/UTC"
end

--- Check one schedule: its cron expression and time zone. Returns true or nil, message.
function M.check(s)
  local parsed, err = cron.parse(s.cron)
  if not parsed then return nil, err end
  if s.timezone ~= nil and s.timezone ~= "local" and not is_utc(s) then
    return nil, string.format("timezone %q is not supported (use UTC, or leave it out for the system's local time)",
      tostring(s.timezone))
  end
  return parsed
end

--- Next run time (epoch) of a schedule after `after` (default now).
function M.next_run(s, after)
  local parsed, err = M.check(s)
  if not parsed then return nil, err end
  return cron.next(parsed, after or os.time(), is_utc(s))
end

-- moonops.yml by absolute path: crontab lines and markers must not depend on the cwd.
local function config_path(settings)
  return fs.realpath(settings.path) or settings.path
end

local function lock_dir(settings) return settings.data_dir .. "/locks" end
local function log_dir(settings) return settings.data_dir .. "/logs/schedules" end

function M.log_path(settings, name)
  return log_dir(settings) .. "/" .. name .. ".log"
end

--- Rotate NAME.log when it is over LOG_MAX_BYTES: .log -> .log.1 -> .log.2 ... (bounded).
function M.rotate(path)
  local st = fs.stat(path)
  if not st or st.size < M.LOG_MAX_BYTES then return end
  fs.remove(path .. "." .. M.LOG_KEEP)
  for i = M.LOG_KEEP - 1, 1, -1 do
    if fs.stat(path .. "." .. i) then fs.rename(path .. "." .. i, path .. "." .. (i + 1)) end
  end
  fs.rename(path, path .. ".1")
end

--- Every schedule with its next run and its last recorded run.
function M.list(settings, db)
  local out = {}
  for _, s in ipairs(settings.schedules or {}) do
    local next_t, err = M.next_run(s)
    local row = { name = s.name, cron = s.cron, recipe = s.recipe, args = s.args or {},
      timezone = s.timezone, next_run = next_t and now_rfc3339(next_t) or nil, error = err }
    if db then
      local last = db:one("SELECT * FROM schedule_runs WHERE schedule = ? ORDER BY id DESC LIMIT 1", s.name)
      if last then
        local started, finished = parse_time(last.started_at), parse_time(last.finished_at)
        row.last_run = { started_at = last.started_at, finished_at = last.finished_at, status = last.status,
          exit_code = last.exit_code, duration = (started and finished) and (finished - started) or nil,
          log = last.log_path }
      end
    end
    out[#out + 1] = row
  end
  return out
end

-- Called with the schedule's lock held: a run still recorded RUNNING was killed.
local function mark_interrupted(db, name)
  db:exec("UPDATE schedule_runs SET status = 'INTERRUPTED', finished_at = ? WHERE schedule = ? AND status = 'RUNNING'",
    now_rfc3339(), name)
end

--- The argv that runs a schedule's recipe in a child moonops.
function M.argv(settings, s)
  local argv = { engine.exe, "--config", config_path(settings), s.recipe }
  for _, a in ipairs(s.args or {}) do argv[#argv + 1] = tostring(a) end
  return argv
end

--- Run schedule `name` now under its lock. Returns the run record (with exit_code).
-- A run already holding the lock: errors.BUSY "NAME is already running (pid N, since T)".
-- opts: {db=, on_output=fn(stream, chunk), timeout=}
function M.run(settings, name, opts)
  opts = opts or {}
  local s = M.find(settings, name)
  local ok, err = M.check(s)
  if not ok then errors.raise(string.format("schedule %s: %s", name, err), errors.USAGE) end
  assert(fs.mkdirs(lock_dir(settings), 448))
  assert(fs.mkdirs(log_dir(settings), 448))
  local lock_path = lock_dir(settings) .. "/schedule-" .. name .. ".lock"
  local lock <close> = fs.lock(lock_path, { wait = false })
  if not lock then
    local info = fs.read(lock_path .. ".info") or ""
    local pid, since = info:match("^(%d+) (%S+)")
    errors.raise(string.format("%s is already running (pid %s, since %s)", name, pid or "?", since or "?"),
      errors.BUSY)
  end
  local started = now_rfc3339()
  fs.write_atomic(lock_path .. ".info", string.format("%d %s\n", proc.pid(), started), 384)

  local db = opts.db
  local log_path = M.log_path(settings, name)
  local id
  if db then
    mark_interrupted(db, name)
    db:exec("INSERT INTO schedule_runs (schedule, status, pid, started_at, log_path) VALUES (?, 'RUNNING', ?, ?, ?)",
      name, proc.pid(), started, log_path)
    id = db:last_insert_id()
  end

  M.rotate(log_path)
  fs.append(log_path, string.format("== %s run of %s: %s\n", started, name,
    table.concat(M.argv(settings, s), " ")))
  local env = {}
  for k, v in pairs(s.env or {}) do env[k] = tostring(v) end
  env.MOONOPS_SCHEDULE = name
  local res, rerr = proc.run({
    argv = M.argv(settings, s),
    cwd = settings.dir,
    env = env,
    timeout = opts.timeout,
    on_output = function(stream, chunk)
      fs.append(log_path, log.mask(chunk))
      if opts.on_output then opts.on_output(stream, chunk) end
    end,
  })
  local code
  if not res then
    code = 1
    fs.append(log_path, "moonops: " .. log.mask(tostring(rerr)) .. "\n")
  else
    code = res.code
    if res.timed_out then fs.append(log_path, "moonops: timed out\n") end
  end
  local finished = now_rfc3339()
  fs.append(log_path, string.format("== %s exit %d\n", finished, code))
  if db then
    db:exec("UPDATE schedule_runs SET status = ?, finished_at = ?, exit_code = ? WHERE id = ?",
      code == 0 and "COMPLETE" or "ERROR", finished, code, id)
  end
  fs.remove(lock_path .. ".info")
  return { id = id, schedule = name, exit_code = code, started_at = started, finished_at = finished,
    log = log_path, status = code == 0 and "COMPLETE" or "ERROR" }
end

-- sh quoting for crontab command lines (cron hands the line to /bin/sh); % is special to cron.
local function shq(s)
  local quoted = ("'" .. tostring(s):gsub("'", "'\\''") .. "'"):gsub("%%", "\\%%")
  return quoted
end

--- The crontab lines for every schedule (each a comment naming it, then the entry).
function M.crontab_lines(settings)
  local lines = {}
  for _, s in ipairs(settings.schedules or {}) do
    local parsed, err = M.check(s)
    if not parsed then errors.raise(string.format("schedule %s: %s", s.name, err), errors.USAGE) end
    local expr = s.cron
    if parsed.seconds then
      local fields = {}
      for f in expr:gmatch("%S+") do fields[#fields + 1] = f end
      if fields[1] ~= "0" then
        errors.raise(string.format("schedule %s: cron has no seconds; %q needs 'moonops serve --scheduler'",
          s.name, expr), errors.USAGE)
      end
      table.remove(fields, 1)
      expr = table.concat(fields, " ")
    end
    lines[#lines + 1] = string.format("# moonops schedule %s: %s%s", s.name, s.recipe,
      is_utc(s) and " (UTC in moonops; cron runs this line in the system's time zone)" or "")
    lines[#lines + 1] = string.format("%s %s --config %s schedule run %s >>%s 2>&1", expr, shq(engine.exe),
      shq(config_path(settings)), shq(s.name), shq(log_dir(settings) .. "/cron.log"))
  end
  return lines
end

local function markers(settings)
  local path = config_path(settings)
  return "# BEGIN moonops " .. path, "# END moonops " .. path
end

local function read_crontab()
  local res, err = proc.run({ argv = { "crontab", "-l" } })
  if not res then errors.raise("crontab -l: " .. tostring(err), errors.FAILURE) end
  if res.code ~= 0 then
    if res.stderr:find("no crontab for", 1, true) then return "" end
    errors.raise("crontab -l: " .. res.stderr:gsub("%s+$", ""), errors.FAILURE)
  end
  return res.stdout
end

local function write_crontab(text)
  local res, err = proc.run({ argv = { "crontab", "-" }, stdin = text })
  if not res then errors.raise("crontab: " .. tostring(err), errors.FAILURE) end
  if res.code ~= 0 then errors.raise("crontab: " .. res.stderr:gsub("%s+$", ""), errors.FAILURE) end
end

--- Remove this moonops.yml's block from crontab text; other lines stay as they were.
function M.strip_block(text, settings)
  local begin_m, end_m = markers(settings)
  local out, inside = {}, false
  for line in (text .. (text:sub(-1) == "\n" and "" or "\n")):gmatch("([^\n]*)\n") do
    if line == begin_m then
      inside = true
    elseif inside and line == end_m then
      inside = false
    elseif not inside then
      out[#out + 1] = line
    end
  end
  if #out == 0 then return "" end
  return table.concat(out, "\n") .. "\n"
end

--- Write the schedules into the user's crontab between this config's markers (idempotent).
function M.install(settings)
  local begin_m, end_m = markers(settings)
  local body = M.crontab_lines(settings)
  assert(fs.mkdirs(log_dir(settings), 448))
  local text = M.strip_block(read_crontab(), settings)
  local block = { begin_m }
  for _, l in ipairs(body) do block[#block + 1] = l end
  block[#block + 1] = end_m
  write_crontab(text .. table.concat(block, "\n") .. "\n")
  return #settings.schedules
end

--- Remove this config's block from the user's crontab.
function M.uninstall(settings)
  local before = read_crontab()
  local after = M.strip_block(before, settings)
  if after ~= before then write_crontab(after) end
  return after ~= before
end

--- Schedules due in (from, to]: used by `serve --scheduler`, which calls it every few seconds.
function M.due(settings, from, to)
  local due = {}
  for _, s in ipairs(settings.schedules or {}) do
    local t = M.next_run(s, from)
    if t and t <= to then due[#due + 1] = s.name end
  end
  return due
end

return M
