/* moonops.fs: files, directories, atomic replacement, symlinks, locks. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
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

/* glob(3): `**` is `*`, and wildcards skip names that start with a dot. */
static int glob_shell(lua_State *L, const char *pattern) {
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
 * The recursive form follows Python's pathlib.Path.glob: the pattern is split
 * into components; `**` alone matches the directory it starts from and every
 * directory below it, never descending through a symbolic link; a component
 * with `*`, `?` or `[` is matched with fnmatch(3) against every entry (a
 * leading dot is an ordinary character); any other component is a name looked
 * up as is. The walk makes no Lua calls, so no directory stays open across a
 * raise; results and the failing path live in malloc'ed memory owned by a
 * userdata whose closer frees them.
 */
#define GLOB_T "moonops.fs.glob"
#define GLOB_MAX_DIRS 100000

typedef struct {
  char **parts; /* components of the pattern, without "" and "." */
  size_t nparts;
  int dir_only; /* the pattern ends with '/': the last component must be a directory */
  char *path;   /* PATH_MAX bytes: the path being looked at */
  char **found; /* matches (malloc'ed strings), unsorted, maybe repeated */
  size_t nfound, capfound;
  size_t dirs, max_dirs; /* directories listed so far, and the bound */
  int err;               /* errno of the failure that stopped the walk; 0 = none */
  const char *failed_op; /* "list" or "stat" */
  char *failed_path;     /* malloc'ed */
  int over_limit;
} glob_walk;

static void glob_release(void **h) {
  glob_walk *g = *h;
  if (g == NULL) return;
  for (size_t i = 0; i < g->nfound; i++)
    free(g->found[i]);
  free(g->found);
  free(g->failed_path);
  g->found = NULL;
  g->failed_path = NULL;
  g->nfound = g->capfound = 0;
  *h = NULL;
}

static int glob_close(lua_State *L) {
  glob_release(luaL_checkudata(L, 1, GLOB_T));
  return 0;
}

/* Failures that mean "no match here", as pathlib treats them: gone, not a directory, a link loop.
 */
static int glob_ignorable(int e) {
  return e == ENOENT || e == ENOTDIR || e == ELOOP;
}

static int glob_fail(glob_walk *g, const char *op, int e) {
  if (g->err == 0 && !g->over_limit) {
    g->err = e;
    g->failed_op = op;
    g->failed_path = strdup(g->path[0] ? g->path : ".");
  }
  return -1;
}

/* Append "/name" (or "name" after "" or "/") to the path of length len; new length, 0 if too long.
 */
static size_t glob_join(glob_walk *g, size_t len, const char *name) {
  size_t n = strlen(name);
  size_t sep = len > 0 && g->path[len - 1] != '/';
  if (len + sep + n >= PATH_MAX) return 0;
  if (sep) g->path[len] = '/';
  memcpy(g->path + len + sep, name, n + 1);
  return len + sep + n;
}

static int glob_add(glob_walk *g, size_t len) {
  g->path[len] = '\0';
  if (g->nfound == g->capfound) {
    size_t cap = g->capfound ? g->capfound * 2 : 16;
    char **v = realloc(g->found, cap * sizeof *v);
    if (v == NULL) return glob_fail(g, "list", ENOMEM);
    g->found = v;
    g->capfound = cap;
  }
  char *s = strdup(len ? g->path : ".");
  if (s == NULL) return glob_fail(g, "list", ENOMEM);
  g->found[g->nfound++] = s;
  return 0;
}

/* The entries of one directory: a d_type byte then the name and its NUL, one after another. */
typedef struct {
  char *buf;
  size_t len, cap;
} glob_entries;

/* The entry at *off (then past it), its d_type in *type; NULL after the last. */
static const char *glob_next(const glob_entries *e, size_t *off, unsigned char *type) {
  if (*off >= e->len) return NULL;
  *type = (unsigned char)e->buf[*off];
  const char *name = e->buf + *off + 1;
  *off += strlen(name) + 2;
  return name;
}

/*
 * Read the directory at path[0..len) into e (closed before returning); 0, or -1 with
 * the failure recorded. A directory that is gone or is not one gives no entries.
 * DT_UNKNOWN is resolved with fstatat (not following links) while it is open.
 */
static int glob_list(glob_walk *g, size_t len, glob_entries *e) {
  g->path[len] = '\0';
  if (g->dirs >= g->max_dirs) {
    g->over_limit = 1;
    return -1;
  }
  g->dirs++;
  DIR *d = opendir(len ? g->path : ".");
  if (d == NULL) return glob_ignorable(errno) ? 0 : glob_fail(g, "list", errno);
  int rc = 0;
  for (;;) {
    errno = 0;
    struct dirent *ent = readdir(d);
    if (ent == NULL) {
      if (errno && !glob_ignorable(errno)) rc = glob_fail(g, "list", errno);
      break;
    }
    const char *n = ent->d_name;
    if (n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0'))) continue;
    unsigned char type = ent->d_type;
    if (type == DT_UNKNOWN) {
      struct stat st;
      if (fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) == 0)
        type = S_ISDIR(st.st_mode) ? DT_DIR : S_ISLNK(st.st_mode) ? DT_LNK : DT_REG;
    }
    size_t need = strlen(n) + 2;
    if (e->len + need > e->cap) {
      size_t cap = e->cap ? e->cap * 2 : 1024;
      while (cap < e->len + need)
        cap *= 2;
      char *b = realloc(e->buf, cap);
      if (b == NULL) {
        rc = glob_fail(g, "list", ENOMEM);
        break;
      }
      e->buf = b;
      e->cap = cap;
    }
    e->buf[e->len] = (char)type;
    memcpy(e->buf + e->len + 1, n, need - 1);
    e->len += need;
  }
  closedir(d);
  return rc;
}

static int glob_match(glob_walk *g, size_t idx, size_t len);

/* `**`: the rest of the pattern from the directory at path[0..len) and every directory below. */
static int glob_tree(glob_walk *g, size_t next, size_t len) {
  if (glob_match(g, next, len) < 0) return -1;
  glob_entries e = {NULL, 0, 0};
  int rc = glob_list(g, len, &e);
  unsigned char type;
  const char *name;
  for (size_t off = 0; rc == 0 && (name = glob_next(&e, &off, &type)) != NULL;) {
    if (type != DT_DIR) continue; /* symbolic links are not followed */
    size_t n = glob_join(g, len, name);
    rc = n ? glob_tree(g, next, n) : glob_fail(g, "list", ENAMETOOLONG);
  }
  free(e.buf);
  return rc;
}

/* Match components idx.. below the directory at path[0..len). */
static int glob_match(glob_walk *g, size_t idx, size_t len) {
  if (idx == g->nparts) return glob_add(g, len);
  const char *part = g->parts[idx];
  int dir_only = idx + 1 < g->nparts || g->dir_only;
  if (strcmp(part, "**") == 0) return glob_tree(g, idx + 1, len);
  struct stat st;
  if (strpbrk(part, "*?[") == NULL) {
    size_t n = glob_join(g, len, part);
    if (n == 0) return glob_fail(g, "stat", ENAMETOOLONG);
    if (stat(g->path, &st) < 0) return glob_ignorable(errno) ? 0 : glob_fail(g, "stat", errno);
    if (dir_only && !S_ISDIR(st.st_mode)) return 0;
    return glob_match(g, idx + 1, n);
  }
  glob_entries e = {NULL, 0, 0};
  int rc = glob_list(g, len, &e);
  unsigned char type;
  const char *name;
  for (size_t off = 0; rc == 0 && (name = glob_next(&e, &off, &type)) != NULL;) {
    if (fnmatch(part, name, FNM_NOESCAPE) != 0) continue;
    size_t n = glob_join(g, len, name);
    if (n == 0) {
      rc = glob_fail(g, "stat", ENAMETOOLONG);
      break;
    }
    if (dir_only && type != DT_DIR) {
      if (type != DT_LNK) continue;
      if (stat(g->path, &st) < 0) {
        if (!glob_ignorable(errno)) rc = glob_fail(g, "stat", errno);
        continue;
      }
      if (!S_ISDIR(st.st_mode)) continue;
    }
    rc = glob_match(g, idx + 1, n);
  }
  free(e.buf);
  return rc;
}

/*
 * fs.glob(pattern [, {recursive=true, root=dir, max_dirs=100000}])
 *   -> sorted array of matching paths (empty when none match) | nil, err [, code]
 * Without options: glob(3). With recursive=true: pathlib's rules (above); a
 * pattern ending in '/' matches directories only; with root, the pattern is
 * relative to root, taken literally, and results start with root. Listing more
 * than max_dirs directories, or a directory or entry that cannot be read, fails
 * naming the path (pathlib skips unreadable directories silently).
 */
static int fs_glob(lua_State *L) {
  size_t plen;
  const char *pattern = luaL_checklstring(L, 1, &plen);
  if (lua_isnoneornil(L, 2)) return glob_shell(L, pattern);
  luaL_checktype(L, 2, LUA_TTABLE);
  int recursive = mo_optfield_boolean(L, 2, "recursive", 0);
  const char *root = mo_optfield_string(L, 2, "root", NULL);
  lua_Integer max_dirs = mo_optfield_integer(L, 2, "max_dirs", GLOB_MAX_DIRS);
  if (!recursive) {
    luaL_argcheck(L, root == NULL, 2, "root needs recursive=true");
    return glob_shell(L, pattern);
  }
  luaL_argcheck(L, plen > 0, 1, "empty pattern");
  luaL_argcheck(L, max_dirs > 0, 2, "max_dirs must be positive");
  luaL_argcheck(L, root == NULL || pattern[0] != '/', 1, "pattern must be relative with root");
  luaL_argcheck(L, root == NULL || root[0] != '\0', 2, "empty root");

  void **h = mo_newhandle(L, sizeof(void *) + sizeof(glob_walk), GLOB_T);
  glob_walk *g = (glob_walk *)(h + 1);
  g->max_dirs = (size_t)max_dirs;
  g->path = lua_newuserdatauv(L, PATH_MAX, 0);
  g->path[0] = '\0';
  /* split a copy of the pattern in place */
  char *copy = lua_newuserdatauv(L, plen + 1, 0);
  memcpy(copy, pattern, plen + 1);
  g->parts = lua_newuserdatauv(L, (plen / 2 + 1) * sizeof(char *), 0);
  g->dir_only = pattern[plen - 1] == '/';
  char *save = NULL;
  for (char *p = strtok_r(copy, "/", &save); p; p = strtok_r(NULL, "/", &save)) {
    if (strcmp(p, ".") == 0) continue;
    /* a run of `**` components is one */
    if (strcmp(p, "**") == 0 && g->nparts && strcmp(g->parts[g->nparts - 1], "**") == 0) continue;
    g->parts[g->nparts++] = p;
  }
  *h = g; /* from here on the closer frees what the walk allocates */

  size_t len = 0;
  if (root) {
    size_t rlen = strlen(root);
    while (rlen > 1 && root[rlen - 1] == '/')
      rlen--;
    if (rlen >= PATH_MAX) {
      errno = ENAMETOOLONG;
      return fail_path(L, "glob", root);
    }
    memcpy(g->path, root, rlen);
    len = rlen;
  } else if (pattern[0] == '/') {
    g->path[0] = '/';
    len = 1;
  }
  g->path[len] = '\0';
  struct stat st;
  int rc = 0;
  if (stat(len ? g->path : ".", &st) < 0) {
    if (!glob_ignorable(errno)) rc = glob_fail(g, "stat", errno);
  } else if (S_ISDIR(st.st_mode)) {
    rc = glob_match(g, 0, len);
  }
  if (rc < 0) {
    if (g->over_limit)
      return mo_fail(L, "glob %s: more than %I directories to search; narrow the pattern", pattern,
                     (lua_Integer)g->max_dirs);
    lua_pushfstring(L, "%s: %s %s", pattern, g->failed_op, g->failed_path ? g->failed_path : "?");
    errno = g->err;
    return fail_path(L, "glob", lua_tostring(L, -1));
  }
  if (g->nfound > 1) qsort(g->found, g->nfound, sizeof *g->found, cmp_strings);
  lua_createtable(L, (int)(g->nfound > INT_MAX ? INT_MAX : g->nfound), 0);
  lua_Integer n = 0;
  for (size_t i = 0; i < g->nfound; i++) {
    if (i > 0 && strcmp(g->found[i], g->found[i - 1]) == 0) continue;
    lua_pushstring(L, g->found[i]);
    lua_rawseti(L, -2, ++n);
  }
  mo_mark_array(L, -1);
  glob_release(h);
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
  mo_newclass(L, GLOB_T, (const luaL_Reg[]){{NULL, NULL}}, glob_close);
  luaL_newlib(L, funcs);
  return 1;
}
