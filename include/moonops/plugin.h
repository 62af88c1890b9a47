/*
 * moonops native plugin ABI.
 *
 * A native plugin is a shared object `plugins/<name>/plugin.so` that exports
 *
 *   MOONOPS_PLUGIN_DECLARE;      -- the ABI version it was built against
 *   int moonops_plugin_open(lua_State *L, const struct moonops_host *host);
 *
 * moonops checks `moonops_plugin_abi` before calling anything: a plugin built
 * against another ABI is refused with both versions named. `moonops_plugin_open`
 * pushes exactly one value, the plugin table, and returns 1:
 *
 *   { name = "hello-native", version = "1.0.0",
 *     setup = function(engine, config) ... end }
 *
 * the same shape a Lua plugin's plugin.lua returns. Lua symbols resolve against
 * the moonops binary itself (it is linked with -E); link the plugin without -llua.
 * Plugins are never unloaded.
 */
#ifndef MOONOPS_PLUGIN_H
#define MOONOPS_PLUGIN_H

#include <lua.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever struct moonops_host or the open contract changes. */
#define MOONOPS_PLUGIN_ABI 1

struct moonops_host {
  int abi;             /* MOONOPS_PLUGIN_ABI of the running moonops */
  const char *version; /* moonops version, e.g. "0.1.0" */
  /* Log through moonops.log (level "debug", "info", "warn" or "error"); secrets
   * registered with log.secret are masked. */
  void (*log)(lua_State *L, const char *level, const char *message);
  /* Register a secret so it is masked in every log line. */
  void (*secret)(lua_State *L, const char *secret);
};

#define MOONOPS_PLUGIN_DECLARE const int moonops_plugin_abi = MOONOPS_PLUGIN_ABI

typedef int (*moonops_plugin_open_fn)(lua_State *L, const struct moonops_host *host);

#ifdef __cplusplus
}
#endif

#endif
