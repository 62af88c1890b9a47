/*
 * moonops.store across processes: concurrent writers under the busy timeout, and a
 * writer killed with SIGKILL in the middle of a transaction.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "moonops/moonops.h"

static int failures;

#define CHECK(cond, ...)                                                                           \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                         \
      fprintf(stderr, __VA_ARGS__);                                                                \
      fputc('\n', stderr);                                                                         \
      failures++;                                                                                  \
    }                                                                                              \
  } while (0)

static int ready_fd = -1;

/* ready() -> nothing: tells the parent process the child reached its checkpoint */
static int lua_ready(lua_State *L) {
  (void)L;
  if (ready_fd >= 0 && write(ready_fd, "r", 1) != 1) perror("ready");
  return 0;
}

/*
 * Run `code` in a fresh VM with (path, number) as `...`. Returns the chunk's
 * integer result, or -1 after printing the error.
 */
static long run_lua(const char *code, const char *path, long number) {
  lua_State *L = moonops_vm_new();
  if (L == NULL) return -1;
  lua_pushcfunction(L, lua_ready);
  lua_setglobal(L, "ready");
  long result = -1;
  if (luaL_loadstring(L, code) != LUA_OK) {
    fprintf(stderr, "load: %s\n", lua_tostring(L, -1));
  } else {
    lua_pushstring(L, path);
    lua_pushinteger(L, number);
    if (mo_pcall(L, 2, 1) != LUA_OK)
      fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
    else
      result = (long)lua_tointeger(L, -1);
  }
  lua_close(L);
  return result;
}

static const char *SCHEMA = "local store = require 'moonops.store'\n"
                            "local db <close> = assert(store.open((...)))\n"
                            "assert(db:exec([[\n"
                            "  CREATE TABLE hits (writer INTEGER, n INTEGER);\n"
                            "  CREATE TABLE counter (v INTEGER);\n"
                            "  INSERT INTO counter VALUES (0);\n"
                            "  CREATE TABLE committed (n INTEGER, pad BLOB);\n"
                            "  CREATE TABLE pending (n INTEGER, pad BLOB);\n"
                            "]]))\n"
                            "return 0\n";

/* Each writer: autocommit inserts, and read-modify-write transactions on one counter. */
static const char *WRITER =
    "local path, writer = ...\n"
    "local store = require 'moonops.store'\n"
    "local db <close> = assert(store.open(path))\n"
    "for i = 1, 100 do\n"
    "  local n, err = db:exec('INSERT INTO hits VALUES (?, ?)', writer, i)\n"
    "  if not n then error(err) end\n"
    "  local ok, terr = db:tx(function()\n"
    "    local v = db:one('SELECT v FROM counter').v\n"
    "    assert(db:exec('INSERT INTO hits VALUES (?, ?)', writer, -i))\n"
    "    assert(db:exec('UPDATE counter SET v = ?', v + 1))\n"
    "    return true\n"
    "  end)\n"
    "  if not ok then error(terr) end\n"
    "end\n"
    "return 0\n";

static const char *COUNTS = "local store = require 'moonops.store'\n"
                            "local db <close> = assert(store.open((...)))\n"
                            "local hits = db:one('SELECT count(*) AS n FROM hits').n\n"
                            "local v = db:one('SELECT v FROM counter').v\n"
                            "return hits * 100000 + v\n";

static void test_concurrent_writers(const char *path) {
  enum { WRITERS = 3 };
  CHECK(run_lua(SCHEMA, path, 0) == 0, "create schema");
  int gate[2];
  if (pipe(gate) != 0) {
    perror("pipe");
    failures++;
    return;
  }
  pid_t pids[WRITERS];
  for (int w = 0; w < WRITERS; w++) {
    pids[w] = fork();
    if (pids[w] == 0) {
      char c;
      close(gate[1]);
      if (read(gate[0], &c, 1) < 0) _exit(3); /* returns 0 when the parent opens the gate */
      long rc = run_lua(WRITER, path, w + 1);
      _exit(rc == 0 ? 0 : 1);
    }
  }
  close(gate[0]);
  close(gate[1]); /* every writer starts now */
  for (int w = 0; w < WRITERS; w++) {
    int status = 0;
    waitpid(pids[w], &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer %d failed (status %d)", w + 1,
          status);
  }
  long counts = run_lua(COUNTS, path, 0);
  CHECK(counts / 100000 == WRITERS * 200, "expected %d rows, got %ld", WRITERS * 200,
        counts / 100000);
  CHECK(counts % 100000 == WRITERS * 100, "lost updates: counter %ld, expected %d", counts % 100000,
        WRITERS * 100);
}

/* Commit 100 rows, then write forever inside one transaction, telling the parent when deep in. */
static const char *DOOMED = "local store = require 'moonops.store'\n"
                            "local db = assert(store.open((...)))\n"
                            "local pad = string.rep('x', 4000)\n"
                            "db:tx(function()\n"
                            "  for i = 1, 100 do\n"
                            "    assert(db:exec('INSERT INTO committed VALUES (?, ?)', i, pad))\n"
                            "  end\n"
                            "end)\n"
                            "db:tx(function()\n"
                            "  local i = 0\n"
                            "  while true do\n"
                            "    i = i + 1\n"
                            "    assert(db:exec('INSERT INTO pending VALUES (?, ?)', i, pad))\n"
                            "    if i == 3000 then ready() end\n"
                            "  end\n"
                            "end)\n"
                            "return 0\n";

static const char *AFTER_KILL =
    "local store = require 'moonops.store'\n"
    "local db <close> = assert(store.open(..., {busy_timeout = 2000}))\n"
    "local check = db:one('PRAGMA integrity_check').integrity_check\n"
    "if check ~= 'ok' then error('integrity_check: ' .. check) end\n"
    "local committed = db:one('SELECT count(*) AS n FROM committed').n\n"
    "local pending = db:one('SELECT count(*) AS n FROM pending').n\n"
    "if pending ~= 0 then error('uncommitted rows survived: ' .. pending) end\n"
    "assert(db:exec('INSERT INTO pending VALUES (?, ?)', 1, 'after'))\n"
    "return committed\n";

static void test_killed_writer(const char *path) {
  int sig[2];
  if (pipe(sig) != 0) {
    perror("pipe");
    failures++;
    return;
  }
  pid_t pid = fork();
  if (pid == 0) {
    close(sig[0]);
    ready_fd = sig[1];
    run_lua(DOOMED, path, 0);
    _exit(1); /* never returns normally: the loop is endless */
  }
  close(sig[1]);
  char c;
  ssize_t n = read(sig[0], &c, 1);
  close(sig[0]);
  CHECK(n == 1, "the writer died before its checkpoint");
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "writer was not killed (status %d)",
        status);
  long committed = run_lua(AFTER_KILL, path, 0);
  CHECK(committed == 100, "expected the 100 committed rows, got %ld", committed);
}

int main(void) {
  char dir[] = "/tmp/moonops-store-test.XXXXXX";
  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  char path[sizeof dir + 16];
  snprintf(path, sizeof path, "%s/state.db", dir);

  test_concurrent_writers(path);
  test_killed_writer(path);

  char cmd[sizeof dir + 16];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  puts("store_test: ok");
  return 0;
}
