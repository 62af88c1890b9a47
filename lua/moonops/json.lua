--- JSON for moonops: lua-cjson decoding, an encoder that knows arrays from objects.
-- Tables marked with `json.array` (or non-empty sequences) encode as arrays; an
-- unmarked empty table is an object. Object keys are sorted so output is stable.
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
      out[#out + 1] = string.format("%.17g", v)
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

--- Decode text; returns value or nil, message.
function M.decode(text)
  if type(text) ~= "string" then return nil, "json: expected a string" end
  local ok, v = pcall(cjson.decode, text)
  if not ok then return nil, "invalid JSON: " .. tostring(v):gsub("^.-: ", "") end
  return v
end

return M
