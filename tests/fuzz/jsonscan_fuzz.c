/*
 * libFuzzer target for moonops.jsonscan: pick against lua-cjson.
 *
 * Input: the JSON text itself. The paths asked for are made from the strings
 * in the input (each alone and each joined to the next with a dot), so they
 * name keys that are really there, plus one that is not.
 *
 * Properties:
 *  - when pick returns values, cjson decodes the text to an object, and every
 *    path has the same value (number subtype as moonops.json gives it) and the
 *    same kind in both;
 *  - "payload is not a JSON object" only for JSON whose top level is not one;
 *  - pick refuses what cjson refuses; when it refuses what cjson takes, the
 *    reason is one where pick keeps to RFC 8259 and cjson does not: a control
 *    character in a string or after the value, or a number (NaN, 01, 1., +1,
 *    0x10, ...) outside the RFC grammar;
 *  - errors read "invalid JSON: <what> at byte <n>" with n inside the text
 *    or just past its end.
 */
#include "fuzz_lua.h"

static const char *script =
    "local text = ...\n"
    "local json = require 'moonops.json'\n"
    "local jsonscan = require 'moonops.jsonscan'\n"
    "local paths, seen = {}, {}\n"
    "local function add(p)\n"
    "  if not seen[p] and #paths < 12 then seen[p] = true; paths[#paths + 1] = p end\n"
    "end\n"
    "local prev\n"
    "for s in text:gmatch('\"([^\"\\\\]*)\"') do\n"
    "  add(s)\n"
    "  if prev then add(prev .. '.' .. s) end\n"
    "  prev = s\n"
    "end\n"
    "add('no.such.path')\n"
    "\n"
    "local function kind_of(v)\n"
    "  if v == json.null then return 'null' end\n"
    "  if type(v) == 'table' then return json.is_array(v) and 'array' or 'object' end\n"
    "  return type(v)\n"
    "end\n"
    "local function lookup(doc, path)\n"
    "  local v = doc\n"
    "  for seg in (path .. '.'):gmatch('(.-)%.') do\n"
    "    if type(v) ~= 'table' or json.is_array(v) then return nil end\n"
    "    v = v[seg]\n"
    "    if v == nil then return nil end\n"
    "  end\n"
    "  return v\n"
    "end\n"
    "local function strict_number(s)\n"
    "  local rest = s:match('^%-?(.*)$')\n"
    "  rest = rest:match('^0(.*)$') or rest:match('^[1-9]%d*(.*)$')\n"
    "  if not rest then return false end\n"
    "  rest = rest:match('^%.%d+(.*)$') or rest\n"
    "  rest = rest:match('^[eE][+-]?%d+(.*)$') or rest\n"
    "  return rest == ''\n"
    "end\n"
    "\n"
    "local doc, derr = json.decode(text)\n"
    "local values, kinds = jsonscan.pick(text, paths)\n"
    "if not values then\n"
    "  local err = kinds\n"
    "  assert(type(err) == 'string', 'refusal without a message')\n"
    "  if err == 'payload is not a JSON object' then\n"
    "    assert(doc ~= nil, 'not an object, but cjson says: ' .. tostring(derr))\n"
    "    assert(kind_of(doc) ~= 'object', 'an object called not an object')\n"
    "    return\n"
    "  end\n"
    "  local what, at = err:match('^invalid JSON: (.-) at byte (%d+)$')\n"
    "  assert(what, 'malformed message: ' .. err)\n"
    "  at = tonumber(at)\n"
    "  assert(at >= 1 and at <= #text + 1, 'byte out of range: ' .. err)\n"
    "  if doc == nil then return end\n"
    "  local c = text:byte(at)\n"
    "  if what == 'control character in string' or what == 'unexpected data after the value' then\n"
    "    assert(c and c < 32, 'cjson takes it; pick says ' .. err)\n"
    "  elseif what == 'invalid number' or what == 'expected a value' then\n"
    "    local token = text:match('^[-+.%w]+', at)\n"
    "    assert(token and not strict_number(token), 'cjson takes it; pick says ' .. err)\n"
    "  else\n"
    "    error('cjson takes it; pick says ' .. err)\n"
    "  end\n"
    "  return\n"
    "end\n"
    "assert(doc ~= nil, 'pick takes what cjson refuses: ' .. tostring(derr))\n"
    "assert(kind_of(doc) == 'object', 'pick takes a top level that is not an object')\n"
    "for _, path in ipairs(paths) do\n"
    "  local want = lookup(doc, path)\n"
    "  if want == nil then\n"
    "    assert(kinds[path] == nil and values[path] == nil, path .. ': absent in cjson')\n"
    "  else\n"
    "    local kind = kind_of(want)\n"
    "    assert(kinds[path] == kind, path .. ': ' .. tostring(kinds[path]) .. ', cjson ' .. kind)\n"
    "    if type(want) == 'table' then\n"
    "      assert(values[path] == nil, path .. ': a container was materialised')\n"
    "    else\n"
    "      local got = values[path]\n"
    "      assert(got == want and math.type(got) == math.type(want),\n"
    "        path .. ': ' .. tostring(got) .. ' vs cjson ' .. tostring(want))\n"
    "    end\n"
    "  end\n"
    "end\n"
    "for path in pairs(kinds) do assert(seen[path], 'a path nobody asked for: ' .. path) end\n"
    "for path in pairs(values) do assert(kinds[path], 'a value without a kind: ' .. path) end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_lua_run("jsonscan_fuzz", script, data, size);
  return 0;
}
