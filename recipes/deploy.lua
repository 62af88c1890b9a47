-- recipes/deploy.lua: `moonops deploy W` - fetch, stage, validate, run hooks, switch live.
local errors = require "moonops.errors"

local function short(sha)
  return sha and sha:sub(1, 12) or "-"
end

local function print_row(ctx, row)
  ctx.print(string.format("deployment %d %s: %s %s%s%s\n", row.id, row.status, row.workspace, short(row.commit_sha),
    row.release and (" release " .. row.release) or "", row.error and (": " .. row.error) or ""))
end

local function print_table(ctx, rows)
  local colour = ctx.term.colour(1)
  local paint = {
    COMPLETE = "green", ERROR = "red", INTERRUPTED = "red", RUNNING = "yellow", QUEUED = "blue", SUPERSEDED = "dim",
  }
  ctx.print(string.format("%-6s %-11s %-8s %-12s %-20s %-20s %s\n", "ID", "STATUS", "TRIGGER", "COMMIT", "CREATED",
    "FINISHED", "RELEASE / ERROR"))
  for _, r in ipairs(rows) do
    local status = string.format("%-11s", r.status)
    if colour then status = ctx.term.paint(paint[r.status] or "bold", status) end
    local trigger = r.trigger .. (r.rollback_of and "*" or "")
    ctx.print(string.format("%-6d %s %-8s %-12s %-20s %-20s %s\n", r.id, status, trigger, short(r.commit_sha),
      r.created_at or "-", r.finished_at or "-", r.error or r.release or ""))
  end
end

local function progress_fn(ctx)
  if ctx.global.quiet or not ctx.term.isatty(2) then return nil end
  local bar = ctx.term.progress("fetch")
  return function(p)
    if type(p) == "table" then
      local done = p.received_objects or p.indexed_objects or 0
      bar:update(done, p.total_objects, p.received_bytes and ctx.term.human_bytes(p.received_bytes) or nil)
      if p.total_objects and p.total_objects > 0 and done >= p.total_objects then bar:finish("done") end
    end
  end
end

return {
  summary = "Deploy a workspace: fetch, validate, run hooks, switch live; history and rollback",
  usage = "W [--ref REF] [--json] [--no-wait] | W --list | W --show ID | W --rollback [ID]",
  description = [[
W is a workspace name or id from moonops.yml. Without --list/--show/--rollback the
branch tip (or --ref) is fetched into a bare mirror, staged as a new release,
validated against the active environment, its on_deploy hooks run, and `current`
switched to it atomically. Exit 0 when the deployment is COMPLETE, 1 otherwise,
4 when the workspace is busy and --no-wait is given.]],
  max_args = 2,
  options = {
    { "ref", type = "string", metavar = "REF", help = "deploy this branch, tag or commit instead of the branch tip" },
    { "json", type = "boolean", help = "print the deployment (or the history) as JSON" },
    { "no-wait", type = "boolean", help = "exit 4 at once when another deployment of W is running" },
    { "list", type = "boolean", help = "show the deployment history" },
    { "limit", type = "integer", default = 20, help = "how many deployments --list shows" },
    { "show", type = "integer", metavar = "ID", help = "show one deployment with its log" },
    { "rollback", type = "boolean", help = "switch back to the previous complete release (or deployment ID's)" },
  },
  examples = {
    "moonops deploy my-workspace",
    "moonops deploy my-workspace --ref v1.2.0 --json",
    "moonops deploy my-workspace --list --limit 5",
    "moonops deploy my-workspace --rollback",
  },
  run = function(ctx, opts)
    local name = ctx.args[1]
    if not name then errors.raise("usage: moonops deploy W (a workspace name or id from moonops.yml)", errors.USAGE) end
    local modes = 0
    for _, k in ipairs({ "list", "show", "rollback" }) do
      if opts[k] then modes = modes + 1 end
    end
    if modes > 1 then errors.raise("--list, --show and --rollback cannot be combined", errors.USAGE) end
    if ctx.args[2] and not opts.rollback then
      errors.raise("unexpected argument " .. ctx.args[2] .. " (only --rollback takes an ID)", errors.USAGE)
    end
    if opts.ref and modes > 0 then errors.raise("--ref only applies to a new deployment", errors.USAGE) end
    if opts.limit < 1 then errors.raise("--limit must be at least 1", errors.USAGE) end

    local deploy = require "moonops.deploy"
    local settings = ctx.settings
    local ws = require("moonops.settings").workspace(settings, name)
    local db = ctx.store
    deploy.recover(settings, db)

    if opts.list then
      local rows = deploy.list(db, ws, { limit = opts.limit })
      if opts.json then
        local out = ctx.json.array()
        for _, r in ipairs(rows) do out[#out + 1] = deploy.to_json(r) end
        ctx.print(ctx.json.pretty(out))
      elseif #rows == 0 then
        ctx.print(string.format("workspace %s has no deployments yet: run 'moonops deploy %s'\n", ws.name, ws.name))
      else
        print_table(ctx, rows)
      end
      return 0
    end

    if opts.show then
      local row, err = deploy.get(db, ws, opts.show)
      if not row then errors.raise(err, errors.FAILURE) end
      if opts.json then
        ctx.print(ctx.json.pretty(deploy.to_json(row, { log = true })))
      else
        local j = deploy.to_json(row)
        for _, k in ipairs({ "id", "workspace", "status", "trigger", "delivery", "ref", "after", "commit", "release",
          "rollback_of", "created_at", "started_at", "finished_at", "error" }) do
          if j[k] ~= ctx.json.null then ctx.print(string.format("%-12s %s\n", k, tostring(j[k]))) end
        end
        ctx.print("log:\n" .. (row.log or ""))
      end
      return 0
    end

    local on_log
    if not ctx.global.quiet and not opts.json then
      on_log = function(line) io.stderr:write(line, "\n") end
    end
    local row, err, code
    if opts.rollback then
      local id
      if ctx.args[2] then
        id = math.tointeger(tonumber(ctx.args[2]))
        if not id then errors.raise("--rollback takes a deployment ID, got " .. ctx.args[2], errors.USAGE) end
      end
      row, err, code = deploy.rollback(settings, db, ws, { id = id, wait = not opts["no-wait"], on_log = on_log })
    else
      row, err, code = deploy.run(settings, db, ws, {
        trigger = "cli",
        ref = opts.ref,
        wait = not opts["no-wait"],
        on_log = on_log,
        progress = progress_fn(ctx),
      })
    end
    if not row then errors.raise(err, code == "busy" and errors.BUSY or errors.FAILURE) end
    if opts.json then
      ctx.print(ctx.json.pretty(deploy.to_json(row)))
    else
      print_row(ctx, row)
    end
    return row.status == "COMPLETE" and 0 or 1
  end,
}
