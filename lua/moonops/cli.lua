--- The command line: global flags, recipe lookup and dispatch, option parsing, help, exit codes.
local engine = require "moonops.engine"
local errors = require "moonops.errors"
local json = require "moonops.json"
local log = require "moonops.log"
local recipe = require "moonops.recipe"
local term = require "moonops.term"

local M = {}

local GLOBAL_OPTIONS = {
  { "config", type = "string", help = "moonops.yml to use (default $MOONOPS_CONFIG, then ./moonops.yml)" },
  { "log-format", type = "string", choices = { "text", "json" }, default = "text", help = "log line format" },
  { "quiet", type = "boolean", short = "q", help = "only warnings and errors; no progress bars" },
  { "debug", type = "boolean", help = "debug logs and Lua tracebacks on errors" },
  { "recipes", type = "list", metavar = "DIR", help = "a directory searched for recipes first" },
  { "plugins", type = "list", metavar = "DIR", help = "a directory searched for plugins first" },
  { "version", type = "boolean", help = "print the version line and exit" },
  { "help", type = "boolean", short = "h", help = "this help" },
}

local BUILTINS = {
  version = "print the version of moonops and of every linked library",
  lua = "run a Lua file (or -e CODE) with the moonops modules",
  run = "run a recipe file by path: moonops run FILE.lua [options]",
  recipes = "list recipes and the file each name resolves to",
  plugins = "list plugins: found, enabled, and why any failed to load",
  help = "help for moonops or for one recipe",
}

M.fail = errors.raise

local function usage(msg) errors.raise(msg, errors.USAGE) end

-- Levenshtein distance, for "did you mean".
local function distance(a, b)
  local prev, cur = {}, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    cur[0] = i
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev, cur = cur, prev
  end
  return prev[#b]
end

--- The closest of `candidates` to `word`, when it is close enough to suggest.
function M.closest(word, candidates)
  local best, bestd
  for _, c in ipairs(candidates) do
    local d = distance(word, c)
    if not bestd or d < bestd then best, bestd = c, d end
  end
  if best and bestd <= math.max(2, #word // 3) then return best end
  return nil
end

local function option_index(specs)
  local by_name, by_short = {}, {}
  for _, spec in ipairs(specs) do
    by_name[spec[1]] = spec
    if spec.short then by_short[spec.short] = spec end
  end
  return by_name, by_short
end

local function convert(spec, raw)
  local name, t = spec[1], spec.type or "string"
  if t == "number" or t == "integer" then
    local v = tonumber(raw)
    if not v or (t == "integer" and math.type(v) ~= "integer" and v ~= math.floor(v)) then
      usage(string.format("--%s needs %s, got %q", name, t == "integer" and "a whole number" or "a number", raw))
    end
    return t == "integer" and math.tointeger(v) or v
  end
  if spec.choices then
    local ok = false
    for _, c in ipairs(spec.choices) do ok = ok or c == raw end
    if not ok then
      usage(string.format("--%s must be one of %s, got %q", name, table.concat(spec.choices, ", "), raw))
    end
  end
  return raw
end

--- Parse `args` (list, from index `first`) against option specs.
-- Returns opts (with defaults), positionals. Stops option parsing at `--`.
-- With `stop_at_positional`, the first positional ends parsing (the rest is returned raw).
function M.parse(specs, args, first, stop_at_positional)
  local by_name, by_short = option_index(specs)
  local opts, positionals, rest = {}, {}, nil
  local i = first or 1
  local names = {}
  for _, s in ipairs(specs) do names[#names + 1] = s[1] end
  while i <= #args do
    local a = args[i]
    if a == "--" then
      for j = i + 1, #args do positionals[#positionals + 1] = args[j] end
      break
    end
    local long, inline = a:match("^%-%-([^=]+)=(.*)$")
    if not long then long = a:match("^%-%-(.+)$") end
    local spec
    if long then
      spec = by_name[long]
      if not spec and long:sub(1, 3) == "no-" and by_name[long:sub(4)]
        and (by_name[long:sub(4)].type == "boolean") then
        opts[long:sub(4)] = false
        i = i + 1
        goto continue
      end
      if not spec then
        local guess = M.closest(long, names)
        usage(string.format("unknown option --%s%s", long, guess and (" (did you mean --" .. guess .. "?)") or ""))
      end
    elseif a:match("^%-%a$") then
      spec = by_short[a:sub(2)]
      if not spec then usage("unknown option " .. a) end
    else
      if stop_at_positional then
        rest = {}
        for j = i, #args do rest[#rest + 1] = args[j] end
        break
      end
      positionals[#positionals + 1] = a
      i = i + 1
      goto continue
    end
    do
      local name = spec[1]
      if spec.type == "boolean" then
        if inline then
          if inline == "true" or inline == "1" or inline == "yes" then
            opts[name] = true
          elseif inline == "false" or inline == "0" or inline == "no" then
            opts[name] = false
          else
            usage(string.format("--%s takes no value (or true/false), got %q", name, inline))
          end
        else
          opts[name] = true
        end
        i = i + 1
      else
        local raw = inline
        if not raw then
          raw = args[i + 1]
          if raw == nil or (raw:match("^%-%-") and raw ~= "--") then
            usage(string.format("--%s needs a value%s", name, spec.metavar and (" (" .. spec.metavar .. ")") or ""))
          end
          i = i + 2
        else
          i = i + 1
        end
        if spec.type == "list" then
          opts[name] = opts[name] or {}
          table.insert(opts[name], convert(spec, raw))
        else
          opts[name] = convert(spec, raw)
        end
      end
    end
    ::continue::
  end
  for _, spec in ipairs(specs) do
    local name = spec[1]
    if opts[name] == nil then
      if spec.default ~= nil then
        opts[name] = spec.default
      elseif spec.type == "list" then
        opts[name] = {}
      end
    end
    if spec.required and opts[name] == nil then usage("--" .. name .. " is required") end
  end
  return opts, positionals, rest
end

local function format_options(specs)
  local lines = {}
  for _, spec in ipairs(specs) do
    local flag = "--" .. spec[1]
    if spec.short then flag = "-" .. spec.short .. ", " .. flag end
    if spec.type ~= "boolean" then
      local metavar = spec.metavar or (spec.choices and table.concat(spec.choices, "|"))
      if not metavar then metavar = (spec.type == "list" or not spec.type) and "VALUE" or spec.type:upper() end
      flag = flag .. " " .. metavar
    end
    local help = spec.help or ""
    if spec.default ~= nil and spec.type ~= "boolean" then help = help .. " (default " .. tostring(spec.default) .. ")" end
    if spec.type == "list" then help = help .. " (repeatable)" end
    lines[#lines + 1] = string.format("  %-28s %s", flag, help)
  end
  return table.concat(lines, "\n")
end

--- The help text of a recipe.
function M.recipe_help(name, r)
  local out = {}
  out[#out + 1] = string.format("moonops %s%s", name, r.usage and (" " .. r.usage) or " [options]")
  if r.summary then out[#out + 1] = "\n" .. r.summary end
  if r.description then out[#out + 1] = "\n" .. r.description end
  if r.commands then
    out[#out + 1] = "\nCommands:"
    local names = {}
    for cname in pairs(r.commands) do names[#names + 1] = cname end
    table.sort(names)
    for _, cname in ipairs(names) do
      local c = r.commands[cname]
      out[#out + 1] = string.format("  %-14s %s", cname .. (c.usage and (" " .. c.usage) or ""), c.summary or "")
      if c.options and #c.options > 0 then out[#out + 1] = format_options(c.options):gsub("\n", "\n    "):gsub("^", "    ") end
    end
  end
  local specs = r.options or {}
  out[#out + 1] = "\nOptions:"
  if #specs > 0 then out[#out + 1] = format_options(specs) end
  out[#out + 1] = string.format("  %-28s %s", "-h, --help", "show this help")
  if r.examples then
    out[#out + 1] = "\nExamples:"
    for _, e in ipairs(r.examples) do out[#out + 1] = "  " .. e end
  end
  return table.concat(out, "\n") .. "\n"
end

local function main_help()
  local out = {
    "moonops " .. engine.version .. " - DataOps automation for Meltano projects in git",
    "",
    "Usage: moonops [global options] <recipe> [options]",
    "",
    "Commands:",
  }
  local names = {}
  for n in pairs(BUILTINS) do names[#names + 1] = n end
  table.sort(names)
  for _, n in ipairs(names) do out[#out + 1] = string.format("  %-12s %s", n, BUILTINS[n]) end
  out[#out + 1] = ""
  out[#out + 1] = "Recipes:"
  for _, e in ipairs(recipe.list()) do
    out[#out + 1] = string.format("  %-12s %s", e.name, recipe.summary(e))
  end
  out[#out + 1] = ""
  out[#out + 1] = "Global options:"
  out[#out + 1] = format_options(GLOBAL_OPTIONS)
  out[#out + 1] = ""
  out[#out + 1] = "Exit codes: 0 ok, 1 failure, 2 usage or configuration error, 3 conflict, 4 busy."
  out[#out + 1] = "'moonops help RECIPE' or 'moonops RECIPE --help' for a recipe's options."
  return table.concat(out, "\n") .. "\n"
end

--- Find moonops.yml: --config, $MOONOPS_CONFIG, ./moonops.yml. Returns path, how-found or nil.
function M.config_path(gopts)
  if gopts.config then return gopts.config, "--config" end
  local env = os.getenv("MOONOPS_CONFIG")
  if env and env ~= "" then return env, "MOONOPS_CONFIG" end
  return "moonops.yml", "default"
end

--- A recipe's context: settings and store load lazily on first use.
function M.context(name, gopts, positionals)
  local ctx = {
    name = name,
    args = positionals or {},
    global = gopts,
    log = log,
    term = term,
    json = json,
    fail = errors.raise,
  }
  ctx.config_path = M.config_path(gopts)
  function ctx.print(...)
    io.stdout:write(...)
  end
  return setmetatable(ctx, {
    __index = function(t, k)
      if k == "settings" then
        local settings = require "moonops.settings"
        local s = settings.load(t.config_path)
        rawset(t, "settings", s)
        require("moonops.plugins").load_enabled(s)
        return s
      elseif k == "store" then
        local db = require "moonops.db"
        local s, err, code = db.open(t.settings.data_dir)
        -- a newer schema is fixed by configuration (another data_dir) or an upgrade
        if not s then errors.raise(err, code == "newer" and errors.USAGE or errors.FAILURE) end
        rawset(t, "store", s)
        return s
      end
    end,
  })
end

local function run_recipe(name, r, args, first, gopts)
  local specs = r.options or {}
  local run = r.run
  local cmd_name
  if r.commands then
    local names = {}
    for k in pairs(r.commands) do names[#names + 1] = k end
    table.sort(names)
    cmd_name = args[first]
    if cmd_name == nil or cmd_name == "--help" or cmd_name == "-h" then
      io.stdout:write(M.recipe_help(name, r))
      return cmd_name and 0 or 2
    end
    local cmd = r.commands[cmd_name]
    if not cmd then
      local guess = M.closest(cmd_name, names)
      usage(string.format("unknown %s command %q%s (known: %s)", name, cmd_name,
        guess and (" - did you mean " .. guess .. "?") or "", table.concat(names, ", ")))
    end
    specs = {}
    for _, s in ipairs(r.options or {}) do specs[#specs + 1] = s end
    for _, s in ipairs(cmd.options or {}) do specs[#specs + 1] = s end
    run = cmd.run
    name = name .. " " .. cmd_name
    first = first + 1
    r = setmetatable({ options = specs, usage = cmd.usage, summary = cmd.summary,
      max_args = cmd.max_args, description = cmd.description, commands = false,
      fast_exit = cmd.fast_exit }, { __index = r })
  end
  for i = first, #args do
    if args[i] == "--" then break end
    if args[i] == "--help" or args[i] == "-h" then
      io.stdout:write(M.recipe_help(name, r))
      return 0
    end
  end
  local opts, positionals = M.parse(specs, args, first)
  if r.max_args and #positionals > r.max_args then
    usage(string.format("%s takes at most %d argument%s, got %q", name, r.max_args,
      r.max_args == 1 and "" or "s", positionals[r.max_args + 1]))
  end
  local ctx = M.context(name, gopts, positionals)
  ctx.command = cmd_name
  local code = run(ctx, opts)
  -- `fast_exit`: nothing to close unless the command loaded the settings (and plugins)
  -- or the store, so the process may end without freeing what it built
  if r.fast_exit and rawget(ctx, "settings") == nil and rawget(ctx, "store") == nil then M.exit_now = true end
  return code
end

local function cmd_version()
  local v = engine.versions()
  io.stdout:write(string.format(
    "moonops %s (Lua %s, libgit2 %s, libcurl %s, OpenSSL %s, libyaml %s, SQLite %s, libmicrohttpd %s)\n",
    v.moonops, v.lua, v.libgit2, v.libcurl, v.openssl, v.libyaml, v.sqlite, v.libmicrohttpd))
  return 0
end

local function cmd_lua(args, first)
  local a = args[first]
  if a == nil then usage("usage: moonops lua FILE [args...] | moonops lua -e CODE") end
  local chunk, err, script
  local rest_from
  if a == "-e" then
    local code = args[first + 1]
    if code == nil then usage("moonops lua -e needs code") end
    chunk, err = load(code, "=(command line)")
    script = "-e"
    rest_from = first + 2
  else
    chunk, err = loadfile(a)
    script = a
    rest_from = first + 1
  end
  if not chunk then errors.raise(err, errors.FAILURE) end
  local argt = { [-1] = args[0] or "moonops", [0] = script }
  for i = rest_from, #args do argt[#argt + 1] = args[i] end
  _G.arg = argt
  -- errors propagate to main's handler, which adds the traceback with --debug
  local result = chunk(table.unpack(argt, 1, #argt))
  return math.type(result) == "integer" and result or 0
end

local function cmd_recipes(args, first)
  local opts = M.parse({ { "json", type = "boolean", help = "print JSON" } }, args, first)
  local list = {}
  for _, e in ipairs(recipe.list()) do
    list[#list + 1] = { name = e.name, summary = recipe.summary(e), file = e.file or e.origin,
      origin = e.origin, shadows = e.shadows and json.array(e.shadows) or nil }
  end
  if opts.json then
    io.stdout:write(json.pretty(json.array(list)))
  else
    local wname, wsummary = 4, 7
    for _, e in ipairs(list) do
      wname = math.max(wname, utf8.len(e.name) or #e.name)
      wsummary = math.max(wsummary, utf8.len(e.summary) or #e.summary)
    end
    for _, e in ipairs(list) do
      local pad = wsummary - (utf8.len(e.summary) or #e.summary)
      io.stdout:write(string.format("%s%s  %s%s  %s\n", e.name, string.rep(" ", wname - #e.name),
        e.summary, string.rep(" ", pad), e.file))
    end
  end
  return 0
end

local function dispatch(args, first, gopts)
  local name = args[first]
  if name == nil or name == "help" and args[first + 1] == nil then
    io.stdout:write(main_help())
    return name == nil and 2 or 0
  end
  if name == "--version" then return cmd_version() end
  if name == "version" then return cmd_version() end
  if name == "lua" then return cmd_lua(args, first + 1) end
  if name == "recipes" then return cmd_recipes(args, first + 1) end
  if name == "plugins" then
    return require("moonops.plugins").cli(args, first + 1, gopts)
  end
  if name == "help" then
    local target = args[first + 1]
    if BUILTINS[target] then
      io.stdout:write("moonops " .. target .. ": " .. BUILTINS[target] .. "\n")
      return 0
    end
    local r, err = recipe.load(target)
    if not r then
      if err == "not found" then usage("no recipe named " .. target) end
      errors.raise(err, errors.FAILURE)
    end
    io.stdout:write(M.recipe_help(target, r))
    return 0
  end
  if name == "run" then
    local file = args[first + 1]
    if not file then usage("usage: moonops run FILE.lua [options]") end
    local r, err = recipe.load_file(file)
    if not r then errors.raise(err, errors.FAILURE) end
    local rname = file:match("([^/]+)%.lua$") or file
    return run_recipe(rname, r, args, first + 2, gopts)
  end
  local r, err = recipe.load(name)
  if not r and err == "not found" then
    -- a recipe registered by a plugin enabled in moonops.yml
    local path = M.config_path(gopts)
    if require("moonops.fs").stat(path) then
      require("moonops.plugins").load_enabled(require("moonops.settings").load(path))
      r, err = recipe.load(name)
    end
  end
  if not r then
    if err ~= "not found" then errors.raise(err, errors.FAILURE) end
    local names = {} -- recipes first: they win a tie with a built-in command
    for _, e in ipairs(recipe.list()) do names[#names + 1] = e.name end
    local builtins = {}
    for n in pairs(BUILTINS) do builtins[#builtins + 1] = n end
    table.sort(builtins)
    for _, n in ipairs(builtins) do names[#names + 1] = n end
    local guess = M.closest(name, names)
    usage(string.format("unknown recipe %q%s; 'moonops recipes' lists them", name,
      guess and (" (did you mean " .. guess .. "?)") or ""))
  end
  return run_recipe(name, r, args, first + 1, gopts)
end

--- Entry point called by main.c with argv (argv[0] is the program). Returns the exit code.
function M.main(argv)
  local gopts, _, rest
  local ok, err = pcall(function()
    gopts, _, rest = M.parse(GLOBAL_OPTIONS, argv, 1, true)
  end)
  if not ok then
    io.stderr:write("moonops: ", tostring(err), "\n")
    return errors.is(err) and err.code or 2
  end
  rest = rest or {}
  rest[0] = argv[0]
  log.configure({ format = gopts["log-format"], level = gopts.debug and "debug" or "info", quiet = gopts.quiet })
  term.set_quiet(gopts.quiet)
  if #gopts.recipes > 0 then recipe.add_dirs(gopts.recipes) end
  if #gopts.plugins > 0 then require("moonops.plugins").add_dirs(gopts.plugins) end
  M.global = gopts
  if gopts.version then return cmd_version() end
  if gopts.help then table.insert(rest, 1, "help") end

  local results = table.pack(xpcall(dispatch, function(e)
    if errors.is(e) then return e end
    if gopts.debug then return debug.traceback(tostring(e), 2) end
    return e
  end, rest, 1, gopts))
  if results[1] then
    local code = results[2]
    code = (code == nil or code == true) and 0 or code == false and 1 or math.tointeger(code) or 1
    if M.exit_now then
      io.stdout:flush()
      os.exit(code, false)
    end
    return code
  end
  local e = results[2]
  if errors.is(e) then
    io.stderr:write("moonops: ", log.mask(e.message), "\n")
    return e.code
  end
  io.stderr:write("moonops: ", log.mask(tostring(e)), "\n")
  return 1
end

return M
