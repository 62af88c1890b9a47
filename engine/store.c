/*
 * moonops.store: SQLite with bound parameters only.
 *
 * One connection per Lua state (and so per thread): connections are opened in
 * SQLite's multi-thread mode, which is safe as long as a connection is never
 * shared between threads. Each connection keeps a small LRU cache of prepared
 * statements keyed by their SQL text.
 *
 * Expected failures (a constraint violation, a lock still held after the busy
 * timeout, a read-only or full disk) return nil, "store <path>: <message>", code
 * with code one of "constraint", "busy", "readonly", "full", "corrupt", "io",
 * "cantopen", "permission" or "error". SQL that does not compile and values that
 * do not fit the statement raise: those are bugs in the caller.
 */
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "internal.h"

#define STORE_MT "moonops.store"
#define STORE_CACHE 24
#define STORE_DEFAULT_BUSY_MS 5000

typedef struct {
  sqlite3 *db; /* first: NULL once closed (mo_checkhandle tests it) */
  char *path;
  int depth; /* open transaction levels: 0 none, 1 BEGIN, >1 savepoints */
  int ncache;
  sqlite3_stmt *cache[STORE_CACHE]; /* most recently used first */
} Store;

static Store *check_store(lua_State *L, int idx) {
  return mo_checkhandle(L, idx, STORE_MT, "store");
}

static void cache_clear(Store *s) {
  for (int i = 0; i < s->ncache; i++)
    sqlite3_finalize(s->cache[i]);
  s->ncache = 0;
}

static void close_store(Store *s) {
  if (s->db != NULL) {
    cache_clear(s);
    sqlite3_close_v2(s->db);
    s->db = NULL;
  }
  free(s->path);
  s->path = NULL;
  s->depth = 0;
}

/* db:close() -> nothing; idempotent, also __gc and __close */
static int store_close(lua_State *L) {
  close_store(luaL_checkudata(L, 1, STORE_MT));
  return 0;
}

/* A short name for an SQLite result code, returned as the third value. */
static const char *code_name(int rc) {
  switch (rc & 0xff) {
  case SQLITE_CONSTRAINT: return "constraint";
  case SQLITE_BUSY:
  case SQLITE_LOCKED: return "busy";
  case SQLITE_READONLY: return "readonly";
  case SQLITE_FULL: return "full";
  case SQLITE_CORRUPT:
  case SQLITE_NOTADB: return "corrupt";
  case SQLITE_IOERR: return "io";
  case SQLITE_CANTOPEN: return "cantopen";
  case SQLITE_PERM:
  case SQLITE_AUTH: return "permission";
  default: return "error";
  }
}

/* nil, "store <path>: <sqlite message>", code */
static int store_fail(lua_State *L, Store *s, int rc) {
  lua_pushnil(L);
  lua_pushfstring(L, "store %s: %s", s->path, sqlite3_errmsg(s->db));
  lua_pushstring(L, code_name(rc));
  return 3;
}

static int is_busy(int rc) {
  return (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED;
}

static int only_space(const char *p) {
  while (*p) {
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != ';') return 0;
    p++;
  }
  return 1;
}

/* The cached statement for exactly this SQL text, moved to the front; or NULL. */
static sqlite3_stmt *cache_find(Store *s, const char *sql, size_t len) {
  for (int i = 0; i < s->ncache; i++) {
    sqlite3_stmt *st = s->cache[i];
    const char *text = sqlite3_sql(st);
    if (strlen(text) == len && memcmp(text, sql, len) == 0) {
      memmove(&s->cache[1], &s->cache[0], (size_t)i * sizeof s->cache[0]);
      s->cache[0] = st;
      return st;
    }
  }
  return NULL;
}

/* Put a new statement at the front, finalizing the least recently used one when full. */
static void cache_insert(Store *s, sqlite3_stmt *st) {
  if (s->ncache == STORE_CACHE) sqlite3_finalize(s->cache[--s->ncache]);
  memmove(&s->cache[1], &s->cache[0], (size_t)s->ncache * sizeof s->cache[0]);
  s->cache[0] = st;
  s->ncache++;
}

/*
 * A prepared statement for one SQL statement, from the cache when possible;
 * reset with its bindings cleared. On a busy schema lock, pushes the failure
 * triple and returns NULL; other preparation failures (bad SQL) raise.
 */
static sqlite3_stmt *acquire(lua_State *L, Store *s, const char *sql, size_t len) {
  sqlite3_stmt *st = cache_find(s, sql, len);
  if (st != NULL) {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
  }
  const char *tail = NULL;
  int rc = sqlite3_prepare_v3(s->db, sql, (int)len, SQLITE_PREPARE_PERSISTENT, &st, &tail);
  if (rc != SQLITE_OK) {
    if (is_busy(rc)) {
      store_fail(L, s, rc);
      return NULL;
    }
    luaL_error(L, "store %s: %s (in \"%s\")", s->path, sqlite3_errmsg(s->db), sql);
  }
  if (st == NULL) luaL_error(L, "store %s: no SQL statement in \"%s\"", s->path, sql);
  if (tail && !only_space(tail)) {
    sqlite3_finalize(st);
    luaL_error(L, "store %s: one statement at a time when values are bound (in \"%s\")", s->path,
               sql);
  }
  cache_insert(s, st);
  return st;
}

/* Valid UTF-8 with no NUL byte: bound as TEXT; anything else as a BLOB. */
static int is_text(const unsigned char *p, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char c = p[i];
    if (c == 0) return 0;
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t need;
    unsigned int cp;
    if (c >= 0xc2 && c <= 0xdf) {
      need = 1;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      need = 2;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      need = 3;
      cp = c & 0x07;
    } else {
      return 0;
    }
    if (i + need >= n) return 0;
    for (size_t k = 1; k <= need; k++) {
      if ((p[i + k] & 0xc0) != 0x80) return 0;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return 0;
    i += need + 1;
  }
  return 1;
}

/* Bind Lua values first..last as the statement's `?` parameters (misuse raises). */
static void bind_params(lua_State *L, Store *s, sqlite3_stmt *st, int first, int last) {
  int given = last - first + 1;
  if (given < 0) given = 0;
  int want = sqlite3_bind_parameter_count(st);
  if (given != want)
    luaL_error(L, "store %s: the SQL has %d parameter%s, %d value%s given (in \"%s\")", s->path,
               want, want == 1 ? "" : "s", given, given == 1 ? "" : "s", sqlite3_sql(st));
  for (int i = 1; i <= given; i++) {
    int idx = first + i - 1;
    int rc;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
    /* nil and the null sentinels (json.null, yaml.null) */
    case LUA_TLIGHTUSERDATA: rc = sqlite3_bind_null(st, i); break;
    case LUA_TBOOLEAN: rc = sqlite3_bind_int(st, i, lua_toboolean(L, idx)); break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx))
        rc = sqlite3_bind_int64(st, i, (sqlite3_int64)lua_tointeger(L, idx));
      else
        rc = sqlite3_bind_double(st, i, (double)lua_tonumber(L, idx));
      break;
    case LUA_TSTRING: {
      size_t n;
      const char *p = lua_tolstring(L, idx, &n);
      if (is_text((const unsigned char *)p, n))
        rc = sqlite3_bind_text64(st, i, p, n, SQLITE_TRANSIENT, SQLITE_UTF8);
      else
        rc = sqlite3_bind_blob64(st, i, p, n, SQLITE_TRANSIENT);
      break;
    }
    default:
      sqlite3_clear_bindings(st);
      luaL_argerror(
          L, idx,
          lua_pushfstring(L, "cannot bind a %s as an SQL parameter", luaL_typename(L, idx)));
      return;
    }
    if (rc != SQLITE_OK)
      luaL_error(L, "store %s: bind parameter %d: %s", s->path, i, sqlite3_errmsg(s->db));
  }
}

/* Push the current row as a table keyed by column name (NULL columns absent). */
static void push_row(lua_State *L, sqlite3_stmt *st) {
  int n = sqlite3_column_count(st);
  lua_createtable(L, 0, n);
  for (int c = 0; c < n; c++) {
    switch (sqlite3_column_type(st, c)) {
    case SQLITE_NULL: continue;
    case SQLITE_INTEGER: lua_pushinteger(L, (lua_Integer)sqlite3_column_int64(st, c)); break;
    case SQLITE_FLOAT: lua_pushnumber(L, (lua_Number)sqlite3_column_double(st, c)); break;
    case SQLITE_BLOB: {
      const void *p = sqlite3_column_blob(st, c);
      lua_pushlstring(L, p ? p : "", (size_t)sqlite3_column_bytes(st, c));
      break;
    }
    default: {
      const unsigned char *p = sqlite3_column_text(st, c);
      lua_pushlstring(L, p ? (const char *)p : "", (size_t)sqlite3_column_bytes(st, c));
      break;
    }
    }
    lua_setfield(L, -2, sqlite3_column_name(st, c));
  }
}

/* Run every statement of `sql` (no parameters). Pushes the change count or the failure triple. */
static int exec_script(lua_State *L, Store *s, const char *sql) {
  lua_Integer changes = 0;
  const char *p = sql;
  while (*p) {
    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    int rc = sqlite3_prepare_v2(s->db, p, -1, &st, &tail);
    if (rc != SQLITE_OK) {
      if (is_busy(rc)) return store_fail(L, s, rc);
      luaL_error(L, "store %s: %s (in \"%s\")", s->path, sqlite3_errmsg(s->db), p);
    }
    p = tail;
    if (st == NULL) continue; /* whitespace or a comment */
    if (sqlite3_bind_parameter_count(st) > 0) {
      sqlite3_finalize(st);
      luaL_error(L, "store %s: the SQL has parameters but no values were given", s->path);
    }
    sqlite3_int64 before = sqlite3_total_changes64(s->db);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    }
    if (rc != SQLITE_DONE) {
      sqlite3_finalize(st);
      return store_fail(L, s, rc);
    }
    if (sqlite3_total_changes64(s->db) != before) changes += sqlite3_changes64(s->db);
    sqlite3_finalize(st);
  }
  lua_pushinteger(L, changes);
  return 1;
}

/* Step a bound statement to its end: pushes the change count or the failure triple. */
static int run_statement(lua_State *L, Store *s, sqlite3_stmt *st) {
  sqlite3_int64 before = sqlite3_total_changes64(s->db);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
  }
  if (rc != SQLITE_DONE) {
    int n = store_fail(L, s, rc);
    sqlite3_reset(st);
    return n;
  }
  sqlite3_reset(st);
  lua_Integer changes = 0;
  if (sqlite3_total_changes64(s->db) != before) changes = sqlite3_changes64(s->db);
  lua_pushinteger(L, changes);
  return 1;
}

/*
 * db:exec(sql, ...) -> number of changed rows | nil, err, code
 * With parameters `sql` is one statement; without, it may hold several.
 */
static int store_exec(lua_State *L) {
  Store *s = check_store(L, 1);
  size_t len;
  const char *sql = luaL_checklstring(L, 2, &len);
  int top = lua_gettop(L);
  if (top == 2 && cache_find(s, sql, len) == NULL) {
    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    int rc = sqlite3_prepare_v3(s->db, sql, (int)len, SQLITE_PREPARE_PERSISTENT, &st, &tail);
    if (rc != SQLITE_OK || st == NULL || (tail && !only_space(tail))) {
      sqlite3_finalize(st);
      return exec_script(L, s, sql);
    }
    cache_insert(s, st);
  }
  sqlite3_stmt *st = acquire(L, s, sql, len);
  if (st == NULL) return 3;
  bind_params(L, s, st, 3, top);
  return run_statement(L, s, st);
}

/* Shared by rows and one: step and collect up to `limit` rows (0 = all). */
static int query(lua_State *L, int limit) {
  Store *s = check_store(L, 1);
  size_t len;
  const char *sql = luaL_checklstring(L, 2, &len);
  int top = lua_gettop(L);
  sqlite3_stmt *st = acquire(L, s, sql, len);
  if (st == NULL) return 3;
  bind_params(L, s, st, 3, top);
  lua_newtable(L);
  int n = 0, rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    push_row(L, st);
    lua_rawseti(L, -2, ++n);
    if (limit && n >= limit) break;
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    int r = store_fail(L, s, rc);
    sqlite3_reset(st);
    return r;
  }
  sqlite3_reset(st);
  if (limit == 1) {
    lua_rawgeti(L, -1, 1);
    return 1;
  }
  mo_mark_array(L, -1);
  return 1;
}

/* db:rows(sql, ...) -> array of rows (tables keyed by column name) | nil, err, code */
static int store_rows(lua_State *L) {
  return query(L, 0);
}

/* db:one(sql, ...) -> first row | nil (no row) | nil, err, code */
static int store_one(lua_State *L) {
  return query(L, 1);
}

/* Run a transaction-control statement; on failure pushes the triple and returns it. */
static int control(lua_State *L, Store *s, const char *fmt, int depth) {
  char sql[64];
  snprintf(sql, sizeof sql, fmt, depth);
  char *err = NULL;
  int rc = sqlite3_exec(s->db, sql, NULL, NULL, &err);
  sqlite3_free(err);
  if (rc != SQLITE_OK) return store_fail(L, s, rc);
  return 0;
}

static int tx_finish(lua_State *L, int status, lua_KContext ctx) {
  int depth = (int)ctx;
  Store *s = luaL_checkudata(L, 1, STORE_MT);
  if (s->db == NULL) { /* closed inside fn: SQLite rolled back; pass results or error on */
    if (status != LUA_OK && status != LUA_YIELD) return lua_error(L);
    return lua_gettop(L) - 2;
  }
  s->depth = depth - 1;
  if (status == LUA_OK || status == LUA_YIELD) {
    int n = lua_gettop(L) - 2;
    int f = depth == 1 ? control(L, s, "COMMIT", 0) : control(L, s, "RELEASE mo_sp%d", depth);
    if (f) {
      /* The commit failed: undo so the connection is usable, report the failure. */
      if (depth == 1)
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
      else {
        char sql[64];
        snprintf(sql, sizeof sql, "ROLLBACK TO mo_sp%d; RELEASE mo_sp%d", depth, depth);
        sqlite3_exec(s->db, sql, NULL, NULL, NULL);
      }
      return f;
    }
    return n;
  }
  /* fn raised: undo this level, then re-raise the original error object. */
  if (depth == 1) {
    if (!sqlite3_get_autocommit(s->db)) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
  } else {
    char sql[64];
    snprintf(sql, sizeof sql, "ROLLBACK TO mo_sp%d; RELEASE mo_sp%d", depth, depth);
    sqlite3_exec(s->db, sql, NULL, NULL, NULL);
  }
  return lua_error(L);
}

/*
 * db:tx(fn) -> fn's results | nil, err, code (could not begin or commit)
 * BEGIN IMMEDIATE, or a SAVEPOINT inside another tx; rolled back and the error
 * re-raised unchanged when fn raises.
 */
static int store_tx(lua_State *L) {
  Store *s = check_store(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  if (s->depth > 0 && sqlite3_get_autocommit(s->db)) s->depth = 0; /* rolled back underneath */
  int depth = s->depth + 1;
  int f =
      depth == 1 ? control(L, s, "BEGIN IMMEDIATE", 0) : control(L, s, "SAVEPOINT mo_sp%d", depth);
  if (f) return f;
  s->depth = depth;
  lua_pushvalue(L, 2);
  int status = lua_pcallk(L, 0, LUA_MULTRET, 0, (lua_KContext)depth, tx_finish);
  return tx_finish(L, status, (lua_KContext)depth);
}

/* db:last_insert_id() -> integer */
static int store_last_insert_id(lua_State *L) {
  Store *s = check_store(L, 1);
  lua_pushinteger(L, (lua_Integer)sqlite3_last_insert_rowid(s->db));
  return 1;
}

/* db:changes() -> rows changed by the most recent INSERT, UPDATE or DELETE */
static int store_changes(lua_State *L) {
  Store *s = check_store(L, 1);
  lua_pushinteger(L, (lua_Integer)sqlite3_changes64(s->db));
  return 1;
}

/* db:path() -> the path given to open */
static int store_path(lua_State *L) {
  Store *s = check_store(L, 1);
  lua_pushstring(L, s->path);
  return 1;
}

/* db:in_tx() -> true while a transaction is open on this connection */
static int store_in_tx(lua_State *L) {
  Store *s = check_store(L, 1);
  lua_pushboolean(L, !sqlite3_get_autocommit(s->db));
  return 1;
}

static int store_tostring(lua_State *L) {
  Store *s = luaL_checkudata(L, 1, STORE_MT);
  if (s->db == NULL)
    lua_pushstring(L, "store (closed)");
  else
    lua_pushfstring(L, "store (%s)", s->path);
  return 1;
}

/* store.open(path [, {busy_timeout = ms, readonly = bool}]) -> db | nil, err, code */
static int store_open(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int busy = STORE_DEFAULT_BUSY_MS, readonly = 0;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_Integer b = mo_optfield_integer(L, 2, "busy_timeout", STORE_DEFAULT_BUSY_MS);
    luaL_argcheck(L, b >= 0 && b <= 24 * 3600 * 1000, 2, "busy_timeout must be 0..86400000 ms");
    busy = (int)b;
    readonly = mo_optfield_boolean(L, 2, "readonly", 0);
  }
  Store *s = (Store *)mo_newhandle(L, sizeof(Store), STORE_MT);
  s->path = strdup(path);
  if (s->path == NULL) return luaL_error(L, "store %s: out of memory", path);
  int flags = SQLITE_OPEN_NOMUTEX |
              (readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  sqlite3 *db = NULL;
  int rc = sqlite3_open_v2(path, &db, flags, NULL);
  if (rc != SQLITE_OK) {
    lua_pushnil(L);
    lua_pushfstring(L, "store %s: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    lua_pushstring(L, code_name(rc));
    sqlite3_close_v2(db);
    return 3;
  }
  s->db = db;
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, busy);
  const char *setup = readonly ? "PRAGMA foreign_keys=ON"
                               : "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
                                 "PRAGMA foreign_keys=ON";
  rc = sqlite3_exec(db, setup, NULL, NULL, NULL);
  if (rc != SQLITE_OK) {
    int n = store_fail(L, s, rc);
    close_store(s);
    return n;
  }
  return 1;
}

int luaopen_moonops_store(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"exec", store_exec},
      {"rows", store_rows},
      {"one", store_one},
      {"tx", store_tx},
      {"last_insert_id", store_last_insert_id},
      {"changes", store_changes},
      {"path", store_path},
      {"in_tx", store_in_tx},
      {NULL, NULL},
  };
  static const luaL_Reg funcs[] = {{"open", store_open}, {NULL, NULL}};
  mo_newclass(L, STORE_MT, methods, store_close);
  luaL_getmetatable(L, STORE_MT);
  lua_pushcfunction(L, store_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  lua_pushstring(L, sqlite3_libversion());
  lua_setfield(L, -2, "sqlite_version");
  return 1;
}
