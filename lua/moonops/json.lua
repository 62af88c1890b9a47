--- JSON for moonops: lua-cjson decoding, an encoder that knows arrays from objects.
-- Tables marked with `json.array` (or non-empty sequences) encode as arrays; an
-- unmarked empty table is an object. Object keys are sorted so output is stable.
-- Decoded arrays carry the array marker (so `[]` survives a round trip) and whole
-- numbers decode as Lua integers.
local cjson = require "cjson"
local engine = require "moonops.engine"

local M = {}

M.null = cjson.null
M.array_mt = engine.array_mt

--- Mark `t` (default a new table) as a JSON array.
function M.array(t)
  return setmetatable(t or {}, M.array_mt)
end

function M.is_array(t)
  if getmetatable(t) == M.array_mt then return true end
  local n = #t
  if n == 0 then return false end
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 or k > n then return false end
  end
  return true
end

local escapes = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
for c = 0, 31 do
  local ch = string.char(c)
  escapes[ch] = escapes[ch] or string.format("\\u%04x", c)
end
escapes["\127"] = "\\u007f"

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\]', escapes) .. '"'
end
local encode_value

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    local tk = type(k)
    if tk ~= "string" and tk ~= "number" then
      error("json: cannot encode a key of type " .. tk, 0)
    end
    keys[#keys + 1] = tostring(k)
  end
  table.sort(keys)
  return keys
end

local function encode_table(t, out, indent, depth, seen)
  if seen[t] then error("json: cannot encode a table that contains itself", 0) end
  if depth > 200 then error("json: nesting too deep", 0) end
  seen[t] = true
  local nl, pad, padin, colon = "", "", "", ":"
  if indent then
    nl = "\n"
    pad = string.rep(indent, depth)
    padin = pad .. indent
    colon = ": "
  end
  if M.is_array(t) then
    local n = #t
    if n == 0 then
      out[#out + 1] = "[]"
    else
      out[#out + 1] = "[" .. nl
      for i = 1, n do
        out[#out + 1] = padin
        encode_value(t[i], out, indent, depth + 1, seen)
        out[#out + 1] = (i < n and "," or "") .. nl
      end
      out[#out + 1] = pad .. "]"
    end
  else
    local keys = sorted_keys(t)
    if #keys == 0 then
      out[#out + 1] = "{}"
    else
      out[#out + 1] = "{" .. nl
      for i, k in ipairs(keys) do
        local v = t[k]
        if v == nil then v = t[tonumber(k)] end
        out[#out + 1] = padin .. encode_string(k) .. colon
        encode_value(v, out, indent, depth + 1, seen)
        out[#out + 1] = (i < #keys and "," or "") .. nl
      end
      out[#out + 1] = pad .. "}"
    end
  end
  seen[t] = nil
end

encode_value = function(v, out, indent, depth, seen)
  local tv = type(v)
  if v == nil or v == M.null then
    out[#out + 1] = "null"
  elseif tv == "string" then
    out[#out + 1] = encode_string(v)
  elseif tv == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      error("json: cannot encode " .. tostring(v), 0)
    end
    if math.type(v) == "integer" then
      out[#out + 1] = string.format("%d", v)
    else
      -- the shortest text that reads back as the same number: 0.1, not 0.10000000000000001
      local text
      for digits = 15, 17 do
        text = string.format("%." .. digits .. "g", v)
        if tonumber(text) == v then break end
      end
      out[#out + 1] = text
    end
  elseif tv == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif tv == "table" then
    encode_table(v, out, indent, depth, seen)
  elseif tv == "userdata" and v == M.null then
    out[#out + 1] = "null"
  else
    error("json: cannot encode a " .. tv, 0)
  end
end

--- Encode `v` compactly.
function M.encode(v)
  local out = {}
  encode_value(v, out, nil, 0, {})
  return table.concat(out)
end

--- Encode `v` with two-space indentation and a trailing newline (for the CLI).
function M.pretty(v)
  local out = {}
  encode_value(v, out, "  ", 0, {})
  out[#out + 1] = "\n"
  return table.concat(out)
end

-- lua-cjson 2.1 cannot tell `[]` from `{}` after decoding: empty arrays in the text are
-- rewritten to a one-element array holding this sentinel first, and restored below.
local EMPTY = "\0moonops:empty-array\0"
local EMPTY_JSON = '["\\u0000moonops:empty-array\\u0000"]'

local function mark_empty_arrays(text)
  if not text:find("%[[ \t\r\n]*%]") then return text end
  local out, last, i = {}, 1, 1
  while true do
    local p = text:find('["%[]', i)
    if not p then break end
    if text:byte(p) == 34 then -- a string: skip to its closing quote
      local j = p + 1
      while true do
        local q = text:find('["\\]', j)
        if not q then return text end -- unterminated: cjson reports it
        if text:byte(q) == 92 then
          j = q + 2
        else
          i = q + 1
          break
        end
      end
    else
      local e = text:match("^[ \t\r\n]*%]()", p + 1)
      if e then
        out[#out + 1] = text:sub(last, p - 1)
        out[#out + 1] = EMPTY_JSON
        last, i = e, e
      else
        i = p + 1
      end
    end
  end
  out[#out + 1] = text:sub(last)
  return table.concat(out)
end

local SAFE_INT = 2 ^ 53

-- Decoded objects have only string keys, so a table with a positive length was an array.
local function restore(v)
  local tv = type(v)
  if tv == "number" then
    if math.type(v) == "float" and v == math.floor(v) and v >= -SAFE_INT and v <= SAFE_INT then
      return math.tointeger(v)
    end
    return v
  elseif tv ~= "table" then
    return v
  end
  local n = #v
  if n == 1 and v[1] == EMPTY then
    v[1] = nil
    return setmetatable(v, M.array_mt)
  end
  for k, x in pairs(v) do
    local fixed = restore(x)
    if fixed ~= x or math.type(fixed) ~= math.type(x) then v[k] = fixed end
  end
  if n > 0 then setmetatable(v, M.array_mt) end
  return v
end

--- Decode text; returns value or nil, message.
function M.decode(text)
  if type(text) ~= "string" then return nil, "json: expected a string" end
  local ok, v = pcall(cjson.decode, mark_empty_arrays(text))
  if not ok then return nil, "invalid JSON: " .. tostring(v):gsub("^.-: ", "") end
  return restore(v)
end

return M
