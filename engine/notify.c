/* moonops.notify (to be written) */
#include "internal.h"

int luaopen_moonops_notify(lua_State *L) {
  lua_newtable(L);
  return 1;
}
