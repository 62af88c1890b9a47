/* moonops.git (to be written) */
#include "internal.h"

int luaopen_moonops_git(lua_State *L) {
  lua_newtable(L);
  return 1;
}
