/* moonops.crypto (to be written) */
#include "internal.h"

int luaopen_moonops_crypto(lua_State *L) {
  lua_newtable(L);
  return 1;
}
