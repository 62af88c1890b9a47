--- Deployments: the queue, the pipeline (fetch, stage, validate, hooks, switch, prune),
-- history and rollback. Everything goes through arguments (settings, store handle,
-- workspace), so the functions work from any Lua state, including the server's
-- worker threads.
local cjson_encode = require("cjson").encode
local db_mod = require "moonops.db"
local fs = require "moonops.fs"
local json = require "moonops.json"
local log = require "moonops.log"
local plugins = require "moonops.plugins"
local proc = require "moonops.proc"
local workspace = require "moonops.workspace"

local M = {}

-- Store calls that raise on failure (busy, constraint) instead of returning nil, err.
local exec, one, rows, tx = db_mod.must.exec, db_mod.must.one, db_mod.must.rows, db_mod.must.tx

M.STATUSES = { "QUEUED", "RUNNING", "COMPLETE", "ERROR", "SUPERSEDED", "INTERRUPTED" }
M.TRIGGERS = { webhook = true, manual = true, schedule = true, cli = true }
M.DEFAULT_HOOK_TIMEOUT = 600
M.DEFAULT_KEEP_RELEASES = 5

local function now()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

local function ws_id(ws)
  return tostring(ws.id or ws.name)
end

local function get(db, id)
  return one(db, "SELECT * FROM deployments WHERE id = ?", id)
end

-- A deployment failure raised inside the pipeline: caught, recorded as ERROR.
local failure_mt = { __tostring = function(e) return e.message end }
local function fail(message)
  error(setmetatable({ message = message }, failure_mt), 0)
end

-- The queueing itself: a new QUEUED row, older QUEUED rows of the workspace SUPERSEDED.
-- The row is built from what was inserted (no read back). Returns row, number superseded.
local function supersede(db, wid, id, t)
  return exec(db, [[UPDATE deployments SET status = 'SUPERSEDED', finished_at = ?, error = ?
    WHERE workspace_id = ? AND status = 'QUEUED' AND id < ?]], t or now(), "superseded by deployment " .. id, wid, id)
end

local function insert_queued(db, ws, trigger, opts)
  local wid = ws_id(ws)
  if not opts.workspace_known then
    local known = one(db, "SELECT name FROM workspaces WHERE id = ?", wid)
    if not known or known.name ~= ws.name then workspace.ensure(db, ws) end
  end
  local t = now()
  exec(db, [[INSERT INTO deployments(workspace_id, workspace, status, trigger, delivery, ref, after, created_at)
    VALUES (?, ?, 'QUEUED', ?, ?, ?, ?, ?)]], wid, ws.name, trigger, opts.delivery, opts.ref, opts.after, t)
  local id = db:last_insert_id()
  local superseded = 0
  if not opts.later_supersede then superseded = supersede(db, wid, id, t) end
  return { id = id, workspace_id = wid, workspace = ws.name, status = "QUEUED", trigger = trigger,
    delivery = opts.delivery, ref = opts.ref, after = opts.after, created_at = t }, superseded
end

--- Inside a transaction that queued several deployments of `ws` with
-- `later_supersede`: make every QUEUED one older than `newest_id` SUPERSEDED, as
-- enqueue does one at a time. Returns how many.
function M.supersede_older(db, ws, newest_id)
  return supersede(db, ws_id(ws), newest_id)
end

--- Queue a deployment of `ws`: {trigger=, delivery=, ref=, after=} -> the new row (QUEUED),
-- (`workspace_known` = the workspaces row is known to be current; `later_supersede` = the
-- caller calls supersede_older once for many enqueues in its transaction)
-- and how many older QUEUED deployments of the workspace it made SUPERSEDED, atomically.
-- Called inside the caller's transaction it joins it (no savepoint of its own): an error
-- then leaves that transaction to be rolled back by the caller.
function M.enqueue(db, ws, opts)
  opts = opts or {}
  local trigger = opts.trigger or "manual"
  if not M.TRIGGERS[trigger] then
    error("deploy.enqueue: trigger must be webhook, manual, schedule or cli (got " .. tostring(trigger) .. ")", 2)
  end
  if db:in_tx() then return insert_queued(db, ws, trigger, opts) end
  return tx(db, function() return insert_queued(db, ws, trigger, opts) end)
end

-- Claim the newest QUEUED deployment of `ws` (older ones SUPERSEDED): the RUNNING row or nil.
local function claim(db, ws)
  return tx(db, function()
    local row = one(db, [[SELECT * FROM deployments WHERE workspace_id = ? AND status = 'QUEUED'
      ORDER BY id DESC LIMIT 1]], ws_id(ws))
    if not row then return nil end
    local t = now()
    exec(db, [[UPDATE deployments SET status = 'SUPERSEDED', finished_at = ?, error = ?
      WHERE workspace_id = ? AND status = 'QUEUED' AND id < ?]], t, "superseded by deployment " .. row.id,
      ws_id(ws), row.id)
    exec(db, "UPDATE deployments SET status = 'RUNNING', pid = ?, started_at = ? WHERE id = ?", proc.pid(), t, row.id)
    return get(db, row.id)
  end)
end

-- The JSON keys of a deployment (sorted, as moonops.json writes them) and the column of each.
local JSON_FIELDS = {
  { "after", "after" }, { "commit", "commit_sha" }, { "created_at", "created_at" }, { "delivery", "delivery" },
  { "error", "error" }, { "finished_at", "finished_at" }, { "id", "id" }, { "ref", "ref" },
  { "release", "release" }, { "rollback_of", "rollback_of" }, { "started_at", "started_at" },
  { "status", "status" }, { "trigger", "trigger" }, { "workspace", "workspace" },
  { "workspace_id", "workspace_id" },
}

--- The JSON shape of a deployment (design §13); `opts.log` adds the log.
function M.to_json(row, opts)
  local out = {}
  for _, f in ipairs(JSON_FIELDS) do
    local v = row[f[2]]
    if v == nil then v = json.null end
    out[f[1]] = v
  end
  if opts and opts.log then out.log = row.log or "" end
  return out
end

-- The pieces json_text puts together: for field i, what comes before its value
-- ('{"after":', ',"commit":', ...) and the whole text when it is null.
local KEY_TEXT, NULL_TEXT = {}, {}
for i, f in ipairs(JSON_FIELDS) do
  KEY_TEXT[i] = (i == 1 and "{" or ",") .. '"' .. f[1] .. '":'
  NULL_TEXT[i] = KEY_TEXT[i] .. "null"
end

--- json.encode(M.to_json(row)) .. "\n", byte for byte, written directly: the server answers
-- every accepted delivery with it. The pieces go into one table.concat; a string is
-- passed through json.encode only when it has something to escape.
function M.json_text(row)
  local parts, n = {}, 0
  for i = 1, #JSON_FIELDS do
    local v = row[JSON_FIELDS[i][2]]
    n = n + 1
    if v == nil then
      parts[n] = NULL_TEXT[i]
    else
      parts[n] = KEY_TEXT[i]
      -- cjson escapes every character json.encode does (and '/'): when it escaped
      -- nothing, the string goes in as it is; that test is cheaper than a pattern
      if type(v) == "string" and (#cjson_encode(v) == #v + 2 or not v:find('[%c"\\]')) then
        parts[n + 1], parts[n + 2], parts[n + 3] = '"', v, '"'
        n = n + 3
      elseif math.type(v) == "integer" then
        parts[n + 1] = v
        n = n + 1
      else
        parts[n + 1] = json.encode(v)
        n = n + 1
      end
    end
  end
  parts[n + 1] = "}\n"
  return table.concat(parts)
end

--- History of `ws`, newest first: {limit=} -> list of rows.
function M.list(db, ws, opts)
  local limit = opts and opts.limit or 20
  return rows(db, "SELECT * FROM deployments WHERE workspace_id = ? ORDER BY id DESC LIMIT ?", ws_id(ws), limit)
end

--- One deployment of `ws` by id, or nil and a message.
function M.get(db, ws, id)
  local row = one(db, "SELECT * FROM deployments WHERE id = ? AND workspace_id = ?", id, ws_id(ws))
  if not row then return nil, string.format("workspace %q has no deployment %s", ws.name, tostring(id)) end
  return row
end

-- ---------------------------------------------------------------------------
-- The deployment log: lines with a time, secrets masked, written to the store as it grows.

local function new_journal(db, id, on_log)
  local j = { lines = {}, partial = {}, flushed = 0 }
  function j.add(line)
    line = os.date("!%H:%M:%S ") .. log.mask(line)
    j.lines[#j.lines + 1] = line
    if on_log then on_log(line) end
  end
  function j.text()
    if #j.lines == 0 then return "" end
    return table.concat(j.lines, "\n") .. "\n"
  end
  function j.flush(force)
    local t = proc.monotonic and proc.monotonic() or os.time()
    if not force and t - j.flushed < 1 then return end
    j.flushed = t
    exec(db, "UPDATE deployments SET log = ? WHERE id = ?", j.text(), id)
  end
  -- Output of a hook arrives in chunks; log complete lines only so a secret split
  -- across two chunks is still masked.
  function j.output(stream, chunk)
    local buf = (j.partial[stream] or "") .. chunk
    while true do
      local line, rest = buf:match("^([^\n]*)\n(.*)$")
      if not line then break end
      j.add("  | " .. line:gsub("\r$", ""))
      buf = rest
    end
    if #buf > 65536 then
      j.add("  | " .. buf)
      buf = ""
    end
    j.partial[stream] = buf
    j.flush(false)
  end
  function j.end_output()
    for stream, buf in pairs(j.partial) do
      if buf ~= "" then j.add("  | " .. buf) end
      j.partial[stream] = ""
    end
  end
  return j
end

-- ---------------------------------------------------------------------------
-- Releases

local function is_dir(path)
  local st = fs.stat(path, { follow = false })
  return st and st.type == "dir"
end

local function release_name(releases, sha)
  local t = proc.time and proc.time() or os.time()
  local sec = math.floor(t)
  local base = string.format("%s.%03dZ-%s", os.date("!%Y%m%dT%H%M%S", sec), math.floor((t - sec) * 1000),
    sha:sub(1, 12))
  local name, n = base, 1
  while fs.stat(releases .. "/" .. name, { follow = false }) or fs.stat(releases .. "/" .. name .. ".tmp",
    { follow = false }) do
    n = n + 1
    name = base .. "-" .. n
  end
  return name
end

-- The release `current` points at (a name), or nil.
local function current_target(paths)
  local target = fs.readlink(paths.current)
  return target and target:match("([^/]+)$") or nil
end

-- `releases` must be a real directory inside the workspace root (never a symlink
-- leading out of data_dir) before anything in it is removed.
local function releases_dir_safe(paths)
  local st = fs.stat(paths.releases, { follow = false })
  if not st or st.type ~= "dir" then return false end
  local real, root = fs.realpath(paths.releases), fs.realpath(paths.root)
  return real ~= nil and root ~= nil and real == root .. "/releases"
end

-- Remove a release directory by name (never the current one, never outside releases/).
local function remove_release(paths, name)
  if type(name) ~= "string" or name == "" or name:find("/", 1, true) or name == "." or name == ".." then
    return false
  end
  if name == current_target(paths) then return false end
  if not releases_dir_safe(paths) then return false end
  local ok = fs.remove_tree(paths.releases .. "/" .. name)
  return ok and true or false
end

-- Remove staged `.tmp` releases left by an interrupted deployment; returns their names.
local function remove_staged(paths)
  local removed = {}
  if not releases_dir_safe(paths) then return removed end
  for _, name in ipairs(fs.list(paths.releases) or {}) do
    if name:match("%.tmp$") then
      if fs.remove_tree(paths.releases .. "/" .. name) then removed[#removed + 1] = name end
    end
  end
  return removed
end

--- Prune releases of `ws` to the newest `keep` (the current one is always kept).
-- Returns the list of removed names.
function M.prune(settings, ws, keep)
  local paths = workspace.paths(settings, ws)
  keep = math.max(tonumber(keep) or M.DEFAULT_KEEP_RELEASES, 1)
  local removed = {}
  if not releases_dir_safe(paths) then return removed end
  local current = current_target(paths)
  local names = {}
  for _, name in ipairs(fs.list(paths.releases) or {}) do
    if not name:match("%.tmp$") then names[#names + 1] = name end
  end
  table.sort(names, function(a, b) return a > b end)
  local kept = 0
  for _, name in ipairs(names) do
    if name == current then
      kept = kept + 1
    elseif kept < keep then
      kept = kept + 1
    elseif remove_release(paths, name) then
      removed[#removed + 1] = name
    end
  end
  return removed
end

-- ---------------------------------------------------------------------------
-- Locks and recovery

local function lock_workspace(settings, ws, wait)
  local paths = workspace.paths(settings, ws)
  local ok, err = fs.mkdirs(paths.root, tonumber("700", 8))
  if not ok then return nil, err end
  return fs.lock(paths.lock, { wait = wait })
end

local function running_elsewhere(db, ws)
  return one(db, "SELECT id, pid FROM deployments WHERE workspace_id = ? AND status = 'RUNNING' ORDER BY id DESC LIMIT 1",
    ws_id(ws))
end

-- With the workspace lock held: every RUNNING deployment of `ws` is dead. Mark them
-- INTERRUPTED (or COMPLETE when the switch had already happened), clean staged releases.
local function recover_locked(settings, db, ws)
  local paths = workspace.paths(settings, ws)
  local list = rows(db, "SELECT * FROM deployments WHERE workspace_id = ? AND status = 'RUNNING'", ws_id(ws))
  local current = current_target(paths)
  local done = {}
  for _, row in ipairs(list) do
    local t = now()
    if row.release and row.release == current and row.commit_sha then
      -- The process died after switching `current` but before recording it: it is live.
      tx(db, function()
        exec(db, "UPDATE deployments SET status = 'COMPLETE', finished_at = ?, log = coalesce(log, '') || ? WHERE id = ?",
          t, "recorded after a restart: the release had been switched live\n", row.id)
        workspace.record(db, ws, { current_release = row.release, current_commit = row.commit_sha,
          current_deployment = row.id })
      end)
    else
      exec(db, [[UPDATE deployments SET status = 'INTERRUPTED', finished_at = ?, error = ? WHERE id = ?]], t,
        string.format("interrupted: process %s ended while the deployment was running", tostring(row.pid or "?")),
        row.id)
      if row.release then remove_release(paths, row.release) end
    end
    done[#done + 1] = row.id
  end
  remove_staged(paths)
  return done
end

--- Mark deployments RUNNING in a process that is gone INTERRUPTED and remove staged
-- `.tmp` releases. A deployment counts as dead when its workspace lock is free (no
-- process holds it) or its pid is not alive. Returns the list of ids changed.
function M.recover(settings, db)
  local changed = {}
  local list = rows(db, "SELECT DISTINCT workspace_id, workspace FROM deployments WHERE status = 'RUNNING'")
  for _, r in ipairs(list) do
    local ws = settings.by_id and settings.by_id[r.workspace_id]
    if not ws then
      for _, w in ipairs(settings.workspaces or {}) do
        if ws_id(w) == r.workspace_id then ws = w end
      end
    end
    if ws then
      local lock <close> = lock_workspace(settings, ws, false)
      if lock then
        for _, id in ipairs(recover_locked(settings, db, ws)) do changed[#changed + 1] = id end
      end
    end
    -- A lock held by a live process, or a workspace no longer configured: only a dead pid counts.
    for _, row in ipairs(rows(db, "SELECT id, pid FROM deployments WHERE workspace_id = ? AND status = 'RUNNING'",
      r.workspace_id)) do
      if row.pid and row.pid ~= proc.pid() and not proc.alive(row.pid) then
        exec(db, "UPDATE deployments SET status = 'INTERRUPTED', finished_at = ?, error = ? WHERE id = ?", now(),
          string.format("interrupted: process %d ended while the deployment was running", row.pid), row.id)
        changed[#changed + 1] = row.id
      end
    end
  end
  -- Staged directories of workspaces with nothing running (e.g. a crash before the claim was recorded).
  for _, ws in ipairs(settings.workspaces or {}) do
    local paths = workspace.paths(settings, ws)
    local st = fs.stat(paths.releases, { follow = false })
    if st and st.type == "dir" then
      local has_tmp = false
      for _, name in ipairs(fs.list(paths.releases) or {}) do has_tmp = has_tmp or name:match("%.tmp$") ~= nil end
      if has_tmp then
        local lock <close> = lock_workspace(settings, ws, false)
        if lock then remove_staged(paths) end
      end
    end
  end
  return changed
end

-- ---------------------------------------------------------------------------
-- The pipeline

local function open_mirror(paths, url, j)
  local git = require "moonops.git"
  local repo
  if fs.stat(paths.mirror) then
    repo = git.open(paths.mirror)
    if not repo then
      j.add("the mirror " .. paths.mirror .. " is unreadable; re-creating it")
      fs.remove_tree(paths.mirror)
    end
  end
  if not repo then
    local err
    repo, err = git.init(paths.mirror, { bare = true })
    if not repo then fail("create the mirror " .. paths.mirror .. ": " .. tostring(err)) end
  end
  local has_origin = false
  for _, r in ipairs(repo:remotes() or {}) do
    if r.name == "origin" then
      has_origin = true
      if r.url ~= url then repo:remote_set_url("origin", url) end
    end
  end
  if not has_origin then
    local ok, err = repo:remote_add("origin", url)
    if not ok then fail("mirror: add remote " .. workspace.safe_url(url) .. ": " .. tostring(err)) end
  end
  return repo
end

local function resolve_target(repo, ws, ref)
  if ref then
    for _, candidate in ipairs({ "refs/heads/" .. ref, "refs/tags/" .. ref, ref }) do
      local sha = repo:resolve(candidate)
      if sha then return sha end
    end
    fail(string.format("ref %q not found in %s", ref, workspace.safe_url(ws.repository)))
  end
  local branch = ws.branch or "main"
  local sha = repo:resolve("refs/heads/" .. branch)
  if not sha then
    fail(string.format("branch %q not found in %s (deleted? check 'branch' in moonops.yml)", branch,
      workspace.safe_url(ws.repository)))
  end
  return sha
end

local function describe_argv(argv)
  local parts = {}
  for i, a in ipairs(argv) do
    if a:find("[%s'\"]") then a = string.format("%q", a) end
    parts[i] = a
  end
  return table.concat(parts, " ")
end

-- A hook: an argv list, or a string naming a recipe (with optional arguments) run as
-- `moonops --config <moonops.yml> RECIPE ARGS...`.
local function hook_argv(settings, hook)
  if type(hook) == "table" then
    local argv = {}
    for i, a in ipairs(hook) do argv[i] = tostring(a) end
    return argv
  end
  local engine = require "moonops.engine"
  local argv = { engine.exe }
  if settings.path then
    argv[#argv + 1] = "--config"
    argv[#argv + 1] = settings.path
  end
  for word in tostring(hook):gmatch("%S+") do argv[#argv + 1] = word end
  return argv
end

local function run_hooks(settings, ws, release_dir, sha, environment, j)
  local hooks = ws.on_deploy or {}
  local timeout = tonumber(ws.hook_timeout) or M.DEFAULT_HOOK_TIMEOUT
  for i, hook in ipairs(hooks) do
    local argv = hook_argv(settings, hook)
    if #argv == 0 then fail(string.format("on_deploy hook %d is empty", i)) end
    local label = string.format("on_deploy hook %d (%s)", i, describe_argv(argv))
    j.add("hook: " .. describe_argv(argv))
    -- A relative program path (./hooks/x) names a file of the release.
    if argv[1]:find("/", 1, true) and argv[1]:sub(1, 1) ~= "/" then
      argv[1] = release_dir .. "/" .. argv[1]:gsub("^%./", "")
    end
    local res, err = proc.run {
      argv = argv,
      cwd = release_dir,
      env = {
        MOONOPS_WORKSPACE = ws.name,
        MOONOPS_COMMIT = sha,
        MOONOPS_RELEASE = release_dir,
        MELTANO_ENVIRONMENT = environment or false,
      },
      stdin = "",
      timeout = timeout,
      on_output = j.output,
      max_output = 1024 * 1024,
    }
    j.end_output()
    if not res then fail(label .. ": " .. tostring(err)) end
    if res.timed_out then fail(string.format("%s timed out after %s s (hook_timeout)", label, tostring(timeout))) end
    if res.signal then fail(string.format("%s killed by signal %s", label, tostring(res.signal))) end
    if res.code ~= 0 then fail(string.format("%s exited with code %d", label, res.code)) end
  end
end

-- Sensitive values of the release's resolved configuration never reach the log.
local function register_sensitive(project, environment)
  local meltano = require "moonops.meltano"
  local resolved = meltano.resolve(project, { environment = environment, unsafe = true })
  for _, plugin in ipairs(resolved and resolved.plugins or {}) do
    for _, s in ipairs(plugin.settings or {}) do
      if s.sensitive and type(s.value) == "string" then log.secret(s.value) end
    end
  end
end

local function build_image(settings, db, ws, release_dir, sha, environment, j)
  local cfg = ws.image
  if type(cfg) ~= "table" or not cfg.build_on_deploy then return end
  local ok, image = pcall(require, "moonops.image")
  if not ok or type(image) ~= "table" or type(image.build) ~= "function" then
    j.add("image: build_on_deploy is set but the image module is not available; no image built")
    return
  end
  j.add("image: building (build_on_deploy)")
  local pok, res, err = pcall(image.build, {
    dir = release_dir,
    commit = sha,
    environment = environment,
    workspace = ws.name,
    registry = cfg.registry,
    builder = cfg.builder,
    base = cfg.base,
    push = true,
    settings = settings,
    store = db,
    on_output = function(_, chunk) j.output("image", chunk) end,
  })
  j.end_output()
  if not pok then
    j.add("image: build failed (the deployment stays live): " .. tostring(res))
  elseif not res then
    j.add("image: build failed (the deployment stays live): " .. tostring(err))
  else
    j.add(string.format("image: %s %s%s", tostring(res.status), tostring(res.image or ""),
      res.digest and ("@" .. res.digest) or ""))
  end
end

-- Run a claimed (RUNNING) deployment to its end; returns the final row.
local function execute(settings, db, ws, row, opts)
  local paths = workspace.paths(settings, ws)
  local j = new_journal(db, row.id, opts.on_log)
  local staged, release, sha
  workspace.secrets(ws)
  local ok, err = xpcall(function()
    -- 1. Fetch into the bare mirror.
    local url = ws.repository
    if not url then fail("workspace " .. ws.name .. " has no repository in moonops.yml") end
    j.add(string.format("deployment %d of %s (trigger %s%s)", row.id, ws.name, row.trigger,
      row.ref and (", ref " .. row.ref) or ""))
    j.add("fetch " .. workspace.safe_url(url))
    local repo <close> = open_mirror(paths, url, j)
    local refspecs = { "+refs/heads/*:refs/heads/*" }
    if row.ref then refspecs[#refspecs + 1] = "+refs/tags/*:refs/tags/*" end
    local fok, ferr = repo:fetch("origin", refspecs, {
      credentials = workspace.git_credentials(ws),
      progress = opts.progress,
      prune = true,
    })
    if not fok then fail("fetch " .. workspace.safe_url(url) .. ": " .. tostring(ferr)) end
    sha = resolve_target(repo, ws, row.ref)
    j.add("commit " .. sha)
    if row.after and row.after ~= sha and not row.after:match("^0+$") then
      local base = repo:resolve(row.after) and repo:merge_base(row.after, sha)
      if base ~= row.after then
        j.add(string.format("note: the pushed commit %s is not in the tip %s (the branch moved or was rewritten);"
          .. " deploying the tip", row.after:sub(1, 12), sha:sub(1, 12)))
      end
    end
    exec(db, "UPDATE deployments SET commit_sha = ? WHERE id = ?", sha, row.id)

    -- 2. Stage the tree as a new release.
    local mok, merr = fs.mkdirs(paths.releases, tonumber("755", 8))
    if not mok then fail("create " .. paths.releases .. ": " .. tostring(merr)) end
    release = release_name(paths.releases, sha)
    staged = paths.releases .. "/" .. release .. ".tmp"
    local eok, eerr = repo:export(sha, staged)
    if not eok then fail("stage " .. sha:sub(1, 12) .. " into " .. staged .. ": " .. tostring(eerr)) end
    local rok, rerr = fs.rename(staged, paths.releases .. "/" .. release)
    if not rok then fail("stage: " .. tostring(rerr)) end
    staged = nil
    exec(db, "UPDATE deployments SET release = ? WHERE id = ?", release, row.id)
    local release_dir = paths.releases .. "/" .. release
    j.add("release " .. release)
    j.flush(true)

    -- Plugins' before-validation hooks may stop the deployment.
    local hok, herr = plugins.run_deploy_hooks("before_validate",
      { id = row.id, workspace = ws.name, commit = sha, release = release_dir }, { settings = settings, ws = ws })
    if not hok then fail(herr) end

    -- 3. Validate against the active environment.
    local environment = workspace.active_environment(db, ws)
    local meltano = require "moonops.meltano"
    local vok, project = meltano.validate(release_dir, environment)
    if not vok then fail("validate: " .. tostring(project)) end
    if not environment and type(project) == "table" and project.default_environment ~= json.null then
      environment = project.default_environment
    end
    if type(project) == "table" then pcall(register_sensitive, project, environment) end
    j.add("valid (environment " .. tostring(environment or "none") .. ")")
    j.flush(true)

    -- 4. Hooks, in the release.
    run_hooks(settings, ws, release_dir, sha, environment, j)

    -- 5. Switch `current` atomically, then prune.
    local sok, serr = fs.symlink_swap("releases/" .. release, paths.current)
    if not sok then fail("switch " .. paths.current .. ": " .. tostring(serr)) end
    j.add("live: current -> releases/" .. release)
    local t = now()
    tx(db, function()
      exec(db, "UPDATE deployments SET status = 'COMPLETE', finished_at = ?, log = ? WHERE id = ?", t, j.text(), row.id)
      workspace.record(db, ws, { current_release = release, current_commit = sha, current_deployment = row.id })
    end)
    local pok, removed = pcall(M.prune, settings, ws, ws.keep_releases)
    if not pok then
      j.add("prune: " .. tostring(removed))
    elseif #removed > 0 then
      j.add("pruned " .. table.concat(removed, ", "))
    end
    plugins.run_deploy_hooks("after_switch", { id = row.id, workspace = ws.name, commit = sha, release = release_dir },
      { settings = settings, ws = ws })
    build_image(settings, db, ws, release_dir, sha, environment, j)
  end, function(e)
    if getmetatable(e) == failure_mt then return e.message end
    if type(e) == "table" and e.message then return tostring(e.message) end
    return debug.traceback(tostring(e), 2)
  end)
  if ok then
    j.flush(true)
    local done = get(db, row.id)
    plugins.emit("deployment", M.to_json(done))
    return done
  end
  -- Nothing goes live: remove what was staged, keep `current` as it was.
  local message = log.mask(tostring(err)):match("^[^\n]*")
  if staged then fs.remove_tree(staged) end
  if release then remove_release(paths, release) end
  j.add("error: " .. message)
  local changed = exec(db, [[UPDATE deployments SET status = 'ERROR', finished_at = ?, error = ?, log = ?
    WHERE id = ? AND status = 'RUNNING']], now(), message, j.text(), row.id)
  if changed == 0 then
    -- Already recorded INTERRUPTED (serve stopped past its grace period and killed the
    -- hook): keep that, with the log; it is not a failure to report.
    exec(db, "UPDATE deployments SET log = ? WHERE id = ?", j.text(), row.id)
    return get(db, row.id)
  end
  local failed = get(db, row.id)
  plugins.run_deploy_hooks("on_failure", M.to_json(failed), { settings = settings, ws = ws })
  plugins.emit("deployment", M.to_json(failed))
  return failed
end

local function busy_message(db, ws)
  local r = running_elsewhere(db, ws)
  if r then
    return string.format("workspace %q is busy: deployment %d is running (pid %s)", ws.name, r.id, tostring(r.pid))
  end
  return string.format("workspace %q is busy: another moonops process holds its deploy lock", ws.name)
end

-- Take the workspace lock: wait (telling on_log) or not.
local function acquire(settings, db, ws, opts)
  local lock, err = lock_workspace(settings, ws, false)
  if lock then return lock end
  if err ~= "locked" then return nil, err end
  if opts.wait == false then return nil, busy_message(db, ws), "busy" end
  if opts.on_log then opts.on_log(busy_message(db, ws) .. "; waiting") end
  lock, err = lock_workspace(settings, ws, true)
  if not lock then return nil, err end
  return lock
end

--- Run the newest queued deployment of `ws` (older queued ones become SUPERSEDED):
-- the finished row, or nil when nothing is queued. opts: {wait=true, on_log=fn(line),
-- progress=fn}; with wait=false a busy workspace returns nil, message, "busy".
function M.run_next(settings, db, ws, opts)
  opts = opts or {}
  local lock <close>, err, code = acquire(settings, db, ws, opts)
  if not lock then return nil, err, code end
  recover_locked(settings, db, ws)
  local row = claim(db, ws)
  if not row then return nil end
  return execute(settings, db, ws, row, opts)
end

--- Deploy `ws` now and wait: {trigger=, ref=, delivery=, after=, wait=true, on_log=, progress=}
-- -> the finished row | nil, message, "busy". Queued deployments of the workspace are
-- coalesced into this one.
function M.run(settings, db, ws, opts)
  opts = opts or {}
  local lock <close>, err, code = acquire(settings, db, ws, opts)
  if not lock then return nil, err, code end
  recover_locked(settings, db, ws)
  M.enqueue(db, ws, { trigger = opts.trigger or "cli", ref = opts.ref, delivery = opts.delivery, after = opts.after })
  local row = claim(db, ws)
  if not row then return nil, "nothing to deploy" end
  return execute(settings, db, ws, row, opts)
end

-- The deployment whose release should go live on a rollback without an id: the newest
-- complete deployment before the one that is live now, with a different release that
-- still exists. Repeated rollbacks walk further back.
local function previous_complete(settings, db, ws, state)
  local position = math.maxinteger
  local current = state.current_release
  if state.current_deployment then
    local cur = get(db, state.current_deployment)
    if cur then position = cur.rollback_of or cur.id end
  end
  local list = rows(db, [[SELECT * FROM deployments WHERE workspace_id = ? AND status = 'COMPLETE'
    AND rollback_of IS NULL AND id < ? ORDER BY id DESC]], ws_id(ws), position)
  for _, r in ipairs(list) do
    if r.release and r.release ~= current and is_dir(workspace.release_dir(settings, ws, r.release)) then
      return r
    end
  end
  return nil
end

--- Switch `ws` back to the previous complete release, or to deployment `opts.id`'s release.
-- Recorded as a deployment of its own (trigger "cli", rollback_of = the deployment whose
-- release goes live). Hooks are not run again. -> the row | nil, message[, "busy"].
function M.rollback(settings, db, ws, opts)
  opts = opts or {}
  local lock <close>, err, code = acquire(settings, db, ws, opts)
  if not lock then return nil, err, code end
  recover_locked(settings, db, ws)
  local paths = workspace.paths(settings, ws)
  local state = workspace.state(db, ws)
  local target
  if opts.id then
    local terr
    target, terr = M.get(db, ws, opts.id)
    if not target then return nil, terr end
    if target.status ~= "COMPLETE" or not target.release then
      return nil, string.format("deployment %d is %s: only a complete deployment's release can go live again",
        target.id, target.status)
    end
    if target.rollback_of then target = get(db, target.rollback_of) or target end
    if not is_dir(workspace.release_dir(settings, ws, target.release)) then
      return nil, string.format("the release of deployment %d (%s) has been pruned (keep_releases %s)", target.id,
        target.release, tostring(ws.keep_releases or M.DEFAULT_KEEP_RELEASES))
    end
  else
    target = previous_complete(settings, db, ws, state)
    if not target then
      return nil, string.format("workspace %q has no earlier complete release to roll back to", ws.name)
    end
  end
  local t = now()
  local id = tx(db, function()
    exec(db, [[INSERT INTO deployments(workspace_id, workspace, status, trigger, commit_sha, release, rollback_of,
      pid, created_at, started_at) VALUES (?, ?, 'RUNNING', 'cli', ?, ?, ?, ?, ?, ?)]], ws_id(ws), ws.name,
      target.commit_sha, target.release, target.id, proc.pid(), t, t)
    return db:last_insert_id()
  end)
  local j = new_journal(db, id, opts.on_log)
  j.add(string.format("rollback of %s to deployment %d: release %s (commit %s)", ws.name, target.id, target.release,
    tostring(target.commit_sha)))
  local sok, serr = fs.symlink_swap("releases/" .. target.release, paths.current)
  if not sok then
    local message = "switch " .. paths.current .. ": " .. tostring(serr)
    j.add("error: " .. message)
    exec(db, "UPDATE deployments SET status = 'ERROR', finished_at = ?, error = ?, log = ? WHERE id = ?", now(),
      message, j.text(), id)
    return get(db, id)
  end
  j.add("live: current -> releases/" .. target.release)
  tx(db, function()
    exec(db, "UPDATE deployments SET status = 'COMPLETE', finished_at = ?, log = ? WHERE id = ?", now(), j.text(), id)
    workspace.record(db, ws, { current_release = target.release, current_commit = target.commit_sha,
      current_deployment = id })
  end)
  return get(db, id)
end

return M
