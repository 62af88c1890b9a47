/*
 * moonops.proc edge cases: a timeout takes the whole process group (the
 * grandchildren too), huge outputs and inputs do not deadlock, and a command
 * that exits while a background child keeps its output open still returns.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
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

/* Run a chunk returning one value; the value is left on the stack. Returns 0 when it raised. */
static int lua_run(lua_State *L, const char *what, const char *code) {
  lua_settop(L, 0);
  if (luaL_dostring(L, code) != LUA_OK) {
    fprintf(stderr, "FAIL %s: %s\n", what, lua_tostring(L, -1));
    failures++;
    lua_settop(L, 0);
    return 0;
  }
  printf("ok   %s\n", what);
  return 1;
}

/*
 * Is pid gone? This test is a child subreaper, so an orphaned grandchild
 * becomes our child: reap it if it has died, then ask with kill(pid, 0).
 * Polls for up to ten seconds because delivery of a signal is not instant.
 */
static int gone(pid_t pid) {
  for (int i = 0; i < 1000; i++) {
    waitpid(pid, NULL, WNOHANG);
    if (kill(pid, 0) < 0 && errno == ESRCH) return 1;
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return 0;
}

static void test_timeout_kills_grandchildren(lua_State *L) {
  if (!lua_run(L, "timeout kills the process group",
               "local r = assert(proc.run{argv = {'sh', '-c', 'sleep 60 & echo $!; wait'}, "
               "timeout = 0.5}) "
               "assert(r.timed_out == true, 'timed_out not set') "
               "assert(r.signal == 'TERM', 'signal ' .. tostring(r.signal)) "
               "assert(r.code == 143, 'code ' .. tostring(r.code)) "
               "return assert(tonumber(r.stdout:match('%d+')), 'no pid printed')"))
    return;
  pid_t grandchild = (pid_t)lua_tointeger(L, 1);
  CHECK(grandchild > 0 && gone(grandchild), "grandchild %d survived the timeout", (int)grandchild);
  if (grandchild > 0) kill(grandchild, SIGKILL);

  if (!lua_run(L, "a group that ignores TERM gets KILL after the grace period",
               "local r = assert(proc.run{argv = {'sh', '-c', "
               "'trap \"\" TERM; sleep 60 & echo $!; wait; wait'}, timeout = 0.3, grace = 0.3}) "
               "assert(r.timed_out and r.signal == 'KILL', 'signal ' .. tostring(r.signal)) "
               "return assert(tonumber(r.stdout:match('%d+')), 'no pid printed')"))
    return;
  grandchild = (pid_t)lua_tointeger(L, 1);
  CHECK(grandchild > 0 && gone(grandchild), "TERM-ignoring grandchild %d survived",
        (int)grandchild);
  if (grandchild > 0) kill(grandchild, SIGKILL);
}

static void test_big_output(lua_State *L) {
  lua_run(L, "10 MB on stdout and 10 MB on stderr at once",
          "local r = assert(proc.run{argv = {'sh', '-c', "
          "'head -c 10000000 /dev/zero & head -c 10000000 /dev/zero >&2; wait'}}) "
          "assert(r.code == 0, 'code ' .. tostring(r.code)) "
          "assert(#r.stdout == 10000000, 'stdout ' .. #r.stdout) "
          "assert(#r.stderr == 10000000, 'stderr ' .. #r.stderr) return true");
  lua_run(L, "10 MB through stdin and back",
          "local input = ('0123456789'):rep(1000000) "
          "local r = assert(proc.run{argv = {'cat'}, stdin = input}) "
          "assert(r.stdout == input, 'echoed ' .. #r.stdout .. ' bytes') return true");
  lua_run(L, "on_output sees every byte, max_output caps what is kept",
          "local seen = {stdout = 0, stderr = 0} "
          "local r = assert(proc.run{argv = {'head', '-c', '10000000', '/dev/zero'}, "
          "max_output = 1000, on_output = function(s, c) seen[s] = seen[s] + #c end}) "
          "assert(seen.stdout == 10000000, 'callback saw ' .. seen.stdout) "
          "assert(#r.stdout == 1000 and r.stdout_truncated, 'kept ' .. #r.stdout) return true");
  lua_run(L, "a child that stops reading its input does not hang the run",
          "local r = assert(proc.run{argv = {'head', '-c', '1'}, stdin = ('x'):rep(10000000)}) "
          "assert(r.code == 0 and r.stdout == 'x', 'got ' .. #r.stdout) return true");
}

static void test_background_keeps_pipe(lua_State *L) {
  if (!lua_run(L, "exit while a background child holds stdout",
               "local r = assert(proc.run{argv = {'sh', '-c', 'sleep 30 & echo $!; echo done'}, "
               "grace = 0.2}) "
               "assert(r.code == 0 and r.stdout:match('done'), 'got ' .. r.stdout) "
               "return tonumber(r.stdout:match('%d+'))"))
    return;
  pid_t bg = (pid_t)lua_tointeger(L, 1);
  if (bg > 0) {
    kill(bg, SIGKILL);
    gone(bg);
  }
}

static void test_on_output_error(lua_State *L) {
  if (!lua_run(L, "an error in on_output kills the command and propagates",
               "local pid "
               "local ok, err = pcall(proc.run, {argv = {'sh', '-c', 'echo $$; exec sleep 60'}, "
               "on_output = function(_, c) pid = tonumber(c:match('%d+')) error('stop here') end}) "
               "assert(not ok and err:match('stop here'), tostring(err)) "
               "return pid"))
    return;
  pid_t pid = (pid_t)lua_tointeger(L, 1);
  CHECK(pid > 0 && gone(pid), "command %d still running after a failing callback", (int)pid);
}

int main(void) {
  /* orphans of the commands we run are re-parented to us, so we can tell when they die */
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  lua_State *L = moonops_vm_new();
  if (L == NULL || luaL_dostring(L, "proc = require 'moonops.proc'") != LUA_OK) {
    fprintf(stderr, "cannot load moonops.proc\n");
    return 1;
  }
  test_timeout_kills_grandchildren(L);
  test_big_output(L);
  test_background_keeps_pipe(L);
  test_on_output_error(L);
  lua_close(L);
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  if (failures) fprintf(stderr, "%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
