/* moonops.http (to be written) */
#include "internal.h"

int luaopen_moonops_http(lua_State *L) {
  lua_newtable(L);
  return 1;
}
