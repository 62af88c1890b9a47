--- `moonops serve`: the main loop and the deploy worker.
--
-- The main Lua state starts moonops.server with moonops.api as the handler
-- (one Lua state per worker thread) and a background thread running
-- M.worker (the deploy queue), then waits for signals:
--   TERM/INT  stop accepting, drain in-flight requests, let a running deployment
--             finish for up to `grace` seconds (else record it INTERRUPTED and stop
--             its commands: TERM, then KILL after STOP_SECONDS), return 0
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
-- After a deployment the worker pauses this long before it claims the next one, so the
-- deliveries of a burst of pushes (or a push storm) coalesce into one more deployment
-- instead of a deployment each. The first deployment after a quiet time starts at once.
M.SETTLE_SECONDS = 0.5
-- When a deployment outlives the grace period, its running command (a hook, an image
-- build) gets SIGTERM, and SIGKILL this many seconds later if it is still there.
M.STOP_SECONDS = 2

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

-- Workspaces with a QUEUED deployment: one index lookup per configured workspace, so the
-- cost does not grow with the history. With `sweep`, also a scan of the whole queue for
-- workspaces no longer in moonops.yml (at start, after a reload, and when idle).
local function queued_workspaces(settings, db, sweep)
  local list, seen = {}, {}
  for _, ws in ipairs(settings.workspaces or {}) do
    local id = tostring(ws.id or ws.name)
    if not seen[id] and db:one("SELECT 1 AS x FROM deployments WHERE workspace_id = ? AND status = 'QUEUED' LIMIT 1", id) then
      list[#list + 1] = { workspace_id = id }
    end
    seen[id] = true
  end
  if sweep then
    for _, r in ipairs(db:rows("SELECT DISTINCT workspace_id FROM deployments WHERE status = 'QUEUED'") or {}) do
      if not seen[r.workspace_id] then list[#list + 1] = r end
    end
  end
  return list
end

-- Run every queued deployment once. Returns pending (something is waiting on a busy
-- workspace, so the loop polls again soon) and ran (a deployment ran).
local function drain_queue(settings, db, control, sweep)
  local pending, ran = false, false
  for _, r in ipairs(queued_workspaces(settings, db, sweep)) do
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
        ran = true
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
  return pending, ran
end

-- Sleep `seconds` in short steps, returning early when the server stops.
local function pause(control, seconds)
  local deadline = proc.monotonic() + seconds
  while not control.stopping() do
    local left = deadline - proc.monotonic()
    if left <= 0 then return end
    proc.sleep(math.min(left, 0.1))
  end
end

--- worker(context, control): the deploy queue loop. context = {config=, channel=, log_format=, quiet=, debug=}
function M.worker(ctx, control)
  configure_log(ctx)
  local ch <close> = assert(notify.channel(ctx.channel or M.CHANNEL))
  local settings = settings_mod.load(ctx.config)
  require("moonops.plugins").load_enabled(settings)
  local db <close> = assert(db_mod.open(settings.data_dir))
  local generation = control.generation()
  local sweep = true
  while not control.stopping() do
    if control.generation() ~= generation then
      generation = control.generation()
      local ok, s = pcall(settings_mod.load, ctx.config)
      if ok then settings = s end
      sweep = true
    end
    local pending, ran = drain_queue(settings, db, control, sweep)
    if control.stopping() then break end
    if ran then
      pause(control, M.SETTLE_SECONDS)
      sweep = false
    else
      -- Woken by the API when work is queued; poll anyway so a busy workspace is retried.
      sweep = not ch:wait(pending and 1 or M.POLL_SECONDS)
    end
  end
end

-- ---------------------------------------------------------------------------
-- The main loop

local INTERRUPTED = "interrupted: moonops serve stopped before it finished"

local function interrupt_running(db)
  local ids = {}
  for _, r in ipairs(db:rows("SELECT id FROM deployments WHERE status = 'RUNNING' AND pid = ?", proc.pid()) or {}) do
    ids[#ids + 1] = r.id
  end
  db:exec([[UPDATE deployments SET status = 'INTERRUPTED', finished_at = ?, error = ?
    WHERE status = 'RUNNING' AND pid = ?]], db_mod.now(), INTERRUPTED, proc.pid())
  return ids
end

-- The deployment still running after the grace period is left behind by the process:
-- stop its commands so that none outlives it. The deploy worker then sees its hook
-- killed and records an ERROR; once it has returned (or STOP_SECONDS more have passed)
-- such deployments are recorded INTERRUPTED again (one that went live stays COMPLETE).
local function stop_commands(srv, db, ids)
  local n = proc.terminate_all(M.STOP_SECONDS)
  if n == 0 then return end
  log.warn("stopped " .. n .. " running command(s) of the deploy worker (hooks, image builds)")
  local deadline = proc.monotonic() + M.STOP_SECONDS
  while srv:info().background == "running" and proc.monotonic() < deadline do proc.sleep(0.05) end
  for _, id in ipairs(ids) do
    db:exec("UPDATE deployments SET status = 'INTERRUPTED', error = ? WHERE id = ? AND status = 'ERROR'",
      INTERRUPTED, id)
  end
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
    debug = opts.debug, batch = true }
  local addr = opts.listen or settings.server.listen
  local srv, err = server.listen({
    addr = addr,
    workers = opts.workers or settings.server.workers,
    handler = "moonops.api",
    batch = "batch",
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
    local ids = interrupt_running(db)
    log.warn(tostring(why) .. "; " .. #ids .. " running deployment(s) recorded INTERRUPTED")
    stop_commands(srv, db, ids)
  end
  srv:close()
  log.info("stopped")
  return code
end

return M
