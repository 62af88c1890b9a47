/*
 * hello-native: the smallest complete native moonops plugin. Copy this folder to
 * start your own: it registers one Lua module (`hello.native`) and one recipe
 * (`hello-native`), and logs through the host.
 */
#include <lauxlib.h>
#include <lua.h>

#include "moonops/plugin.h"

MOONOPS_PLUGIN_DECLARE;

/* hello.native.greet(name) -> "hello, <name> (from C)" */
static int greet(lua_State *L) {
  const char *name = luaL_optstring(L, 1, "world");
  lua_pushfstring(L, "hello, %s (from C)", name);
  return 1;
}

static int open_module(lua_State *L) {
  static const luaL_Reg funcs[] = {{"greet", greet}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}

static const char setup_lua[] =
    "local engine, config = ...\n"
    "engine.register_recipe('hello-native', {\n"
    "  summary = 'Say hello from a native plugin',\n"
    "  options = { { 'name', type = 'string', default = config.name or 'world', help = 'who to greet' } },\n"
    "  run = function(ctx, opts)\n"
    "    ctx.print(require('hello.native').greet(opts.name), '\\n')\n"
    "    return 0\n"
    "  end,\n"
    "})\n";

static int setup(lua_State *L) {
  /* setup(engine, config): make the module requirable, then register the recipe in Lua. */
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, open_module);
  lua_setfield(L, -2, "hello.native");
  lua_pop(L, 2);
  if (luaL_loadbuffer(L, setup_lua, sizeof setup_lua - 1, "=hello-native setup") != LUA_OK)
    return lua_error(L);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_call(L, 2, 0);
  return 0;
}

int moonops_plugin_open(lua_State *L, const struct moonops_host *host) {
  host->log(L, "debug", "hello-native loaded");
  lua_createtable(L, 0, 3);
  lua_pushstring(L, "hello-native");
  lua_setfield(L, -2, "name");
  lua_pushstring(L, "1.0.0");
  lua_setfield(L, -2, "version");
  lua_pushcfunction(L, setup);
  lua_setfield(L, -2, "setup");
  return 1;
}
