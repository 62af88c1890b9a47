--- Leveled logs on stderr, as text or JSON lines. Registered secrets never reach a line.
local json = require "moonops.json"

local M = {}

local LEVELS = { debug = 10, info = 20, warn = 30, error = 40 }

local state = {
  format = "text",
  level = LEVELS.info,
  stream = io.stderr,
  secrets = {},
  fields = {},
}

--- configure{format = "text"|"json", level = "info", quiet = bool, stream = file, fields = {}}
function M.configure(opts)
  if opts.format then
    assert(opts.format == "text" or opts.format == "json", "log format must be text or json")
    state.format = opts.format
  end
  if opts.level then state.level = assert(LEVELS[opts.level], "unknown log level " .. tostring(opts.level)) end
  if opts.quiet then state.level = LEVELS.warn end
  if opts.stream then state.stream = opts.stream end
  if opts.fields then state.fields = opts.fields end
end

function M.format() return state.format end

--- Register a secret: from now on it is replaced by *** in every line.
-- Secrets shorter than 4 bytes are ignored (masking "a" would mangle every line).
function M.secret(s)
  if type(s) ~= "string" or #s < 4 then return end
  for _, known in ipairs(state.secrets) do
    if known == s then return end
  end
  state.secrets[#state.secrets + 1] = s
  table.sort(state.secrets, function(a, b) return #a > #b end)
end

--- Replace every registered secret in `s` by ***.
function M.mask(s)
  s = tostring(s)
  for _, secret in ipairs(state.secrets) do
    local i = 1
    while true do
      local a, b = s:find(secret, i, true)
      if not a then break end
      s = s:sub(1, a - 1) .. "***" .. s:sub(b + 1)
      i = a + 3
    end
  end
  return s
end

local function mask_fields(fields)
  local out = {}
  for k, v in pairs(fields) do
    if type(v) == "table" then
      out[k] = mask_fields(v)
    elseif type(v) == "string" then
      out[k] = M.mask(v)
    else
      out[k] = v
    end
  end
  return out
end

local function now()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

--- Format one line (without newline) for level, message and fields.
function M.line(level, msg, fields)
  msg = M.mask(msg)
  if state.format == "json" then
    local rec = mask_fields(fields or {})
    for k, v in pairs(state.fields) do
      if rec[k] == nil then rec[k] = v end
    end
    rec.time, rec.level, rec.msg = now(), level, msg
    return json.encode(rec)
  end
  local parts = { now(), level:upper(), msg }
  local keys = {}
  for k in pairs(fields or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = fields[k]
    if type(v) == "table" then v = json.encode(v) end
    v = M.mask(tostring(v))
    if v:find("[%s\"]") then v = string.format("%q", v) end
    parts[#parts + 1] = k .. "=" .. v
  end
  return table.concat(parts, " ")
end

--- Write one complete line (the text and its newline in a single write, so lines written
-- by several threads of one process, each with its own Lua state, never interleave).
function M.write_line(text)
  local stream = state.stream
  stream:write(text .. "\n")
  stream:flush()
end

local function emit(level, msg, fields)
  if LEVELS[level] < state.level then return end
  M.write_line(M.line(level, msg, fields))
end

function M.debug(msg, fields) emit("debug", msg, fields) end
function M.info(msg, fields) emit("info", msg, fields) end
function M.warn(msg, fields) emit("warn", msg, fields) end
function M.error(msg, fields) emit("error", msg, fields) end

return M
