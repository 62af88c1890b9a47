-- recipes/serve.lua: `moonops serve` - the webhook and REST API server; pushes deploy.
local serve = require "moonops.serve"

return {
  summary = "Serve webhooks and the REST API: a signed push deploys the workspace",
  description = "Listens for signed webhook deliveries (GitHub, Gitea, Forgejo, GitLab, Bitbucket) and the\n"
    .. "REST API, queues deployments and runs them one at a time per workspace.\n"
    .. "SIGTERM drains and stops; SIGHUP reloads moonops.yml (a broken file keeps the old settings).",
  options = {
    { "listen", type = "string", metavar = "ADDR", help = "address to listen on (default server.listen, 127.0.0.1:8080)" },
    { "workers", type = "integer", help = "worker threads, each with its own Lua state (default server.workers)" },
    { "scheduler", type = "boolean", help = "also run due schedules from moonops.yml" },
    { "grace", type = "number", default = 30, help = "seconds a running deployment may take to finish on SIGTERM" },
  },
  max_args = 0,
  examples = {
    "moonops serve",
    "moonops --log-format json serve --listen 0.0.0.0:8080 --workers 4",
  },
  run = function(ctx, opts)
    if opts.workers and (opts.workers < 1 or opts.workers > 256) then
      ctx.fail("--workers must be 1..256", 2)
    end
    return serve.run(ctx.settings, {
      listen = opts.listen,
      workers = opts.workers,
      scheduler = opts.scheduler,
      grace = opts.grace,
      log_format = ctx.global["log-format"],
      quiet = ctx.global.quiet,
      debug = ctx.global.debug,
    })
  end,
}
