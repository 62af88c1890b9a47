--- Promotion: merge one workspace's branch into another's the way
-- `git pull -X theirs --allow-unrelated-histories SRC BRANCH` does, review it, push it.
--
-- A promotion `p` is a plain table that each step fills in:
--   p = M.plan(ctx, opts)     source and target endpoints, branch, working copy path
--   M.prepare(p)              clone or update the target's working copy; preflight; backup ref
--   M.fetch_source(p)         fetch the source branch
--   M.merge(p)                the merge, in memory (conflicts stop here)
--   M.review(p)               changed files and the effective configuration change
--   M.push(p)                 push without force, expecting the reviewed tip
--   M.record(p, db)           a row in the store's promotions table
-- `M.outcome(p)` is the JSON shape of design §13; `p.status` is one of pushed,
-- up-to-date, dry-run, conflicts, target-moved, failed.
local errors = require "moonops.errors"
local fs = require "moonops.fs"
local git = require "moonops.git"
local json = require "moonops.json"
local log = require "moonops.log"
local term = require "moonops.term"
local workspace = require "moonops.workspace"

local M = {}

M.EXIT = { ["pushed"] = 0, ["up-to-date"] = 0, ["dry-run"] = 0, ["conflicts"] = errors.CONFLICT,
  ["target-moved"] = errors.BUSY, ["failed"] = errors.FAILURE }

-- Files that can change a resolved Meltano configuration (meltano.yml, its includes, .env).
M.CONFIG_FILES = { "*.yml", "*.yaml", ".env" }

local function fail(msg, code)
  errors.raise(msg, code or errors.FAILURE)
end

--- True when `s` names a repository (URL, scp-like address or path) rather than a workspace.
function M.is_repository(s)
  return s:find("://", 1, true) ~= nil or s:find("/", 1, true) ~= nil or s:match("^[%w._-]+@[%w._-]+:") ~= nil
    or s == "." or s == ".." or fs.exists(s)
end

--- A directory name for a repository URL or path: no userinfo, safe characters only.
function M.sanitise(url)
  local s = git.redact_url(url):gsub("^%a[%w+.-]*://", ""):gsub("[^%w._-]+", "_"):gsub("^[_.]+", "")
  s = s:gsub("_+$", "")
  if s == "" then s = "repository" end
  return s
end

local function config_present(ctx)
  local path = ctx.config_path
  return path ~= nil and fs.exists(path)
end

local function workspace_of(settings_mod, s, name)
  local ok, ws, err = pcall(settings_mod.workspace, s, name)
  if not ok then error(ws, 0) end
  if not ws then
    local names = {}
    for _, w in ipairs(s.workspaces or {}) do names[#names + 1] = w.name end
    fail(err or string.format("unknown workspace %q (known: %s)", name, table.concat(names, ", ")), errors.USAGE)
  end
  return ws
end

local function absolute(path)
  if path:find("://", 1, true) or path:match("^[%w._-]+@[%w._-]+:") or path:sub(1, 1) == "/" then return path end
  return fs.realpath(path) or path
end

-- An endpoint: {label=, url=, branch=, credentials=, environment=, workspace=}.
local function endpoint(ctx, spec, settings)
  if settings and not M.is_repository(spec) then
    local ws = workspace_of(require("moonops.settings"), settings, spec)
    return { label = ws.name, name = ws.name, url = absolute(ws.repository), branch = ws.branch,
      environment = ws.environment, credentials = workspace.git_credentials(ws), workspace = ws }
  end
  if not M.is_repository(spec) then
    fail(string.format("unknown workspace %q: no moonops.yml found (%s); give a repository URL or path",
      spec, ctx.config_path or "moonops.yml"), errors.USAGE)
  end
  local is_path = not spec:find("://", 1, true) and not spec:match("^[%w._-]+@[%w._-]+:")
  if is_path and not fs.exists(spec) then fail(string.format("no repository at %s", spec)) end
  return { label = git.redact_url(spec), url = absolute(spec) }
end

--- Work out what to promote: source and target endpoints, branch, working copy.
-- opts: from, to, branch, dry_run, yes (the recipe's options). Raises usage errors.
function M.plan(ctx, opts)
  local settings
  if config_present(ctx) then settings = ctx.settings end
  local from, to = opts.from, opts.to
  if not to then fail("promote needs --to (a workspace name or a repository)", errors.USAGE) end
  if not from then
    local chain = settings and settings.promotion
    if type(chain) ~= "table" or #chain == 0 then
      fail("promote needs --from (no promotion: chain in moonops.yml to take it from)", errors.USAGE)
    end
    for i, name in ipairs(chain) do
      if name == to then
        if i == 1 then fail(string.format("%s is the first link of the promotion chain; give --from", to), errors.USAGE) end
        from = chain[i - 1]
      end
    end
    if not from then
      fail(string.format("%s is not in the promotion chain (%s); give --from", to, table.concat(chain, " -> ")),
        errors.USAGE)
    end
  end
  local p = { settings = settings, ctx = ctx }
  p.from = endpoint(ctx, from, settings)
  p.to = endpoint(ctx, to, settings)
  if p.from.url == p.to.url then fail("--from and --to are the same repository", errors.USAGE) end
  p.branch = opts.branch or p.to.branch or "main"
  p.from.branch = opts.branch or p.from.branch or p.branch
  local base = settings and settings.data_dir or ".moonops"
  p.dir = base .. "/promote/" .. (p.to.workspace and p.to.name or M.sanitise(p.to.url))
  p.dry_run, p.yes = opts["dry-run"] or opts.dry_run, opts.yes
  -- the text of each hunk: asked for, or on a terminal
  p.show_diff = opts.diff or opts.verbose or (not opts.json and term.isatty(1))
  p.files, p.config_changes, p.conflicts = json.array(), json.array(), json.array()
  p.unrelated = false
  return p
end

-- A progress function for a TTY bar, or nil.
local function progress_bar(label)
  if term.quiet() or not term.isatty(2) then return nil end
  local bar = term.progress(label)
  return function(ev)
    if ev.phase == "pushing" then
      bar:update(ev.current, ev.total, term.human_bytes(ev.bytes))
    else
      bar:update(ev.received_objects, ev.total_objects, term.human_bytes(ev.received_bytes))
    end
  end, bar
end

local function net_opts(ep, label)
  local fn, bar = progress_bar(label)
  return { credentials = ep.credentials, progress = fn }, bar
end

local function check(v, err, code)
  if v == nil then fail(err) end
  return v, err, code
end

-- The target tip the merge is based on: refs/remotes/origin/<branch>.
local function tracking(p)
  return "refs/remotes/origin/" .. p.branch
end

--- Clone or update the target's working copy, check it is safe to use, back up its tip.
function M.prepare(p)
  local repo
  local fresh = not fs.exists(p.dir .. "/.git")
  if fresh then
    local parent = p.dir:match("^(.*)/[^/]+$")
    if parent then check(fs.mkdirs(parent)) end
    repo = check(git.init(p.dir, { branch = p.branch }))
    check(repo:remote_add("origin", p.to.url))
  else
    repo = check(git.open(p.dir))
    local url
    for _, r in ipairs(repo:remotes()) do
      if r.name == "origin" then url = r.url end
    end
    if url == nil then
      check(repo:remote_add("origin", p.to.url))
    elseif url ~= p.to.url then
      check(repo:remote_set_url("origin", p.to.url))
    end
  end
  p.repo = repo
  local function give_up(msg)
    if fresh then
      repo:close()
      p.repo = nil
      fs.remove_tree(p.dir)
    end
    fail(msg)
  end

  -- preflight: no merge in progress, clean, on the branch
  local state = repo:state()
  if state ~= "none" then
    fail(string.format("working copy %s has a %s in progress; finish or abort it first", p.dir, state))
  end
  local status = check(repo:status())
  if #status > 0 then
    local names = {}
    for i = 1, math.min(#status, 5) do names[i] = status[i].path .. " (" .. status[i].status .. ")" end
    fail(string.format("working copy %s has local changes: %s%s; commit or discard them (or remove the directory)",
      p.dir, table.concat(names, ", "), #status > 5 and ", ..." or ""))
  end
  local head = repo:head()
  if head.detached then fail(string.format("working copy %s has a detached HEAD; check out %s", p.dir, p.branch)) end

  -- the target's current tip
  check(repo:delete_ref(tracking(p)))
  local o, bar = net_opts(p.to, "fetch " .. p.to.label)
  local ok, err = repo:fetch("origin", { "+refs/heads/" .. p.branch .. ":" .. tracking(p) }, o)
  if bar then bar:finish() end
  if not ok then give_up(err) end
  p.old_commit = repo:resolve(tracking(p))
  if not p.old_commit then give_up(string.format("branch %s not found in %s", p.branch, p.to.label)) end

  -- A new copy gets its files once, at the end (M.close), from whatever its branch is
  -- then; a clean copy on another branch switches now.
  if fresh then
    check(repo:update_ref("refs/heads/" .. p.branch, p.old_commit, { message = "moonops: branch" }))
    p.fresh = true
    head = repo:head()
  elseif head.unborn or head.ref ~= "refs/heads/" .. p.branch then
    if not repo:resolve("refs/heads/" .. p.branch) then
      check(repo:update_ref("refs/heads/" .. p.branch, p.old_commit, { expect = "", message = "moonops: branch" }))
    end
    check(repo:checkout(p.branch))
    head = repo:head()
  end
  if head.commit ~= p.old_commit then
    local base = repo:merge_base(head.commit, p.old_commit)
    if base ~= head.commit then
      fail(string.format("working copy %s has commits that are not on %s %s; push or drop them first",
        p.dir, p.to.label, p.branch))
    end
  end

  -- backup of the old tip before anything changes
  local stamp = os.date("!%Y%m%dT%H%M%SZ")
  local ref = "refs/moonops/backup/" .. stamp
  for i = 2, 100 do
    if repo:update_ref(ref, p.old_commit, { expect = "", message = "moonops: backup before promote" }) then break end
    ref = string.format("refs/moonops/backup/%s-%d", stamp, i)
  end
  p.backup_ref = ref
  return p
end

--- Fetch the source branch into refs/remotes/moonops-source/<branch>.
function M.fetch_source(p)
  local ref = "refs/remotes/moonops-source/" .. p.from.branch
  check(p.repo:delete_ref(ref))
  local o, bar = net_opts(p.from, "fetch " .. p.from.label)
  local ok, err = p.repo:fetch(p.from.url, { "+refs/heads/" .. p.from.branch .. ":" .. ref }, o)
  if bar then bar:finish() end
  if not ok then
    fail(err)
  end
  p.source_commit = p.repo:resolve(ref)
  if not p.source_commit then fail(string.format("branch %s not found in %s", p.from.branch, p.from.label)) end
  return p
end

--- Merge the source into the target's tip in memory, favouring the source.
function M.merge(p)
  local r = check(p.repo:merge(p.old_commit, p.source_commit, {
    favor = "theirs",
    allow_unrelated = true,
    message = string.format("Merge branch '%s' of %s\n", p.from.branch, p.from.label),
  }))
  p.merge = r
  p.unrelated = r.unrelated and true or false
  for _, c in ipairs(r.conflicts) do
    p.conflicts[#p.conflicts + 1] = { path = c.path, kind = c.kind, ours = c.ours, theirs = c.theirs,
      ours_path = c.ours_path, theirs_path = c.theirs_path, ours_from = c.ours_from, theirs_from = c.theirs_from }
  end
  if #p.conflicts > 0 then
    p.status = "conflicts"
  elseif r.up_to_date then
    p.status = "up-to-date"
    p.commit = p.old_commit
  else
    p.commit = r.commit
    for _, f in ipairs(r.files) do p.files[#p.files + 1] = { path = f.path, change = f.change } end
  end
  return p
end

local function touches_config(files)
  for _, f in ipairs(files) do
    local name = f.path:match("[^/]*$")
    if name == ".env" or name:match("%.ya?ml$") then return true end
  end
  return false
end

-- Resolve the configuration of `commit` in environment `env_name` (exported to a temp dir).
local function resolved_config(p, commit, tmp, env_name)
  local meltano = require "moonops.meltano"
  local dir = tmp .. "/" .. commit
  check(p.repo:export(commit, dir, { match = M.CONFIG_FILES }))
  if not fs.exists(dir .. "/meltano.yml") then return nil end
  local project, err = meltano.load(dir, { env = {} })
  if not project then return nil, err end
  if not env_name then
    env_name = p.to.environment or project.default_environment
  end
  local known = false
  for _, e in ipairs(project.environments) do known = known or e == env_name end
  if not known then env_name = nil end
  local res, rerr = meltano.resolve(project, { environment = env_name, env = {} })
  if not res then return nil, rerr end
  return res, nil, env_name
end

-- Where diff(source -> merged) says the merged file differs from the source's version:
-- `lines[n]` for merged lines that are not the source's, `gaps[n]` where the merged file
-- lacks source lines after merged line n. nil when the file is the source's version.
local function differs_from_source(f)
  if not f then return nil end
  local d = { lines = {}, gaps = {}, whole = f.change == "added" }
  for _, h in ipairs(f.hunks or {}) do
    if h.new_lines == 0 then
      d.gaps[h.new_start] = true
    else
      for n = h.new_start, h.new_start + h.new_lines - 1 do d.lines[n] = true end
    end
  end
  return d
end

--- Which side a hunk of diff(target's old tip -> merge) came from, line by line: an added
-- line that is the source's line at that place, or a removed line the source does not
-- have there either, came from the source; an added line the source does not have, and a
-- context line where the merge kept the target's own change, came from the target.
-- Returns "source", "target" or "both". `src` is differs_from_source() of the file.
function M.hunk_origin(h, src)
  if not src then return "source" end
  local from_source, from_target = false, false
  local gap = h.new_lines > 0 and h.new_start - 1 or h.new_start
  for _, l in ipairs(h.lines or {}) do
    if l.origin == "+" then
      if src.whole or src.lines[l.new_line] then from_target = true else from_source = true end
      gap = l.new_line
    elseif l.origin == " " then
      if src.whole or src.lines[l.new_line] then from_target = true end
      gap = l.new_line
    elseif l.origin == "-" then
      if src.gaps[gap] then from_target = true else from_source = true end
    end
  end
  if from_source and from_target then return "both" end
  return from_target and "target" or "source"
end

--- The hunks of every changed file relative to the target's old tip, each marked with
-- the side it came from (see M.hunk_origin). A fast-forward is all the source's work;
-- otherwise the merge is compared with the source's version of the same files.
function M.hunks(p)
  local repo = p.repo
  local changed = check(repo:diff(p.old_commit, p.commit, { lines = true, renames = false }))
  local src = {}
  if not (p.merge and p.merge.fast_forward) and #changed > 0 then
    local paths = {}
    for i, f in ipairs(changed) do paths[i] = f.path end
    for _, f in ipairs(check(repo:diff(p.source_commit, p.commit, { hunks = true, context = 0, renames = false,
      paths = paths }))) do
      src[f.path] = f
    end
  end
  local by_path = {}
  for _, f in ipairs(changed) do
    local d = differs_from_source(src[f.path])
    local hunks = json.array()
    for i, h in ipairs(f.hunks or {}) do
      hunks[i] = { old_start = h.old_start, old_lines = h.old_lines, new_start = h.new_start,
        new_lines = h.new_lines, additions = h.additions, deletions = h.deletions,
        from = M.hunk_origin(h, d), lines = h.lines }
    end
    by_path[f.path] = { hunks = hunks, binary = f.binary, from = d == nil and "source" or "target",
      additions = f.additions, deletions = f.deletions }
  end
  for _, f in ipairs(p.files) do
    local h = by_path[f.path]
    if h then
      f.hunks, f.binary, f.additions, f.deletions = h.hunks, h.binary, h.additions, h.deletions
      if h.binary then f.from = h.from end
    else
      f.hunks = json.array()
    end
  end
  return p
end

--- The review: changed files (already from the merge) and the effective
-- configuration change of the target's environment, secrets masked.
function M.review(p)
  if p.status then return p end
  M.hunks(p)
  if not touches_config(p.files) then return p end
  local tmp = check(fs.mkdtemp((os.getenv("TMPDIR") or "/tmp") .. "/moonops-review."))
  local ok, err = pcall(function()
    local new, nerr, env_name = resolved_config(p, p.commit, tmp, nil)
    if nerr then p.config_error = "after the promotion: " .. nerr end
    local old, oerr = resolved_config(p, p.old_commit, tmp, env_name)
    if oerr then p.config_warning = "before the promotion: " .. oerr end
    if not new and not old then return end
    local meltano = require "moonops.meltano"
    local empty = { plugins = {} }
    local changes = meltano.diff(old or empty, new or empty)
    p.environment = env_name
    for _, c in ipairs(changes) do
      p.config_changes[#p.config_changes + 1] = { environment = env_name or json.null, plugin = c.plugin,
        type = c.type, setting = c.setting, from = c.from == nil and json.null or c.from,
        to = c.to == nil and json.null or c.to }
    end
  end)
  fs.remove_tree(tmp)
  if not ok then error(err, 0) end
  return p
end

--- Push the merge to the target's branch, expecting the tip that was reviewed.
-- Sets p.status to pushed or target-moved; raises on a rejected push.
function M.push(p)
  local repo = p.repo
  local staging = "refs/moonops/promote/" .. p.branch
  check(repo:update_ref(staging, p.commit, { message = "moonops: promote" }))
  local o, bar = net_opts(p.to, "push " .. p.to.label)
  o.expect = p.old_commit
  local ok, err, code = repo:push(p.to.url, { staging .. ":refs/heads/" .. p.branch }, o)
  if bar then bar:finish() end
  if not ok then
    if code == "EMOVED" then
      p.status, p.error = "target-moved", string.format("target moved: %s %s is no longer at %s (reviewed); "
        .. "run the promotion again", p.to.label, p.branch, p.old_commit:sub(1, 12))
      return p
    end
    p.status, p.error = "failed", err
    fail(err)
  end
  p.status = "pushed"
  -- the working copy follows what was pushed (it was clean)
  repo:update_ref(tracking(p), p.commit, { message = "moonops: promote" })
  repo:update_ref("refs/heads/" .. p.branch, p.commit, { message = "moonops: promote" })
  if not p.fresh then
    local cok, cerr = repo:checkout(p.branch, { force = true })
    if not cok then log.warn("promote: pushed, but updating the working copy failed: " .. cerr) end
  end
  return p
end

--- The outcome as the JSON shape of design §13.
function M.outcome(p)
  local function or_null(v) if v == nil then return json.null end return v end
  local files = json.array()
  for i, f in ipairs(p.files) do
    local hunks = json.array()
    for j, h in ipairs(f.hunks or {}) do
      hunks[j] = { old_start = h.old_start, old_lines = h.old_lines, new_start = h.new_start, new_lines = h.new_lines,
        additions = h.additions, deletions = h.deletions, from = h.from }
    end
    files[i] = { path = f.path, change = f.change, hunks = hunks, binary = f.binary, from = f.from }
  end
  local conflicts = json.array()
  for i, c in ipairs(p.conflicts) do
    conflicts[i] = { path = c.path, kind = c.kind, ours_path = c.ours_path, theirs_path = c.theirs_path,
      ours_from = c.ours_from, theirs_from = c.theirs_from }
  end
  return {
    status = p.status or "failed",
    from = p.from and p.from.label or json.null,
    to = p.to and p.to.label or json.null,
    branch = or_null(p.branch),
    old_commit = or_null(p.old_commit),
    commit = or_null(p.commit),
    backup_ref = or_null(p.backup_ref),
    unrelated = p.unrelated and true or false,
    fast_forward = p.merge and p.merge.fast_forward or false,
    files = files,
    config_changes = p.config_changes or json.array(),
    conflicts = conflicts,
    error = p.error,
    config_error = p.config_error,
  }
end

--- Record the promotion in the store (when moonops.yml gives a data_dir).
function M.record(p, db)
  require("moonops.plugins").emit("promotion", M.outcome(p))
  if not db then return end
  local ok, err = db:exec([[INSERT INTO promotions (source, target, branch, status, old_commit, commit_sha,
    backup_ref, created_at, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)]],
    p.from.label, p.to.label, p.branch, p.status or "failed", p.old_commit, p.commit, p.backup_ref,
    os.date("!%Y-%m-%dT%H:%M:%SZ"), json.encode(M.outcome(p)))
  if not ok then log.warn("promote: could not record the promotion: " .. tostring(err)) end
end

--- Ask on a TTY; refuse on anything else. Returns true to go on.
function M.confirm(p)
  if p.yes then return true end
  if not (fs.isatty(0) and fs.isatty(2)) then
    fail("refusing to push without confirmation: stdin is not a terminal; pass --yes (or --dry-run to review)",
      errors.USAGE)
  end
  io.stderr:write(string.format("Push %d changed file%s to %s %s? [y/N] ", #p.files, #p.files == 1 and "" or "s",
    p.to.label, p.branch))
  io.stderr:flush()
  local answer = io.stdin:read("l") or ""
  return answer:lower():match("^y") ~= nil
end

--- Human-readable review and result, for a terminal.
function M.report(p)
  local out = {}
  local function add(fmt, ...) out[#out + 1] = string.format(fmt, ...) end
  add("promote %s -> %s (%s)", p.from.label, p.to.label, p.branch)
  if p.backup_ref then add("backup: %s = %s", p.backup_ref, p.old_commit:sub(1, 12)) end
  if p.status == "conflicts" then
    add("%d conflict%s that -X theirs cannot resolve; nothing was pushed:", #p.conflicts,
      #p.conflicts == 1 and "" or "s")
    for _, c in ipairs(p.conflicts) do
      if c.ours_from or c.theirs_from then
        add("  %-14s %s  (target renamed %s to it, source renamed %s)", c.kind, c.path, c.ours_from, c.theirs_from)
      elseif c.ours_path or c.theirs_path then
        local function side(path) return path and "renamed to " .. path or "deleted" end
        add("  %-14s %s  (target: %s, source: %s)", c.kind, c.path, side(c.ours_path), side(c.theirs_path))
      else
        add("  %-14s %s  (target %s, source %s)", c.kind, c.path, c.ours and c.ours:sub(1, 12) or "deleted",
          c.theirs and c.theirs:sub(1, 12) or "deleted")
      end
    end
    return table.concat(out, "\n") .. "\n"
  end
  if p.status == "up-to-date" then
    add("up to date: %s %s already contains %s", p.to.label, p.branch, p.source_commit and p.source_commit:sub(1, 12) or "")
    return table.concat(out, "\n") .. "\n"
  end
  if p.unrelated then add("unrelated histories: merged with both tips as parents") end
  if p.merge and p.merge.fast_forward then add("fast-forward") end
  add("%d changed file%s:", #p.files, #p.files == 1 and "" or "s")
  local marks = { added = "A", modified = "M", deleted = "D" }
  local show_text = p.show_diff
  for _, f in ipairs(p.files) do
    add("  %s %s", marks[f.change] or "?", f.path)
    if f.binary then
      add("      binary file%s", f.from == "source" and " (the source's version)" or "")
    end
    for _, h in ipairs(f.hunks or {}) do
      add("      @@ -%d,%d +%d,%d @@ %s (+%d -%d)", h.old_start, h.old_lines, h.new_start, h.new_lines,
        h.from == "both" and "from source and target" or "from " .. h.from, h.additions, h.deletions)
      if show_text and f.change == "modified" then
        for _, l in ipairs(h.lines or {}) do
          local text = "        " .. l.origin .. l.text
          if l.origin == "+" then text = term.paint("green", text) elseif l.origin == "-" then text = term.paint("red", text) end
          out[#out + 1] = text
        end
      end
    end
  end
  if #p.config_changes > 0 then
    add("configuration changes (environment %s):", p.environment or "none")
    for _, c in ipairs(p.config_changes) do
      local function show(v)
        if v == json.null or v == nil then return "(unset)" end
        if type(v) == "table" then return json.encode(v) end
        return tostring(v)
      end
      add("  %s.%s: %s -> %s", c.plugin, c.setting, show(c.from), show(c.to))
    end
  elseif touches_config(p.files) then
    add("configuration: no effective change")
  end
  if p.config_error then add("warning: the configuration does not resolve %s", p.config_error) end
  if p.status == "dry-run" then add("dry run: nothing pushed") end
  if p.status == "pushed" then add("pushed %s to %s %s", p.commit:sub(1, 12), p.to.label, p.branch) end
  if p.status == "target-moved" then add("%s", p.error) end
  return table.concat(out, "\n") .. "\n"
end

--- Release the working copy: a copy made by this run gets its work tree (its
-- branch as it now is) checked out once, then the handle is closed.
function M.close(p)
  if p and p.repo then
    if p.fresh then
      p.fresh = nil
      local ok, err = p.repo:checkout(p.branch, { force = true, populate = true })
      if not ok then log.warn("promote: checking out the working copy failed: " .. err) end
    end
    p.repo:close()
    p.repo = nil
  end
end

return M
