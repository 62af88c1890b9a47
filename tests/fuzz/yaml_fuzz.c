/*
 * libFuzzer target for moonops.yaml: load arbitrary bytes; whatever loads must
 * dump, reload to the same dump, and survive an edit of its first scalar.
 *   clang -g -fsanitize=fuzzer,address,undefined -Iengine -Iinclude tests/fuzz/yaml_fuzz.c \
 *     engine/{vm,util,yaml,config,...}.c $(pkg-config --cflags --libs ...)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "moonops/moonops.h"

static const char *script =
    "local yaml = require 'moonops.yaml'\n"
    "local text = ...\n"
    "local v, err = yaml.load(text, 'fuzz')\n"
    "if v == nil then assert(type(err) == 'string' and err:find('^fuzz')) return end\n"
    "local ok, out = pcall(yaml.dump, v)\n"
    "if not ok then assert(tostring(out):find('yaml.dump', 1, true)) return end\n"
    "local again, err2 = yaml.load(out, 'dump')\n"
    "assert(err2 == nil, err2)\n"
    "assert(yaml.dump(again) == out, 'dump is not stable')\n"
    "if type(v) == 'table' then\n"
    "  local keys = yaml.keys(v)\n"
    "  if keys[1] ~= nil then\n"
    "    local edited = yaml.edit(text, { keys[1] }, 'fuzz value')\n"
    "    if edited then\n"
    "      local e = yaml.load(edited, 'edited')\n"
    "      assert(e and e[keys[1]] == 'fuzz value', 'edit did not take')\n"
    "    end\n"
    "  end\n"
    "end\n";

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
    /* a property failed: let the fuzzer keep the input */
    if (msg) fprintf(stderr, "%s\n", msg);
    abort();
  }
  lua_settop(L, 0);
  lua_gc(L, LUA_GCSTEP, 0);
  return 0;
}
