/*
 * moonops.fs edge cases that need more than one process: an atomic write
 * interrupted by SIGKILL at random moments, and flock contention with a
 * separate process (this binary re-executed as a helper).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

static lua_State *new_vm(void) {
  lua_State *L = moonops_vm_new();
  if (L == NULL || luaL_dostring(L, "fs = require 'moonops.fs'") != LUA_OK) {
    fprintf(stderr, "cannot load moonops.fs\n");
    exit(1);
  }
  return L;
}

/* Run a chunk; its results stay on the stack. Returns 0 when it raised. */
static int lua_run(lua_State *L, const char *code) {
  if (luaL_dostring(L, code) != LUA_OK) {
    fprintf(stderr, "lua error: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  size_t cap = 1 << 20, n = 0;
  char *buf = malloc(cap);
  size_t r;
  while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
    n += r;
    if (n == cap) buf = realloc(buf, cap *= 2);
  }
  fclose(f);
  *len = n;
  return buf;
}

static int same(const char *got, size_t n, char fill, size_t want_len) {
  if (n != want_len) return 0;
  for (size_t i = 0; i < n; i++)
    if (got[i] != fill) return 0;
  return 1;
}

/*
 * A child rewrites the file with write_atomic over and over (two contents of
 * different sizes) and is killed with SIGKILL at a random moment. Whatever
 * step it was in, the file must be exactly one of the two contents.
 */
static void test_atomic_write_survives_kill(const char *dir) {
  enum { OLD_LEN = 100000, NEW_LEN = 300000, ROUNDS = 150 };
  char path[1024];
  snprintf(path, sizeof path, "%s/state.json", dir);
  lua_State *L = new_vm();
  lua_pushstring(L, path);
  lua_setglobal(L, "path");
  CHECK(lua_run(L, "assert(fs.write_atomic(path, ('o'):rep(100000)))"), "initial write");

  int seen_old = 0, seen_new = 0;
  for (int round = 0; round < ROUNDS; round++) {
    int ready[2];
    if (pipe(ready) < 0) exit(2);
    pid_t pid = fork();
    if (pid == 0) {
      close(ready[0]);
      if (write(ready[1], "x", 1) != 1) _exit(3);
      luaL_dostring(L, "local a, b = ('n'):rep(300000), ('o'):rep(100000) "
                       "while true do fs.write_atomic(path, a) fs.write_atomic(path, b) end");
      _exit(4);
    }
    close(ready[1]);
    char c;
    if (read(ready[0], &c, 1) != 1) CHECK(0, "child did not start");
    close(ready[0]);
    struct timespec ts = {0, (long)(rand() % 4000) * 1000}; /* 0-4 ms */
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "writer was not killed (status %d)", st);

    size_t n = 0;
    char *got = slurp(path, &n);
    CHECK(got != NULL, "round %d: %s is missing", round, path);
    if (got == NULL) break;
    if (same(got, n, 'o', OLD_LEN))
      seen_old++;
    else if (same(got, n, 'n', NEW_LEN))
      seen_new++;
    else
      CHECK(0, "round %d: torn file of %zu bytes", round, n);
    free(got);
  }
  CHECK(seen_old + seen_new == ROUNDS, "some rounds saw neither content");
  if (seen_old + seen_new == ROUNDS)
    printf("ok   atomic write under SIGKILL: %d rounds (old %d, new %d)\n", ROUNDS, seen_old,
           seen_new);
  /* only the file and stray temporaries of killed writers remain */
  DIR *d = opendir(dir);
  struct dirent *e;
  while (d && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    CHECK(strcmp(e->d_name, "state.json") == 0 || strncmp(e->d_name, "state.json.tmp-", 15) == 0,
          "unexpected file %s", e->d_name);
  }
  if (d) closedir(d);
  lua_close(L);
}

/* The helper: `fs_test hold PATH` takes the lock, says "held", waits for stdin to close. */
static int helper_hold(const char *path) {
  lua_State *L = new_vm();
  lua_pushstring(L, path);
  lua_setglobal(L, "path");
  if (!lua_run(L, "lock = assert(fs.lock(path))")) return 2;
  if (write(1, "held\n", 5) != 5) return 2;
  char buf[16];
  while (read(0, buf, sizeof buf) > 0) {
  }
  lua_close(L);
  return 0;
}

/* The helper: `fs_test try PATH` exits 4 when the lock is held elsewhere, 0 when it got it. */
static int helper_try(const char *path) {
  lua_State *L = new_vm();
  lua_pushstring(L, path);
  lua_setglobal(L, "path");
  if (!lua_run(L, "local l, err = fs.lock(path, {wait = false}) "
                  "if l then l:close() return 0 end return err == 'locked' and 4 or 3"))
    return 2;
  int code = (int)lua_tointeger(L, -1);
  lua_close(L);
  return code;
}

/* Start this binary as a helper; *to is its stdin, *from its stdout. */
static pid_t start_helper(const char *mode, const char *path, int *to, int *from) {
  int in[2], out[2];
  /* the real path, not /proc/self/exe itself: under valgrind that names the tool */
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) exit(2);
  self[n] = '\0';
  if (pipe(in) < 0 || pipe(out) < 0) exit(2);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    close(in[0]), close(in[1]), close(out[0]), close(out[1]);
    execl(self, "fs_test", mode, path, (char *)NULL);
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  *to = in[1];
  *from = out[0];
  return pid;
}

static int wait_code(pid_t pid) {
  int st;
  if (waitpid(pid, &st, 0) != pid) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void test_lock_contention(const char *dir) {
  int before = failures;
  char path[1024];
  snprintf(path, sizeof path, "%s/run.lock", dir);
  lua_State *L = new_vm();
  lua_pushstring(L, path);
  lua_setglobal(L, "path");

  /* another process holds it */
  int to, from;
  pid_t holder = start_helper("hold", path, &to, &from);
  char buf[8] = {0};
  CHECK(read(from, buf, 5) == 5 && strncmp(buf, "held\n", 5) == 0, "holder did not take the lock");
  CHECK(lua_run(L, "local l, err = fs.lock(path, {wait = false}) "
                   "assert(l == nil and err == 'locked', tostring(err))"),
        "wait=false must report 'locked' while another process holds the lock");
  CHECK(lua_run(L, "local l, err = fs.lock(path, {timeout = 0.2}) "
                   "assert(l == nil and err == 'locked', tostring(err))"),
        "a timeout must report 'locked' while another process holds the lock");
  close(to); /* the holder releases by exiting */
  CHECK(lua_run(L, "held = assert(fs.lock(path, {timeout = 30}))"),
        "lock not acquired after the holder exited");
  CHECK(wait_code(holder) == 0, "holder failed");
  close(from);

  /* we hold it: a second process is refused, then succeeds after close */
  pid_t t1 = start_helper("try", path, &to, &from);
  close(to), close(from);
  CHECK(wait_code(t1) == 4, "second process got a held lock");
  CHECK(lua_run(L, "held:close()"), "close");
  pid_t t2 = start_helper("try", path, &to, &from);
  close(to), close(from);
  CHECK(wait_code(t2) == 0, "second process could not lock after release");

  /* a holder that dies without releasing frees the lock */
  holder = start_helper("hold", path, &to, &from);
  CHECK(read(from, buf, 5) == 5, "holder did not start");
  kill(holder, SIGKILL);
  wait_code(holder);
  close(to), close(from);
  CHECK(lua_run(L, "local l = assert(fs.lock(path, {wait = false})) l:close()"),
        "lock of a killed holder not released");

  struct stat st;
  CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600, "lock file mode is not 0600");
  if (failures == before) printf("ok   lock contention between processes\n");
  lua_close(L);
}

/* remove_tree deletes symlinks inside the tree, never what they point at. */
static void test_remove_tree_symlinks(const char *dir) {
  char code[2048];
  lua_State *L = new_vm();
  snprintf(code, sizeof code,
           "local d = '%s' "
           "assert(fs.mkdirs(d .. '/outside/keep')) "
           "assert(fs.write(d .. '/outside/keep/file', 'precious')) "
           "assert(fs.mkdirs(d .. '/tree/a/b')) "
           "assert(fs.write(d .. '/tree/a/b/f', 'x')) "
           "assert(fs.symlink(d .. '/outside', d .. '/tree/a/link-dir')) "
           "assert(fs.symlink(d .. '/outside/keep/file', d .. '/tree/link-file')) "
           "assert(fs.symlink('../../outside', d .. '/tree/a/b/rel')) "
           "assert(fs.remove_tree(d .. '/tree')) "
           "assert(not fs.exists(d .. '/tree'), 'tree still there') "
           "assert(fs.read(d .. '/outside/keep/file') == 'precious', 'followed a symlink') "
           "assert(fs.symlink(d .. '/outside', d .. '/toplink')) "
           "assert(fs.remove_tree(d .. '/toplink')) "
           "assert(fs.read(d .. '/outside/keep/file') == 'precious', 'followed the top link')",
           dir);
  if (lua_run(L, code))
    printf("ok   remove_tree never follows symlinks\n");
  else
    CHECK(0, "remove_tree with symlinks");
  lua_close(L);
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "hold") == 0) return helper_hold(argv[2]);
  if (argc == 3 && strcmp(argv[1], "try") == 0) return helper_try(argv[2]);
  srand((unsigned)time(NULL) ^ (unsigned)getpid());

  char dir[] = "/tmp/moonops-fs-test.XXXXXX";
  if (mkdtemp(dir) == NULL) return 2;
  char sub[600];
  snprintf(sub, sizeof sub, "%s/atomic", dir);
  mkdir(sub, 0700);
  test_atomic_write_survives_kill(sub);
  test_lock_contention(dir);
  test_remove_tree_symlinks(dir);

  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  if (failures) fprintf(stderr, "%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
