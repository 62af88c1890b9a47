-- recipes/promote.lua: `moonops promote --from SRC --to DST` - dev -> staging -> prod, done safely.
local promote = require "moonops.promote"

local function finish(ctx, opts, p)
  if opts.json then
    ctx.print(ctx.json.pretty(promote.outcome(p)))
  else
    ctx.print(promote.report(p))
  end
  if p.settings then promote.record(p, ctx.store) end
  promote.close(p)
  return promote.EXIT[p.status]
end

return {
  summary = "Promote one workspace's branch into another's: merge (source wins), review, push",
  usage = "--from SRC --to DST [--branch B] [--dry-run] [--yes] [--diff] [--json]",
  description = [[
SRC and DST are workspace names from moonops.yml or repository URLs/paths. With
only --to and a `promotion:` chain in moonops.yml, the previous link is the source.
The target's working copy lives under <data_dir>/promote/<name> and is reused.
Steps: preflight and backup ref; fetch the source; merge in memory as
`git pull -X theirs --allow-unrelated-histories` would; review the changed files
(with their hunks, each marked as coming from the source, the target or both) and the
effective configuration change of the target's environment; push without
force, expecting the reviewed tip.
Exit codes: 0 pushed or nothing to do, 1 failure, 2 usage, 3 conflicts, 4 target moved.]],
  max_args = 0,
  options = {
    { "from", type = "string", metavar = "SRC", help = "source workspace, URL or path" },
    { "to", type = "string", metavar = "DST", help = "target workspace, URL or path" },
    { "branch", type = "string", metavar = "B", help = "branch on both sides (default: the workspaces' branches, else main)" },
    { "dry-run", type = "boolean", help = "stop after the review; push nothing" },
    { "yes", type = "boolean", short = "y", help = "push without asking (required when stdin is not a terminal)" },
    { "diff", type = "boolean", help = "show the text of every hunk of a modified file (default on a terminal)" },
    { "verbose", type = "boolean", help = "same as --diff" },
    { "json", type = "boolean", help = "print the outcome as JSON" },
  },
  examples = {
    "moonops promote --from my-workspace-dev --to my-workspace-staging --dry-run",
    "moonops promote --to my-workspace --yes           # source: previous link of the promotion chain",
    "moonops promote --from ../dev-repo --to git@github.com:org/staging.git --json --yes",
  },
  run = function(ctx, opts)
    local p = promote.plan(ctx, opts)
    local ok, err = pcall(function()
      -- 1. Preflight: the target's working copy is clean, on the branch, no merge
      --    in progress; its tip is saved under refs/moonops/backup/<UTC time>.
      promote.prepare(p)
      -- 2. Fetch the source branch and merge it in memory, source winning
      --    conflicting hunks, unrelated histories allowed.
      promote.fetch_source(p)
      promote.merge(p)
      if p.status then return end -- conflicts, or nothing to promote
      -- 3. Review: changed files and the effective configuration change.
      promote.review(p)
      if p.dry_run then
        p.status = "dry-run"
        return
      end
      if not opts.json then ctx.print(promote.report(p)) end
      if not promote.confirm(p) then ctx.fail("promotion cancelled; nothing pushed", 1) end
      -- 4. Push without force, expecting the reviewed tip.
      promote.push(p)
    end)
    if not ok then
      p.status, p.error = "failed", p.error or tostring(err)
      if opts.json then ctx.print(ctx.json.pretty(promote.outcome(p))) end
      if p.settings then promote.record(p, ctx.store) end
      promote.close(p)
      error(err, 0)
    end
    if p.status == "pushed" and not opts.json then
      ctx.print(string.format("pushed %s to %s %s\n", p.commit:sub(1, 12), p.to.label, p.branch))
      if p.settings then promote.record(p, ctx.store) end
      promote.close(p)
      return 0
    end
    return finish(ctx, opts, p)
  end,
}
