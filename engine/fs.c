/* moonops.fs (to be written) */
#include "internal.h"

int luaopen_moonops_fs(lua_State *L) {
  lua_newtable(L);
  return 1;
}
