/*
 * libFuzzer target for moonops.config: the input is split at the first NUL into
 * two YAML documents (base and overlay) plus an expansion environment; merge,
 * resolve, flatten/nest and expand must never crash and must keep their laws:
 * nest(flatten(x)) == x and resolve == merge.
 * Build: as tests/fuzz/yaml_fuzz.c.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "moonops/moonops.h"

static const char *script =
    "local yaml = require 'moonops.yaml'\n"
    "local config = require 'moonops.config'\n"
    "local text = ...\n"
    "local a_text, b_text = text:match('^(.-)%z(.*)$')\n"
    "a_text, b_text = a_text or text, b_text or ''\n"
    "local a = yaml.load(a_text, 'a') ; local b = yaml.load(b_text, 'b')\n"
    "if a == nil or b == nil then return end\n"
    "local m = config.merge(a, b)\n"
    "local r, sources = config.resolve({ { name = 'b', value = b, file = 'b' }, { name = 'a', "
    "value = a } })\n"
    "assert(type(sources) == 'table')\n"
    "local function same(x, y) return yaml.dump(x) == yaml.dump(y) end\n"
    "if type(m) == 'table' then assert(same(m, r), 'resolve differs from merge') end\n"
    "if type(m) == 'table' and not yaml.is_array(m) then\n"
    "  local flat = config.flatten(m)\n"
    "  local back = assert(config.nest(flat))\n"
    "  local function eq(x, y)\n"
    "    if type(x) ~= 'table' or type(y) ~= 'table' then return x == y or (x ~= x and y ~= y) "
    "end\n"
    "    for k, v in pairs(x) do if not eq(v, y[k]) then return false end end\n"
    "    for k in pairs(y) do if x[k] == nil then return false end end\n"
    "    return true\n"
    "  end\n"
    "  assert(eq(back, m), 'nest(flatten(x)) differs from x')\n"
    "end\n"
    "local env = setmetatable({}, { __index = function(_, k) return #k % 2 == 0 and k or nil end "
    "})\n"
    "config.expand(m, env)\n"
    "config.expand(m, env, { strict = true })\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static lua_State *L;
  static int chunk = LUA_NOREF;
  if (L == NULL) {
    L = moonops_vm_new();
    if (L == NULL || luaL_loadstring(L, script) != LUA_OK) abort();
    chunk = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, chunk);
  lua_pushlstring(L, (const char *)data, size);
  if (mo_pcall(L, 1, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    if (msg) fprintf(stderr, "%s\n", msg);
    abort();
  }
  lua_settop(L, 0);
  lua_gc(L, LUA_GCSTEP, 0);
  return 0;
}
