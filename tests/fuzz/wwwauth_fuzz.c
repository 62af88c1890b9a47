/*
 * libFuzzer target for the WWW-Authenticate parser (moonops.registry
 * parse_challenges and scopes).
 *
 * Properties: the parser returns a non-empty list of challenges or a message;
 * schemes and parameter names are lower-case tokens; writing the challenges
 * back out (values quoted and escaped) and parsing that again gives the same
 * challenges.
 */
#include "fuzz_lua.h"

static const char *script =
    "local registry = require 'moonops.registry'\n"
    "local header = ...\n"
    "local list, err = registry.parse_challenges(header)\n"
    "if not list then\n"
    "  assert(type(err) == 'string' and #err > 0, 'failed without a message')\n"
    "  return\n"
    "end\n"
    "assert(#list > 0, 'an empty list of challenges')\n"
    "local TOKEN = \"^[!#$%%&'*+.^_`|~%w-]+$\"\n"
    "local function quote(v) return '\"' .. v:gsub('[\\\\\"]', '\\\\%0') .. '\"' end\n"
    "local parts = {}\n"
    "for _, c in ipairs(list) do\n"
    "  assert(c.scheme:match(TOKEN) and c.scheme == c.scheme:lower(), 'bad scheme ' .. c.scheme)\n"
    "  local names = {}\n"
    "  for k, v in pairs(c.params) do\n"
    "    assert(type(k) == 'string' and k:match(TOKEN) and k == k:lower(), 'bad parameter name')\n"
    "    assert(type(v) == 'string', 'parameter value is not a string')\n"
    "    names[#names + 1] = k\n"
    "  end\n"
    "  table.sort(names)\n"
    "  local out = { c.scheme .. (c.token68 and (' ' .. c.token68) or '') }\n"
    "  for i, k in ipairs(names) do\n"
    "    out[#out + 1] = (i == 1 and not c.token68 and ' ' or ', ') .. k .. '=' .. quote(c.params[k])\n"
    "  end\n"
    "  parts[#parts + 1] = table.concat(out)\n"
    "  for _, s in ipairs(registry.scopes(c)) do assert(not s:find('%s'), 'a scope with a space') end\n"
    "end\n"
    "local text = table.concat(parts, ', ')\n"
    "local again, err2 = registry.parse_challenges(text)\n"
    "assert(again, 'cannot parse what was written back: ' .. text .. ': ' .. tostring(err2))\n"
    "assert(#again == #list, 'a different number of challenges after writing back: ' .. text)\n"
    "for i, c in ipairs(list) do\n"
    "  local d = again[i]\n"
    "  assert(d.scheme == c.scheme and d.token68 == c.token68, 'a different challenge: ' .. text)\n"
    "  for k, v in pairs(c.params) do assert(d.params[k] == v, 'parameter ' .. k .. ' changed: ' .. text) end\n"
    "  for k in pairs(d.params) do assert(c.params[k] ~= nil, 'parameter ' .. k .. ' appeared: ' .. text) end\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_lua_run("wwwauth_fuzz", script, data, size);
  return 0;
}
