--- `moonops serve`: the main loop and the deploy worker.
--
-- The main Lua state starts moonops.server with moonops.api as the handler
-- (one Lua state per worker thread) and a background thread running
-- M.worker (the deploy queue), then waits for signals:
--   TERM/INT  stop accepting, drain in-flight requests, let a running deployment
--             finish for up to `grace` seconds (else record it INTERRUPTED), return 0
--   HUP       reload moonops.yml; a broken file keeps the old settings
local db_mod = require "moonops.db"
local deploy = require "moonops.deploy"
local errors = require "moonops.errors"
local log = require "moonops.log"
local notify = require "moonops.notify"
local proc = require "moonops.proc"
local server = require "moonops.server"
local settings_mod = require "moonops.settings"

local M = {}

M.CHANNEL = "moonops.deploy"
M.DRAIN_SECONDS = 10
M.POLL_SECONDS = 5

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  local cwd = os.getenv("PWD")
  if not cwd or cwd == "" then
    local p = io.popen("pwd")
    cwd = p and p:read("l") or "."
    if p then p:close() end
  end
  return cwd .. "/" .. path
end

local function configure_log(ctx)
  log.configure({ format = ctx.log_format or "text", level = ctx.debug and "debug" or "info", quiet = ctx.quiet })
end

-- ---------------------------------------------------------------------------
-- The deploy worker (runs in the server's background thread, its own Lua state)

local function queued_workspaces(db)
  return db:rows("SELECT DISTINCT workspace_id FROM deployments WHERE status = 'QUEUED' ORDER BY workspace_id") or {}
end

-- Run every queued deployment once. Returns true when something ran or is waiting
-- on a busy workspace (so the loop polls again soon).
local function drain_queue(settings, db, control)
  local pending = false
  for _, r in ipairs(queued_workspaces(db)) do
    if control.stopping() then return pending end
    local ws = settings.by_id[r.workspace_id] or settings.by_name[r.workspace_id]
    if not ws then
      db:exec([[UPDATE deployments SET status = 'ERROR', finished_at = ?, error = ?
        WHERE workspace_id = ? AND status = 'QUEUED']], db_mod.now(),
        "workspace " .. r.workspace_id .. " is no longer in moonops.yml", r.workspace_id)
    else
      local ok, row, err, code = pcall(deploy.run_next, settings, db, ws, { wait = false })
      if not ok then
        log.error("deployment of " .. ws.name .. " failed: " .. tostring(row))
      elseif row then
        local fields = { workspace = ws.name, deployment = row.id, status = row.status, commit = row.commit_sha }
        if row.status == "COMPLETE" then
          log.info("deployment complete", fields)
        else
          fields.error = row.error
          log.warn("deployment " .. string.lower(row.status), fields)
        end
      elseif code == "busy" then
        log.info(tostring(err))
        pending = true
      elseif err then
        log.error("deployment of " .. ws.name .. ": " .. tostring(err))
      end
    end
  end
  return pending
end

--- worker(context, control): the deploy queue loop. context = {config=, channel=, log_format=, quiet=, debug=}
function M.worker(ctx, control)
  configure_log(ctx)
  local ch <close> = assert(notify.channel(ctx.channel or M.CHANNEL))
  local settings = settings_mod.load(ctx.config)
  local db <close> = assert(db_mod.open(settings.data_dir))
  local generation = control.generation()
  while not control.stopping() do
    if control.generation() ~= generation then
      generation = control.generation()
      local ok, s = pcall(settings_mod.load, ctx.config)
      if ok then settings = s end
    end
    local pending = drain_queue(settings, db, control)
    if control.stopping() then break end
    -- Woken by the API when work is queued; poll anyway so a busy workspace is retried.
    ch:wait(pending and 1 or M.POLL_SECONDS)
  end
end

-- ---------------------------------------------------------------------------
-- The main loop

local function interrupt_running(db)
  local n = db:exec([[UPDATE deployments SET status = 'INTERRUPTED', finished_at = ?, error = ?
    WHERE status = 'RUNNING' AND pid = ?]], db_mod.now(), "interrupted: moonops serve stopped before it finished",
    proc.pid())
  return n or 0
end

local function run_due_schedules(settings, from, to, children)
  local schedule = require "moonops.schedule"
  for _, name in ipairs(schedule.due(settings, from, to)) do
    local argv = { arg and arg[-1] or "moonops" }
    local self_exe = require("moonops.engine").exe
    if self_exe and self_exe ~= "" then argv[1] = self_exe end
    for _, a in ipairs({ "--config", settings.path, "schedule", "run", name }) do argv[#argv + 1] = a end
    local p, err = proc.spawn({ argv = argv })
    if p then
      children[#children + 1] = p
      log.info("schedule started", { schedule = name, pid = p:pid() })
    else
      log.error("schedule " .. name .. ": " .. tostring(err))
    end
  end
  for i = #children, 1, -1 do
    if children[i]:wait(0) then table.remove(children, i) end
  end
end

--- Serve until TERM/INT. opts: {listen=, workers=, scheduler=, grace=, config=, log_format=, quiet=, debug=}
-- Returns the exit code.
function M.run(settings, opts)
  local config = absolute(settings.path)
  local db <close> = assert(db_mod.open(settings.data_dir))
  for _, id in ipairs(deploy.recover(settings, db)) do
    log.warn("deployment " .. id .. " was interrupted by an earlier stop; marked INTERRUPTED")
  end
  local context = { config = config, channel = M.CHANNEL, log_format = opts.log_format, quiet = opts.quiet,
    debug = opts.debug }
  local addr = opts.listen or settings.server.listen
  local srv, err = server.listen({
    addr = addr,
    workers = opts.workers or settings.server.workers,
    handler = "moonops.api",
    context = context,
    max_body = settings.server.max_body,
    timeout = settings.server.timeout,
    background = { module = "moonops.serve", fn = "worker", channel = M.CHANNEL, context = context },
    signals = true,
  })
  if not srv then errors.raise(err, errors.FAILURE) end
  log.info("serving", { listen = addr, port = srv:port(), workers = srv:info().workers, config = config })
  local children, last_tick = {}, os.time()
  local code = 0
  while true do
    local sig = srv:wait({ timeout = 1 })
    if sig == "TERM" or sig == "INT" then
      log.info("stopping on SIG" .. sig)
      break
    elseif sig == "HUP" then
      local ok, s = pcall(settings_mod.load, config)
      if ok then
        settings = s
        log.info("reloaded " .. config, { generation = srv:reload() })
      else
        log.error("reload of " .. config .. " failed, keeping the old settings: " .. tostring(s))
      end
    end
    local info = srv:info()
    if info.background ~= "running" then
      log.error("the deploy worker stopped: " .. tostring(info.background_error or "it returned"))
      code = 1
      break
    end
    if opts.scheduler then
      local now = os.time()
      if now > last_tick then
        run_due_schedules(settings, last_tick, now, children)
        last_tick = now
      end
    end
  end
  local finished, why = srv:stop({ drain = M.DRAIN_SECONDS, grace = opts.grace or 30 })
  if not finished then
    local n = interrupt_running(db)
    log.warn(tostring(why) .. "; " .. n .. " running deployment(s) recorded INTERRUPTED")
  end
  srv:close()
  log.info("stopped")
  return code
end

return M
