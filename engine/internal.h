/* Shared helpers for the engine's C modules. Not part of the public ABI. */
#ifndef MOONOPS_INTERNAL_H
#define MOONOPS_INTERNAL_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#define MOONOPS_VERSION "0.1.0"

/* Push nil and a formatted message; returns 2 so callers can `return mo_fail(...)`. */
int mo_fail(lua_State *L, const char *fmt, ...);

/* Push nil, a message from errno prefixed by `what`, and the errno name as a code. */
int mo_fail_errno(lua_State *L, const char *what);

/*
 * Resources are full userdata holding one pointer. `mo_newhandle` pushes a
 * closed handle with metatable `tname`; `mo_checkhandle` raises "use of a
 * closed <label>" when the pointer has been NULLed by the closer.
 */
void **mo_newhandle(lua_State *L, size_t size, const char *tname);
void *mo_checkhandle(lua_State *L, int idx, const char *tname, const char *label);

/* Register a metatable with methods, __index = methods, __gc and __close = closer. */
void mo_newclass(lua_State *L, const char *tname, const luaL_Reg *methods, lua_CFunction closer);

/* Call the function at the top of the stack with nargs under a traceback handler. */
int mo_pcall(lua_State *L, int nargs, int nresults);

/* Optional field helpers for option tables (idx must be absolute). */
const char *mo_optfield_string(lua_State *L, int idx, const char *key, const char *def);
lua_Integer mo_optfield_integer(lua_State *L, int idx, const char *key, lua_Integer def);
lua_Number mo_optfield_number(lua_State *L, int idx, const char *key, lua_Number def);
int mo_optfield_boolean(lua_State *L, int idx, const char *key, int def);

/* The one metatable that marks a Lua table as an array (YAML sequences, JSON
 * arrays); `engine.array_mt` in Lua. */
void mo_push_array_mt(lua_State *L);
void mo_mark_array(lua_State *L, int idx);

/* Wake every waiter of the process-wide notify channel `name` (notify.c);
 * returns 1 when such a channel is open. Safe from any thread. */
int mo_notify_signal(const char *name);

/* Process groups of the commands proc.c started and has not reaped yet (proc.c).
 * MO_PROC_RUN: commands of proc.run; MO_PROC_SPAWN: background processes of proc.spawn. */
#define MO_PROC_RUN 1
#define MO_PROC_SPAWN 2
/* killpg(sig) every registered group; returns how many. Async-signal-safe. */
int mo_proc_signal_all(int sig);
/* SIGTERM to every registered group of `kinds`, wait up to wait_ms for them to end,
 * SIGKILL what is left; returns how many got SIGTERM. Their owners reap them.
 * Async-signal-safe. */
int mo_proc_terminate_all(int wait_ms, int kinds);
/* posix_spawn `file` (never through a shell) in a process group of its own, registered as
 * MO_PROC_RUN (its slot in *slot, -1 when untracked), in `cwd` (NULL: this one) with `envp`
 * (NULL: this environment); fds[i] >= 0 become i, the others /dev/null. Returns 0 or an errno. */
int mo_proc_spawn(int *pid, const char *file, char *const argv[], char *const envp[],
                  const char *cwd, const int fds[3], int *slot);
/* Take a group out of the registry: call before reaping its leader. */
void mo_proc_forget(int *slot, int pid);
/* Install the SIGINT/SIGTERM/SIGHUP handlers of the moonops program: forward the
 * signal to every registered group, escalate to TERM and KILL, then die of it.
 * Call once, from the main thread; a signal ignored at start stays ignored. */
void mo_proc_forward_signals(void);

/* Provenance of tables built by moonops.yaml (yaml.c): a weak-keyed side table
 * maps each mapping/sequence to its "meta", an array:
 *   [1] line, [2] column (1-based; 0 = unknown), [3] source name (or false),
 *   mapping:  [2+2i] = i-th key in document order, [3+2i] = its line
 *   sequence: [3+i] = line of item i */
#define MO_META_LINE 1
#define MO_META_COL 2
#define MO_META_SOURCE 3
#define MO_META_HEAD 3
/* meta of a table, or nil */
void mo_yaml_push_meta(lua_State *L, int table_idx);
void mo_yaml_set_meta(lua_State *L, int table_idx, int meta_idx);
/* line (1-based) of a key or item, 0 when unknown; the same given a mapping's meta */
int mo_yaml_key_line(lua_State *L, int table_idx, int key_idx);
int mo_yaml_meta_line(lua_State *L, int meta_idx, int key_idx);
/* the name given to yaml.load, NULL when unknown */
const char *mo_yaml_source(lua_State *L, int table_idx);
/* keys in document order, then others sorted; as an array, or a plain list */
void mo_yaml_push_keys(lua_State *L, int table_idx);
void mo_yaml_push_key_list(lua_State *L, int table_idx);

/* Module openers, registered in package.preload by vm.c. */
int luaopen_moonops_engine(lua_State *L);
int luaopen_moonops_crypto(lua_State *L);
int luaopen_moonops_fs(lua_State *L);
int luaopen_moonops_proc(lua_State *L);
int luaopen_moonops_store(lua_State *L);
int luaopen_moonops_yaml(lua_State *L);
int luaopen_moonops_config(lua_State *L);
int luaopen_moonops_git(lua_State *L);
int luaopen_moonops_http(lua_State *L);
int luaopen_moonops_server(lua_State *L);
int luaopen_moonops_notify(lua_State *L);
int luaopen_moonops_native(lua_State *L);
int luaopen_moonops_jsonscan(lua_State *L);

#endif
