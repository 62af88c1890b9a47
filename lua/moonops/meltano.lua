--- The meltano.yml model: include_paths, plugins, environments, setting resolution
-- with provenance, sensitive settings and the workspace.yml overlays.
--
-- A setting's value, highest layer first (`source` in the results). Variables are
-- named <PLUGIN_NAME>_<SETTING> and ranked the way Meltano ranks them:
--   env          an `env:` block of meltano.yml (plugin in the active environment >
--                plugin > active environment > top level); origin is the block's file:line
--   dotenv       the project's .env file; origin .env:line
--   env          the process environment; origin $NAME
--   environment  the active environment's entry for the plugin
--   base         the plugin's own config (and extras) in plugins:
--   inherited    the resolved value of the inherit_from parent
--   default      the `value` of a setting declared under `settings:`
local config = require "moonops.config"
local errors = require "moonops.errors"
local fs = require "moonops.fs"
local json = require "moonops.json"
local yaml = require "moonops.yaml"

local M = {}

M.PLUGIN_TYPES = { "extractors", "loaders", "transforms", "orchestrators", "transformers", "files", "utilities",
  "mappers" }

--- Keys of a plugin entry that are not extras; any other key (select, metadata,
-- schema, ...) resolves like a setting named `_<key>`.
M.KNOWN_KEYS = {}
for _, k in ipairs({ "name", "config", "env", "variant", "pip_url", "namespace", "inherit_from", "settings",
  "executable", "capabilities", "settings_group_validation", "commands", "requires", "docs", "repo", "label",
  "description", "logo_url", "hidden", "update", "ext_repo", "python", "supported_python_versions",
  "default_variant" }) do
  M.KNOWN_KEYS[k] = true
end

local TYPE_SET = {}
for _, t in ipairs(M.PLUGIN_TYPES) do TYPE_SET[t] = true end

local SENSITIVE_KINDS = { password = true, oauth = true }
local SENSITIVE_SUFFIXES = { "password", "secret", "token", "key" } -- private_key, client_secret included

M.REDACTED = "(redacted)"

local null = yaml.null
local array_mt = yaml.array_mt
local resolve_leaves, expand = config.resolve_leaves, config.expand
local byte, find, match, sub = string.byte, string.find, string.match, string.sub

-- Errors raised inside this module carry this marker so the public functions can
-- turn them into `nil, message` without swallowing programming errors.
local Failure = {}
local function fail(fmt, ...)
  error(setmetatable({ message = string.format(fmt, ...) }, Failure), 0)
end

local function protect(fn, ...)
  local res = table.pack(pcall(fn, ...))
  if res[1] then return table.unpack(res, 2, res.n) end
  local e = res[2]
  if getmetatable(e) == Failure then return nil, e.message end
  error(e, 0)
end

local function is_map(v)
  return type(v) == "table" and getmetatable(v) ~= array_mt
end

local function is_list(v)
  return type(v) == "table" and getmetatable(v) == array_mt
end

local function present(v)
  return v ~= nil and v ~= null
end

-- "file:line" for key `key` of yaml table `t` (or the node's own position).
local function where(file, t, key)
  local line = key ~= nil and type(t) == "table" and yaml.line(t, key) or nil
  if not line and type(t) == "table" then line = yaml.pos(t) end
  if line then return file .. ":" .. line end
  return file
end

local function describe(v)
  if v == null then return "null" end
  if is_list(v) then return "a list" end
  if type(v) == "table" then return "a mapping" end
  return "a " .. type(v)
end

--- Upper-case `text` with every non-alphanumeric turned into `_` (an env var name part).
function M.var_name(text)
  return (text:gsub("[^%w]", "_"):upper())
end

--- The process environment as a table (read once per call).
function M.process_env()
  local env = {}
  local data = fs.read("/proc/self/environ")
  if data then
    for entry in data:gmatch("([^%z]+)") do
      local k, v = entry:match("^([^=]+)=(.*)$")
      if k then env[k] = v end
    end
  end
  return env
end

--- Parse a .env file's text: vars (name -> value) and lines (name -> line number).
-- `KEY=value`, `export KEY=value`, `# comments`, single or double quotes (double
-- quotes understand \n, \" and \\); an unquoted value ends at " #". Values are
-- taken literally: no `$VAR` expansion.
function M.parse_dotenv(text)
  local vars, lines = {}, {}
  local n = 0
  for raw in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    local line = raw:gsub("\r$", ""):match("^%s*(.-)%s*$")
    if line ~= "" and line:sub(1, 1) ~= "#" then
      line = line:gsub("^export%s+", "")
      local key, value = line:match("^([^=]*)=(.*)$")
      if key then
        key = key:match("^%s*(.-)%s*$")
        if key:match("^[%a_][%w_]*$") then
          value = value:match("^%s*(.-)%s*$")
          local q = value:sub(1, 1)
          if #value >= 2 and (q == '"' or q == "'") and value:sub(-1) == q then
            value = value:sub(2, -2)
            if q == '"' then
              value = value:gsub("\\(.)", function(c)
                if c == "n" then return "\n" end
                if c == '"' or c == "\\" then return c end
                return "\\" .. c
              end)
            end
          else
            value = value:gsub("%s+#.*$", "")
          end
          vars[key], lines[key] = value, n
        end
      end
    end
  end
  return vars, lines
end

-- ---------------------------------------------------------------------------
-- Loading

local function load_yaml(path, label)
  local text, err = fs.read(path)
  if not text then fail("%s", err) end
  local doc, perr = yaml.load(text, label)
  if perr then fail("%s", perr) end
  return doc
end

local function add_plugin(project, ptype, entry, file, seen_in_file)
  if not is_map(entry) then
    fail("%s: a plugin entry under %s must be a mapping, got %s", where(file, entry), ptype, describe(entry))
  end
  local name = entry.name
  if type(name) ~= "string" or name == "" then
    fail("%s: a plugin entry under %s needs a name", where(file, entry), ptype)
  end
  local index = project.plugin_index[ptype]
  local existing = index[name]
  if existing then
    if existing.file ~= file then
      fail("%s %s is declared in both %s and %s", ptype, name, existing.where, where(file, entry))
    end
    -- The same name twice in one file: the entries merge, the later one's keys win.
    existing.entries[#existing.entries + 1] = entry
    project.warnings[#project.warnings + 1] = string.format(
      "%s: %s %s is declared twice in %s (also at %s); the entries are merged, later keys win",
      where(file, entry), ptype, name, file, existing.where)
    return
  end
  local plugin = { type = ptype, name = name, file = file, where = where(file, entry), entries = { entry } }
  index[name] = plugin
  project.plugins[#project.plugins + 1] = plugin
  seen_in_file[#seen_in_file + 1] = plugin
end

local function add_environment(project, env, file)
  if not is_map(env) then
    fail("%s: an environment must be a mapping, got %s", where(file, env), describe(env))
  end
  local name = env.name
  if type(name) ~= "string" or name == "" then fail("%s: an environment needs a name", where(file, env)) end
  local existing = project.environment_index[name]
  if existing then
    if existing.file ~= file then
      fail("environment %s is declared in both %s and %s", name, existing.where, where(file, env))
    end
    existing.entries[#existing.entries + 1] = env
    project.warnings[#project.warnings + 1] = string.format(
      "%s: environment %s is declared twice in %s (also at %s); the entries are merged, later keys win",
      where(file, env), name, file, existing.where)
  else
    existing = { name = name, file = file, where = where(file, env), entries = { env }, plugins = {} }
    project.environment_index[name] = existing
    project.environments[#project.environments + 1] = name
  end
  local cfg = env.config
  if present(cfg) then
    if not is_map(cfg) then fail("%s: config of environment %s must be a mapping", where(file, env, "config"), name) end
    local plugins = cfg.plugins
    if present(plugins) then
      if not is_map(plugins) then
        fail("%s: config.plugins of environment %s must be a mapping", where(file, cfg, "plugins"), name)
      end
      for _, ptype in ipairs(yaml.keys(plugins)) do
        local list = plugins[ptype]
        if not TYPE_SET[ptype] then
          fail("%s: unknown plugin type %q in environment %s (known: %s)", where(file, plugins, ptype), ptype, name,
            table.concat(M.PLUGIN_TYPES, ", "))
        end
        if present(list) then
          if not is_list(list) then fail("%s: %s must be a list", where(file, plugins, ptype), ptype) end
          local by_name = existing.plugins[ptype] or {}
          existing.plugins[ptype] = by_name
          for _, entry in ipairs(list) do
            if not is_map(entry) or type(entry.name) ~= "string" then
              fail("%s: a plugin entry in environment %s needs a name", where(file, entry), name)
            end
            local l = by_name[entry.name] or {}
            l[#l + 1] = entry
            by_name[entry.name] = l
          end
        end
      end
    end
  end
end

local function add_file(project, doc, file)
  if not is_map(doc) then fail("%s: expected a mapping at the top, got %s", file, describe(doc)) end
  local plugins = doc.plugins
  if present(plugins) then
    if not is_map(plugins) then fail("%s: plugins must be a mapping of plugin types", where(file, doc, "plugins")) end
    local seen = {}
    for _, ptype in ipairs(yaml.keys(plugins)) do
      if not TYPE_SET[ptype] then
        local guess = require("moonops.cli").closest(tostring(ptype), M.PLUGIN_TYPES)
        fail("%s: unknown plugin type %q%s (known: %s)", where(file, plugins, ptype), tostring(ptype),
          guess and (" - did you mean " .. guess .. "?") or "", table.concat(M.PLUGIN_TYPES, ", "))
      end
      local list = plugins[ptype]
      if present(list) then
        if not is_list(list) then fail("%s: plugins.%s must be a list", where(file, plugins, ptype), ptype) end
        for _, entry in ipairs(list) do add_plugin(project, ptype, entry, file, seen) end
      end
    end
  end
  local envs = doc.environments
  if present(envs) then
    if not is_list(envs) then fail("%s: environments must be a list", where(file, doc, "environments")) end
    for _, env in ipairs(envs) do add_environment(project, env, file) end
  end
  local env = doc.env
  if present(env) then
    if not is_map(env) then fail("%s: env must be a mapping", where(file, doc, "env")) end
    project.top_env[#project.top_env + 1] = { vars = env, file = file }
  end
end

local function include_files(project, doc, root)
  local patterns = doc.include_paths
  if not present(patterns) then return {} end
  if not is_list(patterns) then fail("%s: include_paths must be a list of globs", where("meltano.yml", doc, "include_paths")) end
  local files, seen = {}, { [root .. "/meltano.yml"] = true }
  for i, pattern in ipairs(patterns) do
    local at = where("meltano.yml", patterns, i)
    if type(pattern) ~= "string" or pattern == "" then fail("%s: include_paths entries must be strings", at) end
    if pattern:sub(1, 1) == "/" then fail("%s: include path %q must be relative to the project", at, pattern) end
    for part in pattern:gmatch("[^/]+") do
      if part == ".." then fail("%s: include path %q leaves the project", at, pattern) end
    end
    -- Meltano reads each pattern with pathlib's Path(project).glob: `**` spans directories
    local matches, err = fs.glob(pattern, { recursive = true, root = project.dir })
    if not matches then fail("%s: %s", at, err) end
    for _, path in ipairs(matches) do
      local shown = path == project.dir and "." or path:sub(#project.dir + 2)
      local real = fs.realpath(path)
      if real and real ~= root and real:sub(1, #root + 1) ~= root .. "/" then
        fail("%s: include path %q matches %s, outside the project", at, pattern, path)
      end
      local st, serr = fs.stat(path)
      if not st and (fs.stat(path, { follow = false }) or {}).type ~= "link" then fail("%s: %s", at, serr) end
      if not st or st.type ~= "file" then
        local what = not st and "a broken symbolic link" or st.type == "dir" and "a directory" or "not a regular file"
        fail("%s: include path %q matches %s, %s (include_paths must match files only)", at, pattern, shown, what)
      end
      if not seen[real] then
        seen[real] = true
        files[#files + 1] = real:sub(#root + 2)
      end
    end
  end
  return files
end

--- Load the project in `dir`: meltano.yml, its include_paths and .env.
-- Returns the project or nil, "file:line:col: message".
-- opts.env: the process environment to use (default: this process's).
function M.load(dir, opts)
  opts = opts or {}
  return protect(function()
    dir = tostring(dir):gsub("(.)/+$", "%1")
    local main = dir .. "/meltano.yml"
    if not fs.exists(main) then fail("no meltano.yml in %s", dir) end
    local root = fs.realpath(dir) or dir
    local project = {
      dir = root,
      file = main,
      plugins = {},
      plugin_index = {},
      environments = setmetatable({}, array_mt),
      environment_index = {},
      top_env = {},
      warnings = {},
      files = { "meltano.yml" },
      process_env = opts.env,
    }
    for _, t in ipairs(M.PLUGIN_TYPES) do project.plugin_index[t] = {} end
    local doc = load_yaml(main, "meltano.yml")
    if not is_map(doc) then fail("%s: expected a mapping at the top, got %s", main, describe(doc)) end
    project.doc = doc
    add_file(project, doc, "meltano.yml")
    for _, rel in ipairs(include_files(project, doc, root)) do
      project.files[#project.files + 1] = rel
      add_file(project, load_yaml(root .. "/" .. rel, rel), rel)
    end
    local default = doc.default_environment
    if present(default) then
      if type(default) ~= "string" then
        fail("%s: default_environment must be a name, got %s", where("meltano.yml", doc, "default_environment"),
          describe(default))
      end
      project.default_environment = default
    end
    local dotenv = root .. "/.env"
    if fs.exists(dotenv) then
      local text, err = fs.read(dotenv)
      if not text then fail("%s", err) end
      project.dotenv, project.dotenv_lines = M.parse_dotenv(text)
    else
      project.dotenv, project.dotenv_lines = {}, {}
    end
    return project
  end)
end

local function known_list(project)
  if #project.environments == 0 then return "none defined" end
  return table.concat(project.environments, ", ")
end

--- The active environment: opts.flag (--environment) > MELTANO_ENVIRONMENT (from
-- the table or string opts.env) > opts.state (the workspace's recorded one) >
-- default_environment > none. Returns name and how it was chosen, or nil (none).
-- The name `null` selects none; an unknown name raises errors.USAGE.
function M.active_environment(project, opts)
  opts = opts or {}
  local env = opts.env
  if type(env) == "table" then env = env.MELTANO_ENVIRONMENT end
  local candidates = {
    { opts.flag, "--environment" },
    { env, "MELTANO_ENVIRONMENT" },
    { opts.state, "workspace" },
    { project.default_environment, "default_environment" },
  }
  for _, c in ipairs(candidates) do
    local name, how = c[1], c[2]
    if name ~= nil and name ~= "" and name ~= json.null and name ~= null then
      name = tostring(name)
      if name == "null" then return nil, how end
      if not project.environment_index[name] then
        errors.raise(string.format("environment %q (from %s) not found in %s (known: %s)", name, how,
          project.file, known_list(project)), errors.USAGE)
      end
      return name, how
    end
  end
  return nil, "none"
end

-- ---------------------------------------------------------------------------
-- Resolution

-- Split a plugin entry into its config table and a table of extras (`_select` ...),
-- with the line of every extra for provenance.
local function split_entry(entry, file, plugin, environment)
  local cfg = entry.config
  if not present(cfg) then
    cfg = nil
  elseif not is_map(cfg) then
    fail("%s: config of %s %s%s must be a mapping, got %s", where(file, entry, "config"), plugin.type, plugin.name,
      environment and (" in environment " .. environment) or "", describe(cfg))
  end
  local extras, lines
  for k, v in pairs(entry) do
    if not M.KNOWN_KEYS[k] and type(k) == "string" and present(v) then
      extras = extras or {}
      lines = lines or {}
      extras["_" .. k] = v
      lines["_" .. k] = yaml.line(entry, k)
    end
  end
  return cfg, extras, lines
end

local function has_entries(t)
  return t ~= nil and next(t) ~= nil
end

-- Declared settings of a plugin (own over inherited), name -> declaration.
local function declarations(plugin, parent_decls)
  local decls = {}
  if parent_decls then
    for k, v in pairs(parent_decls) do decls[k] = v end
  end
  for _, entry in ipairs(plugin.entries) do
    local list = entry.settings
    if present(list) then
      if not is_list(list) then
        fail("%s: settings of %s must be a list", where(plugin.file, entry, "settings"), plugin.name)
      end
      for _, s in ipairs(list) do
        if not is_map(s) or type(s.name) ~= "string" then
          fail("%s: a declared setting of %s needs a name", where(plugin.file, s), plugin.name)
        end
        decls[s.name] = { decl = s, file = plugin.file, own = true }
      end
    end
  end
  return decls
end

local function is_sensitive_decl(d)
  return d.sensitive == true or SENSITIVE_KINDS[d.kind] == true
end

local sensitive_names = {} -- name -> boolean: names repeat across plugins

local function name_is_sensitive(name)
  local known = sensitive_names[name]
  if known ~= nil then return known end
  local result = false
  if name:sub(1, 1) ~= "_" then -- extras (select, metadata, ...) are not secrets by name
    local lower = name:lower()
    for _, suffix in ipairs(SENSITIVE_SUFFIXES) do
      if lower:sub(-#suffix) == suffix then
        result = true
        break
      end
    end
  end
  sensitive_names[name] = result
  return result
end

local TRUE_WORDS = { ["true"] = true, ["1"] = true, yes = true, on = true, y = true, t = true }
local FALSE_WORDS = { ["false"] = true, ["0"] = true, no = true, off = true, n = true, f = true, [""] = true }

-- Convert an environment variable's text for a setting: JSON for declared
-- array/object settings and top-level extras, booleans and integers by kind.
local function cast(text, kind, is_extra)
  if kind == "array" or kind == "object" or is_extra then
    local first = text:match("^%s*(.)")
    if first == "[" or first == "{" then
      local v = json.decode(text)
      if type(v) == "table" then return v end
    end
  elseif kind == "boolean" then
    local low = text:match("^%s*(.-)%s*$"):lower()
    if TRUE_WORDS[low] then return true end
    if FALSE_WORDS[low] then return false end
  elseif kind == "integer" then
    local n = math.tointeger(tonumber(text:match("^%s*(.-)%s*$")))
    if n then return n end
  end
  return text
end

-- Set a flattened name (dots separate keys, a backslash escapes the next character,
-- as config.flatten writes them) in a nested table, replacing non-tables on the way.
local function set_path(t, name, value)
  if not find(name, "[%.\\]") then
    t[name] = value
    return
  end
  local parts, buf, i, n = {}, "", 1, #name
  while true do
    local j = find(name, "[%.\\]", i)
    if not j then break end
    if byte(name, j) == 46 then
      parts[#parts + 1] = buf .. sub(name, i, j - 1)
      buf = ""
    elseif j < n then -- a backslash takes the next character literally
      buf = buf .. sub(name, i, j - 1) .. sub(name, j + 1, j + 1)
      j = j + 1
    else
      buf = buf .. sub(name, i, j)
    end
    i = j + 1
  end
  parts[#parts + 1] = buf .. sub(name, i)
  for k = 1, #parts - 1 do
    local p = parts[k]
    if not is_map(t[p]) then t[p] = {} end
    t = t[p]
  end
  t[parts[#parts]] = value
end

local function env_text(v)
  if v == null or v == nil then return "" end
  if type(v) == "boolean" then return v and "true" or "false" end
  if type(v) == "table" then return json.encode(v) end
  return tostring(v)
end

-- A table that reads through to `t` where it has no key of its own.
local function over(t)
  return setmetatable({}, { __index = t })
end

-- The prefixes (up to each "_") of every variable name, so a plugin whose
-- `<NAME>_` prefix matches no variable can skip per-setting lookups.
local function add_prefixes(set, name)
  local i = 0
  while true do
    i = name:find("_", i + 1, true)
    if not i then return end
    set[name:sub(1, i)] = true
  end
end

-- Apply env blocks (low to high) to `full` (the expansion environment) and
-- `vars` (name -> {value, origin}). Each value is expanded against what is below it.
local function apply_blocks(rc, blocks, full, vars, prefixes)
  for _, block in ipairs(blocks) do
    local t = block.vars
    for _, k in ipairs(yaml.keys(t)) do
      local raw = env_text(t[k])
      local value, err = config.expand(raw, full, { strict = rc.strict })
      if not value then fail("%s: env %s: %s", where(block.file, t, k), k, err) end
      full[k] = value
      vars[k] = { value = value, origin = where(block.file, t, k) }
      if prefixes then add_prefixes(prefixes, k) end
    end
  end
end

local function env_entry_for(rc, plugin)
  if not rc.environment then return nil end
  local by_name = rc.environment.plugins[plugin.type]
  return by_name and by_name[plugin.name]
end

local function plugin_env_blocks(rc, plugin, out)
  for _, entry in ipairs(plugin.entries) do
    local e = entry.env
    if present(e) then
      if not is_map(e) then fail("%s: env of %s must be a mapping", where(plugin.file, entry, "env"), plugin.name) end
      out[#out + 1] = { vars = e, file = plugin.file }
    end
  end
  local env_entries = env_entry_for(rc, plugin)
  if env_entries then
    for _, entry in ipairs(env_entries) do
      local e = entry.env
      if is_map(e) then out[#out + 1] = { vars = e, file = rc.environment.file } end
    end
  end
  return out
end

local function hash_of(value)
  local text = type(value) == "string" and ("s:" .. value) or ("j:" .. json.encode(value))
  return require("moonops.crypto").digest("sha256", text)
end

-- Two fields of a setting are made when first read: `origin` ("file:line", kept as
-- origin_file and origin_line until then: a large project has tens of thousands, and
-- `env show --json` writes them without making the strings), and, for a sensitive
-- setting, `hash` (from the value kept aside in a weak table; most callers never
-- compare secrets).
local secret_values = setmetatable({}, { __mode = "k" })
local Setting = {
  __index = function(s, k)
    if k == "origin" then
      local line = rawget(s, "origin_line")
      if not line then return nil end
      local origin = rawget(s, "origin_file") .. ":" .. line
      rawset(s, "origin", origin)
      return origin
    elseif k == "hash" and rawget(s, "sensitive") then
      local h = hash_of(secret_values[s])
      rawset(s, "hash", h)
      return h
    end
    return nil
  end,
}

-- Does table `t` hold a string with a `$` (at any depth)? Only then does it need expanding.
local function has_dollar(t, depth)
  if depth > 100 then return true end -- config.expand reports tables that deep
  for _, x in pairs(t) do
    local tx = type(x)
    if (tx == "string" and find(x, "$", 1, true)) or (tx == "table" and has_dollar(x, depth + 1)) then
      return true
    end
  end
  return false
end

-- Layers whose string values get $VAR expansion.
local EXPANDED = { environment = true, base = true, default = true }

local resolve_plugin

-- The settings of one plugin; memoised in rc.done. `stack` detects inherit_from cycles.
resolve_plugin = function(rc, plugin, stack)
  local done = rc.done[plugin]
  if done then return done end
  if stack[plugin] then
    local chain = {}
    for _, p in ipairs(stack) do chain[#chain + 1] = p.name end
    chain[#chain + 1] = plugin.name
    fail("%s: inherit_from cycle: %s", plugin.where, table.concat(chain, " -> "))
  end
  stack[plugin] = true
  stack[#stack + 1] = plugin

  local entries = plugin.entries
  local last = entries[#entries]
  local parent_name = last.inherit_from
  for i = #entries - 1, 1, -1 do
    if parent_name == nil then parent_name = entries[i].inherit_from end
  end
  local parent, parent_res
  if present(parent_name) then
    if type(parent_name) ~= "string" then
      fail("%s: inherit_from of %s must be a plugin name", where(plugin.file, last, "inherit_from"), plugin.name)
    end
    parent = rc.project.plugin_index[plugin.type][parent_name]
    if parent then parent_res = resolve_plugin(rc, parent, stack) end
  end

  -- env blocks of the plugin (the parent's first) and the expansion environment
  local blocks = {}
  if parent_res then
    for _, b in ipairs(parent_res.blocks) do blocks[#blocks + 1] = b end
  end
  plugin_env_blocks(rc, plugin, blocks)
  local full, vars, prefixes = rc.full, rc.vars, rc.prefixes
  if #blocks > 0 then
    full, vars, prefixes = over(rc.full), over(rc.vars), over(rc.prefixes)
    apply_blocks(rc, blocks, full, vars, prefixes)
  end

  local decls = declarations(plugin, parent_res and parent_res.decls)

  -- file layers, highest first
  local layers, hints = {}, {}
  local env_entries = env_entry_for(rc, plugin)
  if env_entries then
    local file = rc.environment.file
    for i = #env_entries, 1, -1 do
      local cfg, extras, lines = split_entry(env_entries[i], file, plugin, rc.environment.name)
      if cfg and has_entries(cfg) then layers[#layers + 1] = { name = "environment", value = cfg, file = file } end
      if extras then
        layers[#layers + 1] = { name = "environment", value = extras, file = file }
        hints.environment = hints.environment or {}
        for k, l in pairs(lines) do hints.environment[k] = hints.environment[k] or (file .. ":" .. l) end
      end
    end
  end
  for i = #entries, 1, -1 do
    local cfg, extras, lines = split_entry(entries[i], plugin.file, plugin)
    if cfg and has_entries(cfg) then layers[#layers + 1] = { name = "base", value = cfg, file = plugin.file } end
    if extras then
      layers[#layers + 1] = { name = "base", value = extras, file = plugin.file }
      hints.base = hints.base or {}
      for k, l in pairs(lines) do hints.base[k] = hints.base[k] or (plugin.file .. ":" .. l) end
    end
  end
  if parent_res and #parent_res.names > 0 then
    layers[#layers + 1] = { name = "inherited", value = parent_res.value(), file = parent.file }
  end
  local defaults, default_origin
  for name, d in pairs(decls) do
    if d.own and present(d.decl.value) then
      defaults = defaults or {}
      default_origin = default_origin or {}
      set_path(defaults, name, d.decl.value)
      default_origin[name] = where(d.file, d.decl, "value")
    end
  end
  if defaults then layers[#layers + 1] = { name = "default", value = defaults, file = plugin.file } end

  local names, values, from, lines = resolve_leaves(layers)

  -- environment variables: <PLUGIN_NAME>_<SETTING>
  local prefix = plugin.var_prefix
  if not prefix then
    prefix = M.var_name(plugin.name) .. "_"
    plugin.var_prefix = prefix -- the same in every environment
  end
  local env_origin
  if prefixes[prefix] then
    local candidates = {}
    for _, name in ipairs(names) do candidates[name] = true end
    for name in pairs(decls) do candidates[name] = true end
    for _, l in ipairs(layers) do
      for k in pairs(l.value) do
        if type(k) == "string" and k:sub(1, 1) == "_" then candidates[k] = true end
      end
    end
    local list = {}
    for name in pairs(candidates) do list[#list + 1] = name end
    table.sort(list, function(a, b)
      if #a ~= #b then return #a < #b end
      return a < b
    end)
    local by_source = {}
    for _, name in ipairs(list) do
      local var = prefix .. M.var_name(name)
      local text, source, origin
      local block = vars[var]
      if block then
        text, source, origin = block.value, "block", block.origin
      elseif rc.dotenv[var] ~= nil then
        text, source, origin = rc.dotenv[var], "dotenv", ".env:" .. tostring(rc.dotenv_lines[var])
      elseif rc.process[var] ~= nil then
        text, source, origin = rc.process[var], "env", "$" .. var
      end
      if text ~= nil then
        local d = decls[name]
        local is_extra = name:sub(1, 1) == "_" and not name:find(".", 1, true)
        local layer = by_source[source] or {}
        by_source[source] = layer
        set_path(layer, name, cast(text, d and d.decl.kind, is_extra))
        env_origin = env_origin or {}
        env_origin[#env_origin + 1] = { name = name, origin = origin }
      end
    end
    if env_origin then
      local env_layers = {}
      if by_source.block then
        env_layers[#env_layers + 1] = { name = "env", value = by_source.block, file = "meltano.yml" }
      end
      if by_source.dotenv then
        env_layers[#env_layers + 1] = { name = "dotenv", value = by_source.dotenv, file = ".env" }
      end
      if by_source.env then env_layers[#env_layers + 1] = { name = "env", value = by_source.env, file = "env" } end
      for _, l in ipairs(layers) do env_layers[#env_layers + 1] = l end
      layers = env_layers
      names, values, from, lines = resolve_leaves(layers)
    end
  end

  -- settings, sorted by name
  local sensitive_decls -- names, and name -> true
  for name, d in pairs(decls) do
    if is_sensitive_decl(d.decl) then
      sensitive_decls = sensitive_decls or {}
      sensitive_decls[#sensitive_decls + 1] = name
      sensitive_decls[name] = true
    end
  end
  local unsafe, expand_opts = rc.unsafe, rc.expand_opts
  local settings = setmetatable({}, array_mt)
  for i = 1, #names do
    local name, v, layer, line = names[i], values[i], layers[from[i]], lines[i]
    local source = layer.name
    -- origin: "file:line" (origin_file, origin_line) unless set below
    local origin, origin_file, origin_line
    if line > 0 then
      origin_file, origin_line = layer.file, line
    else
      origin = layer.file
    end
    -- $VAR expansion: config values from the files; extras (select, metadata, ...)
    -- are stream patterns where `$` is literal (`default$default-users.*`)
    if EXPANDED[source] and byte(name, 1) ~= 95 then
      local tv = type(v)
      if (tv == "string" and find(v, "$", 1, true)) or (tv == "table" and has_dollar(v, 0)) then
        local expanded, err = expand(v, full, expand_opts)
        if expanded == nil then
          fail("%s: %s %s setting %s: %s", origin or (origin_file .. ":" .. origin_line), plugin.type,
            plugin.name, name, tostring(err))
        end
        v = expanded
        values[i] = v
      end
    end
    if source == "env" or source == "dotenv" then
      origin_line = nil
      for j = #env_origin, 1, -1 do
        local e = env_origin[j]
        if e.name == name or name:sub(1, #e.name + 1) == e.name .. "." then
          origin = e.origin
          break
        end
      end
    elseif source == "inherited" then
      local ps = parent_res.by_name()[name]
      origin_line = nil
      if not ps then
        origin = parent.where
      else
        origin = rawget(ps, "origin")
        if not origin then
          origin_file, origin_line = ps.origin_file, ps.origin_line
          if not origin_line then origin = parent.where end
        end
      end
    elseif source == "default" then
      origin_line = nil
      origin = default_origin[name]
      if not origin then
        for dn, o in pairs(default_origin) do
          if name:sub(1, #dn + 1) == dn .. "." then origin = o end
        end
      end
    elseif line == 0 and hints[source] then -- no line: the extra's key has it
      local top = match(name, "^([^.]*)")
      origin = hints[source][top] or origin
    end
    local sensitive = sensitive_names[name]
    if sensitive == nil then sensitive = name_is_sensitive(name) end
    if not sensitive and sensitive_decls then
      if sensitive_decls[name] then
        sensitive = true
      elseif find(name, ".", 1, true) then -- inside a declared one?
        for _, dn in ipairs(sensitive_decls) do
          local n = #dn
          if byte(name, n + 1) == 46 and sub(name, 1, n) == dn then
            sensitive = true
            break
          end
        end
      end
    end
    if origin_line then origin = nil end
    local s = setmetatable({
      name = name,
      value = (sensitive and not unsafe) and M.REDACTED or v,
      source = source,
      origin = origin,
      origin_file = origin_line and origin_file,
      origin_line = origin_line,
      sensitive = sensitive,
      redacted = sensitive and not unsafe,
    }, Setting)
    if sensitive then secret_values[s] = v end
    settings[i] = s
  end

  stack[plugin] = nil
  stack[#stack] = nil
  local res = {
    plugin = plugin,
    settings = settings,
    names = names,
    values = values,
    decls = decls,
    blocks = { table.unpack(blocks) },
  }
  -- the nested (expanded, unredacted) value and the settings by name, built only
  -- when a child inherits them
  local nested, by_name
  function res.value()
    if not nested then
      local flat = {}
      for i = 1, #names do flat[names[i]] = values[i] end
      nested = config.nest(flat, names) -- names are sorted already
    end
    return nested
  end
  function res.by_name()
    if not by_name then
      by_name = {}
      for _, s in ipairs(settings) do by_name[s.name] = s end
    end
    return by_name
  end
  rc.done[plugin] = res
  return res
end

local function resolve_all(project, opts)
  local environment
  if opts.environment and opts.environment ~= null then
    environment = project.environment_index[opts.environment]
    if not environment then
      fail("environment %q not found in %s (known: %s)", tostring(opts.environment), project.file,
        known_list(project))
    end
  end
  local process = opts.env or project.process_env or M.process_env()
  local rc = {
    project = project,
    environment = environment,
    strict = opts.strict and true or false,
    unsafe = opts.unsafe and true or false,
    process = process,
    dotenv = project.dotenv,
    dotenv_lines = project.dotenv_lines,
    done = {},
  }
  rc.expand_opts = { strict = rc.strict }
  -- the expansion environment: built-ins < process < .env < env blocks
  local full = { MELTANO_PROJECT_ROOT = project.dir }
  if environment then full.MELTANO_ENVIRONMENT = environment.name end
  for k, v in pairs(process) do full[k] = v end
  for k, v in pairs(project.dotenv) do full[k] = v end
  local prefixes = {}
  for k in pairs(process) do add_prefixes(prefixes, k) end
  for k in pairs(project.dotenv) do add_prefixes(prefixes, k) end
  local vars = {}
  local top = {}
  for i = #project.top_env, 1, -1 do top[#top + 1] = project.top_env[i] end
  if environment then
    for _, entry in ipairs(environment.entries) do
      local e = entry.env
      if present(e) then
        if not is_map(e) then
          fail("%s: env of environment %s must be a mapping", where(environment.file, entry, "env"), environment.name)
        end
        top[#top + 1] = { vars = e, file = environment.file }
      end
    end
  end
  apply_blocks(rc, top, full, vars, prefixes)
  rc.full, rc.vars, rc.prefixes = full, vars, prefixes

  local wanted = opts.plugin
  local out = setmetatable({}, array_mt)
  for _, plugin in ipairs(project.plugins) do
    if wanted == nil or plugin.name == wanted then
      local res = resolve_plugin(rc, plugin, {})
      out[#out + 1] = { type = plugin.type, name = plugin.name, file = plugin.file, settings = res.settings }
    end
  end
  if wanted ~= nil and #out == 0 then
    local names = {}
    for _, p in ipairs(project.plugins) do names[#names + 1] = p.name end
    local guess = require("moonops.cli").closest(wanted, names)
    fail("plugin %q not found in %s%s", wanted, project.file, guess and (" (did you mean " .. guess .. "?)") or "")
  end
  if environment then
    for ptype, by_name in pairs(environment.plugins) do
      for name, list in pairs(by_name) do
        if not project.plugin_index[ptype][name] then
          project.warnings[#project.warnings + 1] = string.format(
            "%s: environment %s configures %s %s, which is not declared under plugins; ignored",
            where(environment.file, list[1]), environment.name, ptype, name)
        end
      end
    end
  end
  return { environment = environment and environment.name or nil, plugins = out }
end

--- Resolve every plugin's settings in one environment.
-- opts: environment (a name, or nil for none), env (process environment table),
-- strict (a missing $VAR is an error), unsafe (show sensitive values), plugin (only
-- plugins of that name).
-- Returns {environment=, plugins={{type=, name=, settings={{name=, value=, source=,
-- origin=, redacted=, sensitive=, hash=}}}}} or nil, message. `hash` (sha256) is there
-- for sensitive settings (computed when first read), so they can be compared without
-- being shown.
function M.resolve(project, opts)
  return protect(resolve_all, project, opts or {})
end

local function canonical(v)
  if type(v) == "string" then return "s:" .. v end
  return "j:" .. json.encode(v)
end

--- The settings whose resolved values differ between two resolutions.
-- Returns a list of {type=, plugin=, setting=, from=, to=} (nil where a side has
-- no value); sensitive values are compared by hash and shown as "(redacted)".
function M.diff(a, b)
  local function index(r)
    local plugins, order = {}, {}
    for _, p in ipairs(r.plugins) do
      local key = p.type .. "\0" .. p.name
      local settings = {}
      for _, s in ipairs(p.settings) do settings[s.name] = s end
      plugins[key] = { p = p, settings = settings }
      order[#order + 1] = key
    end
    return plugins, order
  end
  local pa, oa = index(a)
  local pb, ob = index(b)
  local keys, seen = {}, {}
  for _, k in ipairs(oa) do
    keys[#keys + 1] = k
    seen[k] = true
  end
  for _, k in ipairs(ob) do
    if not seen[k] then keys[#keys + 1] = k end
  end
  local changes = setmetatable({}, array_mt)
  for _, key in ipairs(keys) do
    local x, y = pa[key], pb[key]
    local p = (x or y).p
    local sx, sy = x and x.settings or {}, y and y.settings or {}
    local names, nseen = {}, {}
    for n in pairs(sx) do
      names[#names + 1] = n
      nseen[n] = true
    end
    for n in pairs(sy) do
      if not nseen[n] then names[#names + 1] = n end
    end
    table.sort(names)
    for _, n in ipairs(names) do
      local s1, s2 = sx[n], sy[n]
      local secret = (s1 and s1.sensitive) or (s2 and s2.sensitive)
      local k1, k2
      if secret then
        k1 = s1 and (s1.hash or canonical(s1.value))
        k2 = s2 and (s2.hash or canonical(s2.value))
      else
        k1 = s1 and canonical(s1.value)
        k2 = s2 and canonical(s2.value)
      end
      if k1 ~= k2 then
        local function shown(s)
          if not s then return nil end
          if secret then return M.REDACTED end
          return s.value
        end
        changes[#changes + 1] = { type = p.type, plugin = p.name, setting = n, from = shown(s1), to = shown(s2) }
      end
    end
  end
  return changes
end

--- workspace.yml, then workspace-<environment>.yml over it (keys it names win).
-- Returns a table (empty when neither exists) or nil, message.
function M.workspace_config(dir, environment)
  return protect(function()
    local result = {}
    local files = { "workspace.yml" }
    if environment and environment ~= null then files[2] = "workspace-" .. environment .. ".yml" end
    for _, name in ipairs(files) do
      local path = dir .. "/" .. name
      if fs.exists(path) then
        local doc = load_yaml(path, path)
        if doc ~= null then
          if not is_map(doc) then fail("%s: expected a mapping, got %s", path, describe(doc)) end
          result = config.merge(result, doc)
        end
      end
    end
    return result
  end)
end

--- What a deployment checks: meltano.yml and its includes parse, the environment
-- (or the default one) exists, every plugin resolves, workspace.yml parses.
-- Returns true (plus the project) or nil, message.
function M.validate(dir, environment)
  local project, err = M.load(dir)
  if not project then return nil, err end
  local ok, name = pcall(M.active_environment, project, { flag = environment })
  if not ok then return nil, errors.is(name) and name.message or tostring(name) end
  local res, rerr = M.resolve(project, { environment = name, env = project.process_env })
  if not res then return nil, rerr end
  local _, werr = M.workspace_config(project.dir, name)
  if werr then return nil, werr end
  return true, project
end

return M
