--- Plugins: discovery, loading, and the registries plugins add to.
-- A plugin is a folder <dir>/<name>/ holding plugin.lua (returns {name, version, setup})
-- or plugin.so (native, see include/moonops/plugin.h). Directories searched, first wins:
-- --plugins DIR, $MOONOPS_PLUGIN_PATH (colon-separated), ./plugins, the bundled plugins.
-- Enabled by name in moonops.yml `plugins:`; setup(engine, config) registers extensions.
local engine_info = require "moonops.engine"
local errors = require "moonops.errors"
local fs = require "moonops.fs"
local json = require "moonops.json"
local log = require "moonops.log"
local recipe = require "moonops.recipe"

local M = {}

local extra_dirs = {}

--- What plugins have registered, read by the modules that use each extension point.
M.registry = {
  providers = {},      -- webhook providers (tables, see moonops.webhook)
  builders = {},       -- name -> image builder backend
  deploy_hooks = { before_validate = {}, after_switch = {}, on_failure = {} },
  notifiers = {},      -- list of {plugin=, events=set|nil, fn=}
}

M.STAGES = { "before_validate", "after_switch", "on_failure" }
M.EVENTS = { "deployment", "promotion", "image" }

local loaded = {}   -- name -> {plugin=, error=}
local enabled_done = false

function M.add_dirs(dirs)
  for _, d in ipairs(dirs) do extra_dirs[#extra_dirs + 1] = d end
end

--- The directories searched, first wins.
function M.search_path()
  local path = {}
  for _, d in ipairs(extra_dirs) do path[#path + 1] = d end
  local env = os.getenv("MOONOPS_PLUGIN_PATH")
  if env and env ~= "" then
    for d in env:gmatch("[^:]+") do path[#path + 1] = d end
  end
  path[#path + 1] = "plugins"
  for _, d in ipairs(engine_info.plugin_dirs) do path[#path + 1] = d end
  return path
end

local function plugin_files(dir, name)
  local base = dir .. "/" .. name
  local lua_file, so_file = base .. "/plugin.lua", base .. "/plugin.so"
  local st = fs.stat(lua_file)
  if st and st.type == "file" then return lua_file, "lua" end
  st = fs.stat(so_file)
  if st and st.type == "file" then return so_file, "native" end
  return nil
end

--- Every plugin found on the search path: sorted list of {name=, file=, kind=, dir=}.
function M.discover()
  local seen, out = {}, {}
  for _, dir in ipairs(M.search_path()) do
    for _, name in ipairs(fs.list(dir) or {}) do
      if not seen[name] then
        local file, kind = plugin_files(dir, name)
        if file then
          seen[name] = true
          out[#out + 1] = { name = name, file = file, kind = kind, dir = dir .. "/" .. name }
        end
      end
    end
  end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

--- Find one plugin by name: {name=, file=, kind=} or nil.
function M.find(name)
  if type(name) ~= "string" or not name:match("^[%w][%w_%-]*$") then return nil end
  for _, dir in ipairs(M.search_path()) do
    local file, kind = plugin_files(dir, name)
    if file then return { name = name, file = file, kind = kind, dir = dir .. "/" .. name } end
  end
  return nil
end

--- Normalise moonops.yml `plugins:` items (a name or {name = config}) to {name=, config=}.
function M.normalise(items)
  local out = {}
  for i, item in ipairs(items or {}) do
    if type(item) == "string" then
      out[#out + 1] = { name = item, config = {} }
    elseif type(item) == "table" and item.name and item.config ~= nil then
      out[#out + 1] = item
    elseif type(item) == "table" then
      local name, config, n = nil, nil, 0
      for k, v in pairs(item) do name, config, n = k, v, n + 1 end
      if n ~= 1 then
        errors.raise(string.format("plugins item %d must be a name or a one-key mapping of name to config", i),
          errors.USAGE)
      end
      out[#out + 1] = { name = name, config = type(config) == "table" and config or {} }
    end
  end
  return out
end

-- The object a plugin's setup receives.
local function engine_for(name, config)
  local e = { name = name, config = config, version = engine_info.version, log = log }
  function e.register_recipe(rname, r)
    assert(type(rname) == "string" and type(r) == "table" and type(r.run) == "function",
      "register_recipe(name, {summary=, options=, run=})")
    recipe.register(rname, r, "plugin " .. name)
  end
  function e.register_webhook_provider(p)
    assert(type(p) == "table" and type(p.name) == "string", "register_webhook_provider{name=, detect=, verify=, parse=}")
    p.plugin = name
    M.registry.providers[#M.registry.providers + 1] = p
    require("moonops.webhook").register(p)
  end
  function e.register_image_builder(bname, backend)
    assert(type(bname) == "string" and type(backend) == "table", "register_image_builder(name, backend)")
    backend.plugin = name
    M.registry.builders[bname] = backend
  end
  function e.register_deploy_hook(stage, fn)
    local hooks = M.registry.deploy_hooks[stage]
    assert(hooks, "deploy hook stage must be one of " .. table.concat(M.STAGES, ", "))
    assert(type(fn) == "function", "register_deploy_hook(stage, fn)")
    hooks[#hooks + 1] = { plugin = name, fn = fn }
  end
  function e.register_notifier(events, fn)
    if type(events) == "function" then events, fn = nil, events end
    local set
    if events then
      set = {}
      for _, ev in ipairs(events) do set[ev] = true end
    end
    assert(type(fn) == "function", "register_notifier([events], fn)")
    M.registry.notifiers[#M.registry.notifiers + 1] = { plugin = name, events = set, fn = fn }
  end
  return e
end

--- Load and set up one plugin with its config. Returns the plugin table or nil, message.
-- Never raises: a broken plugin is reported, the engine goes on.
function M.load(name, config)
  if loaded[name] then
    return loaded[name].plugin, loaded[name].error
  end
  local found = M.find(name)
  local plugin, err
  if not found then
    err = string.format("plugin %s not found (searched %s)", name, table.concat(M.search_path(), ", "))
  elseif found.kind == "lua" then
    local chunk, lerr = loadfile(found.file)
    if not chunk then
      err = lerr
    else
      local ok, v = pcall(chunk)
      if ok then plugin = v else err = tostring(v) end
    end
  else
    plugin, err = require("moonops.native").load(found.file)
  end
  if plugin and type(plugin) ~= "table" then
    plugin, err = nil, "plugin.lua must return {name=, version=, setup=}"
  end
  if plugin and plugin.setup ~= nil and type(plugin.setup) ~= "function" then
    plugin, err = nil, "setup must be a function"
  end
  if plugin and plugin.setup then
    local ok, serr = pcall(plugin.setup, engine_for(name, config or {}), config or {})
    if not ok then plugin, err = nil, "setup failed: " .. tostring(serr) end
  end
  if err then err = "plugin " .. name .. ": " .. err end
  loaded[name] = { plugin = plugin, error = err, file = found and found.file, kind = found and found.kind }
  if err then log.warn(err) end
  return plugin, err
end

--- Load every plugin enabled in settings (once per Lua state). Returns a list of errors.
function M.load_enabled(settings)
  if enabled_done then return {} end
  enabled_done = true
  local errs = {}
  for _, item in ipairs(M.normalise(settings and settings.plugins)) do
    local _, err = M.load(item.name, item.config)
    if err then errs[#errs + 1] = err end
  end
  return errs
end

--- Tell every notifier subscribed to `event` (deployment, promotion, image). Never raises.
function M.emit(event, payload)
  for _, n in ipairs(M.registry.notifiers) do
    if not n.events or n.events[event] then
      local ok, err = pcall(n.fn, event, payload)
      if not ok then log.warn(string.format("plugin %s: notifier failed: %s", n.plugin, tostring(err))) end
    end
  end
end

--- Run the deploy hooks of `stage`. before_validate hooks may stop a deployment by raising
-- or returning false, reason: the result is nil, "plugin <name>: <reason>". Hooks of the
-- other stages only log their failures.
function M.run_deploy_hooks(stage, deployment, info)
  for _, h in ipairs(M.registry.deploy_hooks[stage] or {}) do
    local ok, res, reason = pcall(h.fn, deployment, info)
    local failed = not ok or res == false
    if failed then
      local msg = string.format("plugin %s: %s hook failed: %s", h.plugin, stage, tostring(ok and reason or res))
      if stage == "before_validate" then return nil, msg end
      log.warn(msg)
    end
  end
  return true
end

--- `moonops plugins [--json]`: what was found, what is enabled, why anything failed.
function M.cli(args, first, gopts)
  local cli = require "moonops.cli"
  local opts = cli.parse({ { "json", type = "boolean", help = "print JSON" } }, args, first)
  local enabled = {}
  local path = cli.config_path(gopts)
  local st = fs.stat(path)
  if st then
    local settings = require("moonops.settings").load(path)
    for _, item in ipairs(M.normalise(settings.plugins)) do
      enabled[item.name] = true
      M.load(item.name, item.config)
    end
  end
  local list = {}
  local seen = {}
  for _, p in ipairs(M.discover()) do
    seen[p.name] = true
    local l = loaded[p.name]
    list[#list + 1] = { name = p.name, kind = p.kind, file = p.file, enabled = enabled[p.name] or false,
      version = l and l.plugin and l.plugin.version or nil, error = l and l.error or nil,
      loaded = (l and l.plugin) and true or false }
  end
  for name in pairs(enabled) do
    if not seen[name] then
      list[#list + 1] = { name = name, enabled = true, loaded = false, error = loaded[name] and loaded[name].error }
    end
  end
  table.sort(list, function(a, b) return a.name < b.name end)
  if opts.json then
    io.stdout:write(json.pretty(json.array(list)))
  else
    for _, p in ipairs(list) do
      local state = p.error and ("error: " .. p.error) or (p.loaded and "loaded") or (p.enabled and "enabled")
        or "available"
      io.stdout:write(string.format("%-20s %-7s %-10s %s\n", p.name, p.kind or "-", state, p.file or ""))
    end
  end
  for _, p in ipairs(list) do
    if p.enabled and p.error then return 1 end
  end
  return 0
end

return M
