/* moonops.config (to be written) */
#include "internal.h"

int luaopen_moonops_config(lua_State *L) {
  lua_newtable(L);
  return 1;
}
