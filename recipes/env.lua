-- recipes/env.lua: `moonops env list|show|diff|use` - the environments of a meltano.yml,
-- every resolved setting with where its value came from, secrets masked.
local errors = require "moonops.errors"
local fs = require "moonops.fs"
local json = require "moonops.json"
local meltano = require "moonops.meltano"

local function usage(msg)
  errors.raise(msg, errors.USAGE)
end

-- ---------------------------------------------------------------------------
-- Where the project is: --project DIR, --workspace W (its current release), or ".".

--- The current release of a deployed workspace and its recorded active environment.
-- Returns dir, environment (nil when none is recorded). Raises when W was never deployed.
local function deployed_workspace(ctx, name)
  local settings = require "moonops.settings"
  local workspace = require "moonops.workspace"
  local ws = settings.workspace(ctx.settings, name)
  local paths = workspace.paths(ctx.settings, ws)
  if not fs.exists(paths.current) then
    errors.raise(string.format("--workspace needs a deployed workspace: run 'moonops deploy %s' first", ws.name))
  end
  local dir, err = workspace.current_release(ctx.settings, ctx.store, ws)
  if not dir then errors.raise(err) end
  return dir, workspace.active_environment(ctx.store, ws), ws
end

--- Load the project in `dir` for the env commands; `recorded` is the workspace's
-- recorded active environment (nil for a plain --project). Returns the project.
local function open_project(dir, recorded, opts)
  local project, err = meltano.load(dir, { env = opts.process_env })
  if not project then errors.raise(err, errors.USAGE) end
  project.recorded_environment = recorded
  return project
end

local function locate(ctx, opts)
  -- A short-lived command whose tables stay live until the output is written (the
  -- garbage in between is a third of that): collecting would only walk them again
  collectgarbage("stop")
  if opts.project and opts.workspace then usage("use either --project or --workspace, not both") end
  local env = meltano.process_env()
  opts.process_env = env
  if opts.workspace then
    local dir, recorded, ws = deployed_workspace(ctx, opts.workspace)
    local project = open_project(dir, recorded, opts)
    project.workspace = ws
    return project
  end
  local dir = opts.project or "."
  if not fs.exists(dir .. "/meltano.yml") then
    if opts.project then usage(string.format("no meltano.yml in %s", dir)) end
    usage("no meltano.yml in the current directory: use --project DIR or --workspace W")
  end
  return open_project(dir, nil, opts)
end

local function warn_all(ctx, project)
  for _, w in ipairs(project.warnings) do ctx.log.warn(w) end
end

local function active(project, opts)
  return meltano.active_environment(project, {
    flag = opts.environment,
    env = opts.process_env,
    state = project.recorded_environment,
  })
end

-- ---------------------------------------------------------------------------
-- Text output

local function width(s)
  return utf8.len(s) or #s
end

local function render(v)
  if type(v) == "string" then return (v:gsub("\n", "\\n"):gsub("\t", "\\t")) end
  if v == nil then return "-" end
  if v == json.null then return "null" end
  if type(v) == "table" then return json.encode(v) end
  return tostring(v)
end

-- Print rows (lists of strings) as aligned columns; the header bold on a TTY.
-- `dim(row, col)` says which cells to dim (colour only).
local function print_table(ctx, header, rows, dim)
  local widths = {}
  for i, h in ipairs(header) do widths[i] = width(h) end
  for _, row in ipairs(rows) do
    for i, cell in ipairs(row) do widths[i] = math.max(widths[i], width(cell)) end
  end
  local colour = ctx.term.colour(1)
  local out = {}
  local function line(row, is_header)
    local cells = {}
    for i, cell in ipairs(row) do
      local pad = i < #row and string.rep(" ", widths[i] - width(cell)) or ""
      if colour and is_header then
        cell = ctx.term.paint("bold", cell)
      elseif colour and dim and dim(row, i) then
        cell = ctx.term.paint("dim", cell)
      end
      cells[i] = cell .. pad
    end
    out[#out + 1] = (table.concat(cells, "  "):gsub("%s+$", ""))
  end
  line(header, true)
  for _, row in ipairs(rows) do line(row, false) end
  ctx.print(table.concat(out, "\n"), "\n")
end

-- ---------------------------------------------------------------------------
-- Commands

local COMMON = {
  { "project", type = "string", metavar = "DIR", help = "a directory holding meltano.yml (default: the current one)" },
  { "workspace", type = "string", metavar = "W", help = "the current release of a deployed workspace (name or id)" },
  { "json", type = "boolean", help = "print JSON" },
}

local function with_common(list)
  local out = {}
  for _, o in ipairs(COMMON) do out[#out + 1] = o end
  for _, o in ipairs(list) do out[#out + 1] = o end
  return out
end

local function list_cmd(ctx, opts)
  local project = locate(ctx, opts)
  warn_all(ctx, project)
  local name = active(project, opts)
  if opts.json then
    ctx.print(json.pretty({
      active = name or json.null,
      default = project.default_environment or json.null,
      environments = json.array(project.environments),
    }))
    return 0
  end
  if #project.environments == 0 then
    ctx.print("no environments in " .. project.file .. "\n")
    return 0
  end
  local rows = {}
  for _, e in ipairs(project.environments) do
    local notes = {}
    if e == name then notes[#notes + 1] = "active" end
    if e == project.default_environment then notes[#notes + 1] = "default" end
    rows[#rows + 1] = { e == name and "*" or " ", e, table.concat(notes, ", ") }
  end
  print_table(ctx, { " ", "ENVIRONMENT", "" }, rows)
  if not name then ctx.print("no active environment\n") end
  return 0
end

-- The JSON document of `env show`, written directly: it can hold tens of thousands
-- of settings and the general encoder sorts every object's keys. The layout is
-- json.pretty's (two-space indent, keys sorted). It goes out a plugin (at most BATCH
-- settings) per write(...) call, in pieces that are existing strings (names, values)
-- between constant ones, and line numbers, which io.write prints without making strings.
local concat, find, format, mtype = table.concat, string.find, string.format, math.type

-- Is `s` its own JSON text between quotes (no quote, backslash or control character)?
local function plain(s)
  return find(s, '^[^%c"\\]*$') ~= nil
end

local function quote(s)
  if plain(s) then return '"' .. s .. '"' end
  return json.encode(s)
end

-- A list of plain strings, integers and booleans, laid out as json.pretty does at
-- the depth of a setting's value; nil for anything else.
local function simple_list(v)
  local n = #v
  if n == 0 or not json.is_array(v) then return nil end
  local parts = {}
  for i = 1, n do
    local x = v[i]
    local tx = type(x)
    if tx == "string" then
      parts[i] = quote(x)
    elseif tx == "boolean" then
      parts[i] = x and "true" or "false"
    elseif mtype(x) == "integer" then
      parts[i] = format("%d", x)
    else
      return nil
    end
  end
  return "[\n            " .. concat(parts, ",\n            ") .. "\n          ]"
end

local function json_value(v)
  local tv = type(v)
  if tv == "string" then return quote(v) end
  if tv == "boolean" then return v and "true" or "false" end
  if mtype(v) == "integer" then return format("%d", v) end
  if tv == "table" then return simple_list(v) or (json.pretty(v):sub(1, -2):gsub("\n", "\n          ")) end
  return json.encode(v)
end

local FIRST, NEXT = '\n        {\n          "name": ', ',\n        {\n          "name": '
local ORIGIN, ORIGIN_NULL = ',\n          "origin": "', ',\n          "origin": null'
local REDACTED = { -- after a plain origin: its closing quote, then the flag
  [true] = '",\n          "redacted": true,\n          "source": ',
  [false] = '",\n          "redacted": false,\n          "source": ',
}
local REDACTED_NULL_ORIGIN = {
  [true] = ',\n          "redacted": true,\n          "source": ',
  [false] = ',\n          "redacted": false,\n          "source": ',
}
local VALUE, VALUE_STRING = ',\n          "value": ', ',\n          "value": "'
local CLOSE, CLOSE_STRING = "\n        }", '"\n        }'

-- The pieces of settings[from..to] of a plugin, appended to pieces after k; returns the
-- new k and how many strings went into `raw`. Origins and string values go in as they
-- are, between quotes, listed in `raw` so the caller can check them all at once; with
-- `check`, each is checked here instead.
local function setting_pieces(pieces, k, raw, settings, from, to, quoted, check)
  local nraw = 0
  for j = from, to do
    local s = settings[j]
    local v, source = s.value, s.source
    -- an origin still kept as file and line is written from those, without making the string
    local origin = rawget(s, "origin")
    local line = origin == nil and rawget(s, "origin_line")
    if line and check and not plain(s.origin_file) then line, origin = nil, s.origin end
    pieces[k + 1] = j > 1 and NEXT or FIRST
    pieces[k + 2] = quoted[s.name]
    local redacted = s.redacted and true or false
    if line then
      local file = s.origin_file
      pieces[k + 3] = ORIGIN
      pieces[k + 4] = file
      pieces[k + 5] = ":"
      pieces[k + 6] = line
      pieces[k + 7] = REDACTED[redacted]
      nraw = nraw + 1
      raw[nraw] = file
      k = k + 2
    elseif origin == nil then
      pieces[k + 3] = ORIGIN_NULL
      pieces[k + 4] = ""
      pieces[k + 5] = REDACTED_NULL_ORIGIN[redacted]
    elseif not check or plain(origin) then
      pieces[k + 3] = ORIGIN
      pieces[k + 4] = origin
      pieces[k + 5] = REDACTED[redacted]
      nraw = nraw + 1
      raw[nraw] = origin
    else
      pieces[k + 3] = ',\n          "origin": '
      pieces[k + 4] = json.encode(origin)
      pieces[k + 5] = REDACTED_NULL_ORIGIN[redacted]
    end
    pieces[k + 6] = source and quoted[source] or "null"
    if type(v) == "string" and (not check or plain(v)) then
      pieces[k + 7] = VALUE_STRING
      pieces[k + 8] = v
      pieces[k + 9] = CLOSE_STRING
      nraw = nraw + 1
      raw[nraw] = v
    else
      pieces[k + 7] = VALUE
      pieces[k + 8] = json_value(v)
      pieces[k + 9] = CLOSE
    end
    k = k + 9
  end
  return k, nraw
end

-- Are the first n strings of `list` all plain? One %q over them joined (by a plain
-- space) adds nothing but the two quotes exactly when none needs escaping.
local function all_plain(list, n)
  if n == 0 then return true end
  local joined = concat(list, " ", 1, n)
  return #format("%q", joined) == #joined + 2
end

local BATCH = 400 -- settings written per call of `write`

-- Write the document with write(...) (several strings per call), a plugin at a time.
local function show_json(res, write)
  -- names and sources repeat: quote each once
  local quoted = setmetatable({}, { __index = function(t, k)
    local q = quote(k)
    t[k] = q
    return q
  end })
  write('{\n  "environment": ', res.environment and quote(res.environment) or "null", ',\n  "plugins": [')
  local pieces, raw, unpack = {}, {}, table.unpack
  for i, p in ipairs(res.plugins) do
    local settings = p.settings
    local n = #settings
    pieces[1] = (i == 1 and '\n    {\n      "name": ' or ',\n    {\n      "name": ') .. quote(p.name)
      .. ',\n      "settings": ['
    local k, from = 1, 1
    repeat
      local to = math.min(n, from + BATCH - 1)
      local start = k
      local nraw
      k, nraw = setting_pieces(pieces, start, raw, settings, from, to, quoted, false)
      if not all_plain(raw, nraw) then k = setting_pieces(pieces, start, raw, settings, from, to, quoted, true) end
      if to == n then
        k = k + 1
        pieces[k] = (n > 0 and '\n      ],\n      "type": ' or '],\n      "type": ') .. quote(p.type) .. "\n    }"
      end
      write(unpack(pieces, 1, k))
      k, from = 0, to + 1
    until from > n
  end
  write(#res.plugins > 0 and "\n  ]\n}\n" or "]\n}\n")
end

local function show_cmd(ctx, opts)
  local project = locate(ctx, opts)
  local name, how = active(project, opts)
  local res, err = meltano.resolve(project, {
    environment = name,
    env = opts.process_env,
    strict = opts.strict,
    unsafe = opts.unsafe,
    plugin = opts.plugin,
  })
  warn_all(ctx, project)
  if not res then errors.raise(err, err:find("^plugin ") and errors.USAGE or errors.FAILURE) end
  if opts.json then
    io.stdout:setvbuf("full", 65536) -- megabytes of JSON: fewer, larger writes
    show_json(res, ctx.print)
    return 0
  end
  ctx.print(string.format("environment: %s%s\n", name or "(none)", name and (" (" .. how .. ")") or ""))
  local rows = {}
  for _, p in ipairs(res.plugins) do
    if #p.settings == 0 then
      rows[#rows + 1] = { p.name, "-", "", "", "" }
    end
    for _, s in ipairs(p.settings) do
      rows[#rows + 1] = { p.name, s.name, render(s.value), s.source or "", s.origin or "" }
    end
  end
  print_table(ctx, { "PLUGIN", "SETTING", "VALUE", "SOURCE", "ORIGIN" }, rows, function(row, i)
    return (i == 3 and row[3] == meltano.REDACTED) or i == 5
  end)
  return 0
end

local function diff_cmd(ctx, opts)
  local a, b = ctx.args[1], ctx.args[2]
  if not a or not b then usage("env diff needs two environments: moonops env diff E1 E2") end
  local project = locate(ctx, opts)
  local resolved = {}
  for i, e in ipairs({ a, b }) do
    local name = meltano.active_environment(project, { flag = e })
    local res, err = meltano.resolve(project, { environment = name, env = opts.process_env, strict = opts.strict })
    if not res then errors.raise(err) end
    resolved[i] = res
  end
  warn_all(ctx, project)
  local changes = meltano.diff(resolved[1], resolved[2])
  if opts.json then
    local list = json.array()
    for _, c in ipairs(changes) do
      list[#list + 1] = { type = c.type, plugin = c.plugin, setting = c.setting,
        from = c.from == nil and json.null or c.from, to = c.to == nil and json.null or c.to }
    end
    ctx.print(json.pretty({ from = a, to = b, changes = list }))
    return 0
  end
  if #changes == 0 then
    ctx.print(string.format("no differences between %s and %s\n", a, b))
    return 0
  end
  local rows = {}
  for _, c in ipairs(changes) do rows[#rows + 1] = { c.plugin, c.setting, render(c.from), render(c.to) } end
  print_table(ctx, { "PLUGIN", "SETTING", a:upper(), b:upper() }, rows, function(row, i)
    return i > 2 and (row[i] == meltano.REDACTED or row[i] == "-")
  end)
  return 0
end

local function use_cmd(ctx, opts)
  local name = ctx.args[1]
  if not name then usage("env use needs an environment: moonops env use E (--workspace W | --project DIR --write)") end
  if opts.workspace then
    if opts.project then usage("use either --project or --workspace, not both") end
    local settings = require "moonops.settings"
    local workspace = require "moonops.workspace"
    local ws = settings.workspace(ctx.settings, opts.workspace)
    if not fs.exists(workspace.paths(ctx.settings, ws).current) then
      errors.raise(string.format("--workspace needs a deployed workspace: run 'moonops deploy %s' first", ws.name))
    end
    local ok, err = workspace.use_environment(ctx.settings, ctx.store, ws, name)
    if not ok then errors.raise(err, errors.USAGE) end
    if opts.json then
      ctx.print(json.pretty({ workspace = ws.name, active = name }))
    else
      ctx.print(string.format("workspace %s: active environment is now %s\n", ws.name, name))
    end
    return 0
  end
  if not opts.project then
    usage("env use needs --workspace W, or --project DIR --write to change default_environment in meltano.yml")
  end
  local project = locate(ctx, opts)
  meltano.active_environment(project, { flag = name }) -- an unknown name raises, listing the known ones
  if name == "null" then usage("env use: pick an environment by name (null is not supported)") end
  if not opts.write then
    usage(string.format("env use --project rewrites default_environment in %s: add --write to do it", project.file))
  end
  local path = project.file
  local text, rerr = fs.read(path)
  if not text then errors.raise(rerr) end
  local previous = project.default_environment
  local new, eerr = require("moonops.yaml").edit(text, { "default_environment" }, name, { create = true, name = path })
  if not new then errors.raise(eerr) end
  if new ~= text then
    local st = fs.stat(path)
    local ok, werr = fs.write_atomic(path, new, st and st.mode or 420)
    if not ok then errors.raise(werr) end
  end
  if opts.json then
    ctx.print(json.pretty({ default = name, previous = previous or json.null, file = path }))
  else
    ctx.print(string.format("default_environment: %s -> %s (%s)\n", previous or "(none)", name, path))
  end
  return 0
end

return {
  summary = "List, show, diff and switch the environments of a meltano.yml",
  usage = "list|show|diff|use [options]",
  description = [[
Every setting of every plugin as it resolves in an environment, with the layer it
came from (env, dotenv, environment, base, inherited, default) and its origin
(file:line, .env:line or $VARIABLE). Secrets are shown as (redacted) unless --unsafe.
The project is --project DIR, the current release of --workspace W, or the current
directory.]],
  commands = {
    list = {
      summary = "environments, the default and the active one",
      options = with_common({}),
      max_args = 0,
      run = list_cmd,
      fast_exit = true, -- nothing to close: exit without freeing the resolved project
    },
    show = {
      summary = "every resolved setting, its source and origin",
      options = with_common({
        { "environment", short = "e", type = "string", metavar = "E", help = "resolve in E (null: no environment)" },
        { "plugin", short = "p", type = "string", metavar = "P", help = "only plugin P" },
        { "unsafe", type = "boolean", help = "show sensitive values instead of (redacted)" },
        { "strict", type = "boolean", help = "a $VAR that is not set is an error" },
      }),
      max_args = 0,
      run = show_cmd,
      fast_exit = true, -- nothing to close: exit without freeing the resolved project
    },
    diff = {
      usage = "E1 E2",
      summary = "settings whose resolved values differ between two environments",
      options = with_common({
        { "strict", type = "boolean", help = "a $VAR that is not set is an error" },
      }),
      max_args = 2,
      run = diff_cmd,
      fast_exit = true, -- nothing to close: exit without freeing the resolved project
    },
    use = {
      usage = "E",
      summary = "switch the active environment (--workspace) or default_environment (--project --write)",
      options = with_common({
        { "write", type = "boolean", help = "with --project: rewrite default_environment in meltano.yml" },
      }),
      max_args = 1,
      run = use_cmd,
    },
  },
  examples = {
    "moonops env list --project .",
    "moonops env show --environment prod --plugin tap-auth0",
    "moonops env show --json > resolved.json",
    "moonops env diff dev prod",
    "moonops env use prod --project . --write",
  },
  -- for deployments: load a project directory with a recorded active environment
  open_project = open_project,
}
