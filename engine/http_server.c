/*
 * moonops.server: an HTTP server on libmicrohttpd whose requests are answered
 * by a Lua handler module.
 *
 * The OpenResty model: every worker thread owns its own Lua state, created
 * when the server starts, that has loaded the handler module once and called
 * its init(context). libmicrohttpd runs a pool of N polling threads; the first
 * request a pool thread sees binds it to one free worker state for the life of
 * the server, so no Lua state is ever used by two threads.
 *
 * Limits are enforced here before any Lua runs: a Content-Length over max_body
 * is answered 413 without reading the body (a chunked body that grows over it
 * drops the connection), header_limit bounds the per-connection memory
 * (headers), conn_limit caps connections, `timeout` cuts idle connections and a
 * reaper thread shuts down connections that take longer than read_timeout to
 * deliver a complete request (slow clients that trickle bytes).
 *
 * Deferred requests: a handler may answer `return server.DEFER, job` (job a
 * string). The connection is then suspended and the job queued for the batch
 * thread, which has its own Lua state with the handler module loaded and calls
 * `handler[batch](jobs, generation)` with every job queued so far (up to
 * BATCH_MAX) and gets back one {status, headers, body} per job; each suspended
 * connection is resumed with its answer. Work that must be durable before the
 * answer (the store's accept transaction) is done there once per batch instead
 * of once per request, and the pool threads keep serving other connections
 * meanwhile. Stopping drains the queue: every job taken is answered.
 *
 * A background thread with its own Lua state (the deploy worker) runs
 * `require(module)[fn](context, control)` until it returns; control.stopping()
 * tells it the server is stopping (the server signals its notify channel so it
 * wakes up to notice) and control.generation() follows srv:reload().
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "internal.h"
#include "moonops/moonops.h"

#define SERVER_MT "moonops.server"
#define MAX_COPY_DEPTH 64
#define BATCH_MAX 512

/* server.DEFER: the light userdata a handler returns first to defer its request. */
static const char defer_marker = 'D';

/* ---- time --------------------------------------------------------------- */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void deadline_after(struct timespec *ts, double seconds) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  double whole = floor(seconds);
  ts->tv_sec += (time_t)whole;
  ts->tv_nsec += (long)((seconds - whole) * 1e9);
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

static void cond_init_monotonic(pthread_cond_t *cond) {
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(cond, &attr);
  pthread_condattr_destroy(&attr);
}

/* ---- process-wide counters (server.count / server.counts) ---------------- */

struct counter {
  char *name;
  double value;
};

static pthread_mutex_t counters_lock = PTHREAD_MUTEX_INITIALIZER;
static struct counter *counters;
static size_t ncounters, counters_cap;

static int counter_add(const char *name, double n) {
  int ok = 1;
  pthread_mutex_lock(&counters_lock);
  size_t i = 0;
  while (i < ncounters && strcmp(counters[i].name, name) != 0)
    i++;
  if (i == ncounters) {
    if (ncounters == counters_cap) {
      size_t cap = counters_cap ? counters_cap * 2 : 32;
      struct counter *grown = realloc(counters, cap * sizeof *grown);
      if (grown == NULL)
        ok = 0;
      else {
        counters = grown;
        counters_cap = cap;
      }
    }
    char *copy = ok ? strdup(name) : NULL;
    if (copy == NULL)
      ok = 0;
    else {
      counters[i].name = copy;
      counters[i].value = 0;
      ncounters++;
    }
  }
  if (ok) counters[i].value += n;
  pthread_mutex_unlock(&counters_lock);
  return ok;
}

/* ---- copying plain data between Lua states ------------------------------ */

static int is_array_table(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return 0;
  mo_push_array_mt(L);
  int same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return same;
}

/* Push onto `to` a copy of the value at `idx` in `from`; on failure returns a
 * static message and pushes nothing. */
static const char *copy_value(lua_State *from, int idx, lua_State *to, int depth) {
  idx = lua_absindex(from, idx);
  switch (lua_type(from, idx)) {
  case LUA_TNIL: lua_pushnil(to); return NULL;
  case LUA_TBOOLEAN: lua_pushboolean(to, lua_toboolean(from, idx)); return NULL;
  case LUA_TLIGHTUSERDATA: lua_pushlightuserdata(to, lua_touserdata(from, idx)); return NULL;
  case LUA_TNUMBER:
    if (lua_isinteger(from, idx))
      lua_pushinteger(to, lua_tointeger(from, idx));
    else
      lua_pushnumber(to, lua_tonumber(from, idx));
    return NULL;
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(from, idx, &len);
    lua_pushlstring(to, s, len);
    return NULL;
  }
  case LUA_TTABLE: break;
  default: return "only plain data (tables, strings, numbers, booleans) can be passed";
  }
  if (depth > MAX_COPY_DEPTH) return "nested too deep (or contains itself)";
  luaL_checkstack(to, 4, "copying data");
  luaL_checkstack(from, 4, "copying data");
  lua_newtable(to);
  lua_pushnil(from);
  while (lua_next(from, idx)) {
    const char *err = copy_value(from, -2, to, depth + 1);
    if (err == NULL) {
      err = copy_value(from, -1, to, depth + 1);
      if (err) lua_pop(to, 1);
    }
    if (err) {
      lua_pop(from, 2);
      lua_pop(to, 1);
      return err;
    }
    lua_rawset(to, -3);
    lua_pop(from, 1);
  }
  if (is_array_table(from, idx)) mo_mark_array(to, -1);
  return NULL;
}

/* ---- the server --------------------------------------------------------- */

struct worker {
  lua_State *L;
  int handle_ref;   /* handler.handle */
  int rejected_ref; /* handler.rejected or LUA_NOREF */
  int taken;
};

/* One accepted connection, tracked for the read deadline (socket context). */
struct conn {
  struct conn *prev, *next;
  int fd;
  atomic_llong since; /* ms: when the current request started arriving */
  atomic_int reading; /* 1 until the request has been read completely */
  int cut;            /* shut down by the reaper */
};

/* One request (libmicrohttpd's per-request context). */
struct request {
  char *body;
  size_t len, cap;
  int counted; /* counted in server.inflight */
  char id[24];
  /* deferred to the batch thread */
  int deferred;
  int done; /* the answer below is ready (set before the resume) */
  struct MHD_Connection *conn;
  struct request *next_job;
  char *job;
  size_t job_len;
  unsigned status;
  char *out_body;
  size_t out_len;
  char *out_headers; /* name\0value\0 pairs */
  size_t out_headers_len;
};

struct batch {
  pthread_t thread;
  lua_State *L;
  int fn_ref;
  int started;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  struct request *head, *tail; /* queued jobs, under lock */
  int stop;                    /* under lock: finish the queue, then exit */
  int stopped;                 /* under lock: no job is taken any more */
};

struct background {
  pthread_t thread;
  lua_State *L;
  int started;
  int finished;  /* under server.lock */
  int abandoned; /* the server is gone: the thread frees everything itself */
  char *error;   /* message when fn raised, under server.lock */
  char *channel;
};

struct server {
  struct MHD_Daemon *daemon;
  int listen_fd;
  int port;
  char addr[80];

  pthread_mutex_t lock;
  pthread_cond_t cond; /* inflight drained (while stopping), background finished */
  struct worker *workers;
  int nworkers;
  /* Requests being answered. Atomic so the hot path takes no lock; the drain in
   * server_stop is only signalled once `stopping` is set. */
  atomic_int inflight;
  atomic_int stopping;
  int stopped;
  atomic_llong generation;
  atomic_ullong next_id;
  uint32_t id_prefix;

  size_t max_body;
  int64_t read_timeout_ms;

  /* connections, for the reaper */
  pthread_mutex_t conns_lock;
  struct conn *conns;
  pthread_t reaper;
  pthread_cond_t reaper_cond; /* its own, so request traffic never wakes it */
  int reaper_started;
  int reaper_stop; /* under lock */

  struct background *bg;
  struct batch *batch;

  int signals; /* the caller's thread blocks TERM/INT/HUP; sigfd reads them */
  int sigfd;
  sigset_t oldmask;
};

struct server_handle {
  struct server *srv;
};

static _Thread_local struct server *tl_server;
static _Thread_local struct worker *tl_worker;

static struct worker *thread_worker(struct server *s) {
  if (tl_server == s && tl_worker) return tl_worker;
  struct worker *w = NULL;
  pthread_mutex_lock(&s->lock);
  for (int i = 0; i < s->nworkers; i++) {
    if (!s->workers[i].taken) {
      w = &s->workers[i];
      w->taken = 1;
      break;
    }
  }
  pthread_mutex_unlock(&s->lock);
  if (w) {
    tl_server = s;
    tl_worker = w;
  }
  return w;
}

static void request_id(struct server *s, char *out, size_t size) {
  unsigned long long n = atomic_fetch_add(&s->next_id, 1) + 1;
  snprintf(out, size, "%08x%08llx", s->id_prefix, n & 0xffffffffULL);
}

/* ---- building the request table ----------------------------------------- */

static enum MHD_Result push_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value) {
  (void)kind;
  lua_State *L = cls;
  char lower[256];
  size_t n = strlen(key);
  if (n >= sizeof lower) return MHD_YES; /* no real header name is this long */
  for (size_t i = 0; i <= n; i++) {
    char c = key[i];
    lower[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
  }
  if (value == NULL) value = "";
  if (lua_getfield(L, -1, lower) == LUA_TSTRING) {
    lua_pushliteral(L, ", ");
    lua_pushstring(L, value);
    lua_concat(L, 3);
  } else {
    lua_pop(L, 1);
    lua_pushstring(L, value);
  }
  lua_setfield(L, -2, lower);
  return MHD_YES;
}

static enum MHD_Result push_query(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value) {
  (void)kind;
  lua_State *L = cls;
  lua_pushstring(L, value ? value : "");
  lua_setfield(L, -2, key);
  return MHD_YES;
}

static void push_remote(lua_State *L, struct MHD_Connection *c) {
  const union MHD_ConnectionInfo *info =
      MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  char buf[INET6_ADDRSTRLEN] = "";
  if (info && info->client_addr) {
    const struct sockaddr *sa = info->client_addr;
    if (sa->sa_family == AF_INET)
      inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, sizeof buf);
    else if (sa->sa_family == AF_INET6)
      inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, sizeof buf);
  }
  lua_pushstring(L, buf);
}

static void push_request(lua_State *L, struct server *s, struct MHD_Connection *c,
                         struct request *r, const char *method, const char *url) {
  lua_createtable(L, 0, 9);
  lua_pushstring(L, method);
  lua_setfield(L, -2, "method");
  lua_pushstring(L, url);
  lua_setfield(L, -2, "path");
  lua_newtable(L);
  MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, push_query, L);
  lua_setfield(L, -2, "query");
  lua_createtable(L, 0, 12);
  MHD_get_connection_values(c, MHD_HEADER_KIND, push_header, L);
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, r->body ? r->body : "", r->len);
  lua_setfield(L, -2, "body");
  push_remote(L, c);
  lua_setfield(L, -2, "remote");
  lua_pushstring(L, r->id);
  lua_setfield(L, -2, "id");
  lua_pushinteger(L, (lua_Integer)atomic_load(&s->generation));
  lua_setfield(L, -2, "generation");
}

/* ---- responses ---------------------------------------------------------- */

static enum MHD_Result respond(struct MHD_Connection *c, unsigned status, const char *body,
                               size_t len, const char *id, int close_after, const char *extra_name,
                               const char *extra_value) {
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
  if (resp == NULL) return MHD_NO;
  MHD_add_response_header(resp, "Content-Type", "text/plain; charset=utf-8");
  MHD_add_response_header(resp, "X-Request-Id", id);
  if (extra_name) MHD_add_response_header(resp, extra_name, extra_value);
  if (close_after) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
  enum MHD_Result rc = MHD_queue_response(c, status, resp);
  MHD_destroy_response(resp);
  return rc;
}

/* Tell the handler module about a request refused before Lua ran (for its logs
 * and metrics). Errors in the hook are ignored: the answer is already fixed. */
static void report_rejected(struct server *s, struct MHD_Connection *c, struct request *r,
                            const char *method, const char *url, int status, const char *reason) {
  struct worker *w = thread_worker(s);
  if (w == NULL || w->rejected_ref == LUA_NOREF) return;
  lua_State *L = w->L;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->rejected_ref);
  push_request(L, s, c, r, method, url);
  lua_pushinteger(L, status);
  lua_pushstring(L, reason);
  mo_pcall(L, 3, 0);
  lua_settop(L, top);
}

/* ---- deferred requests -------------------------------------------------- */

static void set_answer(struct request *r, unsigned status, const char *body) {
  r->status = status;
  free(r->out_body);
  r->out_body = strdup(body);
  r->out_len = r->out_body ? strlen(body) : 0;
  free(r->out_headers);
  r->out_headers = NULL;
  r->out_headers_len = 0;
}

/* Suspend the connection and queue the job (the string at `idx`) for the batch
 * thread. When there is no batch thread, or it has stopped, the request is
 * answered at once (500 or 503). */
static enum MHD_Result defer(struct server *s, struct MHD_Connection *c, struct request *r,
                             const char *method, const char *url, lua_State *L, int idx) {
  struct batch *b = s->batch;
  size_t len = 0;
  const char *job = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, &len) : NULL;
  if (b == NULL || job == NULL) {
    static const char msg[] = "internal server error\n";
    const char *why = b == NULL ? "handler deferred a request but the server has no batch function"
                                : "handler deferred a request without a job string";
    report_rejected(s, c, r, method, url, 500, why);
    return respond(c, 500, msg, sizeof msg - 1, r->id, 0, NULL, NULL);
  }
  r->job = malloc(len ? len : 1);
  if (r->job == NULL) return MHD_NO;
  memcpy(r->job, job, len);
  r->job_len = len;
  r->conn = c;
  r->deferred = 1;
  MHD_suspend_connection(c);
  pthread_mutex_lock(&b->lock);
  int stopped = b->stopped;
  if (!stopped) {
    if (b->tail)
      b->tail->next_job = r;
    else
      b->head = r;
    b->tail = r;
    pthread_cond_signal(&b->cond);
  }
  pthread_mutex_unlock(&b->lock);
  if (stopped) {
    report_rejected(s, c, r, method, url, 503, "shutting down");
    set_answer(r, 503, "shutting down\n");
    static const char retry[] = "Retry-After\0"
                                "5";
    r->out_headers = malloc(sizeof retry);
    if (r->out_headers) {
      memcpy(r->out_headers, retry, sizeof retry);
      r->out_headers_len = sizeof retry;
    }
    r->done = 1;
    MHD_resume_connection(c);
  }
  return MHD_YES;
}

/* The answer the batch thread left for a resumed request. */
static enum MHD_Result answer_deferred(struct server *s, struct MHD_Connection *c,
                                       struct request *r) {
  if (!r->done) return MHD_YES; /* not resumed yet */
  struct MHD_Response *resp = MHD_create_response_from_buffer(
      r->out_len, r->out_body ? r->out_body : (void *)"", MHD_RESPMEM_MUST_COPY);
  if (resp == NULL) return MHD_NO;
  int has_type = 0;
  for (size_t at = 0; r->out_headers && at < r->out_headers_len;) {
    const char *name = r->out_headers + at;
    const char *value = name + strlen(name) + 1;
    if (strcasecmp(name, "Content-Type") == 0) has_type = 1;
    MHD_add_response_header(resp, name, value);
    at = (size_t)(value - r->out_headers) + strlen(value) + 1;
  }
  if (!has_type) MHD_add_response_header(resp, "Content-Type", "text/plain; charset=utf-8");
  MHD_add_response_header(resp, "X-Request-Id", r->id);
  if (atomic_load(&s->stopping)) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
  enum MHD_Result rc = MHD_queue_response(c, r->status, resp);
  MHD_destroy_response(resp);
  return rc;
}

/* Copy result `i` ({status, headers, body} on top of B) into the request. */
static void take_result(lua_State *B, struct request *r) {
  int t = lua_gettop(B);
  if (!lua_istable(B, t)) {
    set_answer(r, 500, "internal server error\n");
    return;
  }
  lua_geti(B, t, 1);
  int isnum = 0;
  lua_Integer status = lua_tointegerx(B, -1, &isnum);
  lua_pop(B, 1);
  if (!isnum || status < 100 || status > 999) {
    set_answer(r, 500, "internal server error\n");
    return;
  }
  lua_geti(B, t, 3);
  size_t len = 0;
  const char *body = lua_type(B, -1) == LUA_TSTRING ? lua_tolstring(B, -1, &len) : "";
  r->out_body = malloc(len ? len : 1);
  if (r->out_body) {
    memcpy(r->out_body, body, len);
    r->out_len = len;
  }
  lua_pop(B, 1);
  r->status = (unsigned)status;
  if (lua_geti(B, t, 2) == LUA_TTABLE) {
    size_t need = 0;
    lua_pushnil(B);
    while (lua_next(B, -2)) {
      if (lua_type(B, -2) == LUA_TSTRING && lua_type(B, -1) == LUA_TSTRING)
        need += lua_rawlen(B, -2) + lua_rawlen(B, -1) + 2;
      lua_pop(B, 1);
    }
    char *buf = need ? malloc(need) : NULL;
    size_t at = 0;
    lua_pushnil(B);
    while (buf && lua_next(B, -2)) {
      if (lua_type(B, -2) == LUA_TSTRING && lua_type(B, -1) == LUA_TSTRING) {
        const char *k = lua_tostring(B, -2), *v = lua_tostring(B, -1);
        /* a name or value with a NUL byte would not survive the copy: skip it */
        if (strlen(k) == lua_rawlen(B, -2) && strlen(v) == lua_rawlen(B, -1)) {
          memcpy(buf + at, k, strlen(k) + 1);
          at += strlen(k) + 1;
          memcpy(buf + at, v, strlen(v) + 1);
          at += strlen(v) + 1;
        }
      }
      lua_pop(B, 1);
    }
    r->out_headers = buf;
    r->out_headers_len = at;
  }
  lua_pop(B, 1);
}

/* Run handler[batch](jobs, generation) over the taken list and resume every
 * connection with its answer. */
static void run_batch(struct server *s, struct batch *b, struct request *list, int n) {
  lua_State *B = b->L;
  int top = lua_gettop(B);
  lua_rawgeti(B, LUA_REGISTRYINDEX, b->fn_ref);
  lua_createtable(B, n, 0);
  int i = 1;
  for (struct request *r = list; r; r = r->next_job) {
    lua_pushlstring(B, r->job, r->job_len);
    lua_rawseti(B, -2, i++);
  }
  lua_pushinteger(B, (lua_Integer)atomic_load(&s->generation));
  int ok = mo_pcall(B, 2, 1) == LUA_OK && lua_istable(B, -1);
  i = 1;
  for (struct request *r = list, *next; r; r = next) {
    next = r->next_job;
    if (ok) {
      lua_geti(B, top + 1, i++);
      take_result(B, r);
      lua_pop(B, 1);
    } else {
      set_answer(r, 500, "internal server error\n");
    }
    r->done = 1;
    MHD_resume_connection(r->conn); /* r belongs to libmicrohttpd again from here */
  }
  lua_settop(B, top);
  lua_gc(B, LUA_GCSTEP, 0);
}

static void *batch_main(void *arg) {
  struct server *s = arg;
  struct batch *b = s->batch;
  pthread_mutex_lock(&b->lock);
  for (;;) {
    while (b->head == NULL && !b->stop)
      pthread_cond_wait(&b->cond, &b->lock);
    if (b->head == NULL) break; /* stopping, and nothing is left */
    struct request *list = b->head, *last = list;
    int n = 1;
    while (last->next_job && n < BATCH_MAX) {
      last = last->next_job;
      n++;
    }
    b->head = last->next_job;
    if (b->head == NULL) b->tail = NULL;
    last->next_job = NULL;
    pthread_mutex_unlock(&b->lock);
    run_batch(s, b, list, n);
    pthread_mutex_lock(&b->lock);
  }
  b->stopped = 1;
  pthread_mutex_unlock(&b->lock);
  return NULL;
}

/* Let the batch thread answer what is queued, then end it. */
static void batch_stop(struct batch *b) {
  if (b == NULL || !b->started) return;
  pthread_mutex_lock(&b->lock);
  b->stop = 1;
  pthread_cond_signal(&b->cond);
  pthread_mutex_unlock(&b->lock);
  pthread_join(b->thread, NULL);
  b->started = 0;
}

static void batch_free(struct batch *b) {
  if (b == NULL) return;
  batch_stop(b);
  if (b->L) lua_close(b->L);
  pthread_mutex_destroy(&b->lock);
  pthread_cond_destroy(&b->cond);
  free(b);
}

static enum MHD_Result run_handler(struct server *s, struct MHD_Connection *c, struct request *r,
                                   const char *method, const char *url) {
  struct worker *w = thread_worker(s);
  if (w == NULL) {
    static const char msg[] = "internal server error\n";
    return respond(c, 500, msg, sizeof msg - 1, r->id, 1, NULL, NULL);
  }
  lua_State *L = w->L;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->handle_ref);
  push_request(L, s, c, r, method, url);
  free(r->body); /* the request table holds the body now */
  r->body = NULL;
  r->cap = r->len = 0;

  int ok = mo_pcall(L, 1, 3) == LUA_OK;
  if (ok && lua_touserdata(L, top + 1) == (void *)&defer_marker) {
    enum MHD_Result rc = defer(s, c, r, method, url, L, top + 2);
    lua_settop(L, top);
    return rc;
  }
  int isnum = 0;
  lua_Integer status = ok ? lua_tointegerx(L, top + 1, &isnum) : 0;
  if (!ok || !isnum || status < 100 || status > 999) {
    static const char msg[] = "internal server error\n";
    const char *why = ok ? "handler returned no valid status" : lua_tostring(L, -1);
    report_rejected(s, c, r, method, url, 500, why ? why : "handler failed");
    lua_settop(L, top);
    return respond(c, 500, msg, sizeof msg - 1, r->id, 0, NULL, NULL);
  }
  size_t len = 0;
  const char *body = lua_type(L, top + 3) == LUA_TSTRING ? lua_tolstring(L, top + 3, &len) : "";
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
  if (resp == NULL) {
    lua_settop(L, top);
    return MHD_NO;
  }
  if (lua_type(L, top + 2) == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, top + 2)) {
      if (lua_type(L, -2) == LUA_TSTRING &&
          (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)) {
        lua_pushvalue(L, -1); /* tostring a copy, never the key */
        MHD_add_response_header(resp, lua_tostring(L, -3), lua_tostring(L, -1));
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
    }
  }
  MHD_add_response_header(resp, "X-Request-Id", r->id);
  if (atomic_load(&s->stopping)) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
  enum MHD_Result rc = MHD_queue_response(c, (unsigned)status, resp);
  MHD_destroy_response(resp);
  lua_settop(L, top);
  return rc;
}

static struct conn *conn_of(struct MHD_Connection *c) {
  const union MHD_ConnectionInfo *info =
      MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  return info ? info->socket_context : NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls) {
  (void)version;
  struct server *s = cls;
  struct request *r = *con_cls;
  if (r == NULL) {
    r = calloc(1, sizeof *r);
    if (r == NULL) return MHD_NO;
    *con_cls = r;
    request_id(s, r->id, sizeof r->id);
    atomic_fetch_add(&s->inflight, 1);
    r->counted = 1;
    if (atomic_load(&s->stopping)) {
      static const char msg[] = "shutting down\n";
      report_rejected(s, c, r, method, url, 503, "shutting down");
      return respond(c, 503, msg, sizeof msg - 1, r->id, 1, "Retry-After", "5");
    }
    const char *cl =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
      char *end;
      errno = 0;
      unsigned long long n = strtoull(cl, &end, 10);
      if (errno == ERANGE || n > s->max_body) {
        static const char msg[] = "request body too large\n";
        report_rejected(s, c, r, method, url, 413, "body too large");
        return respond(c, 413, msg, sizeof msg - 1, r->id, 1, NULL, NULL);
      }
      if (n > 0 && end != cl) { /* trust the announced size only up to 1 MiB */
        size_t cap = n < (1u << 20) ? (size_t)n : (1u << 20);
        r->body = malloc(cap);
        if (r->body == NULL) return MHD_NO;
        r->cap = cap;
      }
    }
    return MHD_YES;
  }
  if (r->deferred) return answer_deferred(s, c, r);
  if (*upload_size > 0) {
    size_t n = *upload_size;
    if (n > s->max_body - r->len) return MHD_NO; /* a chunked body over the limit: drop it */
    if (r->len + n > r->cap) {
      size_t cap = r->cap ? r->cap : 4096;
      while (cap < r->len + n)
        cap *= 2;
      if (cap > s->max_body) cap = s->max_body;
      char *grown = realloc(r->body, cap);
      if (grown == NULL) return MHD_NO;
      r->body = grown;
      r->cap = cap;
    }
    memcpy(r->body + r->len, upload_data, n);
    r->len += n;
    *upload_size = 0;
    return MHD_YES;
  }
  struct conn *k = conn_of(c);
  if (k) atomic_store(&k->reading, 0);
  return run_handler(s, c, r, method, url);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  (void)toe;
  struct server *s = cls;
  struct request *r = *con_cls;
  struct conn *k = conn_of(c);
  if (k) {
    atomic_store(&k->since, now_ms());
    atomic_store(&k->reading, 1);
  }
  if (r == NULL) return;
  *con_cls = NULL;
  if (r->counted && atomic_fetch_sub(&s->inflight, 1) == 1 && atomic_load(&s->stopping)) {
    pthread_mutex_lock(&s->lock);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
  }
  free(r->body);
  free(r->job);
  free(r->out_body);
  free(r->out_headers);
  free(r);
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
  struct server *s = cls;
  if (code == MHD_CONNECTION_NOTIFY_STARTED) {
    struct conn *k = calloc(1, sizeof *k);
    if (k == NULL) return;
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    k->fd = info ? info->connect_fd : -1;
    atomic_init(&k->since, now_ms());
    atomic_init(&k->reading, 1);
    pthread_mutex_lock(&s->conns_lock);
    k->next = s->conns;
    if (s->conns) s->conns->prev = k;
    s->conns = k;
    pthread_mutex_unlock(&s->conns_lock);
    *socket_context = k;
  } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
    struct conn *k = *socket_context;
    if (k == NULL) return;
    pthread_mutex_lock(&s->conns_lock);
    if (k->prev)
      k->prev->next = k->next;
    else
      s->conns = k->next;
    if (k->next) k->next->prev = k->prev;
    pthread_mutex_unlock(&s->conns_lock);
    *socket_context = NULL;
    free(k);
  }
}

/* Shut down connections whose request has been arriving for longer than
 * read_timeout; libmicrohttpd then sees the end of the stream and closes them
 * itself (the descriptor stays theirs to close). */
static void *reaper_main(void *arg) {
  struct server *s = arg;
  pthread_mutex_lock(&s->lock);
  while (!s->reaper_stop) {
    struct timespec ts;
    deadline_after(&ts, 0.25);
    pthread_cond_timedwait(&s->reaper_cond, &s->lock, &ts);
    if (s->reaper_stop) break;
    pthread_mutex_unlock(&s->lock);
    int64_t now = now_ms();
    pthread_mutex_lock(&s->conns_lock);
    for (struct conn *k = s->conns; k; k = k->next) {
      if (!k->cut && k->fd >= 0 && atomic_load(&k->reading) &&
          now - atomic_load(&k->since) > s->read_timeout_ms) {
        shutdown(k->fd, SHUT_RDWR);
        k->cut = 1;
      }
    }
    pthread_mutex_unlock(&s->conns_lock);
    pthread_mutex_lock(&s->lock);
  }
  pthread_mutex_unlock(&s->lock);
  return NULL;
}

/* ---- the background thread ---------------------------------------------- */

static void server_destroy(struct server *s);

/* control.stopping() -> true once the server is stopping */
static int control_stopping(lua_State *L) {
  struct server *s = lua_touserdata(L, lua_upvalueindex(1));
  lua_pushboolean(L, atomic_load(&s->stopping));
  return 1;
}

/* control.generation() -> the reload generation (bumped by srv:reload()) */
static int control_generation(lua_State *L) {
  struct server *s = lua_touserdata(L, lua_upvalueindex(1));
  lua_pushinteger(L, (lua_Integer)atomic_load(&s->generation));
  return 1;
}

static void *background_main(void *arg) {
  struct server *s = arg;
  struct background *bg = s->bg;
  lua_State *L = bg->L;
  /* stack: fn, context, control (prepared by start_background) */
  char *err = NULL;
  if (mo_pcall(L, 2, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    err = strdup(msg ? msg : "(error object is not a string)");
    lua_pop(L, 1);
  }
  pthread_mutex_lock(&s->lock);
  bg->error = err;
  bg->finished = 1;
  int abandoned = bg->abandoned;
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
  if (abandoned) {
    bg->started = 0;
    server_destroy(s);
  }
  return NULL;
}

/* ---- listen ------------------------------------------------------------- */

static void server_free_states(struct server *s) {
  for (int i = 0; i < s->nworkers; i++)
    if (s->workers[i].L) lua_close(s->workers[i].L);
  free(s->workers);
  s->workers = NULL;
  s->nworkers = 0;
}

/* Stop everything. drain/grace in seconds. Returns 1 when the background task
 * finished (or there is none), 0 when it was left running. */
static int server_stop(struct server *s, double drain, double grace) {
  if (s->stopped) return s->bg == NULL || s->bg->finished;
  s->stopped = 1;
  atomic_store(&s->stopping, 1);
  if (s->daemon) {
    MHD_socket fd = MHD_quiesce_daemon(s->daemon);
    if (fd != MHD_INVALID_SOCKET) close(fd);
    s->listen_fd = -1;
    struct timespec ts;
    deadline_after(&ts, drain);
    pthread_mutex_lock(&s->lock);
    while (atomic_load(&s->inflight) > 0)
      if (pthread_cond_timedwait(&s->cond, &s->lock, &ts) == ETIMEDOUT) break;
    pthread_mutex_unlock(&s->lock);
    /* every suspended connection must be resumed before the daemon stops */
    batch_stop(s->batch);
    MHD_stop_daemon(s->daemon);
    s->daemon = NULL;
  }
  if (s->listen_fd >= 0) {
    close(s->listen_fd);
    s->listen_fd = -1;
  }
  if (s->reaper_started) {
    pthread_mutex_lock(&s->lock);
    s->reaper_stop = 1;
    pthread_cond_broadcast(&s->reaper_cond);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->reaper, NULL);
    s->reaper_started = 0;
  }
  int finished = 1;
  struct background *bg = s->bg;
  if (bg && bg->started) {
    if (bg->channel) mo_notify_signal(bg->channel);
    struct timespec ts;
    deadline_after(&ts, grace);
    pthread_mutex_lock(&s->lock);
    while (!bg->finished) {
      if (pthread_cond_timedwait(&s->cond, &s->lock, &ts) == ETIMEDOUT) break;
      if (!bg->finished && bg->channel) mo_notify_signal(bg->channel);
    }
    finished = bg->finished;
    pthread_mutex_unlock(&s->lock);
    if (finished) {
      pthread_join(bg->thread, NULL);
      lua_close(bg->L);
      bg->L = NULL;
      bg->started = 0;
    }
  }
  server_free_states(s);
  return finished;
}

static void server_destroy(struct server *s) {
  if (s->signals) {
    close(s->sigfd);
    pthread_sigmask(SIG_SETMASK, &s->oldmask, NULL);
    s->signals = 0;
  }
  struct background *bg = s->bg;
  if (bg && bg->started) {
    /* still running: it frees the server when it finishes, unless it just did */
    pthread_mutex_lock(&s->lock);
    int finished = bg->finished;
    if (!finished) {
      bg->abandoned = 1;
      pthread_detach(bg->thread);
    }
    pthread_mutex_unlock(&s->lock);
    if (!finished) return;
    pthread_join(bg->thread, NULL);
    bg->started = 0;
  }
  if (bg) {
    if (bg->L) lua_close(bg->L);
    free(bg->error);
    free(bg->channel);
    free(bg);
  }
  batch_free(s->batch);
  pthread_mutex_destroy(&s->lock);
  pthread_cond_destroy(&s->cond);
  pthread_cond_destroy(&s->reaper_cond);
  pthread_mutex_destroy(&s->conns_lock);
  free(s);
}

/* Parse "host:port", "[v6]:port", ":port" or "port" into a socket address. */
static int parse_addr(const char *addr, struct sockaddr_storage *ss, socklen_t *len) {
  char host[64] = "127.0.0.1";
  const char *port = addr;
  if (addr[0] == '[') {
    const char *close = strchr(addr, ']');
    if (close == NULL || close[1] != ':' || (size_t)(close - addr - 1) >= sizeof host) return 0;
    memcpy(host, addr + 1, (size_t)(close - addr - 1));
    host[close - addr - 1] = '\0';
    port = close + 2;
  } else {
    const char *colon = strrchr(addr, ':');
    if (colon) {
      size_t n = (size_t)(colon - addr);
      if (n >= sizeof host) return 0;
      if (n > 0) {
        memcpy(host, addr, n);
        host[n] = '\0';
      } else {
        strcpy(host, "0.0.0.0");
      }
      port = colon + 1;
    }
  }
  char *end;
  long p = strtol(port, &end, 10);
  if (*port == '\0' || *end != '\0' || p < 0 || p > 65535) return 0;
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons((uint16_t)p);
    *len = sizeof *in4;
    return 1;
  }
  if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)p);
    *len = sizeof *in6;
    return 1;
  }
  return 0;
}

/* Create, bind and listen; returns the socket or -1 with errno set. */
static int open_listener(const struct sockaddr_storage *ss, socklen_t len, int *port) {
  int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, (const struct sockaddr *)ss, len) < 0 || listen(fd, 1024) < 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  struct sockaddr_storage bound;
  socklen_t blen = sizeof bound;
  getsockname(fd, (struct sockaddr *)&bound, &blen);
  *port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                            : ((struct sockaddr_in *)&bound)->sin_port);
  return fd;
}

/* A new Lua state with `module` required; leaves the module table on its stack.
 * On failure returns NULL and pushes the message on L. */
static lua_State *state_with_module(lua_State *L, const char *module) {
  lua_State *W = moonops_vm_new();
  if (W == NULL) {
    lua_pushliteral(L, "out of memory");
    return NULL;
  }
  /* the new state searches where the caller searches (specs add their own dirs) */
  lua_getglobal(L, "package");
  lua_getglobal(W, "package");
  if (lua_istable(L, -1) && lua_istable(W, -1)) {
    static const char *const keys[] = {"path", "cpath"};
    for (int i = 0; i < 2; i++) {
      if (lua_getfield(L, -1, keys[i]) == LUA_TSTRING) {
        lua_pushstring(W, lua_tostring(L, -1));
        lua_setfield(W, -2, keys[i]);
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(W, 1);
  lua_pop(L, 1);
  lua_getglobal(W, "require");
  lua_pushstring(W, module);
  if (mo_pcall(W, 1, 1) != LUA_OK) {
    lua_pushfstring(L, "loading %s: %s", module, lua_tostring(W, -1));
    lua_close(W);
    return NULL;
  }
  if (!lua_istable(W, -1)) {
    lua_pushfstring(L, "module %s must return a table", module);
    lua_close(W);
    return NULL;
  }
  return W;
}

/* Set up worker i: load the handler, call init(context). Pushes a message and
 * returns 0 on failure. */
static int setup_worker(lua_State *L, struct worker *w, const char *handler, int ctx_idx,
                        int index) {
  lua_State *W = state_with_module(L, handler);
  if (W == NULL) return 0;
  w->L = W;
  w->rejected_ref = LUA_NOREF;
  lua_getfield(W, -1, "handle");
  if (!lua_isfunction(W, -1)) {
    lua_pushfstring(L, "handler %s has no handle(req) function", handler);
    return 0;
  }
  w->handle_ref = luaL_ref(W, LUA_REGISTRYINDEX);
  if (lua_getfield(W, -1, "rejected") == LUA_TFUNCTION)
    w->rejected_ref = luaL_ref(W, LUA_REGISTRYINDEX);
  else
    lua_pop(W, 1);
  if (lua_getfield(W, -1, "init") == LUA_TFUNCTION) {
    const char *err = copy_value(L, ctx_idx, W, 0);
    if (err) {
      lua_pushfstring(L, "context: %s", err);
      return 0;
    }
    lua_pushinteger(W, index);
    if (mo_pcall(W, 2, 0) != LUA_OK) {
      lua_pushfstring(L, "%s.init: %s", handler, lua_tostring(W, -1));
      return 0;
    }
  } else {
    lua_pop(W, 1);
  }
  lua_settop(W, 0);
  lua_gc(W, LUA_GCGEN, 0, 0);
  return 1;
}

static int setup_background(lua_State *L, struct server *s, int bg_idx, const char *module,
                            const char *fn, const char *channel) {
  struct background *bg = calloc(1, sizeof *bg);
  if (bg == NULL) {
    lua_pushliteral(L, "out of memory");
    return 0;
  }
  s->bg = bg;
  if (channel && (bg->channel = strdup(channel)) == NULL) {
    lua_pushliteral(L, "out of memory");
    return 0;
  }
  lua_State *B = state_with_module(L, module);
  if (B == NULL) return 0;
  bg->L = B;
  lua_getfield(B, -1, fn);
  if (!lua_isfunction(B, -1)) {
    lua_pushfstring(L, "background module %s has no function %s", module, fn);
    return 0;
  }
  lua_remove(B, -2);
  lua_getfield(L, bg_idx, "context");
  const char *err = copy_value(L, -1, B, 0);
  lua_pop(L, 1);
  if (err) {
    lua_pushfstring(L, "background context: %s", err);
    return 0;
  }
  lua_createtable(B, 0, 3);
  lua_pushlightuserdata(B, s);
  lua_pushcclosure(B, control_stopping, 1);
  lua_setfield(B, -2, "stopping");
  lua_pushlightuserdata(B, s);
  lua_pushcclosure(B, control_generation, 1);
  lua_setfield(B, -2, "generation");
  if (bg->channel) {
    lua_pushstring(B, bg->channel);
    lua_setfield(B, -2, "channel");
  }
  return 1;
}

/* The batch thread's state: the handler module loaded, init(context, 0) called. */
static int setup_batch(lua_State *L, struct server *s, const char *handler, const char *fn,
                       int ctx_idx) {
  struct batch *b = calloc(1, sizeof *b);
  if (b == NULL) {
    lua_pushliteral(L, "out of memory");
    return 0;
  }
  pthread_mutex_init(&b->lock, NULL);
  pthread_cond_init(&b->cond, NULL);
  b->fn_ref = LUA_NOREF;
  s->batch = b;
  struct worker w = {0};
  if (!setup_worker(L, &w, handler, ctx_idx, 0)) {
    if (w.L) lua_close(w.L);
    return 0;
  }
  b->L = w.L;
  lua_State *B = b->L;
  lua_getglobal(B, "package");
  lua_getfield(B, -1, "loaded");
  lua_getfield(B, -1, handler);
  lua_getfield(B, -1, fn);
  if (!lua_isfunction(B, -1)) {
    lua_pushfstring(L, "handler %s has no %s(jobs) function", handler, fn);
    return 0;
  }
  b->fn_ref = luaL_ref(B, LUA_REGISTRYINDEX);
  lua_settop(B, 0);
  return 1;
}

static int fail_listen(lua_State *L, struct server *s) {
  /* message on top of L */
  server_stop(s, 0, 0);
  server_destroy(s);
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}

/* server.listen{addr=, workers=, handler=, context=, max_body=, header_limit=, conn_limit=,
 *   timeout=, read_timeout=, batch=, background={module=, fn=, context=, channel=}, signals=}
 *   -> server | nil, err
 * batch: the name of the handler module's function that answers deferred requests. */
static int server_listen(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *addr = mo_optfield_string(L, 1, "addr", "127.0.0.1:8080");
  const char *handler = mo_optfield_string(L, 1, "handler", NULL);
  lua_Integer workers = mo_optfield_integer(L, 1, "workers", 2);
  lua_Number max_body = mo_optfield_number(L, 1, "max_body", 25.0 * 1024 * 1024);
  lua_Integer header_limit = mo_optfield_integer(L, 1, "header_limit", 32 * 1024);
  lua_Integer conn_limit = mo_optfield_integer(L, 1, "conn_limit", 1024);
  lua_Number timeout = mo_optfield_number(L, 1, "timeout", 10);
  lua_Number read_timeout = mo_optfield_number(L, 1, "read_timeout", 30);
  int signals = mo_optfield_boolean(L, 1, "signals", 0);
  if (handler == NULL) luaL_argerror(L, 1, "handler (a module name) is required");
  luaL_argcheck(L, workers >= 1 && workers <= 256, 1, "workers must be 1..256");
  luaL_argcheck(L, max_body >= 0 && max_body <= 1e12, 1, "max_body out of range");
  luaL_argcheck(L, header_limit >= 4096 && header_limit <= 1 << 24, 1,
                "header_limit must be 4096..16777216");
  luaL_argcheck(L, conn_limit >= 1 && conn_limit <= 1 << 20, 1, "conn_limit out of range");
  luaL_argcheck(L, timeout >= 1 && timeout <= 86400, 1, "timeout must be 1..86400 seconds");
  luaL_argcheck(L, read_timeout > 0 && read_timeout <= 86400, 1,
                "read_timeout must be 0..86400 seconds");
  int ctx_idx = lua_gettop(L) + 1;
  lua_getfield(L, 1, "context");
  int bg_idx = lua_gettop(L) + 1;
  lua_getfield(L, 1, "background");
  const char *batch_fn = mo_optfield_string(L, 1, "batch", NULL);
  const char *bg_module = NULL, *bg_fn = NULL, *bg_channel = NULL;
  if (!lua_isnil(L, bg_idx)) {
    if (!lua_istable(L, bg_idx)) luaL_argerror(L, 1, "background must be a table");
    bg_module = mo_optfield_string(L, bg_idx, "module", NULL);
    bg_fn = mo_optfield_string(L, bg_idx, "fn", "run");
    bg_channel = mo_optfield_string(L, bg_idx, "channel", NULL);
    if (bg_module == NULL) luaL_argerror(L, 1, "background needs a module");
  }

  struct sockaddr_storage ss;
  socklen_t sslen;
  if (!parse_addr(addr, &ss, &sslen))
    return mo_fail(L, "listen %s: not an address (host:port, [v6]:port or :port)", addr);

  struct server_handle *h = (struct server_handle *)mo_newhandle(L, sizeof *h, SERVER_MT);
  struct server *s = calloc(1, sizeof *s);
  if (s == NULL) return mo_fail(L, "listen %s: out of memory", addr);
  s->listen_fd = -1;
  s->sigfd = -1;
  pthread_mutex_init(&s->lock, NULL);
  cond_init_monotonic(&s->cond);
  cond_init_monotonic(&s->reaper_cond);
  pthread_mutex_init(&s->conns_lock, NULL);
  s->max_body = (size_t)max_body;
  s->read_timeout_ms = (int64_t)(read_timeout * 1000);
  snprintf(s->addr, sizeof s->addr, "%s", addr);
  if (getrandom(&s->id_prefix, sizeof s->id_prefix, 0) != sizeof s->id_prefix)
    s->id_prefix = (uint32_t)time(NULL) ^ (uint32_t)getpid();

  s->workers = calloc((size_t)workers, sizeof *s->workers);
  if (s->workers == NULL) {
    lua_pushliteral(L, "out of memory");
    return fail_listen(L, s);
  }
  s->nworkers = (int)workers;
  for (int i = 0; i < s->nworkers; i++)
    if (!setup_worker(L, &s->workers[i], handler, ctx_idx, i + 1)) return fail_listen(L, s);
  if (bg_module && !setup_background(L, s, bg_idx, bg_module, bg_fn, bg_channel))
    return fail_listen(L, s);
  if (batch_fn && !setup_batch(L, s, handler, batch_fn, ctx_idx)) return fail_listen(L, s);

  s->listen_fd = open_listener(&ss, sslen, &s->port);
  if (s->listen_fd < 0) {
    lua_pushfstring(L, "listen %s: %s", addr, strerror(errno));
    return fail_listen(L, s);
  }

  /* Threads started from here on never take TERM/INT/HUP: the caller reads them. */
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &block, &old);

  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC;
  if (s->batch) flags |= MHD_ALLOW_SUSPEND_RESUME;
  struct MHD_OptionItem opts[] = {
      {MHD_OPTION_LISTEN_SOCKET, s->listen_fd, NULL},
      {MHD_OPTION_CONNECTION_LIMIT, (intptr_t)conn_limit, NULL},
      {MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)ceil(timeout), NULL},
      {MHD_OPTION_CONNECTION_MEMORY_LIMIT, (intptr_t)header_limit, NULL},
      {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, s},
      {MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)on_connection, s},
      {workers > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, (intptr_t)workers, NULL},
      {MHD_OPTION_END, 0, NULL},
  };
  s->daemon =
      MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
  int started = s->daemon != NULL;
  if (started && s->batch) {
    s->batch->started = pthread_create(&s->batch->thread, NULL, batch_main, s) == 0;
    started = s->batch->started;
  }
  if (started) {
    s->reaper_started = pthread_create(&s->reaper, NULL, reaper_main, s) == 0;
    if (s->bg) {
      s->bg->started = pthread_create(&s->bg->thread, NULL, background_main, s) == 0;
      started = s->bg->started;
    }
  }
  if (signals && started) {
    s->sigfd = signalfd(-1, &block, SFD_CLOEXEC | SFD_NONBLOCK);
    s->signals = s->sigfd >= 0;
    s->oldmask = old;
  }
  if (!s->signals) pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (!started) {
    lua_pushfstring(L, "listen %s: cannot start the server threads", addr);
    return fail_listen(L, s);
  }
  h->srv = s;
  return 1;
}

/* ---- methods ------------------------------------------------------------ */

static struct server *check_server(lua_State *L) {
  struct server_handle *h = mo_checkhandle(L, 1, SERVER_MT, "server");
  return h->srv;
}

/* srv:port() -> the port actually bound */
static int srv_port(lua_State *L) {
  lua_pushinteger(L, check_server(L)->port);
  return 1;
}

/* srv:wait{timeout=seconds} -> "TERM" | "INT" | "HUP" | nil (timeout)
 * Signals are only seen when the server was started with signals = true. */
static int srv_wait(lua_State *L) {
  struct server *s = check_server(L);
  double timeout = -1;
  if (lua_istable(L, 2))
    timeout = mo_optfield_number(L, 2, "timeout", -1);
  else if (!lua_isnoneornil(L, 2))
    timeout = luaL_checknumber(L, 2);
  int ms = timeout < 0 ? -1 : (timeout > 86400 ? 86400000 : (int)ceil(timeout * 1000));
  struct pollfd p = {.fd = s->signals ? s->sigfd : -1, .events = POLLIN};
  int64_t deadline = now_ms() + ms;
  for (;;) {
    int rc = poll(&p, 1, ms);
    if (rc > 0 && s->signals) {
      struct signalfd_siginfo si;
      if (read(s->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
        const char *name = si.ssi_signo == SIGTERM  ? "TERM"
                           : si.ssi_signo == SIGINT ? "INT"
                                                    : "HUP";
        lua_pushstring(L, name);
        return 1;
      }
    }
    if (rc == 0) break;
    if (rc < 0 && errno != EINTR) break;
    if (ms >= 0) {
      ms = (int)(deadline - now_ms());
      if (ms <= 0) break;
    }
  }
  lua_pushnil(L);
  return 1;
}

/* srv:reload() -> generation: bump the generation every later req.generation carries */
static int srv_reload(lua_State *L) {
  struct server *s = check_server(L);
  lua_pushinteger(L, (lua_Integer)(atomic_fetch_add(&s->generation, 1) + 1));
  return 1;
}

/* srv:info() -> {addr=, port=, workers=, inflight=, connections=, generation=, stopping=,
 *   background = "running" | "finished" | "failed" | nil, background_error=} */
static int srv_info(lua_State *L) {
  struct server *s = check_server(L);
  lua_createtable(L, 0, 9);
  lua_pushstring(L, s->addr);
  lua_setfield(L, -2, "addr");
  lua_pushinteger(L, s->port);
  lua_setfield(L, -2, "port");
  lua_pushinteger(L, s->nworkers);
  lua_setfield(L, -2, "workers");
  lua_pushinteger(L, (lua_Integer)atomic_load(&s->generation));
  lua_setfield(L, -2, "generation");
  lua_pushboolean(L, atomic_load(&s->stopping));
  lua_setfield(L, -2, "stopping");
  int connections = 0;
  pthread_mutex_lock(&s->conns_lock);
  for (struct conn *k = s->conns; k; k = k->next)
    connections++;
  pthread_mutex_unlock(&s->conns_lock);
  lua_pushinteger(L, connections);
  lua_setfield(L, -2, "connections");
  pthread_mutex_lock(&s->lock);
  lua_pushinteger(L, atomic_load(&s->inflight));
  lua_setfield(L, -2, "inflight");
  if (s->bg) {
    lua_pushstring(L, !s->bg->finished ? "running" : s->bg->error ? "failed" : "finished");
    lua_setfield(L, -2, "background");
    if (s->bg->error) {
      lua_pushstring(L, s->bg->error);
      lua_setfield(L, -2, "background_error");
    }
  }
  pthread_mutex_unlock(&s->lock);
  return 1;
}

/* srv:stop{drain=10, grace=30} -> true | false, message
 * Stops accepting, lets in-flight requests finish for up to `drain` seconds,
 * then tells the background task to finish and waits up to `grace` seconds. */
static int srv_stop(lua_State *L) {
  struct server *s = check_server(L);
  double drain = 10, grace = 30;
  if (lua_istable(L, 2)) {
    drain = mo_optfield_number(L, 2, "drain", drain);
    grace = mo_optfield_number(L, 2, "grace", grace);
  }
  luaL_argcheck(L, drain >= 0 && grace >= 0, 2, "drain and grace must be >= 0");
  if (server_stop(s, drain, grace)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  lua_pushfstring(L, "background task still running after %f seconds", grace);
  return 2;
}

/* srv:close() (also __gc/__close): stop at once, release everything */
static int srv_close(lua_State *L) {
  struct server_handle *h = luaL_checkudata(L, 1, SERVER_MT);
  if (h->srv) {
    server_stop(h->srv, 0, 0);
    server_destroy(h->srv);
    h->srv = NULL;
  }
  return 0;
}

/* server.count(name [, n=1]) -> true: add to a process-wide counter */
static int server_count(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  lua_Number n = luaL_optnumber(L, 2, 1);
  if (!counter_add(name, n)) return luaL_error(L, "server.count: out of memory");
  lua_pushboolean(L, 1);
  return 1;
}

/* server.counts() -> {name = value, ...}: a snapshot of every counter */
static int server_counts(lua_State *L) {
  lua_newtable(L);
  pthread_mutex_lock(&counters_lock);
  for (size_t i = 0; i < ncounters; i++) {
    lua_Number v = counters[i].value;
    lua_Integer iv = (lua_Integer)v;
    if ((lua_Number)iv == v)
      lua_pushinteger(L, iv);
    else
      lua_pushnumber(L, v);
    lua_setfield(L, -2, counters[i].name);
  }
  pthread_mutex_unlock(&counters_lock);
  return 1;
}

int luaopen_moonops_server(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"port", srv_port}, {"wait", srv_wait}, {"reload", srv_reload},
      {"info", srv_info}, {"stop", srv_stop}, {NULL, NULL},
  };
  static const luaL_Reg funcs[] = {
      {"listen", server_listen},
      {"count", server_count},
      {"counts", server_counts},
      {NULL, NULL},
  };
  if (luaL_getmetatable(L, SERVER_MT) == LUA_TNIL) {
    lua_pop(L, 1);
    mo_newclass(L, SERVER_MT, methods, srv_close);
  } else {
    lua_pop(L, 1);
  }
  luaL_newlib(L, funcs);
  lua_pushlightuserdata(L, (void *)&defer_marker);
  lua_setfield(L, -2, "DEFER");
  return 1;
}
