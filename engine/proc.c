/* moonops.proc (to be written) */
#include "internal.h"

int luaopen_moonops_proc(lua_State *L) {
  lua_newtable(L);
  return 1;
}
