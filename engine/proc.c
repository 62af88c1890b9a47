/* moonops.proc: run commands (never through a shell), background processes, time. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define RUN_T "moonops.proc.run"
#define PROCESS_T "moonops.proc.process"

extern char **environ;

static const struct {
  const char *name;
  int sig;
} signals[] = {
    {"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"ILL", SIGILL},   {"TRAP", SIGTRAP},
    {"ABRT", SIGABRT}, {"BUS", SIGBUS},   {"FPE", SIGFPE},   {"KILL", SIGKILL}, {"USR1", SIGUSR1},
    {"SEGV", SIGSEGV}, {"USR2", SIGUSR2}, {"PIPE", SIGPIPE}, {"ALRM", SIGALRM}, {"TERM", SIGTERM},
    {"CHLD", SIGCHLD}, {"CONT", SIGCONT}, {"STOP", SIGSTOP}, {"TSTP", SIGTSTP}, {"TTIN", SIGTTIN},
    {"TTOU", SIGTTOU}, {"URG", SIGURG},   {"XCPU", SIGXCPU}, {"XFSZ", SIGXFSZ}, {"WINCH", SIGWINCH},
    {"SYS", SIGSYS},
};

static void push_signal_name(lua_State *L, int sig) {
  for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++) {
    if (signals[i].sig == sig) {
      lua_pushstring(L, signals[i].name);
      return;
    }
  }
  lua_pushfstring(L, "SIG%d", sig);
}

/* A signal given as a name ("TERM", "SIGTERM") or a number; `def` when absent. */
static int check_signal(lua_State *L, int idx, int def) {
  if (lua_isnoneornil(L, idx)) return def;
  if (lua_type(L, idx) == LUA_TNUMBER) {
    lua_Integer n = luaL_checkinteger(L, idx);
    luaL_argcheck(L, n >= 0 && n < NSIG, idx, "signal number out of range");
    return (int)n;
  }
  const char *s = luaL_checkstring(L, idx);
  if (strncmp(s, "SIG", 3) == 0) s += 3;
  for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++)
    if (strcmp(signals[i].name, s) == 0) return signals[i].sig;
  return luaL_argerror(L, idx, lua_pushfstring(L, "unknown signal '%s'", lua_tostring(L, idx)));
}

static double now_clock(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_seconds(double s) {
  if (!(s > 0)) return;
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

static int pidfd_open_compat(pid_t pid) {
#ifdef SYS_pidfd_open
  int fd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (fd >= 0) fcntl(fd, F_SETFD, FD_CLOEXEC);
  return fd;
#else
  (void)pid;
  return -1;
#endif
}

/* Has pid exited? Leaves it unreaped (a zombie keeps its process group id reserved). */
static int has_exited(pid_t pid) {
  siginfo_t si;
  memset(&si, 0, sizeof si);
  if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0) return errno == ECHILD;
  return si.si_pid == pid;
}

static int reap(pid_t pid, int *status) {
  for (;;) {
    if (waitpid(pid, status, 0) == pid) return 0;
    if (errno != EINTR) return -1;
  }
}

/* ---- process groups started and not reaped yet --------------------------------
 *
 * Every command is started in its own process group, so a Ctrl-C at a terminal
 * (SIGINT to the foreground group: moonops's) or a SIGTERM to moonops never
 * reaches it by itself. The groups are kept here so that they can be signalled
 * from a signal handler: a fixed array of lock-free atomic slots, each 0 or a
 * group id (a pid), negative for a background process from proc.spawn. A slot is
 * cleared before its process is reaped: the group id of an unreaped child cannot
 * be reused. With every slot taken, a further group is simply not tracked.
 */
#define GROUPS_MAX 512
#define FORWARD_WAIT_MS 2000 /* after a forwarded signal, before TERM (or KILL) */
#define TERM_WAIT_MS 1000    /* after TERM, before KILL */

static_assert(ATOMIC_INT_LOCK_FREE == 2, "signal handlers need lock-free atomic ints");
static atomic_int groups[GROUPS_MAX];
static pid_t main_tid; /* the thread that takes forwarded signals; 0 when not installed */

static int group_add(pid_t pid, int kind) {
  int value = kind == MO_PROC_SPAWN ? -(int)pid : (int)pid;
  for (int i = 0; i < GROUPS_MAX; i++) {
    int expected = 0;
    if (atomic_load_explicit(&groups[i], memory_order_relaxed) == 0 &&
        atomic_compare_exchange_strong(&groups[i], &expected, value))
      return i;
  }
  return -1;
}

static void group_remove(int *slot, pid_t pid) {
  if (*slot < 0) return;
  int expected = (int)pid, negative = -(int)pid;
  if (!atomic_compare_exchange_strong(&groups[*slot], &expected, 0))
    atomic_compare_exchange_strong(&groups[*slot], &negative, 0);
  *slot = -1;
}

/* Send sig to every registered group of the given kinds; their ids go to `sent`
 * (GROUPS_MAX entries, 0 for the rest). Returns how many were signalled. */
static int signal_groups(int sig, int kinds, pid_t *sent) {
  int n = 0;
  for (int i = 0; i < GROUPS_MAX; i++) {
    int v = atomic_load(&groups[i]);
    pid_t pg = v < 0 ? -v : v;
    int kind = v < 0 ? MO_PROC_SPAWN : MO_PROC_RUN;
    if (v == 0 || !(kinds & kind) || kill(-pg, sig) < 0) continue;
    if (sent) sent[n] = pg;
    n++;
  }
  if (sent)
    for (int i = n; i < GROUPS_MAX; i++)
      sent[i] = 0;
  return n;
}

static long long monotonic_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Wait up to ms for every group in pgs to be empty (entries set to 0 as they are);
 * returns how many are not. With reap_leaders, exited leaders are reaped here (only
 * when nothing else will: the process is about to die); otherwise their owners reap
 * them, as a zombie leader keeps its group in existence. Async-signal-safe.
 */
static int wait_groups(pid_t *pgs, int n, int ms, int reap_leaders) {
  long long deadline = monotonic_ms() + ms;
  for (;;) {
    int left = 0;
    for (int i = 0; i < n; i++) {
      if (pgs[i] == 0) continue;
      int status;
      if (reap_leaders) waitpid(pgs[i], &status, WNOHANG);
      if (kill(-pgs[i], 0) < 0 && errno == ESRCH)
        pgs[i] = 0;
      else
        left++;
    }
    if (left == 0 || monotonic_ms() >= deadline) return left;
    struct timespec step = {0, 10 * 1000000L};
    nanosleep(&step, NULL);
  }
}

static int terminate_groups(int first_sig, int kinds, int ms, int then_term_ms, int reap_leaders) {
  pid_t pgs[GROUPS_MAX];
  int n = signal_groups(first_sig, kinds, pgs);
  if (n == 0) return 0;
  int left = wait_groups(pgs, n, ms, reap_leaders);
  if (left > 0 && then_term_ms > 0) {
    for (int i = 0; i < n; i++)
      if (pgs[i]) kill(-pgs[i], SIGTERM);
    left = wait_groups(pgs, n, then_term_ms, reap_leaders);
  }
  if (left > 0)
    for (int i = 0; i < n; i++)
      if (pgs[i]) kill(-pgs[i], SIGKILL);
  return n;
}

int mo_proc_signal_all(int sig) {
  return signal_groups(sig, MO_PROC_RUN | MO_PROC_SPAWN, NULL);
}

int mo_proc_terminate_all(int wait_ms, int kinds) {
  return terminate_groups(SIGTERM, kinds, wait_ms < 0 ? 0 : wait_ms, 0, 0);
}

/*
 * SIGINT, SIGTERM, SIGHUP of an ordinary moonops process: forward the signal to
 * every command and background process, give them FORWARD_WAIT_MS to end, then
 * TERM_WAIT_MS after a SIGTERM, then SIGKILL; then die of the signal as before
 * (exit status 128+N), leaving the recovery of its work to the next moonops run.
 */
static void forward_and_die(int sig) {
  int saved = errno;
  pid_t tid = (pid_t)syscall(SYS_gettid);
  if (main_tid != 0 && tid != main_tid && syscall(SYS_tgkill, getpid(), main_tid, sig) == 0) {
    /* the main thread runs the Lua code that waits for the commands: stop it there */
    errno = saved;
    return;
  }
  terminate_groups(sig, MO_PROC_RUN | MO_PROC_SPAWN, FORWARD_WAIT_MS,
                   sig == SIGTERM ? 0 : TERM_WAIT_MS, 1);
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, NULL);
  raise(sig); /* pending until this handler returns: sig is blocked while it runs */
  errno = saved;
}

void mo_proc_forward_signals(void) {
  static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = forward_and_die;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
    sigaddset(&sa.sa_mask, sigs[i]);
  main_tid = (pid_t)syscall(SYS_gettid);
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
    struct sigaction old;
    /* a signal moonops was started ignoring (nohup, `&` in a script) stays ignored */
    if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    sigaction(sigs[i], &sa, NULL);
  }
}

/* Exit code in the shell's convention: 128+N when killed by signal N. */
static void push_status(lua_State *L, int status, int *sig) {
  *sig = 0;
  if (WIFSIGNALED(status)) {
    *sig = WTERMSIG(status);
    lua_pushinteger(L, 128 + *sig);
  } else {
    lua_pushinteger(L, WEXITSTATUS(status));
  }
}

/* ---- what to run ---------------------------------------------------------- */

typedef struct {
  const char *name; /* argv[1], for messages */
  char *file;       /* resolved executable; NULL when not found */
  char **argv;
  char **envp;
  const char *cwd;
} command;

static int is_executable(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

/* Push the path of name on search path `path` (or nothing and return 0). */
static int push_which(lua_State *L, const char *name, const char *path) {
  if (strchr(name, '/')) {
    if (!is_executable(name)) return 0;
    lua_pushstring(L, name);
    return 1;
  }
  if (path == NULL) path = "/usr/local/bin:/usr/bin:/bin";
  while (*path) {
    const char *end = strchr(path, ':');
    size_t n = end ? (size_t)(end - path) : strlen(path);
    if (n > 0 && *path == '/') { /* relative entries (and "", the current directory) are skipped */
      const char *cand = lua_pushfstring(L, "%s/%s", lua_pushlstring(L, path, n), name);
      lua_remove(L, -2);
      if (is_executable(cand)) return 1;
      lua_pop(L, 1);
    }
    if (!end) break;
    path = end + 1;
  }
  return 0;
}

/*
 * Read argv, env, clear_env and cwd from the option table at idx. Everything
 * the command points at is kept alive by values pushed on the stack.
 */
static void check_command(lua_State *L, int idx, command *cmd) {
  memset(cmd, 0, sizeof *cmd);
  luaL_checktype(L, idx, LUA_TTABLE);
  luaL_checkstack(L, 40, "proc");
  if (lua_getfield(L, idx, "argv") != LUA_TTABLE) luaL_error(L, "option 'argv' must be a list");
  int av = lua_gettop(L);
  lua_Integer argc = luaL_len(L, av);
  if (argc < 1) luaL_error(L, "option 'argv' must not be empty");
  cmd->argv = lua_newuserdatauv(L, (size_t)(argc + 1) * sizeof(char *), 0);
  lua_createtable(L, (int)argc, 0); /* keeps numbers converted to strings alive */
  for (lua_Integer i = 1; i <= argc; i++) {
    lua_rawgeti(L, av, i);
    if (!lua_isstring(L, -1)) luaL_error(L, "argv[%d] must be a string", (int)i);
    cmd->argv[i - 1] = (char *)lua_tostring(L, -1);
    lua_rawseti(L, -2, i);
  }
  cmd->argv[argc] = NULL;
  cmd->name = cmd->argv[0];
  cmd->cwd = mo_optfield_string(L, idx, "cwd", NULL);

  int clear = mo_optfield_boolean(L, idx, "clear_env", 0);
  int has_env = lua_getfield(L, idx, "env") != LUA_TNIL;
  if (has_env && !lua_istable(L, -1)) luaL_error(L, "option 'env' must be a table");
  int env = lua_gettop(L);
  const char *path = getenv("PATH");
  if (has_env || clear) {
    lua_newtable(L); /* name -> "NAME=value" */
    int merged = lua_gettop(L);
    for (char **e = clear ? NULL : environ; e && *e; e++) {
      const char *eq = strchr(*e, '=');
      if (eq == NULL) continue;
      lua_pushlstring(L, *e, (size_t)(eq - *e));
      lua_pushstring(L, *e);
      lua_rawset(L, merged);
    }
    if (has_env) {
      lua_pushnil(L);
      while (lua_next(L, env)) {
        if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "env keys must be strings");
        const char *k = lua_tostring(L, -2);
        if (*k == '\0' || strchr(k, '=')) luaL_error(L, "bad environment variable name '%s'", k);
        lua_pushvalue(L, -2);
        int t = lua_type(L, -2);
        if (t == LUA_TBOOLEAN && !lua_toboolean(L, -2)) {
          lua_pushnil(L);
        } else if (t == LUA_TSTRING || t == LUA_TNUMBER) {
          lua_pushfstring(L, "%s=%s", k, lua_tostring(L, -2));
        } else {
          luaL_error(L, "env value of '%s' must be a string, a number or false", k);
        }
        lua_rawset(L, merged);
        lua_pop(L, 1);
      }
    }
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, merged)) {
      n++;
      lua_pop(L, 1);
    }
    cmd->envp = lua_newuserdatauv(L, (n + 1) * sizeof(char *), 0);
    n = 0;
    path = NULL;
    lua_pushnil(L);
    while (lua_next(L, merged)) {
      cmd->envp[n++] = (char *)lua_tostring(L, -1);
      if (strcmp(lua_tostring(L, -2), "PATH") == 0) path = lua_tostring(L, -1) + 5;
      lua_pop(L, 1);
    }
    cmd->envp[n] = NULL;
  }
  if (cmd->cwd && cmd->name[0] != '/' && strchr(cmd->name, '/')) {
    /* a relative path is run from cwd: look for it there, start it as given */
    if (is_executable(lua_pushfstring(L, "%s/%s", cmd->cwd, cmd->name))) cmd->file = cmd->argv[0];
  } else if (push_which(L, cmd->name, path)) {
    cmd->file = (char *)lua_tostring(L, -1);
  }
}

/* Expected failures before the process starts: nil, "run foo: why", code. */
static int command_unusable(lua_State *L, const char *op, const command *cmd) {
  if (cmd->cwd) {
    struct stat st;
    if (stat(cmd->cwd, &st) < 0)
      return mo_fail(L, "%s %s: cannot change directory to %s: %s", op, cmd->name, cmd->cwd,
                     strerror(errno));
    if (!S_ISDIR(st.st_mode))
      return mo_fail(L, "%s %s: cannot change directory to %s: Not a directory", op, cmd->name,
                     cmd->cwd);
  }
  if (cmd->file == NULL) {
    const char *rel = cmd->name[0] != '/' && cmd->cwd
                          ? lua_pushfstring(L, "%s/%s", cmd->cwd, cmd->name)
                          : cmd->name;
    if (strchr(cmd->name, '/') && access(rel, F_OK) == 0)
      return mo_fail(L, "%s %s: not an executable file", op, cmd->name);
    return mo_fail(L, "%s %s: command not found", op, cmd->name);
  }
  return 0;
}

/*
 * posix_spawn cmd in its own process group with default signal handling; fds[i] >= 0
 * become i. The group is registered as `kind` in `groups` (its slot in *slot) with
 * the forwarded signals held back, so none can come between the start and the entry.
 */
static int spawn_command(const command *cmd, const int fds[3], pid_t *pid, int kind, int *slot) {
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  for (int i = 0; i < 3; i++) {
    if (fds[i] >= 0)
      posix_spawn_file_actions_adddup2(&fa, fds[i], i);
    else
      posix_spawn_file_actions_addopen(&fa, i, "/dev/null", i ? O_WRONLY : O_RDONLY, 0);
  }
  if (cmd->cwd) posix_spawn_file_actions_addchdir_np(&fa, cmd->cwd);
  sigset_t forwarded, old;
  sigemptyset(&forwarded);
  sigaddset(&forwarded, SIGINT);
  sigaddset(&forwarded, SIGTERM);
  sigaddset(&forwarded, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &forwarded, &old);
  int rc = posix_spawn(pid, cmd->file, &fa, &attr, cmd->argv, cmd->envp ? cmd->envp : environ);
  *slot = rc == 0 ? group_add(*pid, kind) : -1;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  return rc;
}

int mo_proc_spawn(int *pid, const char *file, char *const argv[], char *const envp[],
                  const char *cwd, const int fds[3], int *slot) {
  command cmd = {argv[0], (char *)file, (char **)argv, (char **)envp, cwd};
  pid_t p = 0;
  int rc = spawn_command(&cmd, fds, &p, MO_PROC_RUN, slot);
  *pid = (int)p;
  return rc;
}

void mo_proc_forget(int *slot, int pid) {
  group_remove(slot, (pid_t)pid);
}

static int spawn_failed(lua_State *L, const char *op, const command *cmd, int rc) {
  if (rc == ENOENT) return mo_fail(L, "%s %s: command not found", op, cmd->name);
  return mo_fail(L, "%s %s: %s", op, cmd->name, strerror(rc));
}

/* ---- proc.run --------------------------------------------------------------- */

typedef struct {
  char *data;
  size_t len, cap;
  int truncated;
} outbuf;

typedef struct {
  pid_t pid;  /* 0 before the spawn */
  int slot;   /* its entry in `groups`, -1 for none */
  int reaped; /* the child has been waited for */
  int status; /* its wait status once reaped */
  int pidfd;  /* readable when the child exits; -1 when unavailable */
  int fds[3]; /* our ends: stdin (write), stdout, stderr (read); -1 when closed */
  outbuf out[2];
} run_state;

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

/* Kill what is left of the child's group, reap the child, release everything. */
static void run_release(void **h) {
  run_state *r = *h;
  if (r == NULL) return;
  *h = NULL;
  if (r->pid > 0 && !r->reaped) {
    kill(-r->pid, SIGKILL);
    group_remove(&r->slot, r->pid);
    reap(r->pid, &r->status);
    r->reaped = 1;
  }
  for (int i = 0; i < 3; i++)
    close_fd(&r->fds[i]);
  close_fd(&r->pidfd);
  for (int i = 0; i < 2; i++) {
    free(r->out[i].data);
    r->out[i].data = NULL;
  }
}

static int run_close(lua_State *L) {
  run_release(luaL_checkudata(L, 1, RUN_T));
  return 0;
}

static int outbuf_add(outbuf *b, const char *p, size_t n, size_t max) {
  if (b->len + n > max) {
    n = max - b->len;
    b->truncated = 1;
  }
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n)
      cap *= 2;
    char *d = realloc(b->data, cap);
    if (d == NULL) return -1;
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

/* write() that turns a reader gone away into EPIPE without raising SIGPIPE in this process. */
static ssize_t write_nosigpipe(int fd, const char *p, size_t n) {
  sigset_t pipe_set, old, pending;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  sigemptyset(&pending);
  sigpending(&pending);
  int was_pending = sigismember(&pending, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  ssize_t w = write(fd, p, n);
  int e = errno;
  if (w < 0 && e == EPIPE && !was_pending) {
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  errno = e;
  return w;
}

static int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

typedef struct {
  void **h;
  const char *name;
  size_t max_output;
  int on_output; /* stack index of the callback, 0 for none */
} run_ctx;

/*
 * Read one chunk of stream i (1 stdout, 2 stderr): keep it, hand it to
 * on_output. Returns 1 after data, 0 at end of stream, -1 when nothing is
 * ready. A failing callback kills the command and raises its error.
 */
static int pump(lua_State *L, const run_ctx *c, int i) {
  static const char *const names[] = {NULL, "stdout", "stderr"};
  run_state *r = *c->h;
  char buf[65536];
  ssize_t got = read(r->fds[i], buf, sizeof buf);
  if (got < 0 && (errno == EAGAIN || errno == EINTR)) return -1;
  if (got <= 0) {
    close_fd(&r->fds[i]);
    return 0;
  }
  if (outbuf_add(&r->out[i - 1], buf, (size_t)got, c->max_output) < 0) {
    run_release(c->h);
    return luaL_error(L, "run %s: out of memory", c->name);
  }
  if (c->on_output) {
    lua_pushvalue(L, c->on_output);
    lua_pushstring(L, names[i]);
    lua_pushlstring(L, buf, (size_t)got);
    if (mo_pcall(L, 2, 0) != LUA_OK) {
      run_release(c->h);
      return lua_error(L);
    }
  }
  return 1;
}

/*
 * proc.run{argv=, cwd=, env=, clear_env=, stdin=, timeout=, grace=, on_output=, max_output=}
 *   -> {code=, signal=, stdout=, stderr=, timed_out=, pid=} | nil, err
 * code follows the shell: 128+N when killed by signal N (then signal = "TERM" etc.).
 */
static int proc_run(lua_State *L) {
  command cmd;
  check_command(L, 1, &cmd);
  size_t in_len = 0;
  const char *in = NULL;
  if (lua_getfield(L, 1, "stdin") != LUA_TNIL) {
    if (!lua_isstring(L, -1)) luaL_error(L, "option 'stdin' must be a string");
    in = lua_tolstring(L, -1, &in_len);
  }
  double timeout = mo_optfield_number(L, 1, "timeout", 0);
  double grace = mo_optfield_number(L, 1, "grace", 2);
  lua_Integer max = mo_optfield_integer(L, 1, "max_output", LUA_MAXINTEGER);
  if (timeout < 0 || isnan(timeout)) luaL_error(L, "option 'timeout' must not be negative");
  if (grace < 0 || isnan(grace)) luaL_error(L, "option 'grace' must not be negative");
  if (max < 0) luaL_error(L, "option 'max_output' must not be negative");
  size_t max_output = (size_t)max;
  int t = lua_getfield(L, 1, "on_output");
  if (t != LUA_TNIL && t != LUA_TFUNCTION) luaL_error(L, "option 'on_output' must be a function");
  int on_output = t == LUA_TFUNCTION ? lua_gettop(L) : 0;

  int n = command_unusable(L, "run", &cmd);
  if (n) return n;

  void **h = mo_newhandle(L, sizeof(void *) + sizeof(run_state), RUN_T);
  run_state *r = (run_state *)(h + 1);
  r->pidfd = r->fds[0] = r->fds[1] = r->fds[2] = -1;
  r->slot = -1;
  *h = r;

  int child[3] = {-1, -1, -1};
  int p[2];
  for (int i = 0; i < 3; i++) {
    if (i == 0 && in_len == 0) continue; /* no input: /dev/null */
    if (pipe2(p, O_CLOEXEC) < 0) {
      int e = errno;
      for (int j = 0; j < i; j++)
        close_fd(&child[j]);
      run_release(h);
      return mo_fail(L, "run %s: pipe: %s", cmd.name, strerror(e));
    }
    r->fds[i] = i == 0 ? p[1] : p[0];
    child[i] = i == 0 ? p[0] : p[1];
    set_nonblock(r->fds[i]);
  }
  int rc = spawn_command(&cmd, child, &r->pid, MO_PROC_RUN, &r->slot);
  for (int i = 0; i < 3; i++)
    close_fd(&child[i]);
  if (rc != 0) {
    r->pid = 0;
    run_release(h);
    return spawn_failed(L, "run", &cmd, rc);
  }
  r->pidfd = pidfd_open_compat(r->pid);

  run_ctx c = {h, cmd.name, max_output, on_output};
  double start = now_clock(CLOCK_MONOTONIC), kill_at = 0, drain_until = 0;
  int timed_out = 0, exited = 0;
  size_t in_off = 0;
  for (;;) {
    double now = now_clock(CLOCK_MONOTONIC);
    if (!exited && (r->pidfd < 0 || r->fds[1] < 0 || r->fds[2] < 0) && has_exited(r->pid)) {
      exited = 1;
      drain_until = now + grace;
    }
    if (timeout > 0 && !timed_out && !exited && now - start >= timeout) {
      timed_out = 1;
      kill(-r->pid, SIGTERM);
      kill_at = now + grace;
    }
    if (kill_at > 0 && now >= kill_at) {
      kill(-r->pid, SIGKILL);
      kill_at = 0;
    }
    if (exited && r->fds[1] < 0 && r->fds[2] < 0) break;
    if (exited && now >= drain_until) {
      /* Someone the command started still holds its output open. All the
       * command wrote is in the pipes by now: take it, then stop reading. */
      for (int i = 1; i <= 2; i++)
        for (int k = 0; k < 64 && r->fds[i] >= 0 && pump(L, &c, i) > 0; k++) {
        }
      break;
    }

    double next = INFINITY;
    if (timeout > 0 && !timed_out && !exited) next = fmin(next, start + timeout);
    if (kill_at > 0) next = fmin(next, kill_at);
    if (exited) next = fmin(next, drain_until);
    if (!exited && r->pidfd < 0) next = fmin(next, now + 0.02);
    int ms = -1;
    if (next < INFINITY) ms = next <= now ? 0 : (int)fmin(ceil((next - now) * 1000), INT_MAX);

    struct pollfd pfd[4];
    int np = 0, slot[4];
    for (int i = 0; i < 3; i++) {
      if (r->fds[i] < 0) continue;
      pfd[np] = (struct pollfd){r->fds[i], i == 0 ? POLLOUT : POLLIN, 0};
      slot[np++] = i;
    }
    if (!exited && r->pidfd >= 0) {
      pfd[np] = (struct pollfd){r->pidfd, POLLIN, 0};
      slot[np++] = 3;
    }
    if (poll(pfd, (nfds_t)np, ms) < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      run_release(h);
      return mo_fail(L, "run %s: poll: %s", cmd.name, strerror(e));
    }
    for (int k = 0; k < np; k++) {
      if (pfd[k].revents == 0) continue;
      int i = slot[k];
      if (i == 3) {
        if (has_exited(r->pid)) {
          exited = 1;
          drain_until = now_clock(CLOCK_MONOTONIC) + grace;
        }
      } else if (i == 0) {
        size_t chunk = in_len - in_off > 65536 ? 65536 : in_len - in_off;
        ssize_t w = write_nosigpipe(r->fds[0], in + in_off, chunk);
        if (w > 0) in_off += (size_t)w;
        if ((w < 0 && errno != EAGAIN && errno != EINTR) || in_off == in_len) close_fd(&r->fds[0]);
      } else {
        pump(L, &c, i);
      }
    }
  }

  close_fd(&r->fds[0]);
  if (timed_out) kill(-r->pid, SIGKILL); /* nothing of a timed-out command survives */
  group_remove(&r->slot, r->pid);
  if (reap(r->pid, &r->status) < 0) {
    int e = errno;
    r->reaped = 1;
    run_release(h);
    return mo_fail(L, "run %s: wait: %s", cmd.name, strerror(e));
  }
  r->reaped = 1;
  lua_createtable(L, 0, 8);
  int sig;
  push_status(L, r->status, &sig);
  lua_setfield(L, -2, "code");
  if (sig) {
    push_signal_name(L, sig);
    lua_setfield(L, -2, "signal");
  }
  for (int i = 0; i < 2; i++) {
    lua_pushlstring(L, r->out[i].data ? r->out[i].data : "", r->out[i].len);
    lua_setfield(L, -2, i ? "stderr" : "stdout");
    if (r->out[i].truncated) {
      lua_pushboolean(L, 1);
      lua_setfield(L, -2, i ? "stderr_truncated" : "stdout_truncated");
    }
  }
  lua_pushboolean(L, timed_out);
  lua_setfield(L, -2, "timed_out");
  lua_pushinteger(L, r->pid);
  lua_setfield(L, -2, "pid");
  run_release(h);
  return 1;
}

/* ---- proc.spawn and process handles --------------------------------------- */

typedef struct {
  pid_t pid;
  int slot; /* its entry in `groups`, -1 for none */
  int reaped;
  int status;
} process;

/* Reap an exited (or killed) process, taking it out of `groups` first. */
static int process_reap(process *p) {
  group_remove(&p->slot, p->pid);
  int rc = reap(p->pid, &p->status);
  p->reaped = 1;
  return rc;
}

static void process_release(void **h) {
  process *p = *h;
  if (p == NULL) return;
  *h = NULL;
  if (!p->reaped) {
    kill(-p->pid, SIGKILL);
    process_reap(p);
  }
}

static int process_close(lua_State *L) {
  process_release(luaL_checkudata(L, 1, PROCESS_T));
  return 0;
}

static process *check_process(lua_State *L) {
  return *(process **)mo_checkhandle(L, 1, PROCESS_T, "process");
}

static int open_output(lua_State *L, int idx, const char *key, int *fd, const char *name) {
  const char *path = mo_optfield_string(L, idx, key, NULL);
  *fd = -1;
  if (path == NULL) return 0;
  *fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (*fd < 0) return mo_fail(L, "spawn %s: open %s: %s", name, path, strerror(errno));
  return 0;
}

/*
 * proc.spawn{argv=, cwd=, env=, clear_env=, stdout=path, stderr=path} -> process | nil, err
 * A background process in its own process group; output is appended to the
 * given files (/dev/null when absent); stdin is /dev/null.
 */
static int proc_spawn(lua_State *L) {
  command cmd;
  check_command(L, 1, &cmd);
  int n = command_unusable(L, "spawn", &cmd);
  if (n) return n;
  void **h = mo_newhandle(L, sizeof(void *) + sizeof(process), PROCESS_T);
  process *p = (process *)(h + 1);
  int handle = lua_gettop(L);
  int fds[3] = {-1, -1, -1};
  if ((n = open_output(L, 1, "stdout", &fds[1], cmd.name))) return n;
  const char *out = mo_optfield_string(L, 1, "stdout", NULL);
  const char *err = mo_optfield_string(L, 1, "stderr", NULL);
  if (err && out && strcmp(err, out) == 0) {
    fds[2] = fds[1];
  } else if ((n = open_output(L, 1, "stderr", &fds[2], cmd.name))) {
    close_fd(&fds[1]);
    return n;
  }
  int rc = spawn_command(&cmd, fds, &p->pid, MO_PROC_SPAWN, &p->slot);
  if (fds[2] != fds[1]) close_fd(&fds[2]);
  close_fd(&fds[1]);
  if (rc != 0) return spawn_failed(L, "spawn", &cmd, rc);
  *h = p;
  lua_pushvalue(L, handle);
  return 1;
}

/* process:pid() -> integer */
static int process_pid(lua_State *L) {
  lua_pushinteger(L, check_process(L)->pid);
  return 1;
}

static int push_wait_result(lua_State *L, process *p) {
  int sig;
  push_status(L, p->status, &sig);
  if (sig)
    push_signal_name(L, sig);
  else
    lua_pushnil(L);
  return 2;
}

/*
 * process:wait([timeout]) -> code, signal | nil (still running when timeout
 * seconds have passed). code is 128+N when killed by signal N.
 */
static int process_wait(lua_State *L) {
  process *p = check_process(L);
  double timeout = luaL_optnumber(L, 2, -1);
  if (p->reaped) return push_wait_result(L, p);
  /* Wait without reaping, so that the group stays registered while it runs. */
  siginfo_t si;
  if (timeout < 0) {
    for (;;) {
      memset(&si, 0, sizeof si);
      if (waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOWAIT) == 0) break;
      if (errno != EINTR) return mo_fail(L, "wait %d: %s", p->pid, strerror(errno));
    }
    if (process_reap(p) < 0) return mo_fail(L, "wait %d: %s", p->pid, strerror(errno));
    return push_wait_result(L, p);
  }
  double deadline = now_clock(CLOCK_MONOTONIC) + timeout;
  int pidfd = pidfd_open_compat(p->pid);
  for (;;) {
    memset(&si, 0, sizeof si);
    int w = waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOHANG | WNOWAIT);
    if (w == 0 && si.si_pid == p->pid) {
      if (process_reap(p) < 0) {
        int e = errno;
        if (pidfd >= 0) close(pidfd);
        return mo_fail(L, "wait %d: %s", p->pid, strerror(e));
      }
      break;
    }
    if (w < 0 && errno != EINTR) {
      int e = errno;
      if (pidfd >= 0) close(pidfd);
      return mo_fail(L, "wait %d: %s", p->pid, strerror(e));
    }
    double left = deadline - now_clock(CLOCK_MONOTONIC);
    if (left <= 0) break;
    if (pidfd >= 0) {
      struct pollfd pfd = {pidfd, POLLIN, 0};
      poll(&pfd, 1, (int)fmin(ceil(left * 1000), INT_MAX));
    } else {
      sleep_seconds(fmin(left, 0.01));
    }
  }
  if (pidfd >= 0) close(pidfd);
  if (!p->reaped) {
    lua_pushnil(L);
    return 1;
  }
  return push_wait_result(L, p);
}

/* process:kill([sig]) -> true | nil, err (to the whole process group; default "TERM") */
static int process_kill(lua_State *L) {
  process *p = check_process(L);
  int sig = check_signal(L, 2, SIGTERM);
  if (p->reaped) return mo_fail(L, "kill %d: the process has exited", p->pid);
  if (kill(-p->pid, sig) < 0) {
    lua_pushfstring(L, "kill %d", p->pid);
    return mo_fail_errno(L, lua_tostring(L, -1));
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- small things ------------------------------------------------------------ */

/* proc.which(name [, path]) -> absolute path | nil (searches path, default $PATH) */
static int proc_which(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const char *path = luaL_optstring(L, 2, getenv("PATH"));
  if (*name == '\0' || !push_which(L, name, path)) lua_pushnil(L);
  return 1;
}

/* proc.pid() -> the current process id */
static int proc_pid(lua_State *L) {
  lua_pushinteger(L, getpid());
  return 1;
}

/* proc.sleep(seconds) */
static int proc_sleep(lua_State *L) {
  sleep_seconds(luaL_checknumber(L, 1));
  return 0;
}

/* proc.time() -> seconds since the epoch (float) */
static int proc_time(lua_State *L) {
  lua_pushnumber(L, now_clock(CLOCK_REALTIME));
  return 1;
}

/* proc.monotonic() -> seconds on a clock that never jumps (float) */
static int proc_monotonic(lua_State *L) {
  lua_pushnumber(L, now_clock(CLOCK_MONOTONIC));
  return 1;
}

/* proc.kill(pid, sig) -> true | nil, err, code (sig: "TERM", "KILL", "HUP", "INT", ..., or 0) */
static int proc_kill(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  luaL_checkany(L, 2);
  int sig = check_signal(L, 2, SIGTERM);
  luaL_argcheck(L, pid > INT_MIN && pid < INT_MAX, 1, "pid out of range");
  if (kill((pid_t)pid, sig) < 0) {
    lua_pushfstring(L, "kill %d", (int)pid);
    return mo_fail_errno(L, lua_tostring(L, -1));
  }
  lua_pushboolean(L, 1);
  return 1;
}

/*
 * proc.terminate_all([grace]) -> n: SIGTERM to every command that proc.run is
 * running in this process (any thread; not the background processes of
 * proc.spawn), SIGKILL to what is left of them after grace seconds (default 2);
 * n is how many commands were running. Their callers see them killed by TERM
 * (or KILL).
 */
static int proc_terminate_all(lua_State *L) {
  double grace = luaL_optnumber(L, 1, 2);
  luaL_argcheck(L, grace >= 0 && grace <= 86400, 1, "grace must be 0..86400 seconds");
  lua_pushinteger(L, mo_proc_terminate_all((int)ceil(grace * 1000), MO_PROC_RUN));
  return 1;
}

/* proc.alive(pid) -> boolean (a zombie waiting to be reaped counts as dead) */
static int proc_alive(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  int alive = pid > 0 && pid < INT_MAX && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
  if (alive) {
    char path[64], stat[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (f) {
      size_t n = fread(stat, 1, sizeof stat - 1, f);
      fclose(f);
      stat[n] = '\0';
      const char *paren = strrchr(stat, ')');
      if (paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X')) alive = 0;
    }
  }
  lua_pushboolean(L, alive);
  return 1;
}

/* proc.environ() -> {NAME = value, ...} of this process */
static int proc_environ(lua_State *L) {
  lua_newtable(L);
  for (char **e = environ; e && *e; e++) {
    const char *eq = strchr(*e, '=');
    if (eq == NULL) continue;
    lua_pushlstring(L, *e, (size_t)(eq - *e));
    lua_pushstring(L, eq + 1);
    lua_rawset(L, -3);
  }
  return 1;
}

/* proc.hostname() -> string */
static int proc_hostname(lua_State *L) {
  char name[256];
  if (gethostname(name, sizeof name) < 0) return mo_fail_errno(L, "hostname");
  name[sizeof name - 1] = '\0';
  lua_pushstring(L, name);
  return 1;
}

int luaopen_moonops_proc(lua_State *L) {
  static const luaL_Reg no_methods[] = {{NULL, NULL}};
  static const luaL_Reg process_methods[] = {
      {"pid", process_pid},
      {"wait", process_wait},
      {"kill", process_kill},
      {NULL, NULL},
  };
  static const luaL_Reg funcs[] = {
      {"run", proc_run},
      {"spawn", proc_spawn},
      {"which", proc_which},
      {"pid", proc_pid},
      {"sleep", proc_sleep},
      {"time", proc_time},
      {"monotonic", proc_monotonic},
      {"kill", proc_kill},
      {"terminate_all", proc_terminate_all},
      {"alive", proc_alive},
      {"environ", proc_environ},
      {"hostname", proc_hostname},
      {NULL, NULL},
  };
  mo_newclass(L, RUN_T, no_methods, run_close);
  mo_newclass(L, PROCESS_T, process_methods, process_close);
  luaL_newlib(L, funcs);
  return 1;
}
