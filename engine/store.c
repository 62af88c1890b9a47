/*
 * moonops.store: SQLite with bound parameters only.
 *
 * One connection per Lua state (and so per thread): connections are opened in
 * SQLite's multi-thread mode, which is safe as long as a connection is never
 * shared between threads. Each connection keeps a small LRU cache of prepared
 * statements keyed by their SQL text.
 *
 * Writers of one database file within this process queue on a process-wide
 * mutex for that file (the writer lock) before they take SQLite's write lock:
 * a transaction (db:tx) holds it from BEGIN to COMMIT, a write outside a
 * transaction for its one statement. A waiting writer then sleeps on the mutex
 * and wakes the moment the other one commits, where SQLite's busy handler
 * would poll with sleeps of up to 100 ms. The same writer checkpoints the WAL
 * when its commit grew it past STORE_CHECKPOINT_PAGES, still holding the lock,
 * so no writer of this process appends meanwhile: the checkpoint can copy
 * every frame back and the next writer starts the WAL over from the beginning
 * (and truncates it to STORE_WAL_LIMIT), which keeps the WAL bounded under a
 * steady stream of writes. Other processes meet SQLite's own locking as before.
 *
 * Expected failures (a constraint violation, a lock still held after the busy
 * timeout, a read-only or full disk) return nil, "store <path>: <message>", code
 * with code one of "constraint", "busy", "readonly", "full", "corrupt", "io",
 * "cantopen", "permission" or "error". SQL that does not compile and values that
 * do not fit the statement raise: those are bugs in the caller.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "internal.h"

#define STORE_MT "moonops.store"
#define STORE_CACHE 24
#define STORE_PREPARED_LEVELS 8
#define STORE_DEFAULT_BUSY_MS 5000
#define STORE_CHECKPOINT_PAGES 1000       /* SQLite's own autocheckpoint default */
#define STORE_WAL_LIMIT (8 * 1024 * 1024) /* journal_size_limit: the WAL is cut back to this */

/* The writer lock of one database file (by device and inode), shared by every
 * connection of the process to that file. */
struct writer_lock {
  dev_t dev;
  ino_t ino;
  int refs; /* under writers_lock */
  pthread_mutex_t mutex;
  atomic_int owner;     /* thread id of the holder, 0 when free */
  atomic_int wal_pages; /* frames in the WAL after the last commit of any connection */
  struct writer_lock *next;
};

/* Process-wide registry of writer locks (documented above). */
static pthread_mutex_t writers_lock = PTHREAD_MUTEX_INITIALIZER;
static struct writer_lock *writers;

typedef struct {
  sqlite3 *db; /* first: NULL once closed (mo_checkhandle tests it) */
  char *path;
  int depth; /* open transaction levels: 0 none, 1 BEGIN, >1 savepoints */
  int busy_ms;
  struct writer_lock *writer; /* NULL for read-only or in-memory databases */
  int holding;                /* this connection holds writer->mutex */
  sqlite3_stmt *begin, *commit, *rollback;
  /* SAVEPOINT mo_spN / RELEASE mo_spN for the first levels of nesting, prepared on
   * first use (a batch of deliveries runs one savepoint per delivery) */
  sqlite3_stmt *savepoint[STORE_PREPARED_LEVELS], *release[STORE_PREPARED_LEVELS];
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

/* ---- the writer lock ----------------------------------------------------- */

static struct writer_lock *writer_attach(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) return NULL;
  pthread_mutex_lock(&writers_lock);
  struct writer_lock *w = writers;
  while (w && !(w->dev == st.st_dev && w->ino == st.st_ino))
    w = w->next;
  if (w) {
    w->refs++;
  } else if ((w = calloc(1, sizeof *w)) != NULL) {
    w->dev = st.st_dev;
    w->ino = st.st_ino;
    w->refs = 1;
    pthread_mutex_init(&w->mutex, NULL);
    atomic_init(&w->owner, 0);
    atomic_init(&w->wal_pages, 0);
    w->next = writers;
    writers = w;
  }
  pthread_mutex_unlock(&writers_lock);
  return w;
}

static void writer_detach(struct writer_lock *w) {
  pthread_mutex_lock(&writers_lock);
  if (--w->refs == 0) {
    struct writer_lock **p = &writers;
    while (*p != w)
      p = &(*p)->next;
    *p = w->next;
    pthread_mutex_destroy(&w->mutex);
    free(w);
  }
  pthread_mutex_unlock(&writers_lock);
}

/*
 * Take the writer lock before a write: 1 when taken here, 0 when not needed
 * (no lock for this database, already held by this connection, or held by
 * another connection of this same thread, where waiting could never end and
 * SQLite's busy timeout decides instead), -1 when still held by another
 * thread after the busy timeout.
 */
static int writer_enter(Store *s) {
  struct writer_lock *w = s->writer;
  if (w == NULL || s->holding) return 0;
  int self = (int)gettid();
  if (atomic_load(&w->owner) == self) return 0;
  if (pthread_mutex_trylock(&w->mutex) != 0) {
    if (s->busy_ms <= 0) return -1;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += s->busy_ms / 1000;
    ts.tv_nsec += (long)(s->busy_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    if (pthread_mutex_clocklock(&w->mutex, CLOCK_MONOTONIC, &ts) != 0) return -1;
  }
  atomic_store(&w->owner, self);
  s->holding = 1;
  return 1;
}

/* Checkpoint when this connection's commits grew the WAL past the mark, then
 * release the writer lock. PASSIVE: readers are never waited for; a frame one
 * of them still needs is copied by a later checkpoint. */
static void writer_leave(Store *s) {
  if (!s->holding) return;
  struct writer_lock *w = s->writer;
  if (s->db && atomic_load(&w->wal_pages) >= STORE_CHECKPOINT_PAGES &&
      sqlite3_get_autocommit(s->db)) {
    int log = 0, done = 0;
    if (sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done) == SQLITE_OK)
      atomic_store(&w->wal_pages, log - done);
  }
  atomic_store(&s->writer->owner, 0);
  s->holding = 0;
  pthread_mutex_unlock(&s->writer->mutex);
}

/* sqlite3_wal_hook: called after each commit of this connection with the WAL's size in frames
 * (installing it turns off SQLite's autocheckpoint for the connection: writer_leave does it). */
static int on_wal_commit(void *arg, sqlite3 *db, const char *name, int pages) {
  (void)db, (void)name;
  atomic_store(&((struct writer_lock *)arg)->wal_pages, pages);
  return SQLITE_OK;
}

static void close_store(Store *s) {
  if (s->db != NULL) {
    cache_clear(s);
    sqlite3_finalize(s->begin);
    sqlite3_finalize(s->commit);
    sqlite3_finalize(s->rollback);
    s->begin = s->commit = s->rollback = NULL;
    for (int i = 0; i < STORE_PREPARED_LEVELS; i++) {
      sqlite3_finalize(s->savepoint[i]);
      sqlite3_finalize(s->release[i]);
      s->savepoint[i] = s->release[i] = NULL;
    }
    sqlite3_close_v2(s->db); /* rolls back an open transaction */
    s->db = NULL;
  }
  if (s->writer) {
    writer_leave(s);
    writer_detach(s->writer);
    s->writer = NULL;
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

/* nil, "store <path>: database is locked", "busy": the writer lock stayed taken */
static int store_fail_locked(lua_State *L, Store *s) {
  lua_pushnil(L);
  lua_pushfstring(L, "store %s: database is locked", s->path);
  lua_pushliteral(L, "busy");
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

/* Run every statement of `sql` (no parameters). Pushes the change count or the failure
 * triple. `took`: the writer lock was taken for this script (released before raising). */
static int exec_script(lua_State *L, Store *s, const char *sql, int took) {
  lua_Integer changes = 0;
  const char *p = sql;
  while (*p) {
    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    int rc = sqlite3_prepare_v2(s->db, p, -1, &st, &tail);
    if (rc != SQLITE_OK) {
      if (is_busy(rc)) return store_fail(L, s, rc);
      lua_pushfstring(L, "store %s: %s (in \"%s\")", s->path, sqlite3_errmsg(s->db), p);
      if (took) writer_leave(s);
      lua_error(L);
    }
    p = tail;
    if (st == NULL) continue; /* whitespace or a comment */
    if (sqlite3_bind_parameter_count(st) > 0) {
      sqlite3_finalize(st);
      if (took) writer_leave(s);
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
      int took = sqlite3_get_autocommit(s->db) ? writer_enter(s) : 0;
      if (took < 0) return store_fail_locked(L, s);
      int n = exec_script(L, s, sql, took);
      if (took) writer_leave(s);
      return n;
    }
    cache_insert(s, st);
  }
  sqlite3_stmt *st = acquire(L, s, sql, len);
  if (st == NULL) return 3;
  bind_params(L, s, st, 3, top);
  int took = 0;
  if (sqlite3_get_autocommit(s->db) && !sqlite3_stmt_readonly(st)) {
    took = writer_enter(s);
    if (took < 0) return store_fail_locked(L, s);
  }
  int n = run_statement(L, s, st);
  if (took) writer_leave(s);
  return n;
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
  int took = 0; /* INSERT ... RETURNING and the like write */
  if (sqlite3_get_autocommit(s->db) && !sqlite3_stmt_readonly(st)) {
    took = writer_enter(s);
    if (took < 0) return store_fail_locked(L, s);
  }
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
    if (took) writer_leave(s);
    return r;
  }
  sqlite3_reset(st);
  if (took) writer_leave(s);
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

/* Run BEGIN IMMEDIATE, COMMIT or ROLLBACK, prepared once per connection; on failure
 * pushes the triple and returns it. */
static int control_cached(lua_State *L, Store *s, sqlite3_stmt **slot, const char *sql) {
  int rc = SQLITE_OK;
  if (*slot == NULL) rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, slot, NULL);
  if (rc == SQLITE_OK) {
    rc = sqlite3_step(*slot);
    sqlite3_reset(*slot);
    if (rc == SQLITE_DONE) return 0;
  }
  return L ? store_fail(L, s, rc) : 1;
}

/* Run a savepoint statement; on failure pushes the triple and returns it. */
static int control(lua_State *L, Store *s, const char *fmt, int depth) {
  char sql[64];
  snprintf(sql, sizeof sql, fmt, depth);
  if (depth < STORE_PREPARED_LEVELS) {
    int release = fmt[0] == 'R';
    return control_cached(L, s, release ? &s->release[depth] : &s->savepoint[depth], sql);
  }
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
    int f = depth == 1 ? control_cached(L, s, &s->commit, "COMMIT")
                       : control(L, s, "RELEASE mo_sp%d", depth);
    if (f) {
      /* The commit failed: undo so the connection is usable, report the failure. */
      if (depth == 1) {
        if (!sqlite3_get_autocommit(s->db)) control_cached(NULL, s, &s->rollback, "ROLLBACK");
        writer_leave(s);
      } else {
        char sql[64];
        snprintf(sql, sizeof sql, "ROLLBACK TO mo_sp%d; RELEASE mo_sp%d", depth, depth);
        sqlite3_exec(s->db, sql, NULL, NULL, NULL);
      }
      return f;
    }
    if (depth == 1) writer_leave(s);
    return n;
  }
  /* fn raised: undo this level, then re-raise the original error object. */
  if (depth == 1) {
    if (!sqlite3_get_autocommit(s->db)) control_cached(NULL, s, &s->rollback, "ROLLBACK");
    writer_leave(s);
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
  int f;
  if (depth == 1) {
    if (writer_enter(s) < 0) return store_fail_locked(L, s);
    f = control_cached(L, s, &s->begin, "BEGIN IMMEDIATE");
    if (f) writer_leave(s);
  } else {
    f = control(L, s, "SAVEPOINT mo_sp%d", depth);
  }
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
  s->busy_ms = busy;
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, busy);
  char setup[160] = "PRAGMA foreign_keys=ON";
  if (!readonly)
    snprintf(setup, sizeof setup,
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
             "PRAGMA journal_size_limit=%d; PRAGMA foreign_keys=ON",
             STORE_WAL_LIMIT);
  /* Two processes creating the database at once can both hold a shared lock while
   * switching it to WAL; SQLite then answers SQLITE_BUSY at once instead of calling
   * the busy handler (it would deadlock). Retry for as long as the busy timeout. */
  for (int waited = 0;; waited += 10) {
    rc = sqlite3_exec(db, setup, NULL, NULL, NULL);
    if ((rc & 0xff) != SQLITE_BUSY || waited >= busy) break;
    sqlite3_sleep(10);
  }
  if (rc != SQLITE_OK) {
    int n = store_fail(L, s, rc);
    close_store(s);
    return n;
  }
  if (!readonly && (s->writer = writer_attach(path)) != NULL)
    sqlite3_wal_hook(db, on_wal_commit, s->writer);
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
