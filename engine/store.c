/* moonops.store (to be written) */
#include "internal.h"

int luaopen_moonops_store(lua_State *L) {
  lua_newtable(L);
  return 1;
}
