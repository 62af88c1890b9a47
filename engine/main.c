/* moonops: hand argv to lua/moonops/cli.lua and exit with what it returns. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"
#include "moonops/moonops.h"

int main(int argc, char **argv) {
  /* glibc gives the top of the heap back to the kernel whenever more than 128 KiB
   * of it is free, and maps allocations over 128 KiB afresh every time (its
   * adaptive thresholds only move after such a block is freed). A server whose
   * requests each allocate and free a few hundred KiB (SQLite's pages, Lua
   * tables) then spends more time in brk/munmap and page faults than in its
   * work. Keep up to 4 MiB of free heap and map only blocks over 1 MiB. */
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  mallopt(M_TRIM_THRESHOLD, 4 << 20);
  /* Commands run in process groups of their own: Ctrl-C (SIGINT to moonops's group),
   * SIGTERM and SIGHUP are forwarded to them before moonops dies of the signal.
   * `moonops serve` blocks these and reads them itself (moonops.server). */
  mo_proc_forward_signals();
  lua_State *L = moonops_vm_new();
  if (L == NULL) {
    fputs("moonops: out of memory\n", stderr);
    return 1;
  }
  lua_getglobal(L, "require");
  lua_pushstring(L, "moonops.cli");
  if (mo_pcall(L, 1, 1) != LUA_OK) {
    fprintf(stderr, "moonops: cannot load the Lua library from %s: %s\n", moonops_lua_dir(),
            lua_tostring(L, -1));
    lua_close(L);
    return 1;
  }
  lua_getfield(L, -1, "main");
  lua_createtable(L, argc, 0);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  int code = 1;
  if (mo_pcall(L, 1, 1) != LUA_OK) {
    fprintf(stderr, "moonops: %s\n", lua_tostring(L, -1));
  } else {
    code = (int)luaL_optinteger(L, -1, 0);
  }
  lua_close(L);
  return code;
}
