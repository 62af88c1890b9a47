/* Embedding moonops: create a Lua state with every moonops.* module preloaded. */
#ifndef MOONOPS_MOONOPS_H
#define MOONOPS_MOONOPS_H

#include <lua.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A fresh Lua state with the standard libraries, package.path pointing at the
 * moonops Lua library, and every moonops.* module in package.preload. NULL when
 * out of memory. Close it with lua_close. */
lua_State *moonops_vm_new(void);

/* Where the engine found its Lua library, recipes and bundled plugins. */
const char *moonops_lua_dir(void);
const char *moonops_recipe_dir(void);

#ifdef __cplusplus
}
#endif

#endif
