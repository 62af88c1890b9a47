-- recipes/schedule.lua: `moonops schedule list|run|crontab|install|uninstall`
local schedule = require "moonops.schedule"

local function print_list(ctx, rows)
  if #rows == 0 then
    ctx.print("no schedules in ", ctx.settings.path, "\n")
    return
  end
  ctx.print(string.format("%-20s %-16s %-10s %-21s %s\n", "NAME", "CRON", "RECIPE", "NEXT RUN", "LAST RUN"))
  for _, r in ipairs(rows) do
    local last = "never"
    if r.last_run then
      last = string.format("%s %s exit %s%s", r.last_run.started_at, r.last_run.status,
        tostring(r.last_run.exit_code or "-"), r.last_run.duration and (" in " .. r.last_run.duration .. "s") or "")
    end
    ctx.print(string.format("%-20s %-16s %-10s %-21s %s\n", r.name, r.cron, r.recipe,
      r.next_run or ("error: " .. tostring(r.error)), last))
  end
end

return {
  summary = "Run recipes on cron schedules: list, run now, crontab, install",
  description = "Schedules come from `schedules:` in moonops.yml. Runs never overlap (a held lock exits 4)\n" ..
    "and every run is recorded with its exit code and log file.",
  commands = {
    list = {
      summary = "every schedule with its next run and last run",
      options = { { "json", type = "boolean", help = "print JSON" } },
      run = function(ctx, opts)
        local rows = schedule.list(ctx.settings, ctx.store)
        if opts.json then
          for _, r in ipairs(rows) do r.args = ctx.json.array(r.args) end
          ctx.print(ctx.json.pretty(ctx.json.array(rows)))
        else
          print_list(ctx, rows)
        end
        return 0
      end,
    },
    run = {
      usage = "NAME",
      summary = "run one schedule now, under its lock; exits with the recipe's exit code",
      options = { { "json", type = "boolean", help = "print the run record as JSON" } },
      max_args = 1,
      run = function(ctx, opts)
        local name = ctx.args[1] or ctx.fail("schedule run needs a schedule NAME", 2)
        local quiet = opts.json or ctx.global.quiet
        local rec = schedule.run(ctx.settings, name, {
          db = ctx.store,
          on_output = not quiet and function(stream, chunk)
            local f = stream == "stderr" and io.stderr or io.stdout
            f:write(ctx.log.mask(chunk))
            f:flush()
          end or nil,
        })
        if opts.json then ctx.print(ctx.json.pretty(rec)) end
        return rec.exit_code
      end,
    },
    crontab = {
      summary = "print the crontab lines for every schedule",
      run = function(ctx)
        for _, l in ipairs(schedule.crontab_lines(ctx.settings)) do ctx.print(l, "\n") end
        return 0
      end,
    },
    install = {
      summary = "write the schedules into your crontab (between BEGIN/END moonops markers)",
      run = function(ctx)
        local n = schedule.install(ctx.settings)
        ctx.log.info(string.format("installed %d schedule%s into the crontab for %s", n, n == 1 and "" or "s",
          ctx.settings.path))
        return 0
      end,
    },
    uninstall = {
      summary = "remove this moonops.yml's schedules from your crontab",
      run = function(ctx)
        local removed = schedule.uninstall(ctx.settings)
        ctx.log.info(removed and ("removed the schedules of " .. ctx.settings.path .. " from the crontab")
          or "nothing to remove: the crontab has no block for " .. ctx.settings.path)
        return 0
      end,
    },
  },
}
