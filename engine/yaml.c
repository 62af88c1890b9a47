/* moonops.yaml (to be written) */
#include "internal.h"

int luaopen_moonops_yaml(lua_State *L) {
  lua_newtable(L);
  return 1;
}
