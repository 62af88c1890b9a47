/* moonops.server (to be written) */
#include "internal.h"

int luaopen_moonops_server(lua_State *L) {
  lua_newtable(L);
  return 1;
}
