/*
 * Shared by the Lua-driven fuzz targets: one moonops Lua state per process, a
 * property script compiled once, and every input handed to it as a string. A
 * Lua error is a broken property: print it and abort so the fuzzer keeps the
 * input (and the replay test fails on it).
 *
 * The Lua library is not compiled with coverage instrumentation, so a line hook
 * feeds libFuzzer "extra counters": each (previous line, line) pair of Lua code
 * bumps one counter, and inputs that reach new Lua branches are kept.
 */
#ifndef MOONOPS_FUZZ_LUA_H
#define MOONOPS_FUZZ_LUA_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "moonops/moonops.h"

#define FUZZ_COUNTERS 65536
__attribute__((section("__libfuzzer_extra_counters"), used)) static uint8_t
    fuzz_counters[FUZZ_COUNTERS];
static uintptr_t fuzz_prev;

static void fuzz_line_hook(lua_State *L, lua_Debug *ar) {
  if (!lua_getinfo(L, "S", ar)) return;
  uintptr_t here = ((uintptr_t)ar->source * 31u) ^ ((uintptr_t)ar->currentline * 2654435761u);
  uint8_t *c = &fuzz_counters[(here ^ fuzz_prev) % FUZZ_COUNTERS];
  if (*c < 255) (*c)++;
  fuzz_prev = here >> 1;
}

static lua_State *fuzz_state;
static int fuzz_chunk = LUA_NOREF;

static void fuzz_lua_run(const char *name, const char *script, const uint8_t *data, size_t size) {
  if (fuzz_state == NULL) {
    fuzz_state = moonops_vm_new();
    if (fuzz_state == NULL) abort();
    if (luaL_loadbuffer(fuzz_state, script, strlen(script), name) != LUA_OK) {
      fprintf(stderr, "%s: %s\n", name, lua_tostring(fuzz_state, -1));
      abort();
    }
    fuzz_chunk = luaL_ref(fuzz_state, LUA_REGISTRYINDEX);
    lua_sethook(fuzz_state, fuzz_line_hook, LUA_MASKLINE, 0);
  }
  fuzz_prev = 0;
  lua_State *L = fuzz_state;
  lua_rawgeti(L, LUA_REGISTRYINDEX, fuzz_chunk);
  lua_pushlstring(L, (const char *)data, size);
  if (mo_pcall(L, 1, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "%s: property failed: %s\n", name, msg ? msg : "(no message)");
    abort();
  }
  lua_settop(L, 0);
  lua_gc(L, LUA_GCSTEP, 0);
}

#endif
