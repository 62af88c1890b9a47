/* moonops.native: load native plugins (plugin.so) through the ABI in moonops/plugin.h. */
#include <dlfcn.h>

#include "internal.h"
#include "moonops/plugin.h"

static void host_call(lua_State *L, const char *fn, const char *a, const char *b) {
  int top = lua_gettop(L);
  lua_getglobal(L, "require");
  lua_pushstring(L, "moonops.log");
  if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_getfield(L, -1, fn) == LUA_TFUNCTION) {
    lua_pushstring(L, a);
    if (b) lua_pushstring(L, b);
    lua_pcall(L, b ? 2 : 1, 0, 0);
  }
  lua_settop(L, top);
}

static void host_log(lua_State *L, const char *level, const char *message) {
  if (level == NULL || message == NULL) return;
  host_call(L, level, message, NULL);
}

static void host_secret(lua_State *L, const char *secret) {
  if (secret) host_call(L, "secret", secret, NULL);
}

static const struct moonops_host host = {
    .abi = MOONOPS_PLUGIN_ABI,
    .version = MOONOPS_VERSION,
    .log = host_log,
    .secret = host_secret,
};

/* native.load(path) -> plugin table | nil, err */
static int native_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) return mo_fail(L, "load %s: %s", path, dlerror());
  const int *abi = dlsym(lib, "moonops_plugin_abi");
  if (abi == NULL) {
    dlclose(lib);
    return mo_fail(L, "load %s: no moonops_plugin_abi (build it with MOONOPS_PLUGIN_DECLARE)", path);
  }
  if (*abi != MOONOPS_PLUGIN_ABI) {
    int got = *abi;
    dlclose(lib);
    return mo_fail(L, "load %s: built for plugin ABI %d, this moonops has ABI %d; rebuild the plugin",
                   path, got, MOONOPS_PLUGIN_ABI);
  }
  moonops_plugin_open_fn open = (moonops_plugin_open_fn)dlsym(lib, "moonops_plugin_open");
  if (open == NULL) {
    dlclose(lib);
    return mo_fail(L, "load %s: no moonops_plugin_open function", path);
  }
  /* Never dlclose from here on: functions of the plugin may live in Lua values. */
  int top = lua_gettop(L);
  int n = open(L, &host);
  if (n != 1 || lua_gettop(L) != top + 1 || !lua_istable(L, -1)) {
    lua_settop(L, top);
    return mo_fail(L, "load %s: moonops_plugin_open must push one plugin table and return 1", path);
  }
  return 1;
}

/* native.abi() -> the plugin ABI version of this moonops */
static int native_abi(lua_State *L) {
  lua_pushinteger(L, MOONOPS_PLUGIN_ABI);
  return 1;
}

int luaopen_moonops_native(lua_State *L) {
  static const luaL_Reg funcs[] = {{"load", native_load}, {"abi", native_abi}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
