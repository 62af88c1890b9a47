/*
 * moonops.notify: named wake-up channels between threads, on eventfd.
 *
 * A channel is process-wide: every Lua state (server workers, the deploy
 * worker, the main state) that opens the same name gets the same eventfd.
 * Channels are reference counted and freed when the last handle closes.
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define CHANNEL_MT "moonops.notify.channel"

struct channel {
  char *name;
  int fd;
  int refs;
  struct channel *next;
};

/* Process-wide registry of open channels (documented as such above). */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct channel *registry;

static struct channel *channel_acquire(const char *name, int *err) {
  pthread_mutex_lock(&registry_lock);
  struct channel *ch = registry;
  while (ch && strcmp(ch->name, name) != 0)
    ch = ch->next;
  if (ch) {
    ch->refs++;
  } else {
    ch = calloc(1, sizeof *ch);
    int fd = ch ? eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) : -1;
    if (fd < 0) {
      *err = ch ? errno : ENOMEM;
      free(ch);
      ch = NULL;
    } else if ((ch->name = strdup(name)) == NULL) {
      *err = ENOMEM;
      close(fd);
      free(ch);
      ch = NULL;
    } else {
      ch->fd = fd;
      ch->refs = 1;
      ch->next = registry;
      registry = ch;
    }
  }
  pthread_mutex_unlock(&registry_lock);
  return ch;
}

static void channel_release(struct channel *ch) {
  pthread_mutex_lock(&registry_lock);
  if (--ch->refs == 0) {
    struct channel **p = &registry;
    while (*p != ch)
      p = &(*p)->next;
    *p = ch->next;
    close(ch->fd);
    free(ch->name);
    free(ch);
  }
  pthread_mutex_unlock(&registry_lock);
}

static void channel_signal(struct channel *ch) {
  uint64_t one = 1;
  while (write(ch->fd, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

/* Signal the channel `name` if anyone has it open; returns 1 when signalled. */
int mo_notify_signal(const char *name) {
  int found = 0;
  pthread_mutex_lock(&registry_lock);
  for (struct channel *ch = registry; ch; ch = ch->next) {
    if (strcmp(ch->name, name) == 0) {
      channel_signal(ch);
      found = 1;
      break;
    }
  }
  pthread_mutex_unlock(&registry_lock);
  return found;
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wait until the channel is signalled or `timeout` seconds pass (<0: forever).
 * Consumes every pending signal. Returns 1 when signalled, 0 on timeout. */
static int channel_wait(struct channel *ch, double timeout) {
  double deadline = timeout >= 0 ? now_seconds() + timeout : 0;
  for (;;) {
    uint64_t count;
    if (read(ch->fd, &count, sizeof count) == (ssize_t)sizeof count) return 1;
    int ms = -1;
    if (timeout >= 0) {
      double left = deadline - now_seconds();
      if (left <= 0) return 0;
      ms = left > 86400.0 ? 86400000 : (int)ceil(left * 1000.0);
    }
    struct pollfd p = {.fd = ch->fd, .events = POLLIN};
    int rc = poll(&p, 1, ms);
    if (rc < 0 && errno != EINTR) return 0;
  }
}

static struct channel **check_open(lua_State *L) {
  return mo_checkhandle(L, 1, CHANNEL_MT, "notify channel");
}

/* notify.channel(name) -> channel | nil, err */
static int notify_channel(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  luaL_argcheck(L, name[0] != '\0', 1, "channel name must not be empty");
  struct channel **h = (struct channel **)mo_newhandle(L, sizeof *h, CHANNEL_MT);
  int err = 0;
  *h = channel_acquire(name, &err);
  if (*h == NULL) {
    const char *what = lua_pushfstring(L, "notify channel %s", name);
    errno = err;
    return mo_fail_errno(L, what);
  }
  return 1;
}

/* notify.signal(name) -> true if a channel of that name is open, else false */
static int notify_signal_name(lua_State *L) {
  lua_pushboolean(L, mo_notify_signal(luaL_checkstring(L, 1)));
  return 1;
}

/* channel:signal() -> true */
static int ch_signal(lua_State *L) {
  channel_signal(*check_open(L));
  lua_pushboolean(L, 1);
  return 1;
}

/* channel:wait([timeout]) -> true (signalled) | false (timed out); no timeout waits forever */
static int ch_wait(lua_State *L) {
  struct channel *ch = *check_open(L);
  double timeout = luaL_optnumber(L, 2, -1);
  luaL_argcheck(L, timeout == timeout, 2, "timeout must be a number");
  lua_pushboolean(L, channel_wait(ch, timeout));
  return 1;
}

/* channel:name() -> string */
static int ch_name(lua_State *L) {
  lua_pushstring(L, (*check_open(L))->name);
  return 1;
}

/* channel:close() (also __gc and __close); closing twice is harmless */
static int ch_close(lua_State *L) {
  struct channel **h = luaL_checkudata(L, 1, CHANNEL_MT);
  if (*h) {
    channel_release(*h);
    *h = NULL;
  }
  return 0;
}

static int ch_tostring(lua_State *L) {
  struct channel **h = luaL_checkudata(L, 1, CHANNEL_MT);
  if (*h)
    lua_pushfstring(L, "notify channel %s", (*h)->name);
  else
    lua_pushliteral(L, "notify channel (closed)");
  return 1;
}

int luaopen_moonops_notify(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"signal", ch_signal},
      {"wait", ch_wait},
      {"name", ch_name},
      {NULL, NULL},
  };
  static const luaL_Reg funcs[] = {
      {"channel", notify_channel},
      {"signal", notify_signal_name},
      {NULL, NULL},
  };
  if (luaL_getmetatable(L, CHANNEL_MT) == LUA_TNIL) {
    lua_pop(L, 1);
    mo_newclass(L, CHANNEL_MT, methods, ch_close);
    luaL_getmetatable(L, CHANNEL_MT);
    lua_pushcfunction(L, ch_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  return 1;
}
