/* Helpers shared by every C module: errors, handles, option fields. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

int mo_fail(lua_State *L, const char *fmt, ...) {
  va_list ap;
  lua_pushnil(L);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  return 2;
}

static const char *errno_name(int e) {
  switch (e) {
  case ENOENT: return "ENOENT";
  case EEXIST: return "EEXIST";
  case EACCES: return "EACCES";
  case EPERM: return "EPERM";
  case ENOTDIR: return "ENOTDIR";
  case EISDIR: return "EISDIR";
  case ENOSPC: return "ENOSPC";
  case ENOTEMPTY: return "ENOTEMPTY";
  case EAGAIN: return "EAGAIN";
  case EINVAL: return "EINVAL";
  case ESRCH: return "ESRCH";
  case EXDEV: return "EXDEV";
  case ELOOP: return "ELOOP";
  case EROFS: return "EROFS";
  case EIO: return "EIO";
  default: return "EOTHER";
  }
}

int mo_fail_errno(lua_State *L, const char *what) {
  int e = errno;
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", what, strerror(e));
  lua_pushstring(L, errno_name(e));
  return 3;
}

void **mo_newhandle(lua_State *L, size_t size, const char *tname) {
  if (size < sizeof(void *)) size = sizeof(void *);
  void **h = lua_newuserdatauv(L, size, 1);
  memset(h, 0, size);
  luaL_setmetatable(L, tname);
  return h;
}

void *mo_checkhandle(lua_State *L, int idx, const char *tname, const char *label) {
  void **h = luaL_checkudata(L, idx, tname);
  if (*h == NULL) luaL_error(L, "use of a closed %s", label);
  return h;
}

void mo_newclass(lua_State *L, const char *tname, const luaL_Reg *methods, lua_CFunction closer) {
  luaL_newmetatable(L, tname);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_pushcfunction(L, closer);
  lua_setfield(L, -2, "close");
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, closer);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, closer);
  lua_setfield(L, -2, "__close");
  lua_pushstring(L, tname);
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int mo_pcall(lua_State *L, int nargs, int nresults) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  int rc = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  return rc;
}

const char *mo_optfield_string(lua_State *L, int idx, const char *key, const char *def) {
  const char *s = def;
  if (lua_getfield(L, idx, key) != LUA_TNIL) {
    if (!lua_isstring(L, -1)) luaL_error(L, "option '%s' must be a string", key);
    s = lua_tostring(L, -1);
  }
  lua_pop(L, 1); /* the string stays alive through the option table */
  return s;
}

lua_Integer mo_optfield_integer(lua_State *L, int idx, const char *key, lua_Integer def) {
  lua_Integer v = def;
  if (lua_getfield(L, idx, key) != LUA_TNIL) {
    int ok = 0;
    v = lua_tointegerx(L, -1, &ok);
    if (!ok) luaL_error(L, "option '%s' must be an integer", key);
  }
  lua_pop(L, 1);
  return v;
}

lua_Number mo_optfield_number(lua_State *L, int idx, const char *key, lua_Number def) {
  lua_Number v = def;
  if (lua_getfield(L, idx, key) != LUA_TNIL) {
    int ok = 0;
    v = lua_tonumberx(L, -1, &ok);
    if (!ok) luaL_error(L, "option '%s' must be a number", key);
  }
  lua_pop(L, 1);
  return v;
}

int mo_optfield_boolean(lua_State *L, int idx, const char *key, int def) {
  int v = def;
  if (lua_getfield(L, idx, key) != LUA_TNIL) v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

void mo_push_array_mt(lua_State *L) {
  if (luaL_newmetatable(L, "moonops.array")) {
    lua_pushstring(L, "array");
    lua_setfield(L, -2, "__name");
  }
}

void mo_mark_array(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  mo_push_array_mt(L);
  lua_setmetatable(L, idx);
}
