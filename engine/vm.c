/* The Lua state: standard libraries, the moonops library path, preloaded modules. */
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dlfcn.h>
#include <openssl/crypto.h> /* OPENSSL_VERSION_STRING only; libcrypto loads with moonops.crypto */
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
static char module_dir[PATH_MAX + 64];        /* lazily loaded modules (git.so, http_client.so, ...) */

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
    snprintf(module_dir, sizeof module_dir, "%s/../lib/moonops/modules", dir);
  } else {
    snprintf(lua_dir, sizeof lua_dir, "%s/lua", MOONOPS_SOURCE_DIR);
    snprintf(recipe_dir, sizeof recipe_dir, "%s/recipes", MOONOPS_SOURCE_DIR);
    snprintf(plugin_dir, sizeof plugin_dir, "%s/plugins", MOONOPS_SOURCE_DIR);
    snprintf(native_plugin_dir, sizeof native_plugin_dir, "%s/plugins", MOONOPS_BUILD_DIR);
    snprintf(module_dir, sizeof module_dir, "%s/modules", MOONOPS_BUILD_DIR);
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

/*
 * The modules built as shared objects (see CMakeLists.txt): loaded on first
 * require, so commands that do not use git, HTTP or the server never pay for
 * loading libgit2, libcurl or libmicrohttpd. dlopen is refcounted and
 * thread-safe; handles are never closed.
 */
static void *lazy_module(const char *file, char *err, size_t errlen) {
  char path[PATH_MAX + 128];
  pthread_once(&paths_once, find_paths);
  snprintf(path, sizeof path, "%s/%s.so", module_dir, file);
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL && err) snprintf(err, errlen, "%s", dlerror());
  return lib;
}

#ifndef MOONOPS_STATIC_MODULES
/* package.preload loader for a lazy module; upvalues: file name, luaopen symbol. */
static int lazy_loader(lua_State *L) {
  const char *file = lua_tostring(L, lua_upvalueindex(1));
  const char *sym = lua_tostring(L, lua_upvalueindex(2));
  char err[512];
  void *lib = lazy_module(file, err, sizeof err);
  if (lib == NULL) return luaL_error(L, "cannot load the %s module: %s", file, err);
  lua_CFunction open = (lua_CFunction)dlsym(lib, sym);
  if (open == NULL) return luaL_error(L, "cannot load the %s module: no %s", file, sym);
  lua_settop(L, 1);
  return open(L);
}
#endif

/* The version a library reports at run time, through a lazily loaded module. */
static void push_lib_version(lua_State *L, const char *file, const char *lib) {
  void *h = lazy_module(file, NULL, 0);
  if (h == NULL) {
    lua_pushstring(L, "unavailable");
    return;
  }
  if (strcmp(lib, "libgit2") == 0) {
    int (*version)(int *, int *, int *) = (int (*)(int *, int *, int *))dlsym(h, "git_libgit2_version");
    int maj = 0, min = 0, rev = 0;
    if (version) version(&maj, &min, &rev);
    lua_pushfstring(L, "%d.%d.%d", maj, min, rev);
  } else if (strcmp(lib, "libcurl") == 0) {
    char *(*version)(void) = (char *(*)(void))dlsym(h, "curl_version");
    /* "libcurl/7.88.1 OpenSSL/..." -> "7.88.1" */
    const char *v = version ? version() : "unknown";
    const char *slash = strchr(v, '/');
    const char *start = slash ? slash + 1 : v;
    lua_pushlstring(L, start, strcspn(start, " "));
  } else if (strcmp(lib, "openssl") == 0) {
    const char *(*version)(int) = (const char *(*)(int))dlsym(h, "OpenSSL_version");
    lua_pushstring(L, version ? version(OPENSSL_VERSION_STRING) : "unknown");
  } else {
    const char *name = strcmp(lib, "sqlite") == 0 ? "sqlite3_libversion" : "MHD_get_version";
    const char *(*version)(void) = (const char *(*)(void))dlsym(h, name);
    lua_pushstring(L, version ? version() : "unknown");
  }
}

/* engine.versions() -> {moonops=, lua=, libgit2=, libcurl=, openssl=, libyaml=, sqlite=, libmicrohttpd=} */
static int engine_versions(lua_State *L) {
  lua_newtable(L);
  lua_pushstring(L, MOONOPS_VERSION);
  lua_setfield(L, -2, "moonops");
  lua_pushstring(L, LUA_RELEASE + 4); /* "Lua 5.4.x" -> "5.4.x" */
  lua_setfield(L, -2, "lua");
  push_lib_version(L, "git", "libgit2");
  lua_setfield(L, -2, "libgit2");
  push_lib_version(L, "http_client", "libcurl");
  lua_setfield(L, -2, "libcurl");
  push_lib_version(L, "crypto", "openssl");
  lua_setfield(L, -2, "openssl");
  lua_pushstring(L, yaml_get_version_string());
  lua_setfield(L, -2, "libyaml");
  push_lib_version(L, "store", "sqlite");
  lua_setfield(L, -2, "sqlite");
  push_lib_version(L, "http_server", "libmicrohttpd");
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
    {"moonops.fs", luaopen_moonops_fs},
    {"moonops.proc", luaopen_moonops_proc},
    {"moonops.yaml", luaopen_moonops_yaml},
    {"moonops.config", luaopen_moonops_config},
    {"moonops.notify", luaopen_moonops_notify},
    {"moonops.native", luaopen_moonops_native},
    {"moonops.jsonscan", luaopen_moonops_jsonscan},
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
  static const char *const lazy[][3] = {
      {"moonops.git", "git", "luaopen_moonops_git"},
      {"moonops.http", "http_client", "luaopen_moonops_http"},
      {"moonops.server", "http_server", "luaopen_moonops_server"},
      {"moonops.crypto", "crypto", "luaopen_moonops_crypto"},
      {"moonops.store", "store", "luaopen_moonops_store"},
  };
#ifdef MOONOPS_STATIC_MODULES
  /* Everything linked into one program (fuzzers, embedders): no dlopen. */
  static const luaL_Reg linked[] = {
      {"moonops.git", luaopen_moonops_git},       {"moonops.http", luaopen_moonops_http},
      {"moonops.server", luaopen_moonops_server}, {"moonops.crypto", luaopen_moonops_crypto},
      {"moonops.store", luaopen_moonops_store},
  };
  for (size_t i = 0; i < sizeof linked / sizeof linked[0]; i++) {
    lua_pushcfunction(L, linked[i].func);
    lua_setfield(L, -2, linked[i].name);
  }
  (void)lazy;
#else
  for (size_t i = 0; i < sizeof lazy / sizeof lazy[0]; i++) {
    lua_pushstring(L, lazy[i][1]);
    lua_pushstring(L, lazy[i][2]);
    lua_pushcclosure(L, lazy_loader, 2);
    lua_setfield(L, -2, lazy[i][0]);
  }
#endif
  lua_pop(L, 1);

  const char *dir = moonops_lua_dir();
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir, lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 2);
  return L;
}
