/* moonops.fs: files, directories, atomic replacement, symlinks, locks. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <sys/random.h>

#include "internal.h"

#define LOCK_T "moonops.fs.lock"

typedef struct {
  int fd; /* -1 when closed; the handle pointer below points here while open */
} lock_state;

/* Push nil, "<op> <path>: <strerror>", errno code (errno must be set by the caller). */
static int fail_path(lua_State *L, const char *op, const char *path) {
  int e = errno;
  lua_pushfstring(L, "%s %s", op, path);
  const char *what = lua_tostring(L, -1);
  errno = e;
  int n = mo_fail_errno(L, what);
  lua_remove(L, -n - 1);
  return n;
}

static mode_t check_mode(lua_State *L, int idx, mode_t def) {
  if (lua_isnoneornil(L, idx)) return def;
  lua_Integer m = luaL_checkinteger(L, idx);
  luaL_argcheck(L, m >= 0 && m <= 07777, idx, "mode out of range");
  return (mode_t)m;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* fs.read(path) -> data | nil, err, code */
static int fs_read(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail_path(L, "read", path);
  struct stat st;
  size_t hint = 0;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) hint = (size_t)st.st_size;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (;;) {
    size_t want = hint > LUAL_BUFFERSIZE ? hint : LUAL_BUFFERSIZE;
    char *p = luaL_prepbuffsize(&b, want);
    ssize_t r = read(fd, p, want);
    if (r < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      close(fd);
      errno = e;
      return fail_path(L, "read", path);
    }
    if (r == 0) break;
    luaL_addsize(&b, (size_t)r);
    hint = 0;
  }
  close(fd);
  luaL_pushresult(&b);
  return 1;
}

static int write_fd(lua_State *L, const char *op, const char *path, int flags, mode_t mode) {
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  int fd = open(path, flags | O_WRONLY | O_CREAT | O_CLOEXEC, mode);
  if (fd < 0) return fail_path(L, op, path);
  if (write_all(fd, data, len) < 0) {
    int e = errno;
    close(fd);
    errno = e;
    return fail_path(L, op, path);
  }
  if (close(fd) < 0) return fail_path(L, op, path);
  lua_pushboolean(L, 1);
  return 1;
}

/* fs.write(path, data [, mode]) -> true | nil, err, code (truncates; not atomic) */
static int fs_write(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  return write_fd(L, "write", path, O_TRUNC, check_mode(L, 3, 0644));
}

/* fs.append(path, data [, mode]) -> true | nil, err, code */
static int fs_append(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  return write_fd(L, "append", path, O_APPEND, check_mode(L, 3, 0644));
}

/* Directory part of path ("." when there is none); pushed on the stack. */
static const char *push_dirname(lua_State *L, const char *path) {
  const char *slash = strrchr(path, '/');
  if (slash == NULL) return lua_pushliteral(L, ".");
  if (slash == path) return lua_pushliteral(L, "/");
  return lua_pushlstring(L, path, (size_t)(slash - path));
}

static int fsync_dir(const char *dir) {
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return -1;
  int rc = fsync(dfd);
  int e = errno;
  close(dfd);
  errno = e;
  return rc;
}

/*
 * fs.write_atomic(path, data [, mode]) -> true | nil, err, code
 * Writes `<path>.tmp-XXXXXX` in the same directory, fsyncs it, renames it over
 * path and fsyncs the directory: readers see the old or the new file, never a
 * mix, even after a crash. Mode defaults to 0644 and is applied exactly.
 */
static int fs_write_atomic(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  mode_t mode = check_mode(L, 3, 0644);
  const char *dir = push_dirname(L, path);
  lua_pushfstring(L, "%s.tmp-XXXXXX", path);
  char *tmp = (char *)lua_newuserdatauv(L, lua_rawlen(L, -1) + 1, 0);
  memcpy(tmp, lua_tostring(L, -2), lua_rawlen(L, -2) + 1);
  int fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0) return fail_path(L, "write", path);
  if (fchmod(fd, mode) < 0 || write_all(fd, data, len) < 0 || fsync(fd) < 0) {
    int e = errno;
    close(fd);
    unlink(tmp);
    errno = e;
    return fail_path(L, "write", path);
  }
  if (close(fd) < 0 || rename(tmp, path) < 0) {
    int e = errno;
    unlink(tmp);
    errno = e;
    return fail_path(L, "write", path);
  }
  if (fsync_dir(dir) < 0) return fail_path(L, "sync directory", dir);
  lua_pushboolean(L, 1);
  return 1;
}

static int mkdirs(char *path, mode_t mode) {
  struct stat st;
  if (stat(path, &st) == 0) {
    if (S_ISDIR(st.st_mode)) return 0;
    errno = ENOTDIR;
    return -1;
  }
  for (char *p = path + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    int rc = mkdir(path, mode);
    int e = errno;
    *p = '/';
    if (rc < 0 && e != EEXIST) {
      errno = e;
      return -1;
    }
  }
  if (mkdir(path, mode) < 0) {
    if (errno != EEXIST) return -1;
    if (stat(path, &st) < 0) return -1;
    if (!S_ISDIR(st.st_mode)) {
      errno = ENOTDIR;
      return -1;
    }
  }
  return 0;
}

/* fs.mkdirs(path [, mode]) -> true | nil, err, code (like mkdir -p; mode default 0755) */
static int fs_mkdirs(lua_State *L) {
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  mode_t mode = check_mode(L, 2, 0755);
  luaL_argcheck(L, len > 0, 1, "empty path");
  char *copy = lua_newuserdatauv(L, len + 1, 0);
  memcpy(copy, path, len + 1);
  if (mkdirs(copy, mode) < 0) return fail_path(L, "mkdirs", path);
  lua_pushboolean(L, 1);
  return 1;
}

/* fs.mkdtemp(prefix) -> path | nil, err, code (a new directory named prefix..XXXXXX, mode 0700) */
static int fs_mkdtemp(lua_State *L) {
  const char *prefix = luaL_checkstring(L, 1);
  lua_pushfstring(L, "%sXXXXXX", prefix);
  size_t len = lua_rawlen(L, -1);
  char *tmpl = lua_newuserdatauv(L, len + 1, 0);
  memcpy(tmpl, lua_tostring(L, -2), len + 1);
  if (mkdtemp(tmpl) == NULL) return fail_path(L, "mkdtemp", prefix);
  lua_pushlstring(L, tmpl, len);
  return 1;
}

/* Remove one entry of the directory d, emptying a directory first: 1 removed, 0 already gone, -1.
 */
static int remove_entry(DIR *d, const char *n, const char **failed, char *name_out, size_t cap);

/*
 * Remove everything inside the directory open at dfd (which is closed).
 * Entries are examined with fstatat(AT_SYMLINK_NOFOLLOW) and subdirectories
 * opened with O_NOFOLLOW, so a symlink is unlinked, never descended. Passes
 * repeat until one removes nothing, as readdir may skip entries while the
 * directory changes.
 */
static int remove_contents(int dfd, const char **failed, char *name_out, size_t cap) {
  DIR *d = fdopendir(dfd);
  if (d == NULL) {
    int e = errno;
    close(dfd);
    errno = e;
    return -1;
  }
  int rc = 0, removed;
  do {
    removed = 0;
    for (;;) {
      errno = 0;
      struct dirent *ent = readdir(d);
      if (ent == NULL) {
        if (errno) rc = -1;
        break;
      }
      const char *n = ent->d_name;
      if (n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0'))) continue;
      int r = remove_entry(d, n, failed, name_out, cap);
      if (r < 0) {
        rc = -1;
        break;
      }
      removed += r;
    }
    if (removed && rc == 0) rewinddir(d);
  } while (removed && rc == 0);
  int e = errno;
  closedir(d);
  errno = e;
  return rc;
}

static int remove_entry(DIR *d, const char *n, const char **failed, char *name_out, size_t cap) {
  int dfd = dirfd(d);
  for (int attempt = 0; attempt < 3; attempt++) {
    struct stat st;
    if (fstatat(dfd, n, &st, AT_SYMLINK_NOFOLLOW) < 0) {
      if (errno == ENOENT) return 0;
      break;
    }
    if (!S_ISDIR(st.st_mode)) {
      if (unlinkat(dfd, n, 0) == 0) return 1;
      if (errno == ENOENT) return 0;
      if (errno == EISDIR) continue; /* became a directory meanwhile */
      break;
    }
    int sub = openat(dfd, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sub < 0) {
      if (errno == ENOENT) return 0;
      if (errno == ENOTDIR || errno == ELOOP) continue; /* became a file or symlink */
      break;
    }
    if (remove_contents(sub, failed, name_out, cap) < 0) return -1;
    if (unlinkat(dfd, n, AT_REMOVEDIR) == 0) return 1;
    if (errno == ENOENT) return 0;
    if (errno != ENOTDIR && errno != ENOTEMPTY) break;
  }
  if (*failed == NULL) {
    int e = errno;
    snprintf(name_out, cap, "%s", n);
    *failed = name_out;
    errno = e;
  }
  return -1;
}

/* fs.remove_tree(path) -> true | nil, err, code (true when path does not exist) */
static int fs_remove_tree(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_argcheck(L, strcmp(path, "/") != 0, 1, "refusing to remove /");
  struct stat st;
  if (lstat(path, &st) < 0) {
    if (errno == ENOENT) {
      lua_pushboolean(L, 1);
      return 1;
    }
    return fail_path(L, "remove_tree", path);
  }
  if (!S_ISDIR(st.st_mode)) {
    if (unlink(path) < 0 && errno != ENOENT) return fail_path(L, "remove_tree", path);
    lua_pushboolean(L, 1);
    return 1;
  }
  int dfd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dfd < 0) return fail_path(L, "remove_tree", path);
  const char *failed = NULL;
  char name[NAME_MAX + 1];
  if (remove_contents(dfd, &failed, name, sizeof name) < 0) {
    int e = errno;
    if (failed)
      lua_pushfstring(L, "%s (at %s)", path, failed);
    else
      lua_pushstring(L, path);
    errno = e;
    return fail_path(L, "remove_tree", lua_tostring(L, -1));
  }
  if (rmdir(path) < 0 && errno != ENOENT) return fail_path(L, "remove_tree", path);
  lua_pushboolean(L, 1);
  return 1;
}

static int cmp_strings(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Push a sorted array (array metatable) of the C strings v[0..n-1]. */
static void push_sorted(lua_State *L, char **v, size_t n) {
  qsort(v, n, sizeof *v, cmp_strings);
  lua_createtable(L, (int)(n > INT_MAX ? INT_MAX : n), 0);
  for (size_t i = 0; i < n; i++) {
    lua_pushstring(L, v[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  mo_mark_array(L, -1);
}

/* fs.list(dir) -> sorted array of entry names (without . and ..) | nil, err, code */
static int fs_list(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  DIR *d = opendir(path);
  if (d == NULL) return fail_path(L, "list", path);
  /* Names are collected in a Lua table first (no leak if a push raises), then sorted. */
  lua_newtable(L);
  int tbl = lua_gettop(L);
  lua_Integer n = 0;
  struct dirent *ent;
  int err = 0;
  for (;;) {
    errno = 0;
    ent = readdir(d);
    if (ent == NULL) {
      err = errno;
      break;
    }
    const char *s = ent->d_name;
    if (s[0] == '.' && (s[1] == '\0' || (s[1] == '.' && s[2] == '\0'))) continue;
    lua_pushstring(L, s);
    lua_rawseti(L, tbl, ++n);
  }
  closedir(d);
  if (err) {
    errno = err;
    return fail_path(L, "list", path);
  }
  char **v = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof(char *), 0);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, tbl, i);
    v[i - 1] = (char *)lua_tostring(L, -1);
    lua_pop(L, 1); /* the string stays alive in tbl */
  }
  push_sorted(L, v, (size_t)n);
  return 1;
}

static const char *type_name(mode_t m) {
  if (S_ISREG(m)) return "file";
  if (S_ISDIR(m)) return "dir";
  if (S_ISLNK(m)) return "link";
  return "other";
}

/*
 * fs.stat(path [, {follow=true}]) -> {type=, size=, mode=, mtime=, uid=, gid=, ino=}
 *   | nil, err, code. type is "file", "dir", "link" (only with follow=false) or
 *   "other"; mode holds the permission bits; mtime is seconds (float).
 */
static int fs_stat(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int follow = 1;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    follow = mo_optfield_boolean(L, 2, "follow", 1);
  }
  struct stat st;
  if ((follow ? stat(path, &st) : lstat(path, &st)) < 0) return fail_path(L, "stat", path);
  lua_createtable(L, 0, 7);
  lua_pushstring(L, type_name(st.st_mode));
  lua_setfield(L, -2, "type");
  lua_pushinteger(L, (lua_Integer)st.st_size);
  lua_setfield(L, -2, "size");
  lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
  lua_setfield(L, -2, "mode");
  lua_pushnumber(L, (lua_Number)st.st_mtim.tv_sec + (lua_Number)st.st_mtim.tv_nsec / 1e9);
  lua_setfield(L, -2, "mtime");
  lua_pushinteger(L, (lua_Integer)st.st_uid);
  lua_setfield(L, -2, "uid");
  lua_pushinteger(L, (lua_Integer)st.st_gid);
  lua_setfield(L, -2, "gid");
  lua_pushinteger(L, (lua_Integer)st.st_ino);
  lua_setfield(L, -2, "ino");
  return 1;
}

/* fs.exists(path) -> boolean (follows symlinks: a dangling link does not exist) */
static int fs_exists(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  lua_pushboolean(L, stat(path, &st) == 0);
  return 1;
}

/* fs.glob(pattern) -> sorted array of matching paths (empty when none match) */
static int fs_glob(lua_State *L) {
  const char *pattern = luaL_checkstring(L, 1);
  glob_t g;
  memset(&g, 0, sizeof g);
  int rc = glob(pattern, GLOB_NOSORT, NULL, &g);
  if (rc != 0 && rc != GLOB_NOMATCH) {
    globfree(&g);
    if (rc == GLOB_NOSPACE) return luaL_error(L, "glob %s: out of memory", pattern);
    return mo_fail(L, "glob %s: read error", pattern);
  }
  /* copy into Lua strings before sorting so a raise cannot leak the glob_t */
  lua_createtable(L, (int)g.gl_pathc, 0);
  int tbl = lua_gettop(L);
  size_t n = rc == 0 ? g.gl_pathc : 0;
  for (size_t i = 0; i < n; i++) {
    lua_pushstring(L, g.gl_pathv[i]);
    lua_rawseti(L, tbl, (lua_Integer)i + 1);
  }
  globfree(&g);
  char **v = lua_newuserdatauv(L, (n ? n : 1) * sizeof(char *), 0);
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, tbl, (lua_Integer)i + 1);
    v[i] = (char *)lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  push_sorted(L, v, n);
  return 1;
}

/*
 * fs.symlink_swap(target, link) -> true | nil, err, code
 * Creates `<link>.tmp-<random>` pointing at target and renames it over link, so
 * link always exists and points at either the old or the new target.
 */
static int fs_symlink_swap(lua_State *L) {
  const char *target = luaL_checkstring(L, 1);
  const char *link = luaL_checkstring(L, 2);
  unsigned char r[6];
  if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
    return luaL_error(L, "symlink_swap: RNG failure");
  lua_pushfstring(L, "%s.tmp-%d%d%d", link, (int)(r[0] << 16 | r[1] << 8 | r[2]),
                  (int)(r[3] << 8 | r[4]), (int)r[5]);
  const char *tmp = lua_tostring(L, -1);
  if (symlink(target, tmp) < 0) return fail_path(L, "symlink_swap", link);
  if (rename(tmp, link) < 0) {
    int e = errno;
    unlink(tmp);
    errno = e;
    return fail_path(L, "symlink_swap", link);
  }
  const char *dir = push_dirname(L, link);
  if (fsync_dir(dir) < 0) return fail_path(L, "sync directory", dir);
  lua_pushboolean(L, 1);
  return 1;
}

/* fs.symlink(target, link) -> true | nil, err, code */
static int fs_symlink(lua_State *L) {
  const char *target = luaL_checkstring(L, 1);
  const char *link = luaL_checkstring(L, 2);
  if (symlink(target, link) < 0) return fail_path(L, "symlink", link);
  lua_pushboolean(L, 1);
  return 1;
}

/* fs.readlink(path) -> target | nil, err, code */
static int fs_readlink(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t cap = 256;
  for (;;) {
    char *buf = lua_newuserdatauv(L, cap, 0);
    ssize_t n = readlink(path, buf, cap);
    if (n < 0) return fail_path(L, "readlink", path);
    if ((size_t)n < cap) {
      lua_pushlstring(L, buf, (size_t)n);
      return 1;
    }
    lua_pop(L, 1);
    cap *= 2;
  }
}

/* fs.realpath(path) -> absolute path without symlinks | nil, err, code */
static int fs_realpath(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  char *buf = lua_newuserdatauv(L, PATH_MAX, 0);
  if (realpath(path, buf) == NULL) return fail_path(L, "realpath", path);
  lua_pushstring(L, buf);
  return 1;
}

/* fs.rename(from, to) -> true | nil, err, code */
static int fs_rename(lua_State *L) {
  const char *from = luaL_checkstring(L, 1);
  const char *to = luaL_checkstring(L, 2);
  if (rename(from, to) < 0) {
    lua_pushfstring(L, "%s to", from);
    return fail_path(L, "rename", lua_pushfstring(L, "%s %s", lua_tostring(L, -1), to));
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* fs.remove(path) -> true | nil, err, code (a file, symlink or empty directory) */
static int fs_remove(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  if (remove(path) < 0) return fail_path(L, "remove", path);
  lua_pushboolean(L, 1);
  return 1;
}

/* fs.chmod(path, mode) -> true | nil, err, code */
static int fs_chmod(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_checkany(L, 2);
  mode_t mode = check_mode(L, 2, 0);
  if (chmod(path, mode) < 0) return fail_path(L, "chmod", path);
  lua_pushboolean(L, 1);
  return 1;
}

/* fs.isatty(fd) -> boolean */
static int fs_isatty(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  lua_pushboolean(L, fd >= 0 && fd <= INT_MAX && isatty((int)fd));
  return 1;
}

/* fs.umask([mask]) -> previous mask (without an argument the mask is left unchanged) */
static int fs_umask(lua_State *L) {
  mode_t old;
  if (lua_isnoneornil(L, 1)) {
    old = umask(022);
    umask(old);
  } else {
    lua_Integer m = luaL_checkinteger(L, 1);
    luaL_argcheck(L, m >= 0 && m <= 0777, 1, "mask out of range");
    old = umask((mode_t)m);
  }
  lua_pushinteger(L, (lua_Integer)old);
  return 1;
}

static double monotonic_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void lock_release(void **h) {
  lock_state *lk = *h;
  if (lk) {
    close(lk->fd); /* releases the flock */
    lk->fd = -1;
    *h = NULL;
  }
}

static int lock_close(lua_State *L) {
  lock_release(luaL_checkudata(L, 1, LOCK_T));
  return 0;
}

static lock_state *check_lock(lua_State *L) {
  return *(lock_state **)mo_checkhandle(L, 1, LOCK_T, "lock");
}

/* lock:fd() -> the file descriptor holding the lock */
static int lock_fd(lua_State *L) {
  lua_pushinteger(L, check_lock(L)->fd);
  return 1;
}

/*
 * fs.lock(path [, {wait=true, timeout=seconds}]) -> lock | nil, "locked" | nil, err, code
 * An exclusive flock on path (created 0600 if missing). With wait=false, or
 * when timeout seconds pass, a lock held elsewhere gives nil, "locked".
 */
static int fs_lock(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int wait = 1;
  double timeout = -1;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    wait = mo_optfield_boolean(L, 2, "wait", 1);
    timeout = mo_optfield_number(L, 2, "timeout", -1);
  }
  /* the handle holds a pointer to its own lock_state, stored right after it */
  void **h = mo_newhandle(L, sizeof(void *) + sizeof(lock_state), LOCK_T);
  lock_state *lk = (lock_state *)(h + 1);
  lk->fd = -1;
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return fail_path(L, "lock", path);
  lk->fd = fd;
  *h = lk; /* from here on the closer releases the descriptor */
  int op = LOCK_EX | (wait && timeout < 0 ? 0 : LOCK_NB);
  double deadline = monotonic_now() + (timeout > 0 ? timeout : 0);
  long nap = 1000000; /* ns, doubled up to 50 ms */
  for (;;) {
    if (flock(fd, op) == 0) return 1;
    if (errno == EINTR) continue;
    if (errno != EWOULDBLOCK) {
      int e = errno;
      lock_release(h);
      errno = e;
      return fail_path(L, "lock", path);
    }
    if (!wait || monotonic_now() >= deadline) {
      lock_release(h);
      lua_pushnil(L);
      lua_pushliteral(L, "locked");
      return 2;
    }
    struct timespec ts = {0, nap};
    nanosleep(&ts, NULL);
    if (nap < 50000000) nap *= 2;
  }
}

int luaopen_moonops_fs(lua_State *L) {
  static const luaL_Reg lock_methods[] = {
      {"fd", lock_fd},
      {NULL, NULL},
  };
  static const luaL_Reg funcs[] = {
      {"read", fs_read},
      {"write", fs_write},
      {"append", fs_append},
      {"write_atomic", fs_write_atomic},
      {"mkdirs", fs_mkdirs},
      {"mkdtemp", fs_mkdtemp},
      {"remove_tree", fs_remove_tree},
      {"list", fs_list},
      {"stat", fs_stat},
      {"exists", fs_exists},
      {"glob", fs_glob},
      {"symlink", fs_symlink},
      {"symlink_swap", fs_symlink_swap},
      {"readlink", fs_readlink},
      {"realpath", fs_realpath},
      {"rename", fs_rename},
      {"remove", fs_remove},
      {"chmod", fs_chmod},
      {"isatty", fs_isatty},
      {"umask", fs_umask},
      {"lock", fs_lock},
      {NULL, NULL},
  };
  mo_newclass(L, LOCK_T, lock_methods, lock_close);
  luaL_newlib(L, funcs);
  return 1;
}
