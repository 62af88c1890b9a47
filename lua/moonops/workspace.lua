--- A workspace's paths, secrets, active environment and current release.
-- `ws` is a workspace table from moonops.settings; state lives in the store's
-- `workspaces` table, files under `<data_dir>/workspaces/<name>/`.
local db_mod = require "moonops.db"
local fs = require "moonops.fs"
local log = require "moonops.log"

local M = {}

-- Store calls that raise on failure (busy, constraint) instead of returning nil, err.
local exec, one, tx = db_mod.must.exec, db_mod.must.one, db_mod.must.tx

local function now()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

--- The directory name used for a workspace under data_dir: its name when that is a
-- safe single path component, else its id.
function M.dir_name(ws)
  local name = ws.name
  if type(name) == "string" and name:match("^[%w][%w._-]*$") and not name:find("..", 1, true) then
    return name
  end
  return tostring(ws.id)
end

--- Paths of a workspace: {root, mirror, releases, current, lock}.
function M.paths(settings, ws)
  local root = settings.data_dir .. "/workspaces/" .. M.dir_name(ws)
  return {
    root = root,
    mirror = root .. "/repo.git",
    releases = root .. "/releases",
    current = root .. "/current",
    lock = root .. "/deploy.lock",
  }
end

--- The absolute directory of release `name`.
function M.release_dir(settings, ws, name)
  return M.paths(settings, ws).releases .. "/" .. name
end

--- Make sure the store has a row for `ws` (renamed workspaces keep their id and history).
-- Returns the row.
function M.ensure(db, ws)
  local id = tostring(ws.id or ws.name)
  return tx(db, function()
    local row = one(db, "SELECT * FROM workspaces WHERE id = ?", id)
    if row and row.name == ws.name then return row end
    -- A stale row holding the name (an old workspace with another id) keeps its state under a new name.
    exec(db, "UPDATE workspaces SET name = name || '#' || id WHERE name = ? AND id <> ?", ws.name, id)
    if row then
      exec(db, "UPDATE workspaces SET name = ?, updated_at = ? WHERE id = ?", ws.name, now(), id)
    else
      exec(db, "INSERT INTO workspaces(id, name, updated_at) VALUES (?, ?, ?)", id, ws.name, now())
    end
    return one(db, "SELECT * FROM workspaces WHERE id = ?", id)
  end)
end

--- The workspace's state row: {id, name, active_environment, current_release, current_commit, ...}.
function M.state(db, ws)
  return M.ensure(db, ws)
end

--- Record fields of the workspace state (current_release, current_commit, current_deployment,
-- active_environment); a json.null / false value clears the column.
function M.record(db, ws, fields)
  M.ensure(db, ws)
  local cols = { "active_environment", "current_release", "current_commit", "current_deployment" }
  local sets, args = {}, {}
  for _, c in ipairs(cols) do
    local v = fields[c]
    if v ~= nil then
      sets[#sets + 1] = c .. " = ?"
      if v == false then v = nil end
      args[#args + 1] = v == nil and require("moonops.json").null or v
    end
  end
  sets[#sets + 1] = "updated_at = ?"
  args[#args + 1] = now()
  args[#args + 1] = tostring(ws.id or ws.name)
  exec(db, "UPDATE workspaces SET " .. table.concat(sets, ", ") .. " WHERE id = ?", table.unpack(args))
end

--- The webhook secrets of `ws`, each registered with log.secret so no line shows it.
function M.secrets(ws)
  local ok, settings = pcall(require, "moonops.settings")
  local list = {}
  if ok and settings.workspace_secrets then list = settings.workspace_secrets(ws) or {} end
  for _, s in ipairs(list) do log.secret(s) end
  return list
end

--- Git credentials for the workspace's repository, as moonops.git takes them, or nil:
-- {username=, token=} over HTTPS, the token read from the environment variable named by
-- `git_token_env`; {ssh_key=, ssh_passphrase=} over SSH, the key file `ssh_key_file` and its
-- passphrase from the variable named by `ssh_key_passphrase_env`. Without a key file the
-- engine offers the ssh agent and the default keys (~/.ssh/id_ed25519, id_ecdsa, id_rsa).
-- The token and the passphrase are registered with log.secret.
function M.git_credentials(ws)
  local creds = {}
  if ws.git_token_env then
    local token = os.getenv(ws.git_token_env)
    if token and token ~= "" then
      log.secret(token)
      creds.token = token
    end
  end
  -- a user name given is used over HTTPS and, when the URL names none, over SSH; else the
  -- URL's, else "x-access-token" with a token (HTTPS) or the local user (SSH)
  creds.username = ws.git_username
  creds.ssh_key = ws.ssh_key_file
  if ws.ssh_key_passphrase_env then
    local passphrase = os.getenv(ws.ssh_key_passphrase_env)
    if passphrase and passphrase ~= "" then
      log.secret(passphrase)
      creds.ssh_passphrase = passphrase
    else
      log.warn(string.format("workspace %s: $%s (ssh_key_passphrase_env) is not set; using %s without a passphrase",
        tostring(ws.name), ws.ssh_key_passphrase_env, ws.ssh_key_file or "the ssh keys"))
    end
  end
  if next(creds) == nil then return nil end
  return creds
end

--- A repository URL fit for messages: no userinfo (user:token@).
function M.safe_url(url)
  url = tostring(url or "")
  return (url:gsub("^(%a[%w+.-]*://)[^/@]*@", "%1"))
end

--- The directory of the workspace's current release, and the state row;
-- or nil and a message telling to deploy first.
function M.current_release(settings, db, ws)
  -- Reading a workspace is a moment to mark deployments of dead processes INTERRUPTED.
  require("moonops.deploy").recover(settings, db)
  local state = M.state(db, ws)
  local name = state.current_release
  if not name then
    local target = fs.readlink(M.paths(settings, ws).current)
    if target then name = target:match("([^/]+)$") end
  end
  if name then
    local dir = M.release_dir(settings, ws, name)
    local st = fs.stat(dir)
    if st and st.type == "dir" then return dir, state end
    return nil, string.format("workspace %q: its current release %s is missing from %s: run 'moonops deploy %s'",
      ws.name, name, M.paths(settings, ws).releases, ws.name)
  end
  return nil, string.format("workspace %q has not been deployed yet: run 'moonops deploy %s' first", ws.name, ws.name)
end

--- The environment deployments of `ws` validate against: the one recorded with
-- `env use E --workspace W`, else the workspace's `environment` in moonops.yml, else nil
-- (meltano.yml's default_environment).
function M.active_environment(db, ws)
  local state = M.state(db, ws)
  return state.active_environment or ws.environment
end

--- Record `name` as the active environment of `ws`. It must exist in the current
-- release's meltano.yml. Returns true or nil, message.
function M.use_environment(settings, db, ws, name)
  local dir, err = M.current_release(settings, db, ws)
  if not dir then return nil, err end
  local meltano = require "moonops.meltano"
  local project, perr = meltano.load(dir)
  if not project then return nil, perr end
  local known = project.environments or {}
  local found = false
  for _, e in ipairs(known) do found = found or e == name end
  if not found then
    return nil, string.format("environment %q not found in %s/meltano.yml (known: %s)", tostring(name), dir,
      #known > 0 and table.concat(known, ", ") or "none")
  end
  M.record(db, ws, { active_environment = name })
  return true
end

return M
