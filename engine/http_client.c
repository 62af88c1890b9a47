/*
 * moonops.http: HTTP(S) requests on libcurl.
 *
 * One request function. Redirects are followed here rather than by libcurl so
 * the rule about credentials is explicit: once a redirect leaves the scheme,
 * host and port of the first URL, Authorization, Proxy-Authorization and
 * Cookie headers are dropped for the rest of the chain.
 *
 * Each Lua state owns one client (a userdata in its registry, closed with the
 * state): a curl share handle (connections, DNS, TLS sessions) and one easy
 * handle that is reset and reused between requests, so keep-alive connections
 * survive from one request to the next. Nothing is shared between states, so
 * server workers, each with its own state, never contend.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "internal.h"

#define CLIENT_MT "moonops.http.client"
#define REQUEST_MT "moonops.http.request"
#define CLIENT_KEY "moonops.http.client.instance" /* registry key of this state's client */
#define DEFAULT_MAX_REDIRECTS 10
#define DEFAULT_CONNECT_TIMEOUT_MS 30000L

/* Process-wide: libcurl's global state, initialised once. */
static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT;

static void global_init(void) {
  global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- the per-state client ----------------------------------------------- */

struct client {
  CURLSH *share;
  CURL *easy; /* reused between requests */
  int busy;   /* the easy handle is in a request (a callback may start another) */
  pthread_mutex_t locks[CURL_LOCK_DATA_LAST];
};

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *ud) {
  (void)h;
  (void)access;
  struct client *c = ud;
  if ((unsigned)data < CURL_LOCK_DATA_LAST) pthread_mutex_lock(&c->locks[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *ud) {
  (void)h;
  struct client *c = ud;
  if ((unsigned)data < CURL_LOCK_DATA_LAST) pthread_mutex_unlock(&c->locks[data]);
}

static int client_close(lua_State *L) {
  struct client **h = luaL_checkudata(L, 1, CLIENT_MT);
  struct client *c = *h;
  if (c == NULL) return 0;
  *h = NULL;
  if (c->easy) curl_easy_cleanup(c->easy);
  if (c->share) curl_share_cleanup(c->share);
  for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
    pthread_mutex_destroy(&c->locks[i]);
  free(c);
  return 0;
}

/* This state's client, created on first use. */
static struct client *get_client(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, CLIENT_KEY) == LUA_TUSERDATA) {
    struct client *c = *(struct client **)lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (c) return c; /* else someone closed it: start a new one */
  } else {
    lua_pop(L, 1);
  }
  struct client **h = (struct client **)mo_newhandle(L, sizeof(struct client *), CLIENT_MT);
  struct client *c = calloc(1, sizeof *c);
  if (c == NULL) luaL_error(L, "out of memory");
  for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
    pthread_mutex_init(&c->locks[i], NULL);
  *h = c;
  c->share = curl_share_init();
  if (c->share) {
    curl_share_setopt(c->share, CURLSHOPT_LOCKFUNC, share_lock);
    curl_share_setopt(c->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
    curl_share_setopt(c->share, CURLSHOPT_USERDATA, c);
    curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
  }
  lua_setfield(L, LUA_REGISTRYINDEX, CLIENT_KEY);
  return c;
}

/* ---- one request ---------------------------------------------------------- */

enum failure { FAIL_NONE, FAIL_NOMEM, FAIL_TOO_LARGE, FAIL_WRITE, FAIL_CALLBACK };
enum sink { SINK_UNDECIDED, SINK_MEMORY, SINK_FILE, SINK_DISCARD };

struct buffer {
  char *data;
  size_t len, cap;
};

struct request {
  CURL *easy;
  struct client *client; /* non-NULL when easy is the client's handle */
  struct curl_slist *headers, *headers_nocred;
  const char *method, *orig_method, *url, *body, *output_file, *unix_socket, *cainfo;
  size_t body_len;
  FILE *upload;
  curl_off_t upload_size;
  int insecure, follow, cross_origin, progress_idx, errmsg_idx;
  long connect_timeout_ms;
  double timeout_s;
  curl_off_t max_body, received;
  struct buffer resp, hdrs;
  char *current_url; /* the URL of this hop (malloc'd) */
  char *origin;      /* scheme://host:port of the first URL */
  char *tmp_path;    /* output_file's temporary sibling while writing */
  FILE *out;
  enum sink sink;
  enum failure fail;
  int write_errno;
  lua_State *L;
  char method_buf[32];
  char errbuf[CURL_ERROR_SIZE];
};

static void request_release(struct request *r) {
  if (r->easy) {
    if (r->client && r->client->easy == r->easy) {
      curl_easy_reset(r->easy);
      r->client->busy = 0;
    } else {
      curl_easy_cleanup(r->easy);
    }
    r->easy = NULL;
  }
  curl_slist_free_all(r->headers);
  curl_slist_free_all(r->headers_nocred);
  r->headers = r->headers_nocred = NULL;
  if (r->upload) fclose(r->upload);
  r->upload = NULL;
  if (r->out) fclose(r->out);
  r->out = NULL;
  if (r->tmp_path) {
    unlink(r->tmp_path);
    free(r->tmp_path);
    r->tmp_path = NULL;
  }
  free(r->resp.data);
  free(r->hdrs.data);
  r->resp.data = r->hdrs.data = NULL;
  free(r->current_url);
  free(r->origin);
  r->current_url = r->origin = NULL;
}

static int request_gc(lua_State *L) {
  struct request *r = luaL_checkudata(L, 1, REQUEST_MT);
  request_release(r);
  return 0;
}

static int buffer_add(struct buffer *b, const char *p, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *d = realloc(b->data, cap);
    if (d == NULL) return -1;
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}

static int is_redirect(long status) {
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

/* Create output_file's temporary sibling; -1 (errno kept) when that fails. */
static int open_output(struct request *r) {
  int fd = mkstemp(r->tmp_path);
  if (fd < 0) {
    r->write_errno = errno;
    free(r->tmp_path);
    r->tmp_path = NULL; /* nothing was created */
    return -1;
  }
  r->out = fdopen(fd, "wb");
  if (r->out == NULL) {
    r->write_errno = errno;
    close(fd);
    return -1;
  }
  return 0;
}

/* Decide where this response's body goes, at its first byte (or its end). */
static void choose_sink(struct request *r) {
  long status = 0;
  char *location = NULL;
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(r->easy, CURLINFO_REDIRECT_URL, &location);
  if (r->follow && is_redirect(status) && location)
    r->sink = SINK_DISCARD;
  else if (r->output_file && status >= 200 && status < 300)
    r->sink = SINK_FILE;
  else
    r->sink = SINK_MEMORY;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  struct request *r = ud;
  size_t len = size * n;
  if (r->sink == SINK_UNDECIDED) choose_sink(r);
  if (r->sink == SINK_DISCARD) return len;
  r->received += (curl_off_t)len;
  if (r->max_body >= 0 && r->received > r->max_body) {
    r->fail = FAIL_TOO_LARGE;
    return 0;
  }
  if (r->sink == SINK_FILE) {
    if (fwrite(p, 1, len, r->out) != len) {
      r->write_errno = errno;
      r->fail = FAIL_WRITE;
      return 0;
    }
    return len;
  }
  if (buffer_add(&r->resp, p, len) < 0) {
    r->fail = FAIL_NOMEM;
    return 0;
  }
  return len;
}

/* Header lines of the last response only: a status line starts over. */
static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  struct request *r = ud;
  size_t len = size * n;
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    r->hdrs.len = 0;
    return len;
  }
  if (buffer_add(&r->hdrs, p, len) < 0) {
    r->fail = FAIL_NOMEM;
    return 0;
  }
  return len;
}

static size_t on_read(char *p, size_t size, size_t n, void *ud) {
  struct request *r = ud;
  size_t got = fread(p, size, n, r->upload);
  if (got == 0 && ferror(r->upload)) return CURL_READFUNC_ABORT;
  return got;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow) {
  struct request *r = ud;
  lua_State *L = r->L;
  if (!lua_checkstack(L, 8)) {
    r->fail = FAIL_NOMEM;
    return 1;
  }
  lua_pushvalue(L, r->progress_idx);
  lua_pushinteger(L, (lua_Integer)dltotal);
  lua_pushinteger(L, (lua_Integer)dlnow);
  lua_pushinteger(L, (lua_Integer)ultotal);
  lua_pushinteger(L, (lua_Integer)ulnow);
  if (mo_pcall(L, 4, 0) != LUA_OK) {
    lua_replace(L, r->errmsg_idx);
    r->fail = FAIL_CALLBACK;
    return 1;
  }
  return 0;
}

/* scheme://host:port of url (lower case), malloc'd; NULL when it does not parse. */
static char *origin_of(const char *url) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL, *port = NULL, *out = NULL;
  if (u && curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
    curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT);
    size_t n = strlen(scheme) + strlen(host) + (port ? strlen(port) : 0) + 8;
    out = malloc(n);
    if (out) {
      snprintf(out, n, "%s://%s:%s", scheme, host, port ? port : "");
      for (char *c = out; *c; c++)
        if (*c >= 'A' && *c <= 'Z') *c = (char)(*c - 'A' + 'a');
    }
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return out;
}

/* Push url without userinfo, query or fragment, for messages. */
static void push_safe_url(lua_State *L, const char *url) {
  CURLU *u = curl_url();
  char *out = NULL;
  if (u && curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK) {
    curl_url_set(u, CURLUPART_USER, NULL, 0);
    curl_url_set(u, CURLUPART_PASSWORD, NULL, 0);
    curl_url_set(u, CURLUPART_OPTIONS, NULL, 0);
    curl_url_set(u, CURLUPART_QUERY, NULL, 0);
    curl_url_set(u, CURLUPART_FRAGMENT, NULL, 0);
    curl_url_get(u, CURLUPART_URL, &out, 0);
  }
  if (out) {
    lua_pushstring(L, out);
  } else {
    /* Not a URL curl accepts: keep what precedes any userinfo, query or fragment. */
    const char *end = url + strcspn(url, "?#");
    const char *at = memchr(url, '@', (size_t)(end - url));
    const char *scheme_end = strstr(url, "://");
    if (at && scheme_end && scheme_end < at) {
      lua_pushlstring(L, url, (size_t)(scheme_end + 3 - url));
      lua_pushlstring(L, at + 1, (size_t)(end - at - 1));
      lua_concat(L, 2);
    } else {
      lua_pushlstring(L, url, (size_t)(end - url));
    }
  }
  curl_free(out);
  curl_url_cleanup(u);
}

static int valid_token(const char *s) {
  if (*s == '\0') return 0;
  for (; *s; s++)
    if (!strchr("!#$%&'*+-.^_`|~", *s) && !(*s >= '0' && *s <= '9') && !(*s >= 'a' && *s <= 'z') &&
        !(*s >= 'A' && *s <= 'Z'))
      return 0;
  return 1;
}

static int is_credential_header(const char *name) {
  return strcasecmp(name, "authorization") == 0 || strcasecmp(name, "proxy-authorization") == 0 ||
         strcasecmp(name, "cookie") == 0;
}

static int slist_add(struct curl_slist **list, const char *line) {
  struct curl_slist *l = curl_slist_append(*list, line);
  if (l == NULL) return -1;
  *list = l;
  return 0;
}

/* Build both header lists from opts.headers (at absolute index idx, a table or nil). */
static void build_headers(lua_State *L, struct request *r, int idx) {
  int has_expect = 0;
  if (!lua_isnil(L, idx)) {
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      if (lua_type(L, -2) != LUA_TSTRING || !valid_token(lua_tostring(L, -2)))
        luaL_error(L, "option 'headers': header names must be HTTP tokens");
      const char *name = lua_tostring(L, -2);
      int t = lua_type(L, -1);
      if (t != LUA_TSTRING && t != LUA_TNUMBER && !(t == LUA_TBOOLEAN && !lua_toboolean(L, -1)))
        luaL_error(L, "option 'headers': value of '%s' must be a string, a number or false", name);
      if (strcasecmp(name, "expect") == 0) has_expect = 1;
      const char *line;
      if (t == LUA_TBOOLEAN) {
        line = lua_pushfstring(L, "%s:", name); /* removes a header curl would add */
      } else {
        size_t vlen;
        const char *value = lua_tolstring(L, -1, &vlen);
        if (strlen(value) != vlen || strpbrk(value, "\r\n"))
          luaL_error(L, "option 'headers': value of '%s' contains a line break or NUL", name);
        /* "Name;" sends a header with an empty value; "Name:" would remove it. */
        line = vlen ? lua_pushfstring(L, "%s: %s", name, value) : lua_pushfstring(L, "%s;", name);
      }
      if (slist_add(&r->headers, line) < 0 ||
          (!is_credential_header(name) && slist_add(&r->headers_nocred, line) < 0))
        luaL_error(L, "out of memory");
      lua_pop(L, 2);
    }
  }
  /* No "Expect: 100-continue" round trip on uploads unless asked for. */
  if (!has_expect &&
      (slist_add(&r->headers, "Expect:") < 0 || slist_add(&r->headers_nocred, "Expect:") < 0))
    luaL_error(L, "out of memory");
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define SET(opt, val)                                                                              \
  do {                                                                                             \
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, opt, val);                                        \
  } while (0)

/* Configure the easy handle for one hop. */
static CURLcode setup_hop(struct request *r, double deadline) {
  CURL *e = r->easy;
  CURLcode rc = CURLE_OK;
  curl_easy_reset(e);
  r->errbuf[0] = '\0';
  r->sink = SINK_UNDECIDED;
  r->resp.len = r->hdrs.len = 0;
  r->received = 0;
  if (r->client && r->client->share) SET(CURLOPT_SHARE, r->client->share);
  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_ERRORBUFFER, r->errbuf);
  SET(CURLOPT_URL, r->current_url);
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_USERAGENT, "moonops/" MOONOPS_VERSION);
  SET(CURLOPT_FOLLOWLOCATION, 0L);
  SET(CURLOPT_HTTPHEADER, r->cross_origin ? r->headers_nocred : r->headers);
  SET(CURLOPT_WRITEFUNCTION, on_body);
  SET(CURLOPT_WRITEDATA, r);
  SET(CURLOPT_HEADERFUNCTION, on_header);
  SET(CURLOPT_HEADERDATA, r);
  SET(CURLOPT_CONNECTTIMEOUT_MS, r->connect_timeout_ms);
  if (deadline > 0) {
    double left = deadline - now_s();
    SET(CURLOPT_TIMEOUT_MS, left > 0.001 ? (long)(left * 1000) : 1L);
  }
  if (r->unix_socket && !r->cross_origin) {
    SET(CURLOPT_UNIX_SOCKET_PATH, r->unix_socket);
  }
  if (r->cainfo) SET(CURLOPT_CAINFO, r->cainfo);
  if (r->insecure) {
    SET(CURLOPT_SSL_VERIFYPEER, 0L);
    SET(CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (r->progress_idx) {
    SET(CURLOPT_NOPROGRESS, 0L);
    SET(CURLOPT_XFERINFOFUNCTION, on_progress);
    SET(CURLOPT_XFERINFODATA, r);
  }

  const char *m = r->method;
  int is_post = strcmp(m, "POST") == 0;
  if (r->upload) {
    if (fseek(r->upload, 0, SEEK_SET) != 0) return CURLE_READ_ERROR;
    SET(CURLOPT_POST, 1L);
    SET(CURLOPT_READFUNCTION, on_read);
    SET(CURLOPT_READDATA, r);
    SET(CURLOPT_POSTFIELDSIZE_LARGE, r->upload_size);
    if (!is_post) SET(CURLOPT_CUSTOMREQUEST, m);
  } else if (r->body || is_post || strcmp(m, "PUT") == 0 || strcmp(m, "PATCH") == 0) {
    /* A body, or an empty one so these methods send Content-Length: 0. */
    SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(r->body ? r->body_len : 0));
    SET(CURLOPT_POSTFIELDS, r->body ? r->body : "");
    if (!is_post) SET(CURLOPT_CUSTOMREQUEST, m);
  } else if (strcmp(m, "HEAD") == 0) {
    SET(CURLOPT_NOBODY, 1L);
  } else if (strcmp(m, "GET") != 0) {
    SET(CURLOPT_CUSTOMREQUEST, m);
  }
  return rc;
}

/* Turn a redirect into the next hop; returns 0, or -1 when out of memory. */
static int next_hop(struct request *r, long status, const char *location) {
  char *next = strdup(location);
  if (next == NULL) return -1;
  free(r->current_url);
  r->current_url = next;
  if (!r->cross_origin) {
    char *o = origin_of(next);
    if (o == NULL || r->origin == NULL || strcmp(o, r->origin) != 0) r->cross_origin = 1;
    free(o);
  }
  int is_head = strcmp(r->method, "HEAD") == 0;
  if ((status == 303 && !is_head) ||
      ((status == 301 || status == 302) && strcmp(r->method, "POST") == 0)) {
    r->method = "GET";
    r->body = NULL;
    r->body_len = 0;
    if (r->upload) fclose(r->upload);
    r->upload = NULL;
  }
  return 0;
}

static const char *curl_code_name(CURLcode rc) {
  switch (rc) {
  case CURLE_OPERATION_TIMEDOUT: return "timeout";
  case CURLE_COULDNT_CONNECT: return "connect";
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY: return "resolve";
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE: return "tls";
  case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_URL_MALFORMAT: return "url";
  case CURLE_GOT_NOTHING:
  case CURLE_RECV_ERROR:
  case CURLE_SEND_ERROR:
  case CURLE_PARTIAL_FILE: return "transfer";
  default: return "other";
  }
}

/* nil, "METHOD url: message", code */
static int request_fail(lua_State *L, struct request *r, const char *orig_url, CURLcode rc) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s ", r->orig_method);
  push_safe_url(L, orig_url);
  lua_pushliteral(L, ": ");
  const char *code;
  switch (r->fail) {
  case FAIL_TOO_LARGE:
    lua_pushfstring(L, "response body larger than max_body (%I bytes)", (lua_Integer)r->max_body);
    code = "too_large";
    break;
  case FAIL_WRITE:
    lua_pushfstring(L, "write %s: %s", r->output_file, strerror(r->write_errno));
    code = "write";
    break;
  case FAIL_CALLBACK:
    lua_pushvalue(L, r->errmsg_idx);
    if (!lua_isstring(L, -1)) {
      lua_pop(L, 1);
      lua_pushliteral(L, "progress callback failed");
    }
    code = "aborted";
    break;
  case FAIL_NOMEM:
    lua_pushliteral(L, "out of memory");
    code = "nomem";
    break;
  default:
    if (rc == CURLE_TOO_MANY_REDIRECTS) {
      lua_pushliteral(L, "too many redirects");
      code = "redirects";
    } else {
      lua_pushstring(L, r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc));
      code = curl_code_name(rc);
    }
    break;
  }
  lua_concat(L, 4);
  lua_pushstring(L, code);
  request_release(r);
  return 3;
}

/* Parse the header block into a table of lower-cased names; repeats joined with ", ". */
static void push_headers(lua_State *L, const struct buffer *b) {
  lua_newtable(L);
  int t = lua_gettop(L);
  const char *p = b->data, *end = b->data ? b->data + b->len : NULL;
  luaL_Buffer name;
  while (p && p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *next = eol ? eol + 1 : end;
    if (!eol) eol = end;
    if (eol > p && eol[-1] == '\r') eol--;
    const char *colon = memchr(p, ':', (size_t)(eol - p));
    if (colon && colon > p && *p != ' ' && *p != '\t') {
      luaL_buffinit(L, &name);
      for (const char *c = p; c < colon; c++)
        luaL_addchar(&name, (*c >= 'A' && *c <= 'Z') ? (char)(*c - 'A' + 'a') : *c);
      luaL_pushresult(&name);
      const char *v = colon + 1, *ve = eol;
      while (v < ve && (*v == ' ' || *v == '\t'))
        v++;
      while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
        ve--;
      lua_pushvalue(L, -1);
      if (lua_rawget(L, t) == LUA_TSTRING) {
        lua_pushliteral(L, ", ");
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_concat(L, 3);
      } else {
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(ve - v));
      }
      lua_rawset(L, t);
    }
    p = next;
  }
}

static const char *opt_field(lua_State *L, const char *key, size_t *len) {
  int t = lua_getfield(L, 1, key); /* stays on the stack: keeps the string alive */
  if (t == LUA_TNIL) return NULL;
  if (t != LUA_TSTRING) luaL_error(L, "option '%s' must be a string", key);
  return lua_tolstring(L, -1, len);
}

/* http.request{method=, url=, headers=, body=, body_file=, output_file=, timeout=,
 *   connect_timeout=, follow=, unix_socket=, cainfo=, insecure=, progress=, max_body=}
 *   -> {status=, headers=, body=, url=} | nil, err, code */
static int http_request(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  luaL_checkstack(L, 40, "http.request");
  struct request *r = lua_newuserdatauv(L, sizeof *r, 0);
  memset(r, 0, sizeof *r);
  luaL_setmetatable(L, REQUEST_MT);
  r->L = L;

  r->url = opt_field(L, "url", NULL);
  if (r->url == NULL) return luaL_error(L, "option 'url' is required");
  const char *method = opt_field(L, "method", NULL);
  if (method == NULL) method = "GET";
  if (!valid_token(method) || strlen(method) >= sizeof r->method_buf)
    return luaL_error(L, "option 'method' is not an HTTP method");
  for (size_t i = 0; method[i]; i++)
    r->method_buf[i] = (method[i] >= 'a' && method[i] <= 'z') ? (char)(method[i] - 32) : method[i];
  r->method = r->orig_method = r->method_buf;
  r->body = opt_field(L, "body", &r->body_len);
  const char *body_file = opt_field(L, "body_file", NULL);
  if (r->body && body_file) return luaL_error(L, "options 'body' and 'body_file' are exclusive");
  r->output_file = opt_field(L, "output_file", NULL);
  r->unix_socket = opt_field(L, "unix_socket", NULL);
  r->cainfo = opt_field(L, "cainfo", NULL);
  r->insecure = mo_optfield_boolean(L, 1, "insecure", 0);
  r->timeout_s = mo_optfield_number(L, 1, "timeout", 0);
  lua_Number ct = mo_optfield_number(L, 1, "connect_timeout", DEFAULT_CONNECT_TIMEOUT_MS / 1000.0);
  if (r->timeout_s < 0 || ct < 0) return luaL_error(L, "timeouts must not be negative");
  r->connect_timeout_ms = ct > 0 ? (long)(ct * 1000) : 0;
  if (r->connect_timeout_ms == 0 && ct > 0) r->connect_timeout_ms = 1;
  r->max_body = (curl_off_t)mo_optfield_integer(L, 1, "max_body", -1);
  int ft = lua_getfield(L, 1, "follow");
  if (ft == LUA_TNUMBER) {
    r->follow = (int)luaL_checkinteger(L, -1);
    if (r->follow < 0) return luaL_error(L, "option 'follow' must be a boolean or a count");
  } else if (ft == LUA_TBOOLEAN) {
    r->follow = lua_toboolean(L, -1) ? DEFAULT_MAX_REDIRECTS : 0;
  } else if (ft != LUA_TNIL) {
    return luaL_error(L, "option 'follow' must be a boolean or a count");
  }
  lua_pop(L, 1);
  int pt = lua_getfield(L, 1, "progress");
  if (pt != LUA_TNIL && pt != LUA_TFUNCTION)
    return luaL_error(L, "option 'progress' must be a function");
  r->progress_idx = pt == LUA_TFUNCTION ? lua_gettop(L) : 0;
  lua_pushnil(L); /* a slot for a callback's error */
  r->errmsg_idx = lua_gettop(L);
  int ht = lua_getfield(L, 1, "headers");
  if (ht != LUA_TNIL && ht != LUA_TTABLE) return luaL_error(L, "option 'headers' must be a table");
  build_headers(L, r, lua_gettop(L));

  pthread_once(&global_once, global_init);
  if (global_rc != CURLE_OK)
    return mo_fail(L, "http: libcurl failed to initialise: %s", curl_easy_strerror(global_rc));

  if (body_file) {
    struct stat st;
    r->upload = fopen(body_file, "rb");
    if (r->upload == NULL || fstat(fileno(r->upload), &st) != 0) {
      int e = errno;
      request_release(r);
      lua_pushnil(L);
      lua_pushfstring(L, "read %s: %s", body_file, strerror(e));
      lua_pushliteral(L, "read");
      return 3;
    }
    r->upload_size = (curl_off_t)st.st_size;
  }
  if (r->output_file) {
    size_t n = strlen(r->output_file) + 16;
    r->tmp_path = malloc(n);
    if (r->tmp_path == NULL) return luaL_error(L, "out of memory");
    snprintf(r->tmp_path, n, "%s.tmp-XXXXXX", r->output_file);
    if (open_output(r) < 0) {
      r->fail = FAIL_WRITE;
      return request_fail(L, r, r->url, CURLE_OK);
    }
  }

  r->current_url = strdup(r->url);
  r->origin = origin_of(r->url);
  if (r->current_url == NULL) return luaL_error(L, "out of memory");
  struct client *c = get_client(L);
  if (!c->busy && c->easy == NULL) c->easy = curl_easy_init();
  if (!c->busy && c->easy) {
    r->easy = c->easy;
    r->client = c;
    c->busy = 1;
  } else {
    r->easy = curl_easy_init(); /* a request from inside a callback: its own handle */
  }
  if (r->easy == NULL) return mo_fail(L, "http: cannot create a curl handle");

  double deadline = r->timeout_s > 0 ? now_s() + r->timeout_s : 0;
  long status = 0;
  for (int hops = 0;; hops++) {
    CURLcode rc = setup_hop(r, deadline);
    if (rc == CURLE_OK) rc = curl_easy_perform(r->easy);
    if (rc != CURLE_OK || r->fail != FAIL_NONE) return request_fail(L, r, r->url, rc);
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    char *location = NULL;
    curl_easy_getinfo(r->easy, CURLINFO_REDIRECT_URL, &location);
    if (r->follow && is_redirect(status) && location) {
      if (hops >= r->follow) return request_fail(L, r, r->url, CURLE_TOO_MANY_REDIRECTS);
      if (next_hop(r, status, location) < 0) {
        r->fail = FAIL_NOMEM;
        return request_fail(L, r, r->url, CURLE_OK);
      }
      continue;
    }
    if (r->sink == SINK_UNDECIDED) choose_sink(r); /* a response without a body */
    break;
  }

  if (r->sink == SINK_FILE) {
    int bad = fflush(r->out) != 0 || fsync(fileno(r->out)) != 0;
    bad = (fclose(r->out) != 0) || bad;
    r->out = NULL;
    if (bad || rename(r->tmp_path, r->output_file) != 0) {
      r->write_errno = errno;
      r->fail = FAIL_WRITE;
      return request_fail(L, r, r->url, CURLE_OK);
    }
    free(r->tmp_path);
    r->tmp_path = NULL;
  }

  lua_createtable(L, 0, 4);
  lua_pushinteger(L, status);
  lua_setfield(L, -2, "status");
  char *effective = NULL;
  curl_easy_getinfo(r->easy, CURLINFO_EFFECTIVE_URL, &effective);
  lua_pushstring(L, effective ? effective : r->current_url);
  lua_setfield(L, -2, "url");
  push_headers(L, &r->hdrs);
  lua_setfield(L, -2, "headers");
  if (r->sink != SINK_FILE) {
    lua_pushlstring(L, r->resp.data ? r->resp.data : "", r->resp.len);
    lua_setfield(L, -2, "body");
  }
  request_release(r);
  return 1;
}

/* http.parse_url(url) -> {scheme=, user=, password=, host=, port=, path=, query=, fragment=}
 *   | nil, err   (port is an integer, the scheme's default when absent) */
static int http_parse_url(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  CURLU *u = curl_url();
  if (u == NULL) return luaL_error(L, "out of memory");
  CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME);
  if (uc != CURLUE_OK) {
    curl_url_cleanup(u);
    lua_pushnil(L);
    lua_pushliteral(L, "parse URL ");
    push_safe_url(L, url);
    lua_pushfstring(L, ": %s", curl_url_strerror(uc));
    lua_concat(L, 3);
    return 2;
  }
  static const struct {
    CURLUPart part;
    const char *name;
  } parts[] = {{CURLUPART_SCHEME, "scheme"},     {CURLUPART_USER, "user"},
               {CURLUPART_PASSWORD, "password"}, {CURLUPART_HOST, "host"},
               {CURLUPART_PORT, "port"},         {CURLUPART_PATH, "path"},
               {CURLUPART_QUERY, "query"},       {CURLUPART_FRAGMENT, "fragment"}};
  lua_createtable(L, 0, 8);
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
    char *v = NULL;
    unsigned flags = parts[i].part == CURLUPART_PORT ? CURLU_DEFAULT_PORT : 0;
    if (parts[i].part == CURLUPART_USER || parts[i].part == CURLUPART_PASSWORD)
      flags = CURLU_URLDECODE;
    if (curl_url_get(u, parts[i].part, &v, flags) == CURLUE_OK && v) {
      if (parts[i].part == CURLUPART_PORT)
        lua_pushinteger(L, strtol(v, NULL, 10));
      else
        lua_pushstring(L, v);
      lua_setfield(L, -2, parts[i].name);
    }
    curl_free(v);
  }
  curl_url_cleanup(u);
  return 1;
}

/* http.redact_url(url) -> url without userinfo, query and fragment (what errors show) */
static int http_redact_url(lua_State *L) {
  push_safe_url(L, luaL_checkstring(L, 1));
  return 1;
}

static const luaL_Reg http_funcs[] = {
    {"request", http_request},
    {"parse_url", http_parse_url},
    {"redact_url", http_redact_url},
    {NULL, NULL},
};

int luaopen_moonops_http(lua_State *L) {
  pthread_once(&global_once, global_init);
  mo_newclass(L, CLIENT_MT, (const luaL_Reg[]){{NULL, NULL}}, client_close);
  if (luaL_newmetatable(L, REQUEST_MT)) {
    lua_pushcfunction(L, request_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, http_funcs);
  lua_pushstring(L, curl_version_info(CURLVERSION_NOW)->version);
  lua_setfield(L, -2, "curl_version");
  return 1;
}
