--- The recipe search path and loading recipe files.
-- Search order: --recipes DIR (each, in order), $MOONOPS_RECIPE_PATH (colon-separated),
-- ./recipes, ~/.config/moonops/recipes, recipes registered by plugins, the bundled recipes.
local engine = require "moonops.engine"
local fs = require "moonops.fs"

local M = {}

local extra_dirs = {}
local registered = {} -- name -> {recipe = table, source = "plugin <name>"}

--- Add directories given with --recipes (searched first, in order).
function M.add_dirs(dirs)
  for _, d in ipairs(dirs) do extra_dirs[#extra_dirs + 1] = d end
end

--- Register a recipe table under `name` (plugins use this).
function M.register(name, recipe, source)
  registered[name] = { recipe = recipe, source = source or "registered" }
end

--- The directories searched, first wins: list of {dir=, origin=}.
function M.search_path()
  local path = {}
  for _, d in ipairs(extra_dirs) do path[#path + 1] = { dir = d, origin = "--recipes" } end
  local env = os.getenv("MOONOPS_RECIPE_PATH")
  if env and env ~= "" then
    for d in env:gmatch("[^:]+") do path[#path + 1] = { dir = d, origin = "MOONOPS_RECIPE_PATH" } end
  end
  path[#path + 1] = { dir = "recipes", origin = "./recipes" }
  local home = os.getenv("HOME")
  if home and home ~= "" then
    path[#path + 1] = { dir = home .. "/.config/moonops/recipes", origin = "user" }
  end
  path[#path + 1] = { registered = true, origin = "plugin" }
  path[#path + 1] = { dir = engine.recipe_dir, origin = "bundled" }
  return path
end

local function is_recipe_name(name)
  return type(name) == "string" and name:match("^[%w][%w_%-]*$") ~= nil
end

--- Where `name` resolves: {name=, file=, origin=} or {name=, recipe=, origin=}, or nil.
function M.find(name)
  if not is_recipe_name(name) then return nil end
  for _, entry in ipairs(M.search_path()) do
    if entry.registered then
      local r = registered[name]
      if r then return { name = name, recipe = r.recipe, origin = r.source } end
    else
      local file = entry.dir .. "/" .. name .. ".lua"
      local st = fs.stat(file)
      if st and st.type == "file" then return { name = name, file = file, origin = entry.origin } end
    end
  end
  return nil
end

--- Every recipe name visible on the search path: sorted list of {name=, file=, origin=, shadows=}.
function M.list()
  local seen, out = {}, {}
  for _, entry in ipairs(M.search_path()) do
    local found = {}
    if entry.registered then
      for name, r in pairs(registered) do
        found[#found + 1] = { name = name, recipe = r.recipe, origin = r.source }
      end
    else
      for _, f in ipairs(fs.list(entry.dir) or {}) do
        local name = f:match("^(.+)%.lua$")
        if is_recipe_name(name) then
          found[#found + 1] = { name = name, file = entry.dir .. "/" .. f, origin = entry.origin }
        end
      end
    end
    for _, r in ipairs(found) do
      if seen[r.name] then
        local winner = seen[r.name]
        winner.shadows = winner.shadows or {}
        winner.shadows[#winner.shadows + 1] = r.file or r.origin
      else
        seen[r.name] = r
        out[#out + 1] = r
      end
    end
  end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

--- Load a recipe file: the recipe table, or nil and a one-line message naming file:line.
function M.load_file(file)
  local chunk, err = loadfile(file)
  if not chunk then return nil, err end
  local ok, recipe = pcall(chunk)
  if not ok then return nil, tostring(recipe) end
  if type(recipe) ~= "table" then
    return nil, file .. ": a recipe must return a table (got " .. type(recipe) .. ")"
  end
  if type(recipe.run) ~= "function" and type(recipe.commands) ~= "table" then
    return nil, file .. ": a recipe needs a run function (or commands)"
  end
  return recipe
end

--- Resolve and load `name`: recipe table and its entry, or nil, message.
function M.load(name)
  local entry = M.find(name)
  if not entry then return nil, "not found" end
  if entry.recipe then return entry.recipe, entry end
  local recipe, err = M.load_file(entry.file)
  if not recipe then return nil, err end
  return recipe, entry
end

-- The first `summary = "..."` (or '...') field of a recipe's source, when it is a plain string.
local function scan_summary(text)
  local p = text:find("%f[%w_]summary%s*=%s*[\"']")
  if not p then return nil end
  -- a table field: the string is followed by the field separator or the table's end
  return text:match('^summary%s*=%s*"([^"\\\n]*)"%s*[,;}]', p)
    or text:match("^summary%s*=%s*'([^'\\\n]*)'%s*[,;}]", p)
end

--- Summary line of a recipe entry without failing the whole listing on a broken file.
-- The file is compiled (so syntax errors show) but not run when its source holds a plain
-- `summary = "..."` string: running it would load every module it requires, and
-- `moonops recipes` should stay fast. A computed summary makes the file run.
function M.summary(entry)
  if entry.recipe then return entry.recipe.summary or "" end
  local f, oerr = io.open(entry.file, "rb")
  if not f then return "(broken: " .. tostring(oerr) .. ")" end
  local text = f:read("a")
  f:close()
  local chunk, err = load(text, "@" .. entry.file)
  if not chunk then return "(broken: " .. err .. ")" end
  local summary = scan_summary(text)
  if summary then return summary end
  local recipe, lerr = M.load_file(entry.file)
  if not recipe then return "(broken: " .. lerr .. ")" end
  return type(recipe.summary) == "string" and recipe.summary or ""
end

return M
