/* The Lua state: standard libraries, the moonops library path, preloaded modules. */
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <git2.h>
#include <microhttpd.h>
#include <openssl/crypto.h>
#include <sqlite3.h>
#include <yaml.h>

#include "internal.h"
#include "moonops/moonops.h"

#ifndef MOONOPS_SOURCE_DIR
#define MOONOPS_SOURCE_DIR ""
#endif
#ifndef MOONOPS_BUILD_DIR
#define MOONOPS_BUILD_DIR ""
#endif

/* Process-wide, computed once: where the binary and its library live. */
static pthread_once_t paths_once = PTHREAD_ONCE_INIT;
static char exe_path[PATH_MAX];
static char lua_dir[PATH_MAX + 64];
static char recipe_dir[PATH_MAX + 64];
static char plugin_dir[PATH_MAX + 64];     /* bundled Lua plugins (and installed native ones) */
static char native_plugin_dir[PATH_MAX + 64]; /* native plugins built in the build tree */

static int is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static void find_paths(void) {
  char dir[PATH_MAX], probe[PATH_MAX + 64];
  ssize_t n = readlink("/proc/self/exe", exe_path, sizeof exe_path - 1);
  exe_path[n > 0 ? n : 0] = '\0';
  strcpy(dir, exe_path);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = '\0';

  snprintf(probe, sizeof probe, "%s/../share/moonops/lua/moonops/cli.lua", dir);
  if (is_file(probe)) {
    snprintf(lua_dir, sizeof lua_dir, "%s/../share/moonops/lua", dir);
    snprintf(recipe_dir, sizeof recipe_dir, "%s/../share/moonops/recipes", dir);
    snprintf(plugin_dir, sizeof plugin_dir, "%s/../lib/moonops/plugins", dir);
    snprintf(native_plugin_dir, sizeof native_plugin_dir, "%s", plugin_dir);
  } else {
    snprintf(lua_dir, sizeof lua_dir, "%s/lua", MOONOPS_SOURCE_DIR);
    snprintf(recipe_dir, sizeof recipe_dir, "%s/recipes", MOONOPS_SOURCE_DIR);
    snprintf(plugin_dir, sizeof plugin_dir, "%s/plugins", MOONOPS_SOURCE_DIR);
    snprintf(native_plugin_dir, sizeof native_plugin_dir, "%s/plugins", MOONOPS_BUILD_DIR);
  }
  const char *over = getenv("MOONOPS_LUA_PATH");
  if (over && *over) snprintf(lua_dir, sizeof lua_dir, "%s", over);
}

const char *moonops_lua_dir(void) {
  pthread_once(&paths_once, find_paths);
  return lua_dir;
}

const char *moonops_recipe_dir(void) {
  pthread_once(&paths_once, find_paths);
  return recipe_dir;
}

/* engine.versions() -> {moonops=, lua=, libgit2=, libcurl=, openssl=, libyaml=, sqlite=, libmicrohttpd=} */
static int engine_versions(lua_State *L) {
  int maj, min, rev;
  lua_newtable(L);
  lua_pushstring(L, MOONOPS_VERSION);
  lua_setfield(L, -2, "moonops");
  lua_pushstring(L, LUA_RELEASE + 4); /* "Lua 5.4.x" -> "5.4.x" */
  lua_setfield(L, -2, "lua");
  git_libgit2_version(&maj, &min, &rev);
  lua_pushfstring(L, "%d.%d.%d", maj, min, rev);
  lua_setfield(L, -2, "libgit2");
  lua_pushstring(L, curl_version_info(CURLVERSION_NOW)->version);
  lua_setfield(L, -2, "libcurl");
  lua_pushstring(L, OpenSSL_version(OPENSSL_VERSION_STRING));
  lua_setfield(L, -2, "openssl");
  lua_pushstring(L, yaml_get_version_string());
  lua_setfield(L, -2, "libyaml");
  lua_pushstring(L, sqlite3_libversion());
  lua_setfield(L, -2, "sqlite");
  lua_pushstring(L, MHD_get_version());
  lua_setfield(L, -2, "libmicrohttpd");
  return 1;
}

int luaopen_moonops_engine(lua_State *L) {
  static const luaL_Reg funcs[] = {{"versions", engine_versions}, {NULL, NULL}};
  pthread_once(&paths_once, find_paths);
  luaL_newlib(L, funcs);
  lua_pushstring(L, MOONOPS_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushstring(L, exe_path);
  lua_setfield(L, -2, "exe");
  lua_pushstring(L, lua_dir);
  lua_setfield(L, -2, "lua_dir");
  lua_pushstring(L, recipe_dir);
  lua_setfield(L, -2, "recipe_dir");
  lua_createtable(L, 2, 0);
  int n = 0;
  if (native_plugin_dir[0] && strcmp(native_plugin_dir, plugin_dir) != 0) {
    lua_pushstring(L, native_plugin_dir);
    lua_rawseti(L, -2, ++n);
  }
  lua_pushstring(L, plugin_dir);
  lua_rawseti(L, -2, ++n);
  lua_setfield(L, -2, "plugin_dirs");
  mo_push_array_mt(L);
  lua_setfield(L, -2, "array_mt");
  return 1;
}

static const luaL_Reg preloads[] = {
    {"moonops.engine", luaopen_moonops_engine},
    {"moonops.crypto", luaopen_moonops_crypto},
    {"moonops.fs", luaopen_moonops_fs},
    {"moonops.proc", luaopen_moonops_proc},
    {"moonops.store", luaopen_moonops_store},
    {"moonops.yaml", luaopen_moonops_yaml},
    {"moonops.config", luaopen_moonops_config},
    {"moonops.git", luaopen_moonops_git},
    {"moonops.http", luaopen_moonops_http},
    {"moonops.server", luaopen_moonops_server},
    {"moonops.notify", luaopen_moonops_notify},
    {"moonops.native", luaopen_moonops_native},
    {NULL, NULL},
};

lua_State *moonops_vm_new(void) {
  lua_State *L = luaL_newstate();
  if (L == NULL) return NULL;
  luaL_openlibs(L);

  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  for (const luaL_Reg *p = preloads; p->name; p++) {
    lua_pushcfunction(L, p->func);
    lua_setfield(L, -2, p->name);
  }
  lua_pop(L, 1);

  const char *dir = moonops_lua_dir();
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir, lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 2);
  return L;
}
