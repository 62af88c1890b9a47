--- moonops.yml: load, validate (every error names file:line), apply defaults.
--
-- settings.load(path) returns a plain table:
--   {path=, dir=, data_dir= (absolute), server={listen=, workers=, max_body= (bytes), ...},
--    workspaces={...}, by_name=, by_id=, promotion={names...}, schedules={...},
--    plugins={{name=, config=}}, warnings={...}}
local errors = require "moonops.errors"
local fs = require "moonops.fs"
local log = require "moonops.log"
local yaml = require "moonops.yaml"

local M = {}

M.DEFAULTS = {
  data_dir = ".moonops",
  listen = "127.0.0.1:8080",
  workers = 2,
  max_body = 25 * 1024 * 1024,
  keep_releases = 5,
  branch = "main",
  hook_timeout = 600,
}

M.PROVIDERS = { "github", "gitea", "forgejo", "gitlab", "bitbucket" }

-- Allowed keys at each level; a key outside these is an error (a typo must not
-- silently disable a setting).
M.KEYS = {
  top = { "data_dir", "server", "workspaces", "promotion", "schedules", "plugins" },
  server = { "listen", "workers", "max_body", "api_tokens_env", "api_tokens_file", "queue_size", "timeout" },
  workspace = { "id", "name", "repository", "branch", "environment", "secret_env", "secret_file", "secret", "secrets",
    "git_token_env", "git_username", "ssh_key_file", "ssh_key_passphrase_env", "on_deploy", "keep_releases", "image",
    "hook_timeout", "provider", "legacy_sha1" },
  secret = { "env", "file", "value" },
  image = { "build_on_deploy", "base", "registry", "builder" },
  schedule = { "name", "cron", "recipe", "args", "env", "timezone" },
}

local null = yaml.null

local function is_list(v)
  return type(v) == "table" and yaml.is_array(v)
end

local function is_map(v)
  return type(v) == "table" and not yaml.is_array(v)
end

local function present(v)
  return v ~= nil and v ~= null
end

local function describe(v)
  if v == null or v == nil then return "null" end
  if is_list(v) then return "a list" end
  if type(v) == "table" then return "a mapping" end
  if math.type(v) == "integer" then return "an integer" end
  if type(v) == "number" then return "a number" end
  if type(v) == "boolean" then return "a boolean" end
  return "a string"
end

-- A validation context: the file name for messages and the warnings collected.
local function at(ctx, t, key)
  local line = type(t) == "table" and key ~= nil and yaml.line(t, key) or nil
  if not line and type(t) == "table" then line = yaml.pos(t) end
  if line then return string.format("%s:%d", ctx.file, line) end
  return ctx.file
end

local function bad(ctx, t, key, fmt, ...)
  errors.raise(at(ctx, t, key) .. ": " .. string.format(fmt, ...), errors.USAGE)
end

local function closest(word, candidates)
  return require("moonops.cli").closest(word, candidates)
end

local function check_keys(ctx, t, allowed, what)
  local set = {}
  for _, k in ipairs(allowed) do set[k] = true end
  for _, k in ipairs(yaml.keys(t)) do
    if not set[k] then
      local guess = type(k) == "string" and closest(k, allowed) or nil
      bad(ctx, t, k, "unknown key %q in %s%s (allowed: %s)", tostring(k), what,
        guess and (" - did you mean " .. guess .. "?") or "", table.concat(allowed, ", "))
    end
  end
end

local function want_string(ctx, t, key, what)
  local v = t[key]
  if not present(v) then return nil end
  if type(v) ~= "string" then
    if math.type(v) == "integer" then return tostring(v) end
    bad(ctx, t, key, "%s.%s must be a string, got %s", what, key, describe(v))
  end
  return v
end

local function want_boolean(ctx, t, key, what)
  local v = t[key]
  if not present(v) then return nil end
  if type(v) ~= "boolean" then bad(ctx, t, key, "%s.%s must be true or false, got %s", what, key, describe(v)) end
  return v
end

local function want_integer(ctx, t, key, what, min)
  local v = t[key]
  if not present(v) then return nil end
  if math.type(v) ~= "integer" then bad(ctx, t, key, "%s.%s must be a whole number, got %s", what, key, describe(v)) end
  if min and v < min then bad(ctx, t, key, "%s.%s must be at least %d, got %d", what, key, min, v) end
  return v
end

local function want_map(ctx, t, key, what)
  local v = t[key]
  if not present(v) then return nil end
  if not is_map(v) then bad(ctx, t, key, "%s.%s must be a mapping, got %s", what, key, describe(v)) end
  return v
end

local function want_list(ctx, t, key, what)
  local v = t[key]
  if not present(v) then return nil end
  if not is_list(v) then bad(ctx, t, key, "%s.%s must be a list, got %s", what, key, describe(v)) end
  return v
end

local SIZE_UNITS = { [""] = 1, b = 1, k = 1024, kb = 1024, kib = 1024, m = 1024 ^ 2, mb = 1024 ^ 2, mib = 1024 ^ 2,
  g = 1024 ^ 3, gb = 1024 ^ 3, gib = 1024 ^ 3 }

--- Parse a size: an integer (bytes) or "25MB", "512k", "1GiB" (units of 1024). Returns bytes or nil.
function M.parse_size(v)
  if math.type(v) == "integer" then return v >= 0 and v or nil end
  if type(v) ~= "string" then return nil end
  local num, unit = v:match("^%s*(%d+%.?%d*)%s*(%a*)%s*$")
  local mult = unit and SIZE_UNITS[unit:lower()]
  if not num or not mult then return nil end
  return math.floor(tonumber(num) * mult)
end

local DURATION_UNITS = { [""] = 1, s = 1, m = 60, h = 3600 }

--- Parse a duration: a number of seconds or "90s", "10m", "1h". Returns seconds or nil.
function M.parse_duration(v)
  if type(v) == "number" then return v > 0 and v or nil end
  if type(v) ~= "string" then return nil end
  local num, unit = v:match("^%s*(%d+%.?%d*)%s*(%a?)%s*$")
  local mult = unit and DURATION_UNITS[unit:lower()]
  if not num or not mult then return nil end
  local n = tonumber(num) * mult
  return n > 0 and (math.tointeger(n) or n) or nil
end

local function absolute(dir, path)
  if path:sub(1, 1) == "/" then return path end
  if path == "~" or path:sub(1, 2) == "~/" then return (os.getenv("HOME") or "") .. path:sub(2) end
  if dir == "." then
    local cwd = fs.realpath(".")
    if cwd then dir = cwd end
  end
  return (dir .. "/" .. path):gsub("/%./", "/"):gsub("/%.$", "")
end

local function warn(ctx, msg)
  ctx.warnings[#ctx.warnings + 1] = msg
  log.warn(msg)
end

local function check_server(ctx, t)
  local server = {
    listen = M.DEFAULTS.listen,
    workers = M.DEFAULTS.workers,
    max_body = M.DEFAULTS.max_body,
  }
  if not t then return server end
  check_keys(ctx, t, M.KEYS.server, "server")
  local listen = want_string(ctx, t, "listen", "server")
  if listen then
    local port = listen:match(":(%d+)$")
    if not port or tonumber(port) < 1 or tonumber(port) > 65535 then
      bad(ctx, t, "listen", "server.listen must be HOST:PORT (for example 127.0.0.1:8080), got %q", listen)
    end
    server.listen = listen
  end
  server.workers = want_integer(ctx, t, "workers", "server", 1) or server.workers
  if present(t.max_body) then
    local bytes = M.parse_size(t.max_body)
    if not bytes then
      bad(ctx, t, "max_body", "server.max_body must be a size such as 25MB or 1048576, got %s",
        type(t.max_body) == "string" and string.format("%q", t.max_body) or describe(t.max_body))
    end
    server.max_body = bytes
  end
  server.api_tokens_env = want_string(ctx, t, "api_tokens_env", "server")
  server.api_tokens_file = want_string(ctx, t, "api_tokens_file", "server")
  if server.api_tokens_file then server.api_tokens_file = absolute(ctx.dir, server.api_tokens_file) end
  server.queue_size = want_integer(ctx, t, "queue_size", "server", 1)
  if present(t.timeout) then
    server.timeout = M.parse_duration(t.timeout)
    if not server.timeout then bad(ctx, t, "timeout", "server.timeout must be seconds or a duration such as 30s") end
  end
  return server
end

-- One entry of `secrets:` (or a secret_env/secret_file value) as {env=}/{file=}/{value=}.
local function secret_sources(ctx, ws, what)
  local out = {}
  local function add_names(key, kind)
    local v = ws[key]
    if not present(v) then return end
    if type(v) == "string" then
      out[#out + 1] = { [kind] = v, where = at(ctx, ws, key) }
    elseif is_list(v) then
      for i, item in ipairs(v) do
        if type(item) ~= "string" then bad(ctx, v, i, "%s.%s entries must be strings", what, key) end
        out[#out + 1] = { [kind] = item, where = at(ctx, v, i) }
      end
    else
      bad(ctx, ws, key, "%s.%s must be a name or a list of names, got %s", what, key, describe(v))
    end
  end
  add_names("secret_env", "env")
  add_names("secret_file", "file")
  if present(ws.secret) then
    if type(ws.secret) ~= "string" then bad(ctx, ws, "secret", "%s.secret must be a string", what) end
    warn(ctx, string.format("%s: %s has its webhook secret inline; prefer secret_env or secret_file", at(ctx, ws,
      "secret"), what))
    out[#out + 1] = { value = ws.secret, where = at(ctx, ws, "secret") }
  end
  local list = want_list(ctx, ws, "secrets", what)
  for i, item in ipairs(list or {}) do
    if type(item) == "string" then
      bad(ctx, list, i, "%s.secrets entries are mappings such as {env: NAME} or {file: PATH}", what)
    end
    if not is_map(item) then bad(ctx, list, i, "%s.secrets entries must be mappings, got %s", what, describe(item)) end
    check_keys(ctx, item, M.KEYS.secret, what .. ".secrets entry")
    local n = 0
    for _, k in ipairs(M.KEYS.secret) do
      if present(item[k]) then
        n = n + 1
        if type(item[k]) ~= "string" then bad(ctx, item, k, "%s.secrets entry %s must be a string", what, k) end
      end
    end
    if n ~= 1 then bad(ctx, list, i, "%s.secrets entries need exactly one of env, file", what) end
    if present(item.value) then
      warn(ctx, string.format("%s: %s has a webhook secret inline; prefer {env: NAME} or {file: PATH}", at(ctx, list,
        i), what))
    end
    out[#out + 1] = { env = item.env, file = item.file, value = item.value, where = at(ctx, list, i) }
  end
  for _, s in ipairs(out) do
    if s.file then s.file = absolute(ctx.dir, s.file) end
  end
  return out
end

local function check_on_deploy(ctx, ws, what)
  local list = want_list(ctx, ws, "on_deploy", what)
  if not list then return nil end
  local out = {}
  for i, hook in ipairs(list) do
    if type(hook) == "string" then
      if hook:match("^%s*$") then bad(ctx, list, i, "%s.on_deploy entry %d is empty", what, i) end
      out[i] = hook
    elseif is_list(hook) then
      if #hook == 0 then bad(ctx, list, i, "%s.on_deploy entry %d is an empty command", what, i) end
      local argv = setmetatable({}, getmetatable(hook))
      for j, a in ipairs(hook) do
        if type(a) == "number" then a = tostring(a) end
        if type(a) ~= "string" then
          bad(ctx, hook, j, "%s.on_deploy entry %d: arguments must be strings, got %s", what, i, describe(a))
        end
        argv[j] = a
      end
      out[i] = argv
    else
      bad(ctx, list, i, "%s.on_deploy entries are commands ([prog, arg...]) or recipe names, got %s", what,
        describe(hook))
    end
  end
  return out
end

local function check_workspace(ctx, t, index)
  local what = "workspaces[" .. index .. "]"
  if not is_map(t) then bad(ctx, ctx.workspaces_node, index, "%s must be a mapping, got %s", what, describe(t)) end
  check_keys(ctx, t, M.KEYS.workspace, "a workspace")
  local name = want_string(ctx, t, "name", what)
  if not name or name == "" then bad(ctx, t, nil, "%s needs a name", what) end
  what = "workspace " .. name
  local ws = {
    name = name,
    id = want_string(ctx, t, "id", what) or name,
    repository = want_string(ctx, t, "repository", what),
    branch = want_string(ctx, t, "branch", what) or M.DEFAULTS.branch,
    environment = want_string(ctx, t, "environment", what),
    git_token_env = want_string(ctx, t, "git_token_env", what),
    git_username = want_string(ctx, t, "git_username", what),
    ssh_key_file = want_string(ctx, t, "ssh_key_file", what),
    ssh_key_passphrase_env = want_string(ctx, t, "ssh_key_passphrase_env", what),
    keep_releases = want_integer(ctx, t, "keep_releases", what, 1) or M.DEFAULTS.keep_releases,
    legacy_sha1 = want_boolean(ctx, t, "legacy_sha1", what) or false,
    where = at(ctx, t),
  }
  if not ws.repository or ws.repository == "" then bad(ctx, t, nil, "%s needs a repository", what) end
  -- the key is read when it is used (a deploy, a promotion), so a missing one is reported then
  if ws.ssh_key_file then
    if ws.ssh_key_file == "" then bad(ctx, t, "ssh_key_file", "%s.ssh_key_file is empty", what) end
    ws.ssh_key_file = absolute(ctx.dir, ws.ssh_key_file)
  end
  local pass_env = ws.ssh_key_passphrase_env
  if pass_env and not pass_env:match("^[%a_][%w_]*$") then
    -- the value is not shown: it may be the passphrase itself
    bad(ctx, t, "ssh_key_passphrase_env", "%s.ssh_key_passphrase_env must be the name of an environment variable "
      .. "holding the passphrase (letters, digits, _), not the passphrase itself", what)
  end
  -- a local path repository is relative to moonops.yml
  if not ws.repository:match("^%a[%w+.-]*://") and not ws.repository:match("^[^/:]+@[^/:]+:")
    and ws.repository:sub(1, 1) ~= "/" then
    ws.repository = absolute(ctx.dir, ws.repository)
  end
  local provider = want_string(ctx, t, "provider", what)
  if provider then
    local ok = false
    for _, p in ipairs(M.PROVIDERS) do ok = ok or p == provider end
    if not ok then
      local guess = closest(provider, M.PROVIDERS)
      bad(ctx, t, "provider", "%s.provider must be one of %s, got %q%s", what, table.concat(M.PROVIDERS, ", "),
        provider, guess and (" - did you mean " .. guess .. "?") or "")
    end
    ws.provider = provider
  end
  if present(t.hook_timeout) then
    ws.hook_timeout = M.parse_duration(t.hook_timeout)
    if not ws.hook_timeout then
      bad(ctx, t, "hook_timeout", "%s.hook_timeout must be seconds or a duration such as 10m", what)
    end
  else
    ws.hook_timeout = M.DEFAULTS.hook_timeout
  end
  ws.on_deploy = check_on_deploy(ctx, t, what)
  local image = want_map(ctx, t, "image", what)
  ws.image = { build_on_deploy = false }
  if image then
    check_keys(ctx, image, M.KEYS.image, what .. ".image")
    ws.image.build_on_deploy = want_boolean(ctx, image, "build_on_deploy", what .. ".image") or false
    ws.image.base = want_string(ctx, image, "base", what .. ".image")
    ws.image.registry = want_string(ctx, image, "registry", what .. ".image")
    ws.image.builder = want_string(ctx, image, "builder", what .. ".image")
  end
  ws.secret_env = t.secret_env ~= null and t.secret_env or nil
  ws.secret_file = t.secret_file ~= null and t.secret_file or nil
  ws.secret_sources = secret_sources(ctx, t, what)
  return ws
end

local function check_schedule(ctx, t, index, by_name, workspaces)
  local what = "schedules[" .. index .. "]"
  if not is_map(t) then bad(ctx, ctx.schedules_node, index, "%s must be a mapping, got %s", what, describe(t)) end
  check_keys(ctx, t, M.KEYS.schedule, "a schedule")
  local s = { where = at(ctx, t) }
  s.name = want_string(ctx, t, "name", what)
  if not s.name or s.name == "" then bad(ctx, t, nil, "%s needs a name", what) end
  what = "schedule " .. s.name
  if by_name[s.name] then bad(ctx, t, "name", "%s is defined twice (also at %s)", what, by_name[s.name].where) end
  s.cron = want_string(ctx, t, "cron", what)
  if not s.cron or s.cron:match("^%s*$") then bad(ctx, t, nil, "%s needs a cron expression", what) end
  local _, cron_err = require("moonops.cron").parse(s.cron)
  if cron_err then bad(ctx, t, "cron", "%s: %s", what, cron_err) end
  s.timezone = want_string(ctx, t, "timezone", what)
  if s.timezone and not ({ ["local"] = true, UTC = true, utc = true, ["Etc/UTC"] = true })[s.timezone] then
    bad(ctx, t, "timezone", "%s: timezone %q is not supported (use UTC, or leave it out for the system's local time)",
      what, s.timezone)
  end
  s.recipe = want_string(ctx, t, "recipe", what)
  if not s.recipe then bad(ctx, t, nil, "%s needs a recipe", what) end
  if not s.recipe:match("^[%w][%w_%-]*$") then
    bad(ctx, t, "recipe", "%s: %q is not a recipe name (letters, digits, - and _)", what, s.recipe)
  end
  s.args = {}
  local args = want_list(ctx, t, "args", what)
  for i, a in ipairs(args or {}) do
    if type(a) == "number" or type(a) == "boolean" then a = tostring(a) end
    if type(a) ~= "string" then bad(ctx, args, i, "%s: args must be strings, got %s", what, describe(a)) end
    s.args[i] = a
  end
  for i, a in ipairs(s.args) do
    local w = (a == "--workspace" and s.args[i + 1]) or a:match("^%-%-workspace=(.+)$")
    if w and not workspaces.by_name[w] and not workspaces.by_id[w] then
      local guess = closest(w, workspaces.names)
      bad(ctx, args, i, "%s names workspace %q, which is not in %s%s", what, w, ctx.file,
        guess and (" - did you mean " .. guess .. "?") or "")
    end
  end
  local env = want_map(ctx, t, "env", what)
  if env then
    s.env = {}
    for _, k in ipairs(yaml.keys(env)) do
      local v = env[k]
      if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") then
        bad(ctx, env, k, "%s: %q is not an environment variable name", what, tostring(k))
      end
      if type(v) == "boolean" or type(v) == "number" then v = tostring(v) end
      if type(v) ~= "string" then bad(ctx, env, k, "%s: env %s must be a string, got %s", what, k, describe(v)) end
      s.env[k] = v
    end
  end
  by_name[s.name] = s
  return s
end

local function check_plugins(ctx, list)
  local out = {}
  local seen = {}
  for i, item in ipairs(list) do
    local name, cfg
    if type(item) == "string" then
      name, cfg = item, {}
    elseif is_map(item) then
      local keys = yaml.keys(item)
      if #keys ~= 1 then
        bad(ctx, list, i, "plugins entries are a name or a one-key mapping of name to config (got %d keys)", #keys)
      end
      name, cfg = keys[1], item[keys[1]]
      if not present(cfg) then cfg = {} end
      if not is_map(cfg) then bad(ctx, item, name, "the config of plugin %s must be a mapping", tostring(name)) end
    else
      bad(ctx, list, i, "plugins entries are a name or a one-key mapping of name to config, got %s", describe(item))
    end
    if type(name) ~= "string" or not name:match("^[%w][%w_.%-]*$") then
      bad(ctx, list, i, "%q is not a plugin name", tostring(name))
    end
    if seen[name] then bad(ctx, list, i, "plugin %s is enabled twice", name) end
    seen[name] = true
    out[#out + 1] = { name = name, config = cfg }
  end
  return out
end

--- Validate a moonops.yml document (already parsed) as if read from `file` in `dir`.
-- Raises errors.USAGE naming file:line; returns the settings table.
function M.from_table(doc, file, dir)
  local ctx = { file = file, dir = dir or ".", warnings = {} }
  if doc == null or doc == nil then doc = {} end
  if not is_map(doc) then errors.raise(file .. ": expected a mapping at the top, got " .. describe(doc), errors.USAGE) end
  check_keys(ctx, doc, M.KEYS.top, file)
  local s = {
    path = file,
    dir = ctx.dir,
    warnings = ctx.warnings,
  }
  s.data_dir = absolute(ctx.dir, want_string(ctx, doc, "data_dir", "moonops.yml") or M.DEFAULTS.data_dir)
  s.server = check_server(ctx, want_map(ctx, doc, "server", "moonops.yml"))

  s.workspaces, s.by_name, s.by_id = {}, {}, {}
  local names = {}
  local list = want_list(ctx, doc, "workspaces", "moonops.yml")
  ctx.workspaces_node = list
  for i, t in ipairs(list or {}) do
    local ws = check_workspace(ctx, t, i)
    if s.by_name[ws.name] then
      bad(ctx, t, "name", "workspace name %q is used twice (also at %s)", ws.name, s.by_name[ws.name].where)
    end
    if s.by_id[ws.id] then
      bad(ctx, t, present(t.id) and "id" or "name", "workspace id %q is used twice (also at %s)", ws.id,
        s.by_id[ws.id].where)
    end
    s.workspaces[#s.workspaces + 1] = ws
    s.by_name[ws.name], s.by_id[ws.id] = ws, ws
    names[#names + 1] = ws.name
  end

  s.promotion = {}
  local chain = want_list(ctx, doc, "promotion", "moonops.yml")
  local in_chain = {}
  for i, w in ipairs(chain or {}) do
    if type(w) ~= "string" then bad(ctx, chain, i, "promotion entries must be workspace names, got %s", describe(w)) end
    local ws = s.by_name[w] or s.by_id[w]
    if not ws then
      local guess = closest(w, names)
      bad(ctx, chain, i, "promotion names workspace %q, which is not in %s%s (known: %s)", w, file,
        guess and (" - did you mean " .. guess .. "?") or "", #names > 0 and table.concat(names, ", ") or "none")
    end
    if in_chain[ws.name] then bad(ctx, chain, i, "workspace %s appears twice in the promotion chain", ws.name) end
    in_chain[ws.name] = true
    s.promotion[#s.promotion + 1] = ws.name
  end

  s.schedules = {}
  local schedules = want_list(ctx, doc, "schedules", "moonops.yml")
  ctx.schedules_node = schedules
  local by_schedule = {}
  for i, t in ipairs(schedules or {}) do
    s.schedules[#s.schedules + 1] = check_schedule(ctx, t, i, by_schedule,
      { by_name = s.by_name, by_id = s.by_id, names = names })
  end

  local plugins = want_list(ctx, doc, "plugins", "moonops.yml")
  s.plugins = check_plugins(ctx, plugins or {})

  -- A schedule's recipe must exist, unless an enabled plugin may register it.
  if #s.plugins == 0 then
    local recipe = require "moonops.recipe"
    local builtin = { version = true, lua = true, run = true, recipes = true, plugins = true, help = true }
    for i, sched in ipairs(s.schedules) do
      local r = sched.recipe
      if not builtin[r] and not recipe.find(r) and not fs.stat(s.dir .. "/recipes/" .. r .. ".lua") then
        bad(ctx, schedules[i], "recipe", "schedule %s: no recipe named %q (see 'moonops recipes')", sched.name, r)
      end
    end
  end
  return s
end

--- Load and validate moonops.yml at `path`. Raises a moonops.errors object (code 2)
-- naming file:line on any problem; returns the settings table.
function M.load(path)
  path = path or "moonops.yml"
  local text, err = fs.read(path)
  if not text then
    if not fs.exists(path) then
      errors.raise(string.format("%s not found: create it with 'moonops init' or point --config at one", path),
        errors.USAGE)
    end
    errors.raise(tostring(err), errors.USAGE)
  end
  local doc, perr = yaml.load(text, path)
  if perr then errors.raise(perr, errors.USAGE) end
  local dir = path:match("^(.*)/[^/]*$") or "."
  if dir == "" then dir = "/" end
  return M.from_table(doc, path, dir)
end

--- The workspace named (or with the id) `name_or_id`; raises errors.USAGE listing the known ones.
function M.workspace(s, name_or_id)
  local ws = s.by_name[name_or_id] or s.by_id[name_or_id]
  if ws then return ws end
  local names = {}
  for _, w in ipairs(s.workspaces) do names[#names + 1] = w.name end
  local guess = closest(tostring(name_or_id), names)
  errors.raise(string.format("workspace %q not found in %s%s (known: %s)", tostring(name_or_id), s.path or "moonops.yml",
    guess and (" - did you mean " .. guess .. "?") or "", #names > 0 and table.concat(names, ", ") or "none"),
    errors.USAGE)
end

--- The webhook secrets of a workspace, in order (several allow rotation). Each is
-- registered with log.secret. Returns the list and a list of problems (a variable
-- not set, a file not readable) that callers may report; values never appear in them.
function M.workspace_secrets(ws)
  local list, problems = {}, {}
  for _, src in ipairs(ws.secret_sources or {}) do
    local value
    if src.env then
      value = os.getenv(src.env)
      if not value or value == "" then
        problems[#problems + 1] = string.format("%s: $%s is not set", src.where, src.env)
        value = nil
      end
    elseif src.file then
      local text, err = fs.read(src.file)
      if text then
        value = text:gsub("%s+$", "")
        if value == "" then
          problems[#problems + 1] = string.format("%s: %s is empty", src.where, src.file)
          value = nil
        end
      else
        problems[#problems + 1] = string.format("%s: %s", src.where, tostring(err))
      end
    else
      value = src.value
    end
    if value then
      log.secret(value)
      list[#list + 1] = value
    end
  end
  return list, problems
end

return M
