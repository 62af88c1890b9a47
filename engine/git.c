/*
 * moonops.git: repositories on libgit2. Open, clone, fetch, merge in memory,
 * push with an expected old value, export trees, read files, diff, log.
 *
 * libgit2 is initialised once per process (the only process-wide state).
 * Network callbacks run on the calling thread, so a Lua progress function is
 * called through a protected trampoline; an error in it aborts the operation.
 */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <fnmatch.h>
#include <limits.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <git2.h>
#include <git2/sys/index.h>
#include <git2/sys/transport.h>
#include <openssl/evp.h>
#include <zlib.h>

#include "internal.h"

#define REPO_MT "moonops.git.repo"
#define MAX_AUTH_ATTEMPTS 3
#define SHA_HEX (GIT_OID_HEXSZ + 1)

static pthread_once_t git_once = PTHREAD_ONCE_INIT;

static void git_global_init(void) {
  git_libgit2_init();
}

/* ---- messages ------------------------------------------------------------ */

/*
 * Copy `in` to `out` dropping the userinfo of every URL ("https://user:tok@h/"
 * -> "https://h/"), so credentials never reach a message.
 */
static void redact(const char *in, char *out, size_t size) {
  size_t o = 0;
  if (size == 0) return;
  while (*in && o + 1 < size) {
    if (in[0] == ':' && in[1] == '/' && in[2] == '/') {
      for (int k = 0; k < 3 && o + 1 < size; k++)
        out[o++] = *in++;
      const char *end = in;
      while (*end && *end != '/' && *end != ' ' && *end != '\'' && *end != '"' && *end != '\n')
        end++;
      const char *at = NULL;
      for (const char *p = in; p < end; p++)
        if (*p == '@') at = p;
      if (at) in = at + 1;
      continue;
    }
    out[o++] = *in++;
  }
  out[o] = '\0';
}

/* Push `s` with every occurrence of `secret` replaced by "***". */
static void push_masked(lua_State *L, const char *s, const char *secret) {
  if (secret && strlen(secret) >= 4 && strstr(s, secret)) {
    luaL_gsub(L, s, secret, "***");
  } else {
    lua_pushstring(L, s);
  }
}

static const char *code_name(int rc) {
  switch (rc) {
  case GIT_ENOTFOUND: return "ENOTFOUND";
  case GIT_EEXISTS: return "EEXIST";
  case GIT_EAUTH: return "EAUTH";
  case GIT_ECONFLICT: return "ECONFLICT";
  case GIT_ENONFASTFORWARD: return "EREJECTED";
  case GIT_EUNBORNBRANCH: return "EUNBORN";
  case GIT_EMODIFIED: return "EMOVED";
  case GIT_EINVALIDSPEC: return "EINVAL";
  case GIT_ECERTIFICATE: return "ECERT";
  default: return "EGIT";
  }
}

/*
 * Return nil, "<what>: <reason>", code. `reason` is ours when given, else
 * libgit2's last error. URLs are redacted and `secret` masked in the result.
 */
static int fail_with(lua_State *L, int rc, const char *secret, const char *reason, const char *code,
                     const char *fmt, ...) {
  char what[1024], why[2048], line[3200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  if (reason == NULL || reason[0] == '\0') {
    const git_error *e = git_error_last();
    if (e && e->message && e->message[0])
      reason = e->message;
    else if (rc == GIT_ENOTFOUND)
      reason = "not found";
    else
      reason = "failed";
  }
  redact(reason, why, sizeof why);
  size_t n = strlen(why);
  while (n > 0 && (why[n - 1] == '\n' || why[n - 1] == '.' || why[n - 1] == ' '))
    why[--n] = '\0';
  snprintf(line, sizeof line, "%s: %s", what, why);
  redact(line, line, sizeof line); /* in-place is safe: output never outgrows input */
  lua_pushnil(L);
  push_masked(L, line, secret);
  lua_pushstring(L, code ? code : code_name(rc));
  return 3;
}

#define fail_git(L, rc, ...) fail_with(L, rc, NULL, NULL, NULL, __VA_ARGS__)

/* ---- handles ------------------------------------------------------------- */

static git_repository *check_repo(lua_State *L, int idx) {
  return *(git_repository **)mo_checkhandle(L, idx, REPO_MT, "git repository");
}

static int repo_close(lua_State *L) {
  git_repository **h = luaL_checkudata(L, 1, REPO_MT);
  if (*h) {
    git_repository_free(*h);
    *h = NULL;
  }
  return 0;
}

static int repo_tostring(lua_State *L) {
  git_repository **h = luaL_checkudata(L, 1, REPO_MT);
  if (*h)
    lua_pushfstring(L, "git repository (%s)", git_repository_path(*h));
  else
    lua_pushliteral(L, "git repository (closed)");
  return 1;
}

static void push_oid(lua_State *L, const git_oid *id) {
  char hex[SHA_HEX];
  git_oid_tostr(hex, sizeof hex, id);
  lua_pushstring(L, hex);
}

/* Resolve `rev` (sha, ref, revspec) to the commit it names. */
static int lookup_commit(git_commit **out, git_repository *repo, const char *rev) {
  git_object *obj = NULL;
  int rc = git_revparse_single(&obj, repo, rev);
  if (rc < 0) return rc;
  rc = git_object_peel((git_object **)out, obj, GIT_OBJECT_COMMIT);
  git_object_free(obj);
  return rc;
}

static int lookup_tree(git_tree **out, git_repository *repo, const char *rev) {
  git_object *obj = NULL;
  int rc = git_revparse_single(&obj, repo, rev);
  if (rc < 0) return rc;
  rc = git_object_peel((git_object **)out, obj, GIT_OBJECT_TREE);
  git_object_free(obj);
  return rc;
}

/* ---- network: credentials, progress, push status ------------------------ */

typedef struct {
  lua_State *L;
  int progress; /* stack index of a Lua function, or 0 */
  const char *username, *token, *ssh_key, *ssh_pubkey, *ssh_passphrase;
  int attempts;
  int ssh_offered;                 /* ssh keys (or the agent) offered so far */
  char ssh_user[128];              /* the user they were offered for */
  char ssh_current[PATH_MAX + 16]; /* "ssh key <path>" or "the ssh agent" last offered, or "" */
  char ssh_tried[1024];            /* what was rejected before it, "; "-separated */
  char url[1024];                  /* the remote's URL, for messages about its host */
  int ssh_failed;                  /* an ssh key could not be used (unreadable, wrong passphrase) */
  int moved;
  int has_expect;
  struct wire_push *wire; /* a push over the network done here, or NULL */
  git_oid expect;
  char failure[1024];    /* our reason when a callback aborted */
  char rejected[1024];   /* "<ref>: <status>" of the first rejected ref */
  char remote_msg[1536]; /* what the server (or a local hook) printed */
} netctx;

typedef struct {
  const char *phase;
  const char *names[8];
  lua_Integer values[8];
  int n;
} progress_event;

/* Trampoline run under lua_pcall: build the event table and call the user's function. */
static int progress_trampoline(lua_State *L) {
  const progress_event *ev = lua_touserdata(L, 2);
  lua_createtable(L, 0, ev->n + 1);
  lua_pushstring(L, ev->phase);
  lua_setfield(L, -2, "phase");
  for (int i = 0; i < ev->n; i++) {
    lua_pushinteger(L, ev->values[i]);
    lua_setfield(L, -2, ev->names[i]);
  }
  lua_replace(L, 2);
  lua_call(L, 1, 0);
  return 0;
}

static int report_progress(netctx *n, const progress_event *ev) {
  lua_State *L = n->L;
  if (!n->progress) return 0;
  if (!lua_checkstack(L, 4)) return 0;
  lua_pushcfunction(L, progress_trampoline);
  lua_pushvalue(L, n->progress);
  lua_pushlightuserdata(L, (void *)ev);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    snprintf(n->failure, sizeof n->failure, "progress callback failed: %s",
             msg ? msg : "(error object is not a string)");
    lua_pop(L, 1);
    return GIT_EUSER;
  }
  return 0;
}

static int on_transfer(const git_indexer_progress *p, void *payload) {
  progress_event ev = {"receiving",
                       {"received_objects", "total_objects", "indexed_objects", "received_bytes",
                        "indexed_deltas", "total_deltas"},
                       {p->received_objects, p->total_objects, p->indexed_objects,
                        (lua_Integer)p->received_bytes, p->indexed_deltas, p->total_deltas},
                       6};
  if (p->total_objects > 0 && p->received_objects == p->total_objects) ev.phase = "resolving";
  return report_progress(payload, &ev);
}

static int on_push_transfer(unsigned int current, unsigned int total, size_t bytes, void *payload) {
  progress_event ev = {
      "pushing", {"current", "total", "bytes"}, {current, total, (lua_Integer)bytes}, 3};
  return report_progress(payload, &ev);
}

static int on_sideband(const char *str, int len, void *payload) {
  netctx *n = payload;
  size_t have = strlen(n->remote_msg);
  size_t room = sizeof n->remote_msg - 1 - have;
  size_t take = (size_t)len < room ? (size_t)len : room;
  memcpy(n->remote_msg + have, str, take);
  n->remote_msg[have + take] = '\0';
  return 0;
}

/* ---- ssh credentials ----
 *
 * libgit2 asks again each time the server refuses what it was given. Offered in turn, each
 * once, at most MAX_AUTH_ATTEMPTS in all: the key file given; else the agent (when
 * $SSH_AUTH_SOCK names a socket), then the default keys ~/.ssh/id_ed25519, id_ecdsa and
 * id_rsa that exist, as ssh does. "~" is $HOME, read at each connection as libgit2 1.5 reads
 * ~/.ssh/known_hosts (its ~/.gitconfig comes from $HOME as it was at initialisation). An
 * OpenSSH server counts every refusal (and libgit2 asks it for the methods again after each
 * one), so its default MaxAuthTries of 6 also ends the conversation after three keys.
 */

enum { SSH_NONE, SSH_KEY_FILE, SSH_AGENT };

/* Format into `buf` from its current end; a message too long is cut short. */
__attribute__((format(printf, 3, 4))) static void append(char *buf, size_t size, const char *fmt,
                                                         ...) {
  size_t have = strnlen(buf, size);
  if (have + 1 >= size) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf + have, size - have, fmt, ap);
  va_end(ap);
}

static const char *const default_ssh_keys[] = {"id_ed25519", "id_ecdsa", "id_rsa"};

/* The directory holding .ssh: $HOME, or NULL when it is not set. */
static const char *ssh_home(void) {
  const char *home = getenv("HOME");
  return home && *home ? home : NULL;
}

/* The index-th ssh credential to offer (a key file into `path`, or the agent). */
static int ssh_source(const netctx *n, int index, char *path, size_t size) {
  if (n->ssh_key) {
    if (index > 0) return SSH_NONE;
    snprintf(path, size, "%s", n->ssh_key);
    return SSH_KEY_FILE;
  }
  const char *sock = getenv("SSH_AUTH_SOCK");
  struct stat st;
  if (sock && *sock && stat(sock, &st) == 0 && S_ISSOCK(st.st_mode)) {
    if (index == 0) return SSH_AGENT;
    index--;
  }
  const char *home = ssh_home();
  if (!home) return SSH_NONE;
  for (size_t i = 0; i < sizeof default_ssh_keys / sizeof *default_ssh_keys; i++) {
    if (snprintf(path, size, "%s/.ssh/%s", home, default_ssh_keys[i]) >= (int)size) continue;
    if (access(path, R_OK) == 0 && index-- == 0) return SSH_KEY_FILE;
  }
  return SSH_NONE;
}

/*
 * Whether the private key file at `path` holds an RSA key: PEM, or OpenSSH's format, whose
 * public part comes first and unencrypted ("openssh-key-v1", cipher, kdf and its options, the
 * key count, then the public key, which starts with its type).
 */
static int is_rsa_key(const char *path) {
  char text[4096];
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t len = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[len] = '\0';
  if (strstr(text, "BEGIN RSA PRIVATE KEY")) return 1;
  const char *b = strstr(text, "BEGIN OPENSSH PRIVATE KEY-----");
  if (!b) return 0;
  unsigned char b64[200], raw[160];
  size_t n = 0;
  for (b += 30; *b && n < sizeof b64; b++)
    if (*b != '\n' && *b != '\r') b64[n++] = (unsigned char)*b;
  int got = EVP_DecodeBlock(raw, b64, (int)(n - n % 4));
  return got > 0 && memmem(raw, (size_t)got, "\0\0\0\7ssh-rsa", 11) != NULL;
}

/* Move what was offered last to the list of refused ssh credentials. */
static void ssh_note_rejected(netctx *n) {
  if (n->ssh_current[0] == '\0') return;
  const char *rejected =
      strncmp(n->ssh_current, "the ssh agent", 13) == 0 ? " offered no accepted key"
      : is_rsa_key(n->ssh_current + 8)
          ? " rejected (an RSA key: libssh2 before 1.11 signs with SHA-1, which OpenSSH 8.8 and "
            "later refuse; use an ed25519 or ECDSA key)"
          : " rejected";
  append(n->ssh_tried, sizeof n->ssh_tried, "%s%s%s", n->ssh_tried[0] ? "; " : "", n->ssh_current,
         rejected);
  n->ssh_current[0] = '\0';
}

/* n->failure for ssh authentication that ran out of credentials to offer. */
static void ssh_fail(netctx *n) {
  ssh_note_rejected(n);
  if (n->ssh_tried[0]) {
    n->failure[0] = '\0';
    append(n->failure, sizeof n->failure, "ssh authentication as %s failed: %s", n->ssh_user,
           n->ssh_tried);
    return;
  }
  const char *home = ssh_home() ? ssh_home() : "~";
  const char *sock = getenv("SSH_AUTH_SOCK");
  n->failure[0] = '\0';
  append(n->failure, sizeof n->failure,
         "ssh authentication as %s failed: no ssh key: set ssh_key_file or start ssh-agent (no "
         "id_ed25519, id_ecdsa or id_rsa in %s/.ssh, $SSH_AUTH_SOCK %s)",
         n->ssh_user, home, sock && *sock ? "is not a socket" : "not set");
}

static int ssh_credentials(git_credential **out, netctx *n, const char *user) {
  snprintf(n->ssh_user, sizeof n->ssh_user, "%s", user ? user : "git");
  ssh_note_rejected(n); /* asked again: what was offered last was refused */
  char path[PATH_MAX];
  int kind = SSH_NONE;
  if (n->ssh_offered < MAX_AUTH_ATTEMPTS) kind = ssh_source(n, n->ssh_offered, path, sizeof path);
  if (kind == SSH_NONE) {
    ssh_fail(n);
    return GIT_EAUTH;
  }
  n->ssh_offered++;
  if (kind == SSH_AGENT) {
    snprintf(n->ssh_current, sizeof n->ssh_current, "the ssh agent");
    return git_credential_ssh_key_from_agent(out, n->ssh_user);
  }
  if (access(path, R_OK) != 0) {
    n->failure[0] = '\0';
    append(n->failure, sizeof n->failure, "ssh key %s: %s", path, strerror(errno));
    return GIT_EAUTH;
  }
  n->ssh_current[0] = '\0';
  append(n->ssh_current, sizeof n->ssh_current, "ssh key %s", path);
  return git_credential_ssh_key_new(out, n->ssh_user, n->ssh_key ? n->ssh_pubkey : NULL, path,
                                    n->ssh_passphrase);
}

/* The user ssh logs in as when the URL names none: the local one, as ssh does. */
static const char *local_user(char *buf, size_t size) {
  struct passwd pw, *found = NULL;
  char tmp[4096];
  if (getpwuid_r(getuid(), &pw, tmp, sizeof tmp, &found) != 0 || found == NULL) return NULL;
  snprintf(buf, size, "%s", found->pw_name);
  return buf;
}

static int on_credentials(git_credential **out, const char *url, const char *user_from_url,
                          unsigned int allowed, void *payload) {
  netctx *n = payload;
  char safe[512];
  redact(url, safe, sizeof safe);
  if (allowed & GIT_CREDENTIAL_SSH_KEY) return ssh_credentials(out, n, user_from_url);
  /* ssh asks for the user first when the URL names none */
  if (allowed == GIT_CREDENTIAL_USERNAME) {
    char me[128];
    const char *user = n->username ? n->username : local_user(me, sizeof me);
    if (user) return git_credential_username_new(out, user);
  }
  if (++n->attempts > MAX_AUTH_ATTEMPTS) {
    snprintf(n->failure, sizeof n->failure,
             "authentication failed for %s after %d attempts (credentials rejected)", safe,
             MAX_AUTH_ATTEMPTS);
    return GIT_EAUTH;
  }
  const char *user = n->username ? n->username : user_from_url;
  if ((allowed & GIT_CREDENTIAL_USERPASS_PLAINTEXT) && n->token)
    return git_credential_userpass_plaintext_new(out, user ? user : "x-access-token", n->token);
  if ((allowed & GIT_CREDENTIAL_USERNAME) && user) return git_credential_username_new(out, user);
  snprintf(n->failure, sizeof n->failure,
           "authentication required for %s and no credentials given (pass a token or set "
           "$MOONOPS_GIT_TOKEN)",
           safe);
  return GIT_EAUTH;
}

static int on_push_update(const char *refname, const char *status, void *payload) {
  netctx *n = payload;
  if (status && n->rejected[0] == '\0') snprintf(n->rejected, sizeof n->rejected, "%s", status);
  (void)refname;
  return 0;
}

/* Set n->failure and n->moved for a target ref that is not where it should be. */
static void note_moved(netctx *n, const char *ref, const git_oid *found, const git_oid *want) {
  char f[SHA_HEX], w[SHA_HEX];
  git_oid_tostr(f, sizeof f, found);
  git_oid_tostr(w, sizeof w, want);
  snprintf(n->failure, sizeof n->failure, "target moved: %s is at %.12s, expected %.12s", ref,
           git_oid_is_zero(found) ? "(none)" : f, git_oid_is_zero(want) ? "(none)" : w);
  n->moved = 1;
}

static int on_negotiation(const git_push_update **updates, size_t len, void *payload) {
  netctx *n = payload;
  if (!n->has_expect) return 0;
  for (size_t i = 0; i < len; i++) {
    if (!git_oid_equal(&updates[i]->src, &n->expect)) {
      note_moved(n, updates[i]->dst_refname, &updates[i]->src, &n->expect);
      return GIT_EUSER;
    }
  }
  return 0;
}

/*
 * Read credentials and progress from the options table at `opts` (0 = none).
 * Leaves the credentials table on the stack (it anchors the strings).
 */
static void netctx_init(lua_State *L, netctx *n, int opts) {
  memset(n, 0, sizeof *n);
  n->L = L;
  const char *env = getenv("MOONOPS_GIT_TOKEN");
  n->token = (env && *env) ? env : NULL;
  if (opts == 0) {
    lua_pushnil(L);
    return;
  }
  if (lua_getfield(L, opts, "progress") != LUA_TNIL) {
    if (!lua_isfunction(L, -1)) luaL_error(L, "option 'progress' must be a function");
    n->progress = lua_absindex(L, -1);
  } else {
    lua_pop(L, 1);
  }
  int t = lua_getfield(L, opts, "credentials");
  if (t == LUA_TTABLE) {
    int c = lua_absindex(L, -1);
    n->username = mo_optfield_string(L, c, "username", NULL);
    const char *tok = mo_optfield_string(L, c, "token", NULL);
    if (tok && *tok) n->token = tok;
    n->ssh_key = mo_optfield_string(L, c, "ssh_key", NULL);
    n->ssh_pubkey = mo_optfield_string(L, c, "ssh_public_key", NULL);
    n->ssh_passphrase = mo_optfield_string(L, c, "ssh_passphrase", NULL);
  } else if (t != LUA_TNIL) {
    luaL_error(L, "option 'credentials' must be a table");
  }
}

static void netctx_callbacks(netctx *n, git_remote_callbacks *cb) {
  cb->credentials = on_credentials;
  cb->transfer_progress = on_transfer;
  cb->push_transfer_progress = on_push_transfer;
  cb->sideband_progress = on_sideband;
  cb->push_update_reference = on_push_update;
  cb->push_negotiation = on_negotiation;
  cb->payload = n;
}

/* Remember the remote's URL for messages about its host (the remote may be gone by then). */
static void netctx_url(netctx *n, const char *url) {
  snprintf(n->url, sizeof n->url, "%s", url ? url : "");
}

/*
 * The host and port of an ssh URL (ssh://[user@]host[:port]/path, also ssh+git:// and
 * git+ssh://, or scp-like [user@]host:path) as known_hosts names them: "host" or
 * "[host]:port"; 0 when `url` is not one.
 */
static int ssh_host(const char *url, char *host, size_t size, long *port) {
  const char *p = strstr(url, "://");
  *port = 22;
  if (p) {
    size_t scheme = (size_t)(p - url);
    if (!(scheme == 3 && strncmp(url, "ssh", 3) == 0) &&
        !(scheme == 7 && strncmp(url, "ssh+git", 7) == 0) &&
        !(scheme == 7 && strncmp(url, "git+ssh", 7) == 0))
      return 0;
    p += 3;
  } else {
    const char *colon = strchr(url, ':'), *slash = strchr(url, '/');
    if (!colon || (slash && slash < colon) || colon == url) return 0;
    p = url;
  }
  const char *end = p + strcspn(p, "/");
  const char *at = memchr(p, '@', (size_t)(end - p));
  if (at) p = at + 1;
  const char *h = p, *hend;
  if (*p == '[') {
    h = p + 1;
    hend = memchr(h, ']', (size_t)(end - h));
    if (!hend) return 0;
    p = hend + 1;
  } else {
    hend = p + strcspn(p, ":/");
    p = hend;
  }
  if (strstr(url, "://") && *p == ':' && p[1] >= '0' && p[1] <= '9')
    *port = strtol(p + 1, NULL, 10);
  if (*port == 22)
    snprintf(host, size, "%.*s", (int)(hend - h), h);
  else
    snprintf(host, size, "[%.*s]:%ld", (int)(hend - h), h, *port);
  return hend > h;
}

/* n->failure for what libgit2 reports in ssh terms that a user of ssh would not recognise. */
static void explain_ssh(netctx *n, int rc) {
  const git_error *e = git_error_last();
  const char *msg = e && e->message ? e->message : "";
  char host[300];
  long port;
  if (n->failure[0]) return;
  if (rc == GIT_ECERTIFICATE && ssh_host(n->url, host, sizeof host, &port)) {
    const char *home = ssh_home() ? ssh_home() : "~";
    char bare[300];
    snprintf(bare, sizeof bare, "%s", host[0] == '[' ? host + 1 : host);
    bare[strcspn(bare, "]")] = '\0';
    char hint[64] = "";
    if (port != 22) snprintf(hint, sizeof hint, "-p %ld ", port);
    append(n->failure, sizeof n->failure,
           "ssh host key of %s is unknown or has changed (checked against %s/.ssh/known_hosts): "
           "verify the host's key, then add it to that file (ssh-keyscan %s%s prints it)",
           host, home, hint, bare);
    return;
  }
  if (strncmp(msg, "error loading known_hosts", 25) == 0 && !ssh_home()) {
    append(n->failure, sizeof n->failure,
           "$HOME is not set: ssh needs it to find ~/.ssh/known_hosts (and the default keys)");
    return;
  }
  if (n->ssh_current[0] == '\0') return;
  if (rc == GIT_EAUTH) { /* refused, and the server stopped listening before we were asked again */
    ssh_fail(n);
    return;
  }
  static const char *const prefixes[] = {"Failed to authenticate SSH session: ",
                                         "error authenticating: "};
  for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++) {
    size_t len = strlen(prefixes[i]);
    if (strncmp(msg, prefixes[i], len) == 0) {
      append(n->failure, sizeof n->failure,
             "ssh authentication as %s failed: %s could not be used (%s)", n->ssh_user,
             n->ssh_current, msg + len);
      n->ssh_failed = 1;
      return;
    }
  }
}

/* Replace every occurrence of `secret` in the message below the code on the stack. */
static void mask_message(lua_State *L, const char *secret) {
  const char *msg = lua_tostring(L, -2);
  if (!msg || !secret || strlen(secret) < 4 || !strstr(msg, secret)) return;
  luaL_gsub(L, msg, secret, "***");
  lua_replace(L, -3);
}

/* Fail a network operation: our callback's reason wins over libgit2's message. */
static int fail_net(lua_State *L, int rc, netctx *n, const char *op, const char *target) {
  char safe[512];
  redact(target, safe, sizeof safe);
  explain_ssh(n, rc);
  const char *code = NULL;
  if (n->moved)
    code = "EMOVED";
  else if (rc == GIT_EAUTH || n->attempts > MAX_AUTH_ATTEMPTS || n->ssh_failed)
    code = "EAUTH";
  int nret = fail_with(L, rc, n->token, n->failure, code, "%s %s", op, safe);
  mask_message(L, n->ssh_passphrase);
  return nret;
}

/* Build a git_strarray over a Lua list of strings at `idx` (0 or nil: empty). */
static void check_strarray(lua_State *L, int idx, git_strarray *out, const char *what) {
  out->count = 0;
  out->strings = NULL;
  if (idx == 0 || lua_isnoneornil(L, idx)) return;
  luaL_argexpected(L, lua_istable(L, idx), idx, "table of strings");
  size_t len = lua_rawlen(L, idx);
  if (len == 0) return;
  out->strings = lua_newuserdatauv(L, len * sizeof(char *), 0); /* freed by Lua */
  for (size_t i = 0; i < len; i++) {
    lua_rawgeti(L, idx, (lua_Integer)i + 1);
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "%s[%d] must be a string", what, (int)i + 1);
    out->strings[i] = (char *)lua_tostring(L, -1);
    lua_pop(L, 1); /* anchored by the table */
  }
  out->count = len;
}

/*
 * Remotes are built here rather than with git_remote_lookup or
 * git_remote_create_anonymous: for url.<base>.insteadOf those scan every config
 * entry with a regular expression, and libgit2 1.5 leaks the PCRE2 match data
 * (20 kB and more) of every entry that does not match. That is tens of kB per
 * fetch, without bound in a long-running server. The config is read directly
 * instead, insteadOf applied below, and the remote created in memory with
 * libgit2's own rewriting turned off.
 */

/* `url` rewritten by the longest matching url.<base>.insteadOf (pushInsteadOf
 * first for pushes), as git does; a new string to free, NULL when out of memory. */
static char *rewrite_url(git_config *cfg, const char *url, int push) {
  char *best = NULL;
  size_t best_len = 0;
  for (int pass = push ? 0 : 1; cfg && pass < 2 && best == NULL; pass++) {
    const char *suffix = pass == 0 ? ".pushinsteadof" : ".insteadof";
    size_t slen = strlen(suffix);
    git_config_iterator *it = NULL;
    git_config_entry *e;
    if (git_config_iterator_new(&it, cfg) < 0) {
      git_error_clear();
      break;
    }
    while (git_config_next(&e, it) == 0) {
      size_t nlen = strlen(e->name), vlen = e->value ? strlen(e->value) : 0;
      if (nlen <= 4 + slen || strncmp(e->name, "url.", 4) != 0 ||
          strcmp(e->name + nlen - slen, suffix) != 0)
        continue;
      if (vlen == 0 || vlen <= best_len || strncmp(url, e->value, vlen) != 0) continue;
      char *base = strndup(e->name + 4, nlen - 4 - slen);
      if (base == NULL) continue;
      free(best);
      best = base;
      best_len = vlen;
    }
    git_config_iterator_free(it);
    git_error_clear();
  }
  if (best == NULL) return strdup(url);
  size_t blen = strlen(best), rest = strlen(url + best_len);
  char *out = malloc(blen + rest + 1);
  if (out) {
    memcpy(out, best, blen);
    memcpy(out + blen, url + best_len, rest + 1);
  }
  free(best);
  return out;
}

/* The configured value of remote.<name>.<key> into `out`; 0 when set. */
static int remote_config(git_config *cfg, const char *name, const char *key, git_buf *out) {
  char *var = malloc(strlen(name) + strlen(key) + 9);
  if (var == NULL) return -1;
  sprintf(var, "remote.%s.%s", name, key);
  int rc = git_config_get_string_buf(out, cfg, var);
  free(var);
  if (rc < 0) git_error_clear();
  return rc;
}

/* A named remote from the config, or an anonymous one for a URL or path. */
static int open_remote(git_remote **out, git_repository *repo, const char *name, int *named) {
  int valid = 0, rc;
  git_config *cfg = NULL;
  git_buf url = GIT_BUF_INIT, pushurl = GIT_BUF_INIT;
  *named = 0;
  *out = NULL;
  if (git_repository_config_snapshot(&cfg, repo) < 0) git_error_clear();
  const char *target = name;
  if (cfg && git_remote_name_is_valid(&valid, name) == 0 && valid &&
      remote_config(cfg, name, "url", &url) == 0) {
    target = url.ptr;
    *named = 1;
    remote_config(cfg, name, "pushurl", &pushurl);
  }
  git_error_clear();
  char *fetch_url = rewrite_url(cfg, target, 0);
  /* an explicit pushurl is only rewritten by insteadOf, as in git */
  char *push_url = pushurl.size ? rewrite_url(cfg, pushurl.ptr, 0) : rewrite_url(cfg, target, 1);
  if (fetch_url == NULL || push_url == NULL) {
    git_error_set_oom();
    rc = -1;
  } else {
    git_remote_create_options o;
    git_remote_create_options_init(&o, GIT_REMOTE_CREATE_OPTIONS_VERSION);
    o.repository = repo;
    o.flags = GIT_REMOTE_CREATE_SKIP_INSTEADOF | GIT_REMOTE_CREATE_SKIP_DEFAULT_FETCHSPEC;
    rc = git_remote_create_with_opts(out, fetch_url, &o);
    if (rc == 0 && strcmp(push_url, fetch_url) != 0)
      rc = git_remote_set_instance_pushurl(*out, push_url);
    if (rc < 0) {
      git_remote_free(*out);
      *out = NULL;
    }
  }
  free(fetch_url);
  free(push_url);
  git_buf_dispose(&url);
  git_buf_dispose(&pushurl);
  git_config_free(cfg);
  return rc;
}

/* The fetch refspecs configured for a named remote, for a fetch given none (strings
 * owned by Lua, on the stack). */
static void configured_refspecs(lua_State *L, git_repository *repo, const char *name,
                                git_strarray *out) {
  git_config *cfg = NULL;
  git_config_iterator *it = NULL;
  git_config_entry *e;
  char *var = malloc(strlen(name) + 15);
  lua_newtable(L);
  if (var && git_repository_config_snapshot(&cfg, repo) == 0) {
    sprintf(var, "remote.%s.fetch", name);
    if (git_config_multivar_iterator_new(&it, cfg, var, NULL) == 0) {
      int i = 0;
      while (git_config_next(&e, it) == 0) {
        lua_pushstring(L, e->value ? e->value : "");
        lua_rawseti(L, -2, ++i);
      }
      git_config_iterator_free(it);
    }
  }
  git_error_clear();
  git_config_free(cfg);
  free(var);
  check_strarray(L, lua_gettop(L), out, "refspecs");
}

/* ---- module functions ---------------------------------------------------- */

/* git.open(path) -> repo | nil, err */
static int git_open(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  git_repository **h = (git_repository **)mo_newhandle(L, sizeof *h, REPO_MT);
  int rc = git_repository_open_ext(h, path, GIT_REPOSITORY_OPEN_NO_SEARCH, NULL);
  if (rc < 0) {
    *h = NULL;
    return fail_git(L, rc, "open %s", path);
  }
  return 1;
}

/* git.init(path [, {bare=, branch=}]) -> repo | nil, err */
static int git_init(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int opts = lua_istable(L, 2) ? 2 : 0;
  git_repository_init_options io;
  git_repository_init_options_init(&io, GIT_REPOSITORY_INIT_OPTIONS_VERSION);
  io.flags = GIT_REPOSITORY_INIT_MKPATH;
  if (opts) {
    if (mo_optfield_boolean(L, opts, "bare", 0)) io.flags |= GIT_REPOSITORY_INIT_BARE;
    io.initial_head = mo_optfield_string(L, opts, "branch", NULL);
  }
  git_repository **h = (git_repository **)mo_newhandle(L, sizeof *h, REPO_MT);
  int rc = git_repository_init_ext(h, path, &io);
  if (rc < 0) {
    *h = NULL;
    return fail_git(L, rc, "init %s", path);
  }
  return 1;
}

/* git.clone(url, path [, {bare=, branch=, credentials=, progress=}]) -> repo | nil, err */
static int git_clone_(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  const char *path = luaL_checkstring(L, 2);
  int opts = lua_istable(L, 3) ? 3 : 0;
  netctx n;
  netctx_init(L, &n, opts);
  git_clone_options co;
  git_clone_options_init(&co, GIT_CLONE_OPTIONS_VERSION);
  if (opts) {
    co.bare = mo_optfield_boolean(L, opts, "bare", 0);
    co.checkout_branch = mo_optfield_string(L, opts, "branch", NULL);
  }
  netctx_callbacks(&n, &co.fetch_opts.callbacks);
  netctx_url(&n, url);
  git_repository **h = (git_repository **)mo_newhandle(L, sizeof *h, REPO_MT);
  int rc = git_clone(h, url, path, &co);
  if (rc < 0) {
    *h = NULL;
    return fail_net(L, rc, &n, "clone", url);
  }
  return 1;
}

/* git.redact_url(url) -> url without userinfo */
static int git_redact_url(lua_State *L) {
  size_t len;
  const char *url = luaL_checklstring(L, 1, &len);
  char *out = lua_newuserdatauv(L, len + 1, 0);
  redact(url, out, len + 1);
  lua_pushstring(L, out);
  return 1;
}

/* ---- repository: inspection ---------------------------------------------- */

/* repo:path() -> path of the .git directory (or the bare repository) */
static int repo_path(lua_State *L) {
  lua_pushstring(L, git_repository_path(check_repo(L, 1)));
  return 1;
}

/* repo:workdir() -> path | nil (bare) */
static int repo_workdir(lua_State *L) {
  const char *w = git_repository_workdir(check_repo(L, 1));
  if (w)
    lua_pushstring(L, w);
  else
    lua_pushnil(L);
  return 1;
}

/* repo:head() -> {ref=, branch=, commit=, unborn=, detached=} | nil, err */
static int repo_head(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  git_reference *head = NULL;
  int rc = git_repository_head(&head, repo);
  lua_createtable(L, 0, 5);
  if (rc == GIT_EUNBORNBRANCH || rc == GIT_ENOTFOUND) {
    git_reference *sym = NULL;
    git_error_clear();
    if (git_reference_lookup(&sym, repo, "HEAD") == 0 &&
        git_reference_type(sym) == GIT_REFERENCE_SYMBOLIC) {
      const char *target = git_reference_symbolic_target(sym);
      lua_pushstring(L, target);
      lua_setfield(L, -2, "ref");
      if (strncmp(target, "refs/heads/", 11) == 0) {
        lua_pushstring(L, target + 11);
        lua_setfield(L, -2, "branch");
      }
    }
    git_reference_free(sym);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "unborn");
    return 1;
  }
  if (rc < 0) return fail_git(L, rc, "read HEAD of %s", git_repository_path(repo));
  int detached = git_repository_head_detached(repo) == 1;
  lua_pushstring(L, detached ? "HEAD" : git_reference_name(head));
  lua_setfield(L, -2, "ref");
  if (!detached && git_reference_is_branch(head)) {
    lua_pushstring(L, git_reference_shorthand(head));
    lua_setfield(L, -2, "branch");
  }
  push_oid(L, git_reference_target(head));
  lua_setfield(L, -2, "commit");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "unborn");
  lua_pushboolean(L, detached);
  lua_setfield(L, -2, "detached");
  git_reference_free(head);
  return 1;
}

/* repo:resolve(rev) -> sha | nil, err (tags are peeled to what they point at) */
static int repo_resolve(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  const char *rev = luaL_checkstring(L, 2);
  git_object *obj = NULL, *peeled = NULL;
  int rc = git_revparse_single(&obj, repo, rev);
  if (rc < 0) return fail_git(L, rc, "resolve %s", rev);
  if (git_object_type(obj) == GIT_OBJECT_TAG &&
      git_object_peel(&peeled, obj, GIT_OBJECT_ANY) == 0) {
    push_oid(L, git_object_id(peeled));
    git_object_free(peeled);
  } else {
    push_oid(L, git_object_id(obj));
  }
  git_object_free(obj);
  return 1;
}

static const char *status_name(unsigned int s) {
  if (s & GIT_STATUS_CONFLICTED) return "conflicted";
  if (s & (GIT_STATUS_INDEX_RENAMED | GIT_STATUS_WT_RENAMED)) return "renamed";
  if (s & (GIT_STATUS_INDEX_TYPECHANGE | GIT_STATUS_WT_TYPECHANGE)) return "typechange";
  if (s & (GIT_STATUS_INDEX_DELETED | GIT_STATUS_WT_DELETED)) return "deleted";
  if (s & (GIT_STATUS_INDEX_MODIFIED | GIT_STATUS_WT_MODIFIED)) return "modified";
  if (s & GIT_STATUS_INDEX_NEW) return "added";
  if (s & GIT_STATUS_WT_NEW) return "untracked";
  if (s & GIT_STATUS_IGNORED) return "ignored";
  return "unchanged";
}

/* Collect status entries; pushes the list, returns count or a negative libgit2 code. */
static int collect_status(lua_State *L, git_repository *repo, int untracked, int limit) {
  git_status_options so;
  git_status_options_init(&so, GIT_STATUS_OPTIONS_VERSION);
  git_status_list *list = NULL;
  so.show = GIT_STATUS_SHOW_INDEX_AND_WORKDIR;
  so.flags = GIT_STATUS_OPT_EXCLUDE_SUBMODULES;
  if (untracked)
    so.flags |= GIT_STATUS_OPT_INCLUDE_UNTRACKED | GIT_STATUS_OPT_RECURSE_UNTRACKED_DIRS;
  int rc = git_status_list_new(&list, repo, &so);
  if (rc < 0) return rc;
  size_t count = git_status_list_entrycount(list);
  if (limit > 0 && count > (size_t)limit) count = (size_t)limit;
  lua_createtable(L, (int)count, 0);
  for (size_t i = 0; i < count; i++) {
    const git_status_entry *e = git_status_byindex(list, i);
    const git_diff_delta *d = e->head_to_index ? e->head_to_index : e->index_to_workdir;
    lua_createtable(L, 0, 2);
    lua_pushstring(L, d->new_file.path ? d->new_file.path : d->old_file.path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, status_name(e->status));
    lua_setfield(L, -2, "status");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  mo_mark_array(L, -1);
  git_status_list_free(list);
  return (int)count;
}

/* repo:status([{untracked=true}]) -> list {path=, status=} | nil, err */
static int repo_status(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  int untracked = lua_istable(L, 2) ? mo_optfield_boolean(L, 2, "untracked", 1) : 1;
  if (git_repository_is_bare(repo))
    return mo_fail(L, "status of %s: bare repository", git_repository_path(repo));
  int rc = collect_status(L, repo, untracked, 0);
  if (rc < 0) return fail_git(L, rc, "status of %s", git_repository_workdir(repo));
  return 1;
}

/* repo:is_clean([{untracked=true}]) -> bool | nil, err (untracked files count unless
 * untracked=false) */
static int repo_is_clean(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  int untracked = lua_istable(L, 2) ? mo_optfield_boolean(L, 2, "untracked", 1) : 1;
  if (git_repository_is_bare(repo)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  int rc = collect_status(L, repo, untracked, 1);
  if (rc < 0) return fail_git(L, rc, "status of %s", git_repository_workdir(repo));
  lua_pushboolean(L, rc == 0);
  return 1;
}

/* repo:state() -> "none" | "merge" | "revert" | "cherry-pick" | "bisect" | "rebase" | ... */
static int repo_state(lua_State *L) {
  const char *s;
  switch (git_repository_state(check_repo(L, 1))) {
  case GIT_REPOSITORY_STATE_NONE: s = "none"; break;
  case GIT_REPOSITORY_STATE_MERGE: s = "merge"; break;
  case GIT_REPOSITORY_STATE_REVERT:
  case GIT_REPOSITORY_STATE_REVERT_SEQUENCE: s = "revert"; break;
  case GIT_REPOSITORY_STATE_CHERRYPICK:
  case GIT_REPOSITORY_STATE_CHERRYPICK_SEQUENCE: s = "cherry-pick"; break;
  case GIT_REPOSITORY_STATE_BISECT: s = "bisect"; break;
  case GIT_REPOSITORY_STATE_REBASE: s = "rebase"; break;
  case GIT_REPOSITORY_STATE_REBASE_INTERACTIVE: s = "rebase-interactive"; break;
  case GIT_REPOSITORY_STATE_REBASE_MERGE: s = "rebase-merge"; break;
  case GIT_REPOSITORY_STATE_APPLY_MAILBOX:
  case GIT_REPOSITORY_STATE_APPLY_MAILBOX_OR_REBASE: s = "apply-mailbox"; break;
  default: s = "unknown"; break;
  }
  lua_pushstring(L, s);
  return 1;
}

/* ---- repository: remotes ------------------------------------------------- */

/* repo:remote_add(name, url) -> true | nil, err */
static int repo_remote_add(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  const char *name = luaL_checkstring(L, 2);
  const char *url = luaL_checkstring(L, 3);
  git_remote *remote = NULL;
  int rc = git_remote_create(&remote, repo, name, url);
  if (rc < 0) return fail_git(L, rc, "add remote %s", name);
  git_remote_free(remote);
  lua_pushboolean(L, 1);
  return 1;
}

/* repo:remote_set_url(name, url) -> true | nil, err */
static int repo_remote_set_url(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  const char *name = luaL_checkstring(L, 2);
  const char *url = luaL_checkstring(L, 3);
  int rc = git_remote_set_url(repo, name, url);
  if (rc == 0) rc = git_remote_set_pushurl(repo, name, NULL);
  if (rc < 0) return fail_git(L, rc, "set url of remote %s", name);
  lua_pushboolean(L, 1);
  return 1;
}

static int remote_before(lua_State *L) {
  lua_getfield(L, 1, "name");
  lua_getfield(L, 2, "name");
  lua_pushboolean(L, lua_compare(L, -2, -1, LUA_OPLT));
  return 1;
}

/* repo:remotes() -> list {name=, url=} (sorted by name) */
static int repo_remotes(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  git_config *cfg = NULL;
  git_config_iterator *it = NULL;
  git_config_entry *e;
  /* read from the config directly: git_remote_list leaks in libgit2 1.5 (see open_remote) */
  int rc = git_repository_config_snapshot(&cfg, repo);
  if (rc == 0) rc = git_config_iterator_new(&it, cfg);
  if (rc < 0) {
    git_config_free(cfg);
    return fail_git(L, rc, "list remotes of %s", git_repository_path(repo));
  }
  lua_newtable(L);
  int n = 0;
  while (git_config_next(&e, it) == 0) {
    size_t len = strlen(e->name);
    if (len <= 11 || strncmp(e->name, "remote.", 7) != 0 || strcmp(e->name + len - 4, ".url") != 0)
      continue;
    lua_createtable(L, 0, 2);
    lua_pushlstring(L, e->name + 7, len - 11);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, e->value ? e->value : "");
    lua_setfield(L, -2, "url");
    lua_rawseti(L, -2, ++n);
  }
  git_config_iterator_free(it);
  git_config_free(cfg);
  git_error_clear();
  lua_getglobal(L, "table");
  lua_getfield(L, -1, "sort");
  lua_pushvalue(L, -3);
  lua_pushcfunction(L, remote_before);
  lua_call(L, 2, 0);
  lua_pop(L, 1);
  mo_mark_array(L, -1);
  return 1;
}

/* ---- local repositories: share objects instead of re-packing them --------- */

/*
 * libgit2's transport for a repository on a local path builds a new pack with a full
 * delta search for every fetch, where git links or reuses what is on disk. Before
 * such a fetch the other repository's packs (with their indexes) and loose objects
 * that we lack are hard-linked into ours (copied across file systems), as
 * `git clone --local` does; objects are immutable and named by their content, so
 * this is safe. The fetch then finds the tips it wants already present and only
 * updates refs. Anything that could not be linked is still fetched the usual way.
 */

/* The path of a local repository named by `url` ("/p", "./p", "file:///p"), or NULL. */
static const char *local_repository_path(const char *url) {
  if (strncmp(url, "file://", 7) == 0) return url + 7;
  if (strstr(url, "://")) return NULL;
  const char *colon = strchr(url, ':'), *slash = strchr(url, '/');
  if (colon && (!slash || colon < slash)) return NULL; /* scp-like host:path */
  return url;
}

static int write_all(int fd, const char *data, size_t len);

/* Link `from` to `to`, or copy it through a temporary file when linking is not possible. */
static int share_file(const char *from, const char *to) {
  if (link(from, to) == 0 || errno == EEXIST) return 0;
  if (errno != EXDEV && errno != EPERM && errno != EMLINK) return -1;
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp-%ld", to, (long)getpid());
  int in = open(from, O_RDONLY | O_CLOEXEC), out = -1, rc = -1;
  if (in < 0) return -1;
  out = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
  if (out >= 0) {
    char buf[65536];
    ssize_t n;
    rc = 0;
    while ((n = read(in, buf, sizeof buf)) != 0) {
      if (n < 0) {
        if (errno == EINTR) continue;
        rc = -1;
        break;
      }
      if (write_all(out, buf, (size_t)n) < 0) {
        rc = -1;
        break;
      }
    }
    if (close(out) < 0) rc = -1;
    if (rc == 0 && rename(tmp, to) < 0) rc = -1;
    if (rc < 0) unlink(tmp);
  }
  close(in);
  return rc;
}

static int is_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
  return s[n] == '\0';
}

/* Share the packs (pack first, then its index, so no index is seen without its pack) and
 * the loose objects of objects directory `from` that `to` lacks. Best effort. */
static void share_objects(const char *from, const char *to) {
  char a[4200], b[4200];
  struct stat st;
  snprintf(a, sizeof a, "%s/pack", from);
  DIR *d = opendir(a);
  if (d) {
    struct dirent *e;
    snprintf(b, sizeof b, "%s/pack", to);
    mkdir(b, 0777);
    while ((e = readdir(d)) != NULL) {
      size_t n = strlen(e->d_name);
      if (n < 10 || strncmp(e->d_name, "pack-", 5) != 0 || strcmp(e->d_name + n - 4, ".idx") != 0)
        continue;
      int base = (int)(n - 4);
      snprintf(b, sizeof b, "%s/pack/%.*s.idx", to, base, e->d_name);
      if (stat(b, &st) == 0) continue;
      snprintf(a, sizeof a, "%s/pack/%.*s.pack", from, base, e->d_name);
      snprintf(b, sizeof b, "%s/pack/%.*s.pack", to, base, e->d_name);
      if (share_file(a, b) < 0) continue;
      snprintf(a, sizeof a, "%s/pack/%s", from, e->d_name);
      snprintf(b, sizeof b, "%s/pack/%s", to, e->d_name);
      share_file(a, b);
    }
    closedir(d);
  }
  d = opendir(from);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!is_hex(e->d_name, 2)) continue;
    snprintf(a, sizeof a, "%s/%s", from, e->d_name);
    DIR *sub = opendir(a);
    if (!sub) continue;
    struct dirent *o;
    int made = 0;
    while ((o = readdir(sub)) != NULL) {
      if (!is_hex(o->d_name, GIT_OID_HEXSZ - 2)) continue;
      snprintf(b, sizeof b, "%s/%s/%s", to, e->d_name, o->d_name);
      if (stat(b, &st) == 0) continue;
      if (!made) {
        snprintf(b, sizeof b, "%s/%s", to, e->d_name);
        mkdir(b, 0777);
        made = 1;
        snprintf(b, sizeof b, "%s/%s/%s", to, e->d_name, o->d_name);
      }
      snprintf(a, sizeof a, "%s/%s/%s", from, e->d_name, o->d_name);
      share_file(a, b);
    }
    closedir(sub);
  }
  closedir(d);
}

/* Before a fetch from a repository on a local path: share its objects (see above). */
static void share_local_objects(git_repository *repo, const char *url) {
  const char *path = local_repository_path(url);
  git_repository *other = NULL;
  git_buf from = GIT_BUF_INIT, to = GIT_BUF_INIT;
  git_odb *odb = NULL;
  if (path && git_repository_open_ext(&other, path, GIT_REPOSITORY_OPEN_NO_SEARCH, NULL) == 0 &&
      git_repository_item_path(&from, other, GIT_REPOSITORY_ITEM_OBJECTS) == 0 &&
      git_repository_item_path(&to, repo, GIT_REPOSITORY_ITEM_OBJECTS) == 0 &&
      strcmp(from.ptr, to.ptr) != 0) {
    share_objects(from.ptr, to.ptr);
    if (git_repository_odb(&odb, repo) == 0) git_odb_refresh(odb);
  }
  git_odb_free(odb);
  git_buf_dispose(&from);
  git_buf_dispose(&to);
  git_repository_free(other);
  git_error_clear();
}

/* repo:fetch(remote_or_url [, refspecs [, {credentials=, progress=, prune=, tags=, share_local=}]])
 *   -> true | nil, err
 * From a repository on a local path, its objects are first hard-linked (or copied) into this
 * one, as `git clone --local` does; share_local=false fetches through libgit2's pack instead. */
static int repo_fetch(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  const char *name = luaL_checkstring(L, 2);
  int opts = lua_istable(L, 4) ? 4 : 0;
  git_strarray specs;
  check_strarray(L, lua_isnoneornil(L, 3) ? 0 : 3, &specs, "refspecs");
  netctx n;
  netctx_init(L, &n, opts);
  git_fetch_options fo;
  git_fetch_options_init(&fo, GIT_FETCH_OPTIONS_VERSION);
  netctx_callbacks(&n, &fo.callbacks);
  int share_local = 1;
  if (opts) {
    share_local = mo_optfield_boolean(L, opts, "share_local", 1);
    int prune = mo_optfield_boolean(L, opts, "prune", 0);
    fo.prune = prune ? GIT_FETCH_PRUNE : GIT_FETCH_PRUNE_UNSPECIFIED;
    if (lua_getfield(L, opts, "tags") != LUA_TNIL)
      fo.download_tags =
          lua_toboolean(L, -1) ? GIT_REMOTE_DOWNLOAD_TAGS_ALL : GIT_REMOTE_DOWNLOAD_TAGS_NONE;
    lua_pop(L, 1);
  }
  git_remote *remote = NULL;
  int named;
  int rc = open_remote(&remote, repo, name, &named);
  if (rc < 0) return fail_git(L, rc, "fetch %s", name);
  if (named && specs.count == 0) configured_refspecs(L, repo, name, &specs);
  netctx_url(&n, git_remote_url(remote));
  if (share_local) share_local_objects(repo, git_remote_url(remote));
  rc = git_remote_fetch(remote, specs.count ? &specs : NULL, &fo, NULL);
  git_remote_free(remote);
  if (rc < 0) return fail_net(L, rc, &n, "fetch", name);
  lua_pushboolean(L, 1);
  return 1;
}

/* repo:ls_remote(remote_or_url [, {credentials=}]) -> list {name=, sha=} | nil, err */
static int repo_ls_remote(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  const char *name = luaL_checkstring(L, 2);
  int opts = lua_istable(L, 3) ? 3 : 0;
  netctx n;
  netctx_init(L, &n, opts);
  git_remote_callbacks cb;
  git_remote_init_callbacks(&cb, GIT_REMOTE_CALLBACKS_VERSION);
  netctx_callbacks(&n, &cb);
  git_remote *remote = NULL;
  int named;
  int rc = open_remote(&remote, repo, name, &named);
  if (rc < 0) return fail_git(L, rc, "list %s", name);
  netctx_url(&n, git_remote_url(remote));
  const git_remote_head **heads = NULL;
  size_t count = 0;
  rc = git_remote_connect(remote, GIT_DIRECTION_FETCH, &cb, NULL, NULL);
  if (rc == 0) rc = git_remote_ls(&heads, &count, remote);
  if (rc < 0) {
    git_remote_free(remote);
    return fail_net(L, rc, &n, "list", name);
  }
  lua_createtable(L, (int)count, 0);
  for (size_t i = 0; i < count; i++) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, heads[i]->name);
    lua_setfield(L, -2, "name");
    push_oid(L, &heads[i]->oid);
    lua_setfield(L, -2, "sha");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  mo_mark_array(L, -1);
  git_remote_free(remote);
  return 1;
}

/* Parse an expected old value: a full sha, a revision, or "" / zeros for "must not exist". */
static int parse_expect(git_repository *repo, const char *s, git_oid *out) {
  if (s[0] == '\0') {
    memset(out, 0, sizeof *out);
    return 0;
  }
  if (strlen(s) == GIT_OID_HEXSZ && git_oid_fromstr(out, s) == 0) return 0;
  git_object *obj = NULL;
  int rc = git_revparse_single(&obj, repo, s);
  if (rc < 0) return rc;
  git_oid_cpy(out, git_object_id(obj));
  git_object_free(obj);
  return 0;
}

/* ---- pushing to a repository on a local path ------------------------------ */

/*
 * libgit2 pushes to a path through its pack builder: an object walk, a delta search
 * and full compression of every object it sends, then the target indexes that pack;
 * git reuses the deltas it has on disk instead. A push of one commit to a bare
 * repository on a local path is done here: walk from the new tip and take every
 * commit, tree and blob the target's object store lacks, without descending into
 * what it has (an object in a repository comes with everything it reaches: fetch and
 * receive-pack check that, and gc keeps whatever a kept object reaches). Those
 * objects go quickly compressed into one pack through the target's own indexer,
 * which checks and indexes it; each changed file or tree as a delta against its
 * version in the parent commit when that is sent too (see "Deltas" below). Then the ref moves, only
 * if it is still at the value it had when the push began. Exactly the objects git would send end up
 * in the target, never others the working copy holds.
 */

/* A set of object ids, each with a number: open addressing, the zero id marks a free slot. */
typedef struct {
  git_oid *slots;
  size_t *values;
  size_t cap, count;
} oidset;

static size_t oid_hash(const git_oid *id) {
  size_t h;
  memcpy(&h, id->id, sizeof h);
  return h;
}

/* 1 when `id` was added (with the value 0), 0 when it was there, -1 out of memory. */
static int oidset_add(oidset *s, const git_oid *id) {
  if ((s->count + 1) * 2 > s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 4096;
    git_oid *slots = calloc(cap, sizeof *slots);
    size_t *values = calloc(cap, sizeof *values);
    if (slots == NULL || values == NULL) {
      free(slots);
      free(values);
      return -1;
    }
    for (size_t i = 0; i < s->cap; i++) {
      if (git_oid_is_zero(&s->slots[i])) continue;
      size_t j = oid_hash(&s->slots[i]) & (cap - 1);
      while (!git_oid_is_zero(&slots[j]))
        j = (j + 1) & (cap - 1);
      slots[j] = s->slots[i];
      values[j] = s->values[i];
    }
    free(s->slots);
    free(s->values);
    s->slots = slots;
    s->values = values;
    s->cap = cap;
  }
  size_t j = oid_hash(id) & (s->cap - 1);
  while (!git_oid_is_zero(&s->slots[j])) {
    if (git_oid_equal(&s->slots[j], id)) return 0;
    j = (j + 1) & (s->cap - 1);
  }
  s->slots[j] = *id;
  s->values[j] = 0;
  s->count++;
  return 1;
}

/* The value of `id`, or NULL when it is not in the set. */
static size_t *oidset_value(const oidset *s, const git_oid *id) {
  if (s->cap == 0) return NULL;
  size_t j = oid_hash(id) & (s->cap - 1);
  while (!git_oid_is_zero(&s->slots[j])) {
    if (git_oid_equal(&s->slots[j], id)) return &s->values[j];
    j = (j + 1) & (s->cap - 1);
  }
  return NULL;
}

static void oidset_free(oidset *s) {
  free(s->slots);
  free(s->values);
  memset(s, 0, sizeof *s);
}

typedef struct {
  git_oid id;
  git_object_t type;
  git_odb_object *obj; /* kept from the walk, or NULL: read again when written */
  git_oid base;        /* the same path's version in the parent commit, or zero */
  size_t base_at;      /* 1 + place of the delta base in `wanted`; 0: none in the pack */
  unsigned depth;      /* of the delta chain; 0: sent whole */
} object_ref;

typedef struct {
  object_ref *items;
  size_t len, cap;
} object_list;

static int object_list_add(object_list *l, const git_oid *id, git_object_t type) {
  if (l->len == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 1024;
    object_ref *items = realloc(l->items, cap * sizeof *items);
    if (items == NULL) return -1;
    l->items = items;
    l->cap = cap;
  }
  memset(&l->items[l->len], 0, sizeof l->items[l->len]);
  l->items[l->len].id = *id;
  l->items[l->len].type = type;
  l->len++;
  return 0;
}

/* Commits and trees read by the walk are kept for the pack up to this many bytes. */
#define PLAN_KEEP_BYTES ((size_t)64 << 20)
/* Delta chains are cut at this length (git's default depth), so every object stays quick to read.
 */
#define PLAN_MAX_DEPTH 50

/*
 * What a push sends: objects reachable from the new tip that the target lacks. `seen`
 * holds every object queued or known to be in the target; its value is 1 + the place of a
 * queued object in `wanted`, 0 for one the target has.
 */
typedef struct {
  git_odb *ours;
  git_odb *theirs; /* the target's object store when it is on a local path, else NULL */
  int thin;        /* delta bases may be objects the target has, not only ones sent */
  oidset seen;
  size_t *todo; /* places in `wanted` of commits and trees still to read */
  size_t todo_len, todo_cap;
  object_list wanted; /* what the pack will hold, in the order found */
  size_t kept;        /* bytes of the objects kept in `wanted` */
} push_plan;

/* Queue `id` (with `base`, its version in the parent commit, or NULL) unless it was seen or the
 * target has it. 1 when queued, 0 when not, -1 on error. */
static int plan_consider(push_plan *p, const git_oid *id, git_object_t type, const git_oid *base) {
  int added = oidset_add(&p->seen, id);
  if (added <= 0) return added < 0 ? (git_error_set_oom(), -1) : 0;
  if (p->theirs && git_odb_exists_ext(p->theirs, id, GIT_ODB_LOOKUP_NO_REFRESH)) return 0;
  if (object_list_add(&p->wanted, id, type) < 0) return git_error_set_oom(), -1;
  *oidset_value(&p->seen, id) = p->wanted.len;
  if (base) p->wanted.items[p->wanted.len - 1].base = *base;
  if (type == GIT_OBJECT_BLOB) return 1;
  if (p->todo_len == p->todo_cap) {
    size_t cap = p->todo_cap ? p->todo_cap * 2 : 1024;
    size_t *todo = realloc(p->todo, cap * sizeof *todo);
    if (todo == NULL) return git_error_set_oom(), -1;
    p->todo = todo;
    p->todo_cap = cap;
  }
  p->todo[p->todo_len++] = p->wanted.len - 1;
  return 1;
}

static int malformed(const git_oid *id, const char *what) {
  char hex[SHA_HEX];
  git_oid_tostr(hex, sizeof hex, id);
  git_error_set(GIT_ERROR_OBJECT, "malformed %s %s", what, hex);
  return -1;
}

/* The tree named by a commit's raw text, or -1. */
static int commit_tree_id(git_oid *out, const char *data, size_t len) {
  if (len < 46 || memcmp(data, "tree ", 5) != 0 || data[45] != '\n') return -1;
  return git_oid_fromstrn(out, data + 5, GIT_OID_HEXSZ);
}

/* The raw text of a commit or tree: kept by the walk when it is queued, else read. */
static int plan_read(git_odb_object **out, push_plan *p, const git_oid *id) {
  size_t *at = oidset_value(&p->seen, id);
  if (at && *at && p->wanted.items[*at - 1].obj)
    return git_odb_object_dup(out, p->wanted.items[*at - 1].obj);
  return git_odb_read(out, p->ours, id);
}

/* The tree and parents of a commit, read from its raw text; the tree's delta base is the first
 * parent's tree. */
static int plan_commit(push_plan *p, const git_oid *id, const char *data, size_t len) {
  const char *s = data, *end = data + len;
  git_oid tree, next, base;
  memset(&base, 0, sizeof base);
  if (commit_tree_id(&tree, data, len) < 0) return malformed(id, "commit");
  s += 46;
  if (end - s >= 48 && memcmp(s, "parent ", 7) == 0 && s[47] == '\n' &&
      git_oid_fromstrn(&next, s + 7, GIT_OID_HEXSZ) == 0) {
    git_odb_object *parent = NULL;
    if (plan_read(&parent, p, &next) == 0 && git_odb_object_type(parent) == GIT_OBJECT_COMMIT &&
        commit_tree_id(&base, git_odb_object_data(parent), git_odb_object_size(parent)) < 0)
      memset(&base, 0, sizeof base);
    git_odb_object_free(parent);
    git_error_clear();
  }
  if (plan_consider(p, &tree, GIT_OBJECT_TREE, &base) < 0) return -1;
  for (; end - s >= 48 && memcmp(s, "parent ", 7) == 0; s += 48) {
    if (s[47] != '\n' || git_oid_fromstrn(&next, s + 7, GIT_OID_HEXSZ) < 0)
      return malformed(id, "commit");
    if (plan_consider(p, &next, GIT_OBJECT_COMMIT, NULL) < 0) return -1;
  }
  return 0;
}

/* One entry of a raw tree ("<octal mode> <name>\0<20-byte id>"). */
typedef struct {
  const char *start, *name;
  size_t name_len, len; /* of the name, of the whole entry */
  unsigned mode;
  const unsigned char *id;
} tree_entry_raw;

/* The entry at *s (then past it): 1, 0 at the end, -1 when malformed. */
static int next_entry(const char **s, const char *end, tree_entry_raw *e) {
  const char *q = *s;
  if (q == end) return 0;
  e->start = q;
  e->mode = 0;
  while (q < end && *q >= '0' && *q <= '7')
    e->mode = e->mode * 8 + (unsigned)(*q++ - '0');
  if (q == end || *q != ' ' || q == e->start) return -1;
  e->name = ++q;
  const char *nul = memchr(q, '\0', (size_t)(end - q));
  if (nul == NULL || end - nul < 1 + GIT_OID_RAWSZ) return -1;
  e->name_len = (size_t)(nul - q);
  e->id = (const unsigned char *)nul + 1;
  *s = nul + 1 + GIT_OID_RAWSZ;
  e->len = (size_t)(*s - e->start);
  return 1;
}

#define ENTRY_IS_DIR(e) (((e)->mode & 0170000) == 0040000)

/* git's order of tree entries: by name, a directory's name as if it ended in '/'. */
static int entry_cmp(const tree_entry_raw *a, const tree_entry_raw *b) {
  size_t n = a->name_len < b->name_len ? a->name_len : b->name_len;
  int c = memcmp(a->name, b->name, n);
  if (c) return c;
  int ca = n < a->name_len ? (unsigned char)a->name[n] : ENTRY_IS_DIR(a) ? '/' : 0;
  int cb = n < b->name_len ? (unsigned char)b->name[n] : ENTRY_IS_DIR(b) ? '/' : 0;
  return ca - cb;
}

/* The entries of a tree; submodules are skipped. Each new entry's delta base is the entry of the
 * same name and kind in `base` (the parent's version of this tree), when there is one. */
static int plan_tree(push_plan *p, const git_oid *id, const char *data, size_t len,
                     const git_oid *base) {
  git_odb_object *bobj = NULL;
  const char *b = NULL, *bend = NULL;
  tree_entry_raw e, be;
  int bhave = 0, r, rc = 0;
  if (!git_oid_is_zero(base)) {
    if (plan_read(&bobj, p, base) == 0 && git_odb_object_type(bobj) == GIT_OBJECT_TREE) {
      b = git_odb_object_data(bobj);
      bend = b + git_odb_object_size(bobj);
      bhave = next_entry(&b, bend, &be);
    }
    git_error_clear();
  }
  const char *s = data, *end = data + len;
  while ((r = next_entry(&s, end, &e)) > 0) {
    if ((e.mode & 0170000) == 0160000) continue; /* a submodule's commit lives elsewhere */
    git_oid entry, from;
    git_oid_fromraw(&entry, e.id);
    memset(&from, 0, sizeof from);
    while (bhave > 0) {
      int c = entry_cmp(&be, &e);
      if (c > 0) break;
      if (c == 0 && ENTRY_IS_DIR(&be) == ENTRY_IS_DIR(&e) &&
          memcmp(be.id, e.id, GIT_OID_RAWSZ) != 0 && (be.mode & 0170000) != 0160000)
        git_oid_fromraw(&from, be.id);
      bhave = next_entry(&b, bend, &be);
      if (c == 0) break;
    }
    if ((rc = plan_consider(p, &entry, ENTRY_IS_DIR(&e) ? GIT_OBJECT_TREE : GIT_OBJECT_BLOB,
                            &from)) < 0)
      break;
  }
  git_odb_object_free(bobj);
  if (rc >= 0 && r < 0) return malformed(id, "tree");
  return rc < 0 ? rc : 0;
}

/* Fill p->wanted starting from `tip`. */
static int plan_objects(push_plan *p, const git_oid *tip) {
  int rc = plan_consider(p, tip, GIT_OBJECT_COMMIT, NULL);
  rc = rc < 0 ? rc : 0;
  while (rc == 0 && p->todo_len > 0) {
    size_t at = p->todo[--p->todo_len];
    object_ref item = p->wanted.items[at];
    git_odb_object *obj = NULL;
    if ((rc = git_odb_read(&obj, p->ours, &item.id)) < 0) break;
    const char *data = git_odb_object_data(obj);
    size_t len = git_odb_object_size(obj);
    if (git_odb_object_type(obj) != item.type)
      rc = malformed(&item.id, item.type == GIT_OBJECT_TREE ? "tree entry" : "commit parent");
    else if (item.type == GIT_OBJECT_COMMIT)
      rc = plan_commit(p, &item.id, data, len);
    else
      rc = plan_tree(p, &item.id, data, len, &item.base);
    if (p->kept + len <= PLAN_KEEP_BYTES) {
      p->wanted.items[at].obj = obj; /* not item.obj: plan_* may have grown `wanted` */
      p->kept += len;
    } else {
      git_odb_object_free(obj);
    }
  }
  return rc;
}

/*
 * Settle the delta bases: a base is used when it is sent too, or (for a thin pack) when the
 * target has it; chains longer than PLAN_MAX_DEPTH and cycles (a path that went back to an
 * earlier version) are cut, the object then going whole.
 */
static int plan_deltas(push_plan *p) {
  size_t n = p->wanted.len;
  unsigned char *state = calloc(n ? n : 1, 1); /* 0 to do, 1 on the stack, 2 settled */
  size_t *stack = malloc((n ? n : 1) * sizeof *stack);
  if (state == NULL || stack == NULL) {
    free(state);
    free(stack);
    return git_error_set_oom(), -1;
  }
  object_ref *items = p->wanted.items;
  for (size_t i = 0; i < n; i++) {
    size_t top = 0, j = i;
    while (state[j] == 0) {
      state[j] = 1;
      stack[top++] = j;
      object_ref *o = &items[j];
      if (git_oid_is_zero(&o->base)) break;
      size_t *at = oidset_value(&p->seen, &o->base);
      if (at == NULL || (*at == 0 && !p->thin)) {
        memset(&o->base, 0, sizeof o->base); /* not where the target can resolve it */
        break;
      }
      o->base_at = *at;
      if (*at == 0) break;
      if (state[*at - 1] == 1) { /* a cycle */
        memset(&o->base, 0, sizeof o->base);
        o->base_at = 0;
        break;
      }
      j = *at - 1;
    }
    while (top > 0) {
      object_ref *o = &items[stack[--top]];
      o->depth = git_oid_is_zero(&o->base) ? 0 : o->base_at ? items[o->base_at - 1].depth + 1 : 1;
      if (o->depth > PLAN_MAX_DEPTH) {
        memset(&o->base, 0, sizeof o->base);
        o->base_at = 0;
        o->depth = 0;
      }
      state[stack[top]] = 2;
    }
  }
  free(state);
  free(stack);
  return 0;
}

static void plan_free(push_plan *p) {
  for (size_t i = 0; i < p->wanted.len; i++)
    git_odb_object_free(p->wanted.items[i].obj);
  oidset_free(&p->seen);
  free(p->todo);
  free(p->wanted.items);
}

/*
 * A pack written through the target's indexer, with its SHA-1 trailer. Compression
 * is most of the work, so objects are read in batches that two threads compress
 * while this one reads the next batches and feeds the indexer the finished ones in
 * order. libgit2 objects are only touched by this thread; the others see object
 * data and their own zlib streams.
 */
#define PACK_CHUNK (1 << 20)
#define PACK_BATCH 256
#define PACK_BATCH_BYTES ((size_t)8 << 20)
#define PACK_WORKERS 2
#define PACK_RING 4 /* batches in flight */

typedef struct {
  git_odb_object *objs[PACK_BATCH];
  git_odb_object *bases[PACK_BATCH]; /* delta base of each object, or NULL */
  size_t count;
  unsigned char *out; /* each object's type and size header, then its zlib stream */
  size_t len, cap;
  int done;
  int failed; /* set by compress_batch: 1 out of memory, 2 zlib */
} pack_batch;

typedef struct compressor compressor;

typedef struct {
  compressor *c;
  z_stream z;
  int z_ready;
  pthread_t thread;
  unsigned char *delta; /* room for one delta */
  size_t delta_cap;
} pack_worker;

struct compressor {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  pack_batch ring[PACK_RING];
  size_t submitted, claimed, emitted;    /* batch numbers */
  int quit, threads;                     /* threads running */
  pack_worker workers[PACK_WORKERS + 1]; /* the last one is for this thread */
};

/*
 * Deltas. A pushed object usually differs little from the same path's version in the parent
 * commit (a tree where one entry changed, a file with one edit), so the delta against it is
 * found without a search: a tree is matched entry by entry with its base, anything else by
 * the longest common prefix and suffix. The result is git's delta format (base and result
 * sizes, then copy and insert instructions); a delta is used only when it is less than half
 * the object, as git does.
 */
typedef struct {
  unsigned char *p, *end;
} delta_out;

static int delta_byte(delta_out *d, unsigned c) {
  if (d->p == d->end) return -1;
  *d->p++ = (unsigned char)c;
  return 0;
}

static int delta_size(delta_out *d, size_t v) {
  for (; v >= 0x80; v >>= 7)
    if (delta_byte(d, (unsigned)(v & 0x7f) | 0x80) < 0) return -1;
  return delta_byte(d, (unsigned)v);
}

/* Copy `len` bytes of the base from `off`: an instruction per 16 MB. */
static int delta_copy(delta_out *d, size_t off, size_t len) {
  while (len > 0) {
    size_t take = len < 0xffffff ? len : 0xffffff;
    unsigned char ins[8];
    int n = 1;
    unsigned op = 0x80;
    for (int i = 0; i < 4; i++)
      if ((off >> (8 * i)) & 0xff) {
        op |= 1u << i;
        ins[n++] = (unsigned char)(off >> (8 * i));
      }
    for (int i = 0; i < 3; i++)
      if ((take >> (8 * i)) & 0xff) {
        op |= 0x10u << i;
        ins[n++] = (unsigned char)(take >> (8 * i));
      }
    ins[0] = (unsigned char)op;
    if (d->end - d->p < n) return -1;
    memcpy(d->p, ins, (size_t)n);
    d->p += n;
    off += take;
    len -= take;
  }
  return 0;
}

/* Insert `len` bytes of the result: 127 at most per instruction. */
static int delta_insert(delta_out *d, const unsigned char *s, size_t len) {
  while (len > 0) {
    size_t take = len < 127 ? len : 127;
    if ((size_t)(d->end - d->p) < take + 1) return -1;
    *d->p++ = (unsigned char)take;
    memcpy(d->p, s, take);
    d->p += take;
    s += take;
    len -= take;
  }
  return 0;
}

/* Tree against tree: every entry found unchanged in the base is copied from it. */
static int delta_tree(delta_out *d, const char *base, size_t blen, const char *tree, size_t tlen) {
  const char *b = base, *bend = base + blen, *t = tree, *tend = tree + tlen;
  tree_entry_raw e, be;
  int bhave = next_entry(&b, bend, &be), r;
  size_t copy_off = 0, copy_len = 0, ins_off = 0, ins_len = 0;
  if (bhave < 0) return -1;
  while ((r = next_entry(&t, tend, &e)) > 0) {
    const char *same = NULL;
    while (bhave > 0) {
      int c = entry_cmp(&be, &e);
      if (c > 0) break;
      if (c == 0 && be.len == e.len && memcmp(be.start, e.start, e.len) == 0) same = be.start;
      if ((bhave = next_entry(&b, bend, &be)) < 0) return -1;
      if (c == 0) break;
    }
    if (same) {
      size_t off = (size_t)(same - base);
      if (ins_len && delta_insert(d, (const unsigned char *)tree + ins_off, ins_len) < 0) return -1;
      ins_len = 0;
      if (copy_len && copy_off + copy_len == off) {
        copy_len += e.len;
        continue;
      }
      if (copy_len && delta_copy(d, copy_off, copy_len) < 0) return -1;
      copy_off = off;
      copy_len = e.len;
    } else {
      if (copy_len && delta_copy(d, copy_off, copy_len) < 0) return -1;
      copy_len = 0;
      if (ins_len == 0) ins_off = (size_t)(e.start - tree);
      ins_len += e.len;
    }
  }
  if (r < 0) return -1;
  if (copy_len && delta_copy(d, copy_off, copy_len) < 0) return -1;
  if (ins_len && delta_insert(d, (const unsigned char *)tree + ins_off, ins_len) < 0) return -1;
  return 0;
}

/* Anything against anything: the common prefix and suffix are copied, the middle inserted. */
static int delta_ends(delta_out *d, const unsigned char *base, size_t blen,
                      const unsigned char *obj, size_t len) {
  size_t most = blen < len ? blen : len, pre = 0, suf = 0;
  while (pre < most && base[pre] == obj[pre])
    pre++;
  while (suf < most - pre && base[blen - 1 - suf] == obj[len - 1 - suf])
    suf++;
  if (pre && delta_copy(d, 0, pre) < 0) return -1;
  if (delta_insert(d, obj + pre, len - pre - suf) < 0) return -1;
  if (suf && delta_copy(d, blen - suf, suf) < 0) return -1;
  return 0;
}

/* The delta of `obj` against `base` into w->delta; its length, or 0 when it is not worth it. */
static size_t make_delta(pack_worker *w, git_odb_object *base, git_odb_object *obj) {
  size_t blen = git_odb_object_size(base), len = git_odb_object_size(obj);
  if (len < 64) return 0;
  size_t room =
      len / 2 - GIT_OID_RAWSZ; /* a delta must beat half the object, its base id included */
  if (w->delta_cap < room) {
    unsigned char *buf = realloc(w->delta, room);
    if (buf == NULL) return 0;
    w->delta = buf;
    w->delta_cap = room;
  }
  delta_out d = {w->delta, w->delta + room};
  const char *bdata = git_odb_object_data(base), *data = git_odb_object_data(obj);
  if (delta_size(&d, blen) < 0 || delta_size(&d, len) < 0) return 0;
  unsigned char *ops = d.p;
  if (git_odb_object_type(obj) == GIT_OBJECT_TREE && delta_tree(&d, bdata, blen, data, len) == 0)
    return (size_t)(d.p - w->delta);
  d.p = ops;
  if (delta_ends(&d, (const unsigned char *)bdata, blen, (const unsigned char *)data, len) == 0)
    return (size_t)(d.p - w->delta);
  return 0;
}

#define PACK_REF_DELTA 7 /* pack entry type: a delta against the object named next */

static void compress_batch(pack_worker *w, pack_batch *b) {
  z_stream *z = &w->z;
  b->len = 0;
  b->failed = 0;
  for (size_t i = 0; i < b->count; i++) {
    unsigned type = (unsigned)git_odb_object_type(b->objs[i]);
    const unsigned char *data = git_odb_object_data(b->objs[i]);
    size_t size = git_odb_object_size(b->objs[i]);
    size_t dlen = b->bases[i] ? make_delta(w, b->bases[i], b->objs[i]) : 0;
    if (dlen) {
      type = PACK_REF_DELTA;
      data = w->delta;
      size = dlen;
    }
    size_t rest = size >> 4;
    size_t need = b->len + 16 + GIT_OID_RAWSZ + deflateBound(z, (uLong)size);
    if (need > b->cap) {
      size_t cap = b->cap ? b->cap : 65536;
      while (cap < need)
        cap *= 2;
      unsigned char *out = realloc(b->out, cap);
      if (out == NULL) {
        b->failed = 1;
        return;
      }
      b->out = out;
      b->cap = cap;
    }
    unsigned char *o = b->out + b->len;
    *o++ = (unsigned char)((type << 4) | (size & 0x0f) | (rest ? 0x80 : 0));
    for (; rest; rest >>= 7)
      *o++ = (unsigned char)((rest & 0x7f) | (rest >> 7 ? 0x80 : 0));
    if (dlen) {
      memcpy(o, git_odb_object_id(b->bases[i])->id, GIT_OID_RAWSZ);
      o += GIT_OID_RAWSZ;
    }
    b->len = (size_t)(o - b->out);
    if (deflateReset(z) != Z_OK) {
      b->failed = 2;
      return;
    }
    z->next_in = (unsigned char *)data;
    z->avail_in = (uInt)size;
    z->next_out = o;
    z->avail_out = (uInt)(b->cap - b->len);
    if (deflate(z, Z_FINISH) != Z_STREAM_END) { /* room enough: deflateBound */
      b->failed = 2;
      return;
    }
    b->len = b->cap - z->avail_out;
  }
}

static void *compressor_main(void *arg) {
  pack_worker *w = arg;
  compressor *c = w->c;
  pthread_mutex_lock(&c->lock);
  for (;;) {
    while (c->claimed == c->submitted && !c->quit)
      pthread_cond_wait(&c->cond, &c->lock);
    if (c->claimed == c->submitted) break;
    pack_batch *b = &c->ring[c->claimed++ % PACK_RING];
    pthread_mutex_unlock(&c->lock);
    compress_batch(w, b);
    pthread_mutex_lock(&c->lock);
    b->done = 1;
    pthread_cond_broadcast(&c->cond);
  }
  pthread_mutex_unlock(&c->lock);
  return NULL;
}

/* Start up to PACK_WORKERS threads (none is fine: batches are then compressed here). */
static int compressor_start(compressor *c, int threads) {
  for (int i = 0; i <= PACK_WORKERS; i++) {
    c->workers[i].c = c;
    if (deflateInit(&c->workers[i].z, Z_BEST_SPEED) != Z_OK) return -1;
    c->workers[i].z_ready = 1;
  }
  if (threads == 0 || pthread_mutex_init(&c->lock, NULL) != 0) return 0;
  if (pthread_cond_init(&c->cond, NULL) != 0) {
    pthread_mutex_destroy(&c->lock);
    return 0;
  }
  while (c->threads < threads && c->threads < PACK_WORKERS &&
         pthread_create(&c->workers[c->threads].thread, NULL, compressor_main,
                        &c->workers[c->threads]) == 0)
    c->threads++;
  if (c->threads == 0) {
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
  }
  return 0;
}

static void compressor_submit(compressor *c) {
  pack_batch *b = &c->ring[c->submitted % PACK_RING];
  b->done = 0;
  if (c->threads == 0) {
    compress_batch(&c->workers[PACK_WORKERS], b);
    b->done = 1;
    c->submitted++;
    return;
  }
  pthread_mutex_lock(&c->lock);
  c->submitted++;
  pthread_cond_broadcast(&c->cond);
  pthread_mutex_unlock(&c->lock);
}

/* The oldest batch not yet emitted, once it is compressed. */
static pack_batch *compressor_next(compressor *c) {
  pack_batch *b = &c->ring[c->emitted % PACK_RING];
  if (c->threads == 0) return b;
  pthread_mutex_lock(&c->lock);
  while (!b->done)
    pthread_cond_wait(&c->cond, &c->lock);
  pthread_mutex_unlock(&c->lock);
  return b;
}

/* Wait for the batches in flight, stop the threads, free everything but the objects. */
static void compressor_stop(compressor *c) {
  if (c->threads > 0) {
    pthread_mutex_lock(&c->lock);
    c->quit = 1;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    for (int i = 0; i < c->threads; i++)
      pthread_join(c->workers[i].thread, NULL);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
    c->threads = 0;
  }
  for (int i = 0; i <= PACK_WORKERS; i++) {
    if (c->workers[i].z_ready) deflateEnd(&c->workers[i].z);
    free(c->workers[i].delta);
  }
  for (int i = 0; i < PACK_RING; i++)
    free(c->ring[i].out);
}

typedef struct {
  git_odb_writepack *wp;                 /* into a local object store, */
  git_smart_subtransport_stream *stream; /* or onto a connection */
  git_indexer_progress stats;
  EVP_MD_CTX *sha;
  unsigned char *buf; /* bytes waiting to be appended, up to PACK_CHUNK */
  size_t len;
  size_t bytes; /* written so far */
} pack_writer;

static int pack_flush(pack_writer *w) {
  if (w->len == 0) return 0;
  int rc = w->wp ? w->wp->append(w->wp, w->buf, w->len, &w->stats)
                 : w->stream->write(w->stream, (const char *)w->buf, w->len);
  w->len = 0;
  return rc;
}

static int pack_put(pack_writer *w, const void *data, size_t len) {
  const unsigned char *s = data;
  if (EVP_DigestUpdate(w->sha, data, len) != 1) {
    git_error_set(GIT_ERROR_OS, "SHA-1 failed");
    return -1;
  }
  w->bytes += len;
  while (len > 0) {
    size_t take = PACK_CHUNK - w->len < len ? PACK_CHUNK - w->len : len;
    memcpy(w->buf + w->len, s, take);
    w->len += take;
    s += take;
    len -= take;
    if (w->len == PACK_CHUNK) {
      int rc = pack_flush(w);
      if (rc < 0) return rc;
    }
  }
  return 0;
}

/* Read the next objects of `plan` (from *next on), with their delta bases, into `b`. */
static int batch_fill(pack_batch *b, push_plan *plan, size_t *next) {
  size_t bytes = 0;
  b->count = 0;
  while (*next < plan->wanted.len && b->count < PACK_BATCH && bytes < PACK_BATCH_BYTES) {
    object_ref *item = &plan->wanted.items[*next];
    git_odb_object *obj = NULL, *base = NULL;
    int rc =
        item->obj ? git_odb_object_dup(&obj, item->obj) : git_odb_read(&obj, plan->ours, &item->id);
    if (rc < 0) return rc;
    b->bases[b->count] = NULL;
    b->objs[b->count++] = obj;
    (*next)++;
    bytes += git_odb_object_size(obj);
    if (git_odb_object_size(obj) > 0xffffffffu) {
      git_error_set(GIT_ERROR_INVALID, "object too large for a push");
      return -1;
    }
    if (item->depth == 0) continue;
    object_ref *from = item->base_at ? &plan->wanted.items[item->base_at - 1] : NULL;
    if (from && from->obj)
      rc = git_odb_object_dup(&base, from->obj);
    else
      rc = git_odb_read(&base, plan->ours, &item->base);
    if (rc < 0) {
      git_error_clear(); /* sent whole */
      continue;
    }
    if (git_odb_object_type(base) == git_odb_object_type(obj) &&
        git_odb_object_size(base) <= 0xffffffffu)
      b->bases[b->count - 1] = base;
    else
      git_odb_object_free(base);
  }
  return 0;
}

static void batch_release(pack_batch *b) {
  for (size_t i = 0; i < b->count; i++) {
    git_odb_object_free(b->objs[i]);
    git_odb_object_free(b->bases[i]);
  }
  b->count = 0;
}

/* Write `plan` as one pack into `target`, or else onto `stream`, reporting progress as "pushing".
 */
static int write_pack(git_odb *target, git_smart_subtransport_stream *stream, push_plan *plan,
                      netctx *n) {
  pack_writer w;
  compressor *c = calloc(1, sizeof *c);
  memset(&w, 0, sizeof w);
  size_t total = plan->wanted.len, next = 0, written = 0;
  int rc = -1;
  w.buf = malloc(PACK_CHUNK);
  w.sha = EVP_MD_CTX_new();
  if (c == NULL || w.buf == NULL || w.sha == NULL ||
      EVP_DigestInit_ex(w.sha, EVP_sha1(), NULL) != 1) {
    git_error_set_oom();
    goto done;
  }
  /* threads only pay off beyond a batch or two */
  if (compressor_start(c, total > 2 * PACK_BATCH ? PACK_WORKERS : 0) < 0) {
    git_error_set(GIT_ERROR_ZLIB, "zlib initialisation failed");
    goto done;
  }
  if (target && (rc = git_odb_write_pack(&w.wp, target, NULL, NULL)) < 0) goto done;
  w.stream = stream;
  unsigned char head[12] = {'P', 'A', 'C', 'K', 0, 0, 0, 2};
  for (int i = 0; i < 4; i++)
    head[8 + i] = (unsigned char)(total >> (24 - 8 * i));
  if ((rc = pack_put(&w, head, sizeof head)) < 0) goto done;
  for (;;) {
    while (c->submitted - c->emitted < PACK_RING && next < total) {
      if ((rc = batch_fill(&c->ring[c->submitted % PACK_RING], plan, &next)) < 0) goto done;
      compressor_submit(c);
    }
    if (c->emitted == c->submitted) break;
    pack_batch *b = compressor_next(c);
    if (b->failed) {
      if (b->failed == 1)
        git_error_set_oom();
      else
        git_error_set(GIT_ERROR_ZLIB, "compressing an object failed");
      rc = -1;
      goto done;
    }
    if ((rc = pack_put(&w, b->out, b->len)) < 0) goto done;
    written += b->count;
    batch_release(b);
    c->emitted++;
    if (n->progress && (rc = on_push_transfer((unsigned)written, (unsigned)total, w.bytes, n)) < 0)
      goto done;
  }
  unsigned char trailer[EVP_MAX_MD_SIZE];
  if ((rc = pack_flush(&w)) < 0) goto done;
  if (EVP_DigestFinal_ex(w.sha, trailer, NULL) != 1) {
    git_error_set(GIT_ERROR_OS, "SHA-1 failed");
    rc = -1;
    goto done;
  }
  if (w.wp) {
    if ((rc = w.wp->append(w.wp, trailer, GIT_OID_RAWSZ, &w.stats)) < 0) goto done;
    rc = w.wp->commit(w.wp, &w.stats);
  } else {
    rc = stream->write(stream, (const char *)trailer, GIT_OID_RAWSZ);
  }
done:
  if (c) {
    compressor_stop(c); /* the threads are done with every batch */
    for (int i = 0; i < PACK_RING; i++)
      batch_release(&c->ring[i]);
    free(c);
  }
  EVP_MD_CTX_free(w.sha);
  free(w.buf);
  if (w.wp) w.wp->free(w.wp); /* removes the temporary pack unless committed */
  return rc;
}

#define PUSH_UNSUPPORTED 1

/* Whether `spec` is "src:refs/..." (not forced, not a deletion); *dst is then its target. */
static int plain_refspec(const char *spec, const char **dst) {
  const char *colon = strchr(spec, ':');
  if (spec[0] == '+' || colon == NULL || colon == spec || strncmp(colon + 1, "refs/", 5) != 0)
    return 0;
  *dst = colon + 1;
  return 1;
}

/*
 * Before a push moves `dst` from `cur` to `tip`: 1 to go ahead (*ours is the working copy's
 * object store), 0 when it is up to date, or an error: GIT_EUSER when `dst` is not where the
 * caller expects it (n->failure and n->moved say so), GIT_ENONFASTFORWARD when `tip` does not
 * contain `cur`.
 */
static int push_preflight(git_repository *repo, netctx *n, const char *dst, const git_oid *cur,
                          const git_oid *tip, git_odb **ours) {
  if (n->has_expect && !git_oid_equal(cur, &n->expect)) {
    note_moved(n, dst, cur, &n->expect);
    return GIT_EUSER;
  }
  if (git_oid_equal(cur, tip)) return 0;
  int rc = git_repository_odb(ours, repo);
  if (rc < 0) return rc;
  if (!git_oid_is_zero(cur) &&
      (!git_odb_exists(*ours, cur) || git_graph_descendant_of(repo, tip, cur) != 1)) {
    git_error_clear();
    return GIT_ENONFASTFORWARD;
  }
  return 1;
}

/* ---- the target's hooks -------------------------------------------------------
 *
 * A push to a local path runs the hooks `git receive-pack` would run in the target, with
 * git's contract (githooks(5)): once the objects are in, pre-receive (stdin "<old> <new>
 * <ref>\n") and then update (arguments <ref> <old> <new>), either of which refuses the push
 * by failing; then the ref moves; then post-receive (the same stdin) and post-update
 * (argument <ref>), whose outcome changes nothing. A hook is the executable file of that name
 * in core.hooksPath (relative to the repository) or else in <repository>/hooks. It runs in
 * the repository with GIT_DIR=. (and GIT_PUSH_OPTION_COUNT=0 for the two that read stdin),
 * without the variables that would point git at another repository (those git clears for
 * its local transport), in a process group of its own that the signal forwarding of proc.c
 * knows, never through a shell. Its stdout and stderr, as one stream, go where a server's
 * messages go (n->remote_msg). The objects are not quarantined as git does: after a refusal
 * they stay in the target unreferenced, until `git gc` prunes them. A hook still running
 * after HOOK_TIMEOUT_S ($MOONOPS_GIT_HOOK_TIMEOUT seconds when set) gets SIGTERM, its group
 * SIGKILL HOOK_GRACE_MS later.
 */
#define HOOK_TIMEOUT_S 600
#define HOOK_GRACE_MS 2000
#define HOOK_DRAIN_MS 1000 /* after the hook exits, for what it wrote to reach us */

extern char **environ;

static const char *const hook_env_dropped[] = {
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_OBJECT_DIRECTORY",
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_GRAFT_FILE",
    "GIT_INDEX_FILE",
    "GIT_NO_REPLACE_OBJECTS",
    "GIT_REPLACE_REF_BASE",
    "GIT_PREFIX",
    "GIT_SHALLOW_FILE",
    "GIT_COMMON_DIR",
    "GIT_QUARANTINE_PATH",
    "GIT_PUSH_OPTION_COUNT",
    "PWD", /* the hook runs elsewhere: a shell works it out */
};

typedef struct {
  char dir[PATH_MAX]; /* where the hooks are */
  const char *repo;   /* the repository: the hooks' working directory */
  char **env;         /* their environment, built when the first one runs */
  double timeout;     /* seconds */
} hooks_ctx;

static void hooks_init(hooks_ctx *h, git_repository *target) {
  memset(h, 0, sizeof *h);
  h->repo = git_repository_path(target);
  git_config *cfg = NULL;
  git_buf dir = GIT_BUF_INIT;
  if (git_repository_config_snapshot(&cfg, target) == 0 &&
      git_config_get_path(&dir, cfg, "core.hooksPath") == 0 && dir.size > 0)
    snprintf(h->dir, sizeof h->dir, "%s%s", dir.ptr[0] == '/' ? "" : h->repo, dir.ptr);
  else
    snprintf(h->dir, sizeof h->dir, "%shooks", git_repository_commondir(target));
  git_buf_dispose(&dir);
  git_config_free(cfg);
  git_error_clear();
  const char *t = getenv("MOONOPS_GIT_HOOK_TIMEOUT");
  char *end = NULL;
  h->timeout = t && *t ? strtod(t, &end) : 0;
  if (end == NULL || *end != '\0' || !(h->timeout > 0) || h->timeout > 1e6)
    h->timeout = HOOK_TIMEOUT_S;
}

static void hooks_free(hooks_ctx *h) {
  free(h->env);
  h->env = NULL;
}

/* The process's environment less hook_env_dropped, then GIT_DIR=. and the push options' count. */
static int hooks_env(hooks_ctx *h) {
  if (h->env) return 0;
  size_t n = 0;
  while (environ[n])
    n++;
  char **env = malloc((n + 3) * sizeof *env);
  if (env == NULL) return -1;
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    const char *eq = strchr(environ[i], '=');
    size_t len = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
    int drop = strncmp(environ[i], "GIT_PUSH_OPTION_", 16) == 0;
    for (size_t j = 0; !drop && j < sizeof hook_env_dropped / sizeof hook_env_dropped[0]; j++)
      drop =
          strlen(hook_env_dropped[j]) == len && memcmp(environ[i], hook_env_dropped[j], len) == 0;
    if (!drop) env[k++] = environ[i];
  }
  env[k++] = "GIT_DIR=.";
  env[k++] = "GIT_PUSH_OPTION_COUNT=0"; /* only for hooks that read stdin: cut off for the others */
  env[k] = NULL;
  h->env = env;
  return 0;
}

static long long hook_clock_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Has pid exited? It stays unreaped, so its process group id cannot be taken meanwhile. */
static int hook_exited(pid_t pid) {
  siginfo_t si;
  memset(&si, 0, sizeof si);
  if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0) return errno == ECHILD;
  return si.si_pid == pid;
}

/*
 * Run hook `name` when there is one, with `args` (NULL-terminated, up to 3) and `in` on its
 * stdin (NULL: /dev/null), its output added to n->remote_msg. Returns 0 when there is none
 * or it exited 0, else 1 with what went wrong ("declined", "timed out ...") in `why`.
 */
static int run_hook(hooks_ctx *h, const char *name, const char *const *args, const char *in,
                    netctx *n, char *why, size_t size) {
  char file[PATH_MAX];
  struct stat st;
  int len = snprintf(file, sizeof file, "%s/%s", h->dir, name);
  if (len < 0 || (size_t)len >= sizeof file || stat(file, &st) < 0 || !S_ISREG(st.st_mode) ||
      access(file, X_OK) < 0)
    return 0;
  char *argv[5] = {file};
  for (int i = 0; args && args[i] && i < 3; i++)
    argv[i + 1] = (char *)args[i];
  int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1}, pidfd = -1, slot = -1, status = 0;
  int pid = 0, err = 0;
  const char *step = "";
  size_t envc = 0;
  if (hooks_env(h) < 0) {
    err = ENOMEM;
    goto failed;
  }
  /* the stdin hooks' environment ends with the push options' count; the others' without it */
  while (h->env[envc])
    envc++;
  if (!in) h->env[envc - 1] = NULL;
  if (in) {
    /* one short line: it fits in the pipe, so it is written before the hook starts */
    size_t in_len = strlen(in);
    step = "its input: ";
    if (pipe2(in_pipe, O_CLOEXEC) < 0) {
      err = errno;
      goto failed;
    }
    fcntl(in_pipe[1], F_SETFL, fcntl(in_pipe[1], F_GETFL) | O_NONBLOCK);
    ssize_t w = write(in_pipe[1], in, in_len);
    if (w < 0 || (size_t)w != in_len) {
      err = w < 0 ? errno : EMSGSIZE;
      goto failed;
    }
    close(in_pipe[1]);
    in_pipe[1] = -1;
  }
  step = "";
  if (pipe2(out_pipe, O_CLOEXEC) < 0) {
    err = errno;
    goto failed;
  }
  int fds[3] = {in_pipe[0], out_pipe[1], out_pipe[1]};
  err = mo_proc_spawn(&pid, file, argv, h->env, h->repo, fds, &slot);
  if (err == ENOEXEC) { /* a script without "#!": git runs it with sh, as execvp does */
    char *sh_argv[6] = {"/bin/sh", file, argv[1], argv[2], argv[3], NULL};
    err = mo_proc_spawn(&pid, "/bin/sh", sh_argv, h->env, h->repo, fds, &slot);
  }
  close(out_pipe[1]);
  out_pipe[1] = -1;
  if (err) {
    pid = 0;
    goto failed;
  }
#ifdef SYS_pidfd_open
  pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
#endif
  fcntl(out_pipe[0], F_SETFL, fcntl(out_pipe[0], F_GETFL) | O_NONBLOCK);
  long long now = hook_clock_ms(), deadline = now + (long long)(h->timeout * 1000);
  long long kill_at = 0, drain_until = 0;
  int exited = 0, timed_out = 0;
  for (;;) {
    now = hook_clock_ms();
    if (!exited && hook_exited(pid)) {
      exited = 1;
      drain_until = now + HOOK_DRAIN_MS;
    }
    if (!exited && !timed_out && now >= deadline) {
      timed_out = 1;
      kill(-pid, SIGTERM);
      kill_at = now + HOOK_GRACE_MS;
    }
    if (kill_at && now >= kill_at) {
      kill(-pid, SIGKILL);
      kill_at = 0;
    }
    /* done once it exited and its output ended, or something it started keeps that open */
    if (exited && (out_pipe[0] < 0 || now >= drain_until)) break;
    long long next = exited ? drain_until : timed_out ? LLONG_MAX : deadline;
    if (kill_at && kill_at < next) next = kill_at;
    if (!exited && pidfd < 0 && now + 20 < next) next = now + 20;
    int ms = next == LLONG_MAX ? -1 : next <= now ? 0 : (int)(next - now);
    struct pollfd pfd[2];
    nfds_t np = 0;
    if (out_pipe[0] >= 0) pfd[np++] = (struct pollfd){out_pipe[0], POLLIN, 0};
    if (!exited && pidfd >= 0) pfd[np++] = (struct pollfd){pidfd, POLLIN, 0};
    if (poll(pfd, np, ms) < 0 && errno != EINTR) {
      err = errno;
      step = "poll: ";
      kill(-pid, SIGKILL);
      break;
    }
    if (out_pipe[0] >= 0 && pfd[0].revents) {
      char buf[4096];
      ssize_t got = read(out_pipe[0], buf, sizeof buf);
      if (got > 0) {
        on_sideband(buf, (int)got, n);
      } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
        close(out_pipe[0]);
        out_pipe[0] = -1;
      }
    }
  }
  if (timed_out) kill(-pid, SIGKILL); /* nothing of a hook that timed out is left running */
  mo_proc_forget(&slot, pid);
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out && !err)
    snprintf(why, size, "timed out after %g s and was killed", h->timeout);
  else if (!err && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
    snprintf(why, size, "declined");
failed:
  if (err) snprintf(why, size, "could not be run: %s%s", step, strerror(err));
  if (!in && envc > 0) h->env[envc - 1] = "GIT_PUSH_OPTION_COUNT=0";
  for (int i = 0; i < 2; i++) {
    if (in_pipe[i] >= 0) close(in_pipe[i]);
    if (out_pipe[i] >= 0) close(out_pipe[i]);
  }
  if (pidfd >= 0) close(pidfd);
  return why[0] != '\0';
}

/* Run a hook that can refuse the push (pre-receive, update): 1 when it did (n->rejected says
 * so, as a server would), else 0. */
static int refusing_hook(hooks_ctx *h, const char *name, const char *const *args, const char *in,
                         netctx *n) {
  char why[128] = "";
  if (!run_hook(h, name, args, in, n, why, sizeof why)) return 0;
  snprintf(n->rejected, sizeof n->rejected, "%s hook %s", name, why);
  return 1;
}

/* Run a hook that comes after the ref moved (post-receive, post-update): what went wrong joins
 * its output, the push stands. */
static void later_hook(hooks_ctx *h, const char *name, const char *const *args, const char *in,
                       netctx *n) {
  char why[128] = "", note[192];
  if (!run_hook(h, name, args, in, n, why, sizeof why) || strcmp(why, "declined") == 0) return;
  int len = snprintf(note, sizeof note, "\n%s hook %s\n", name, why);
  on_sideband(note, len < (int)sizeof note ? len : (int)sizeof note - 1, n);
}

/*
 * Push `spec` ("src:refs/...") to the bare repository at `path`, running its hooks (see
 * above). Returns 0 (with n->rejected set when a hook refused the push), a libgit2
 * error (n->failure and n->moved say more), or PUSH_UNSUPPORTED when libgit2's
 * transport should do it (forced or deleting refspecs, a non-bare or shallow target,
 * a symbolic target ref, anything that is not a commit).
 */
static int push_local(git_repository *repo, const char *path, const char *spec, netctx *n) {
  const char *dst;
  if (!plain_refspec(spec, &dst)) return PUSH_UNSUPPORTED;
  char *src = strndup(spec, (size_t)(dst - 1 - spec));
  git_repository *target = NULL;
  git_reference *ref = NULL, *moved = NULL;
  git_object *obj = NULL;
  git_odb *theirs = NULL;
  push_plan plan;
  memset(&plan, 0, sizeof plan);
  hooks_ctx hooks;
  memset(&hooks, 0, sizeof hooks);
  char *line = NULL; /* the hooks' stdin */
  git_oid tip, cur;
  memset(&cur, 0, sizeof cur);
  int rc = PUSH_UNSUPPORTED;
  if (src == NULL || git_revparse_single(&obj, repo, src) < 0 ||
      git_object_type(obj) != GIT_OBJECT_COMMIT ||
      git_repository_open_ext(&target, path, GIT_REPOSITORY_OPEN_NO_SEARCH, NULL) < 0 ||
      !git_repository_is_bare(target) || git_repository_is_shallow(target))
    goto done;
  git_oid_cpy(&tip, git_object_id(obj));
  int lr = git_reference_lookup(&ref, target, dst);
  if (lr == 0 && git_reference_type(ref) != GIT_REFERENCE_DIRECT) goto done;
  if (lr == 0)
    git_oid_cpy(&cur, git_reference_target(ref));
  else if (lr != GIT_ENOTFOUND)
    goto done;
  git_error_clear();

  if ((rc = push_preflight(repo, n, dst, &cur, &tip, &plan.ours)) <= 0) goto done;
  if ((rc = git_repository_odb(&theirs, target)) < 0) goto done;
  plan.theirs = theirs;
  if ((rc = plan_objects(&plan, &tip)) < 0 || (rc = plan_deltas(&plan)) < 0) goto done;
  if (plan.wanted.len > 0 && (rc = write_pack(theirs, NULL, &plan, n)) < 0) goto done;
  hooks_init(&hooks, target);
  char old_hex[SHA_HEX], new_hex[SHA_HEX];
  git_oid_tostr(old_hex, sizeof old_hex, &cur);
  git_oid_tostr(new_hex, sizeof new_hex, &tip);
  const char *update_args[] = {dst, old_hex, new_hex, NULL};
  line = malloc(2 * GIT_OID_HEXSZ + strlen(dst) + 4);
  if (line == NULL) {
    git_error_set_oom();
    rc = -1;
    goto done;
  }
  sprintf(line, "%s %s %s\n", old_hex, new_hex, dst);
  if (refusing_hook(&hooks, "pre-receive", NULL, line, n) ||
      refusing_hook(&hooks, "update", update_args, NULL, n)) {
    rc = 0; /* n->rejected says why */
    goto done;
  }
  if (git_oid_is_zero(&cur))
    rc = git_reference_create(&moved, target, dst, &tip, 0, "push");
  else
    rc = git_reference_create_matching(&moved, target, dst, &tip, 1, &cur, "push");
  if (rc == GIT_EMODIFIED || rc == GIT_EEXISTS) {
    git_oid now;
    if (git_reference_name_to_id(&now, target, dst) < 0) memset(&now, 0, sizeof now);
    git_error_clear();
    note_moved(n, dst, &now, &cur);
    rc = GIT_EUSER;
  }
  if (rc == 0) {
    const char *post_update_args[] = {dst, NULL};
    later_hook(&hooks, "post-receive", NULL, line, n);
    later_hook(&hooks, "post-update", post_update_args, NULL, n);
  }
done:
  hooks_free(&hooks);
  free(line);
  git_reference_free(moved);
  git_reference_free(ref);
  git_object_free(obj);
  git_odb_free(plan.ours);
  git_odb_free(theirs);
  plan_free(&plan);
  git_repository_free(target);
  free(src);
  if (rc == PUSH_UNSUPPORTED) git_error_clear();
  return rc;
}

/* ---- pushing over the network -------------------------------------------- */

/*
 * libgit2 pushes over the network through its pack builder: an object walk that takes more
 * than git sends, a delta search that finds few good bases (trees carry no path) and full
 * compression of everything, several seconds for a promotion of a thousand commits where git
 * reuses what it has. For git:// and http(s):// remotes the push is done here, on libgit2's own
 * transports: its smart transport connects, authenticates (with our credentials callback and
 * its bounded attempts) and reads the advertised refs, through a subtransport wrapped only to
 * keep the first bytes the server sent, which carry its capabilities. What is sent is what git
 * sends: the objects reachable from the new tip and not from the commits at the edge of what
 * the server's refs reach, whose trees the server has. They go as a pack made as for a local
 * push (deltas against each path's version in the parent commit; thin, with bases the server
 * has, unless it says no-thin) on the receive-pack stream after the update command, and the
 * server's report (through side-band-64k when offered, so hook output is kept) says what
 * became of the ref.
 */

#define WIRE_GIT 1
#define WIRE_HTTP 2
#define WIRE_HEAD 8192 /* bytes of the advertisement kept: its first ref has the capabilities */

typedef struct wire_sub wire_sub;

typedef struct wire_push {
  int kind;
  wire_sub *sub;                           /* while both exist */
  git_smart_subtransport *inner;           /* libgit2's subtransport for the URL */
  git_smart_subtransport_stream *ls_inner; /* the advertisement's stream, while open */
  char head[WIRE_HEAD];
  size_t head_len;
} wire_push;

/* The transport (and so this) is freed with the remote, after the push: `w` is NULL by then. */
struct wire_sub {
  git_smart_subtransport parent;
  git_smart_subtransport *inner;
  wire_push *w;
};

typedef struct {
  git_smart_subtransport_stream parent;
  git_smart_subtransport_stream *inner;
  wire_sub *sub;
} wire_stream;

static int wire_stream_read(git_smart_subtransport_stream *s, char *buf, size_t size, size_t *got) {
  wire_stream *ws = (wire_stream *)s;
  wire_push *w = ws->sub->w;
  int rc = ws->inner->read(ws->inner, buf, size, got);
  if (rc == 0 && w && w->head_len < WIRE_HEAD) {
    size_t take = WIRE_HEAD - w->head_len < *got ? WIRE_HEAD - w->head_len : *got;
    memcpy(w->head + w->head_len, buf, take);
    w->head_len += take;
  }
  return rc;
}

static int wire_stream_write(git_smart_subtransport_stream *s, const char *buf, size_t len) {
  wire_stream *ws = (wire_stream *)s;
  return ws->inner->write(ws->inner, buf, len);
}

static void wire_stream_free(git_smart_subtransport_stream *s) {
  wire_stream *ws = (wire_stream *)s;
  if (ws->sub->w && ws->sub->w->ls_inner == ws->inner) ws->sub->w->ls_inner = NULL;
  ws->inner->free(ws->inner);
  free(ws);
}

static int wire_action(git_smart_subtransport_stream **out, git_smart_subtransport *t,
                       const char *url, git_smart_service_t action) {
  wire_sub *sub = (wire_sub *)t;
  git_smart_subtransport_stream *inner = NULL;
  int rc = sub->inner->action(&inner, sub->inner, url, action);
  if (rc < 0 || action != GIT_SERVICE_RECEIVEPACK_LS) {
    *out = inner;
    return rc;
  }
  wire_stream *ws = calloc(1, sizeof *ws);
  if (ws == NULL) {
    inner->free(inner);
    git_error_set_oom();
    return -1;
  }
  ws->parent.subtransport = t;
  ws->parent.read = wire_stream_read;
  ws->parent.write = inner->write ? wire_stream_write : NULL;
  ws->parent.free = wire_stream_free;
  ws->inner = inner;
  ws->sub = sub;
  if (sub->w) {
    sub->w->ls_inner = inner;
    sub->w->head_len = 0;
  }
  *out = &ws->parent;
  return 0;
}

static int wire_close(git_smart_subtransport *t) {
  wire_sub *sub = (wire_sub *)t;
  return sub->inner->close(sub->inner);
}

static void wire_free(git_smart_subtransport *t) {
  wire_sub *sub = (wire_sub *)t;
  if (sub->w) {
    sub->w->sub = NULL;
    sub->w->inner = NULL;
  }
  sub->inner->free(sub->inner);
  free(sub);
}

static int wire_subtransport(git_smart_subtransport **out, git_transport *owner, void *param) {
  wire_push *w = param;
  wire_sub *sub = calloc(1, sizeof *sub);
  if (sub == NULL) return git_error_set_oom(), -1;
  int rc = w->kind == WIRE_HTTP ? git_smart_subtransport_http(&sub->inner, owner, NULL)
                                : git_smart_subtransport_git(&sub->inner, owner, NULL);
  if (rc < 0) {
    free(sub);
    return rc;
  }
  sub->parent.action = wire_action;
  sub->parent.close = wire_close;
  sub->parent.free = wire_free;
  sub->w = w;
  w->sub = sub;
  w->inner = sub->inner;
  *out = &sub->parent;
  return 0;
}

/* git_remote_callbacks.transport: libgit2's smart transport over the wrapped subtransport. */
static int wire_transport(git_transport **out, git_remote *owner, void *payload) {
  netctx *n = payload;
  git_smart_subtransport_definition def = {wire_subtransport, n->wire->kind == WIRE_HTTP, n->wire};
  return git_transport_smart(out, owner, &def);
}

static int hex4(const char *s) {
  int v = 0;
  for (int i = 0; i < 4; i++) {
    int c = (unsigned char)s[i], d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
      d = c - 'A' + 10;
    else
      return -1;
    v = v * 16 + d;
  }
  return v;
}

/* The capabilities after the first advertised ref into `caps` (" cap cap ... "); -1 if none. */
static int wire_caps(const wire_push *w, char *caps, size_t size) {
  const char *s = w->head, *end = w->head + w->head_len;
  while (end - s >= 4) {
    int len = hex4(s);
    if (len == 0) { /* a flush, after "# service=..." over HTTP */
      s += 4;
      continue;
    }
    if (len < 4 || end - s < len) return -1;
    const char *nul = memchr(s + 4, '\0', (size_t)len - 4);
    if (nul) {
      size_t n = (size_t)(s + len - nul - 1);
      while (n > 0 && nul[n] == '\n')
        n--;
      if (n + 3 > size) n = size - 3;
      caps[0] = ' ';
      memcpy(caps + 1, nul + 1, n);
      caps[n + 1] = ' ';
      caps[n + 2] = '\0';
      return 0;
    }
    s += len;
  }
  return -1;
}

static int has_cap(const char *caps, const char *name) {
  char want[64];
  snprintf(want, sizeof want, " %s ", name);
  return strstr(caps, want) != NULL;
}

/* Write one pkt-line. */
static int pkt_write(git_smart_subtransport_stream *st, const char *payload, size_t len) {
  char buf[1024];
  if (len + 4 > sizeof buf) return git_error_set(GIT_ERROR_NET, "command too long"), -1;
  snprintf(buf, sizeof buf, "%04x", (unsigned)(len + 4));
  memcpy(buf + 4, payload, len);
  return st->write(st, buf, len + 4);
}

typedef struct {
  git_smart_subtransport_stream *st;
  char buf[65536 + 4];
  size_t len, pos;
} pkt_reader;

/* The next pkt-line's payload (valid until the next call): 1 (len 0 for a flush), 0 when the
 * stream ended, -1 on error. */
static int pkt_read(pkt_reader *r, const char **data, size_t *len) {
  for (;;) {
    if (r->len - r->pos >= 4) {
      int n = hex4(r->buf + r->pos);
      if (n < 0 || (n > 0 && n < 4))
        return git_error_set(GIT_ERROR_NET, "malformed reply from the server"), -1;
      if (n == 0 || r->len - r->pos >= (size_t)n) {
        *data = r->buf + r->pos + 4;
        *len = n ? (size_t)n - 4 : 0;
        r->pos += n ? (size_t)n : 4;
        return 1;
      }
    }
    if (r->pos > 0) {
      memmove(r->buf, r->buf + r->pos, r->len - r->pos);
      r->len -= r->pos;
      r->pos = 0;
    }
    size_t got = 0;
    int rc = r->st->read(r->st, r->buf + r->len, sizeof r->buf - r->len, &got);
    if (rc < 0) return rc;
    if (got == 0) return 0;
    r->len += got;
  }
}

/* What the server reported: unpack status and the status of our ref. */
typedef struct {
  const char *ref;
  int unpack_ok, ref_seen, done;
  char report[4096]; /* side-band 1: the report's own pkt-lines, as they arrive */
  size_t report_len;
} wire_report;

/* One line of report-status ("unpack ok", "ok <ref>", "ng <ref> <reason>"). */
static void report_line(wire_report *rep, netctx *n, const char *line, size_t len) {
  while (len > 0 && line[len - 1] == '\n')
    len--;
  size_t rlen = strlen(rep->ref);
  if (len >= 7 && memcmp(line, "unpack ", 7) == 0) {
    rep->unpack_ok = len == 9 && memcmp(line + 7, "ok", 2) == 0;
    if (!rep->unpack_ok)
      snprintf(n->failure, sizeof n->failure, "the server could not unpack the pack: %.*s",
               (int)(len - 7), line + 7);
  } else if (len >= 3 + rlen && (memcmp(line, "ok ", 3) == 0 || memcmp(line, "ng ", 3) == 0) &&
             memcmp(line + 3, rep->ref, rlen) == 0 && (len == 3 + rlen || line[3 + rlen] == ' ')) {
    rep->ref_seen = 1;
    if (line[0] == 'n' && n->rejected[0] == '\0') {
      const char *why = len > 4 + rlen ? line + 4 + rlen : "rejected";
      int wlen = len > 4 + rlen ? (int)(len - 4 - rlen) : 8;
      snprintf(n->rejected, sizeof n->rejected, "%.*s", wlen, why);
    }
  }
}

/* Side-band 1 data: the report's pkt-lines, possibly split across packets. */
static int report_data(wire_report *rep, netctx *n, const char *data, size_t len) {
  if (len > sizeof rep->report - rep->report_len)
    return git_error_set(GIT_ERROR_NET, "the server's report is too long"), -1;
  memcpy(rep->report + rep->report_len, data, len);
  rep->report_len += len;
  size_t at = 0;
  while (rep->report_len - at >= 4) {
    int plen = hex4(rep->report + at);
    if (plen < 0 || (plen > 0 && plen < 4))
      return git_error_set(GIT_ERROR_NET, "malformed report from the server"), -1;
    if (plen == 0) {
      rep->done = 1;
      at += 4;
      continue;
    }
    if (rep->report_len - at < (size_t)plen) break;
    report_line(rep, n, rep->report + at + 4, (size_t)plen - 4);
    at += (size_t)plen;
  }
  memmove(rep->report, rep->report + at, rep->report_len - at);
  rep->report_len -= at;
  return 0;
}

/* Read the server's answer to the push to the end. */
static int read_report(git_smart_subtransport_stream *st, int sideband, wire_report *rep,
                       netctx *n) {
  pkt_reader *r = malloc(sizeof *r);
  if (r == NULL) return git_error_set_oom(), -1;
  r->st = st;
  r->len = r->pos = 0;
  const char *data;
  size_t len;
  int rc;
  while ((rc = pkt_read(r, &data, &len)) > 0) {
    if (len == 0) { /* flush: the end of the report, or of the side-band stream */
      rep->done = 1;
      break;
    }
    if (!sideband) {
      report_line(rep, n, data, len);
    } else if (data[0] == 1) {
      if ((rc = report_data(rep, n, data + 1, len - 1)) < 0) break;
    } else if (data[0] == 2) {
      on_sideband(data + 1, (int)(len - 1), n);
    } else if (data[0] == 3) {
      snprintf(n->failure, sizeof n->failure, "remote error: %.*s", (int)(len - 1), data + 1);
      rc = -1;
      break;
    }
  }
  free(r);
  if (rc == 0 && !rep->done)
    snprintf(n->failure, sizeof n->failure, "the server closed the connection before its report");
  if (rc == 0 && !rep->done) rc = -1;
  if (rc >= 0 && !rep->unpack_ok) rc = -1;
  if (rc >= 0 && !rep->ref_seen) {
    snprintf(n->failure, sizeof n->failure, "the server did not report on %s", rep->ref);
    rc = -1;
  }
  return rc < 0 ? (n->failure[0] ? GIT_EUSER : rc) : 0;
}

/* Mark commit `id`, its tree and everything in that as known to the server. */
static int plan_known_commit(push_plan *p, const git_oid *id) {
  git_odb_object *obj = NULL;
  git_oid tree;
  if (oidset_add(&p->seen, id) < 0) return git_error_set_oom(), -1;
  int rc = git_odb_read(&obj, p->ours, id);
  if (rc < 0) return rc;
  rc = git_odb_object_type(obj) == GIT_OBJECT_COMMIT
           ? commit_tree_id(&tree, git_odb_object_data(obj), git_odb_object_size(obj))
           : -1;
  git_odb_object_free(obj);
  if (rc < 0) return malformed(id, "commit");
  int added = oidset_add(&p->seen, &tree);
  if (added < 0) return git_error_set_oom(), -1;
  if (added == 0) return 0;
  size_t len = 0, cap = 64;
  git_oid *ids = malloc(cap * sizeof *ids); /* trees still to read */
  if (ids == NULL) return git_error_set_oom(), -1;
  ids[len++] = tree;
  while (rc >= 0 && len > 0) {
    git_oid t = ids[--len];
    if ((rc = git_odb_read(&obj, p->ours, &t)) < 0) break;
    const char *s = git_odb_object_data(obj), *end = s + git_odb_object_size(obj);
    tree_entry_raw e;
    int r;
    while ((r = next_entry(&s, end, &e)) > 0) {
      if ((e.mode & 0170000) == 0160000) continue;
      git_oid entry;
      git_oid_fromraw(&entry, e.id);
      if ((added = oidset_add(&p->seen, &entry)) < 0) break;
      if (added == 0 || !ENTRY_IS_DIR(&e)) continue;
      if (len == cap) {
        git_oid *more = realloc(ids, cap * 2 * sizeof *ids);
        if (more == NULL) {
          added = -1;
          break;
        }
        ids = more;
        cap *= 2;
      }
      ids[len++] = entry;
    }
    git_odb_object_free(obj);
    if (added < 0)
      rc = (git_error_set_oom(), -1);
    else if (r < 0)
      rc = malformed(&t, "tree");
  }
  free(ids);
  return rc < 0 ? rc : 0;
}

/* What the server has, as git works it out: the new commits are those reachable from `tip`
 * and not from the advertised refs we have too; the commits at their edge, with their trees,
 * are the server's. */
static int plan_remote(push_plan *p, git_repository *repo, const git_oid *tip,
                       const git_remote_head **heads, size_t count) {
  git_revwalk *walk = NULL;
  oidset fresh;
  memset(&fresh, 0, sizeof fresh);
  int rc = git_revwalk_new(&walk, repo);
  if (rc == 0) rc = git_revwalk_push(walk, tip);
  for (size_t i = 0; rc == 0 && i < count; i++) {
    if (git_oid_is_zero(&heads[i]->oid) || !git_odb_exists(p->ours, &heads[i]->oid)) continue;
    if (git_revwalk_hide(walk, &heads[i]->oid) < 0) git_error_clear(); /* not a commit */
  }
  git_oid id;
  while (rc == 0 && (rc = git_revwalk_next(&id, walk)) == 0)
    if (oidset_add(&fresh, &id) < 0) rc = (git_error_set_oom(), -1);
  if (rc == GIT_ITEROVER) rc = 0;
  git_revwalk_free(walk);
  for (size_t i = 0; rc == 0 && i < fresh.cap; i++) {
    if (git_oid_is_zero(&fresh.slots[i])) continue;
    git_odb_object *obj = NULL;
    if ((rc = git_odb_read(&obj, p->ours, &fresh.slots[i])) < 0) break;
    const char *s = git_odb_object_data(obj), *end = s + git_odb_object_size(obj);
    git_oid parent;
    if (end - s < 46) rc = malformed(&fresh.slots[i], "commit");
    for (s += 46; rc == 0 && end - s >= 48 && memcmp(s, "parent ", 7) == 0; s += 48) {
      if (git_oid_fromstrn(&parent, s + 7, GIT_OID_HEXSZ) < 0)
        rc = malformed(&fresh.slots[i], "commit");
      else if (!oidset_value(&fresh, &parent) && !oidset_value(&p->seen, &parent))
        rc = plan_known_commit(p, &parent);
    }
    git_odb_object_free(obj);
  }
  oidset_free(&fresh);
  return rc;
}

/*
 * Push `spec` ("src:refs/...") to the git:// or http(s):// remote `remote` at `url`. Returns 0
 * (n->rejected set when the server refused the ref), a libgit2 error (n->failure and n->moved
 * say more), or PUSH_UNSUPPORTED when libgit2's push should do it (forced or deleting refspecs,
 * anything but a commit, a server without report-status).
 */
static int push_wire(git_repository *repo, git_remote *remote, const char *url, int kind,
                     const char *spec, netctx *n) {
  const char *dst;
  if (!plain_refspec(spec, &dst)) return PUSH_UNSUPPORTED;
  char *src = strndup(spec, (size_t)(dst - 1 - spec));
  git_object *obj = NULL;
  git_smart_subtransport_stream *st = NULL;
  push_plan plan;
  memset(&plan, 0, sizeof plan);
  wire_push *w = calloc(1, sizeof *w);
  git_oid tip, cur;
  memset(&cur, 0, sizeof cur);
  int rc = PUSH_UNSUPPORTED, connected = 0;
  if (src == NULL || w == NULL || git_revparse_single(&obj, repo, src) < 0 ||
      git_object_type(obj) != GIT_OBJECT_COMMIT)
    goto done;
  git_oid_cpy(&tip, git_object_id(obj));
  w->kind = kind;
  n->wire = w;
  git_remote_callbacks cb;
  git_remote_init_callbacks(&cb, GIT_REMOTE_CALLBACKS_VERSION);
  netctx_callbacks(n, &cb);
  cb.transport = wire_transport;
  if ((rc = git_remote_connect(remote, GIT_DIRECTION_PUSH, &cb, NULL, NULL)) < 0) goto done;
  connected = 1;
  char caps[1024];
  if (wire_caps(w, caps, sizeof caps) < 0 || !has_cap(caps, "report-status")) {
    rc = PUSH_UNSUPPORTED;
    goto done;
  }
  const git_remote_head **heads = NULL;
  size_t count = 0;
  if ((rc = git_remote_ls(&heads, &count, remote)) < 0) goto done;
  for (size_t i = 0; i < count; i++)
    if (strcmp(heads[i]->name, dst) == 0) git_oid_cpy(&cur, &heads[i]->oid);

  if ((rc = push_preflight(repo, n, dst, &cur, &tip, &plan.ours)) <= 0) goto done;
  plan.thin = !has_cap(caps, "no-thin");
  if ((rc = plan_remote(&plan, repo, &tip, heads, count)) < 0 ||
      (rc = plan_objects(&plan, &tip)) < 0 || (rc = plan_deltas(&plan)) < 0)
    goto done;

  if ((rc = w->inner->action(&st, w->inner, url, GIT_SERVICE_RECEIVEPACK)) < 0) goto done;
  int sideband = has_cap(caps, "side-band-64k");
  char cmd[600], old[SHA_HEX], new[SHA_HEX];
  git_oid_tostr(old, sizeof old, &cur);
  git_oid_tostr(new, sizeof new, &tip);
  int len = snprintf(cmd, sizeof cmd, "%s %s %s%creport-status%s\n", old, new, dst, '\0',
                     sideband ? " side-band-64k" : "");
  if (len < 0 || (size_t)len >= sizeof cmd) {
    git_error_set(GIT_ERROR_NET, "reference name too long");
    rc = -1;
    goto done;
  }
  if ((rc = pkt_write(st, cmd, (size_t)len)) < 0 || (rc = st->write(st, "0000", 4)) < 0 ||
      (rc = write_pack(NULL, st, &plan, n)) < 0)
    goto done;
  wire_report rep;
  memset(&rep, 0, sizeof rep);
  rep.ref = dst;
  rc = read_report(st, sideband, &rep, n);
done:
  if (st && st != w->ls_inner) st->free(st); /* ours, not the advertisement's */
  if (connected) git_remote_disconnect(remote);
  if (w && w->sub) w->sub->w = NULL;
  n->wire = NULL;
  plan_free(&plan);
  git_odb_free(plan.ours);
  git_object_free(obj);
  free(w);
  free(src);
  if (rc == PUSH_UNSUPPORTED) git_error_clear();
  return rc;
}

/*
 * repo:push(remote_or_url, refspecs [, {expect=old_sha, credentials=, progress=, direct=}])
 *   -> true | nil, err, code
 * code "EMOVED" when the remote ref is not at `expect` (or moved during the push), "EREJECTED"
 * when the server refused it. One refspec to a bare repository on a local path is written
 * directly (see push_local), one to a git:// or http(s):// remote sent with our own pack (see
 * push_wire); direct=false goes through libgit2's push instead.
 */
static int repo_push(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  const char *name = luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  int opts = lua_istable(L, 4) ? 4 : 0;
  git_strarray specs;
  check_strarray(L, 3, &specs, "refspecs");
  if (specs.count == 0) return luaL_argerror(L, 3, "at least one refspec");
  netctx n;
  netctx_init(L, &n, opts);
  const char *expect = opts ? mo_optfield_string(L, opts, "expect", NULL) : NULL;
  if (expect) {
    if (parse_expect(repo, expect, &n.expect) < 0)
      return fail_git(L, GIT_ENOTFOUND, "push %s: expected value %s", name, expect);
    n.has_expect = 1;
  }
  git_push_options po;
  git_push_options_init(&po, GIT_PUSH_OPTIONS_VERSION);
  po.pb_parallelism = 0; /* one pack-building thread per CPU */
  netctx_callbacks(&n, &po.callbacks);
  int direct = opts ? mo_optfield_boolean(L, opts, "direct", 1) : 1;
  git_remote *remote = NULL;
  int named;
  int rc = open_remote(&remote, repo, name, &named);
  if (rc < 0) return fail_git(L, rc, "push %s", name);
  const char *url =
      git_remote_pushurl(remote) ? git_remote_pushurl(remote) : git_remote_url(remote);
  netctx_url(&n, url);
  const char *path = direct && specs.count == 1 ? local_repository_path(url) : NULL;
  int wire = !direct || specs.count != 1                                           ? 0
             : strncmp(url, "git://", 6) == 0                                      ? WIRE_GIT
             : strncmp(url, "http://", 7) == 0 || strncmp(url, "https://", 8) == 0 ? WIRE_HTTP
                                                                                   : 0;
  rc = path   ? push_local(repo, path, specs.strings[0], &n)
       : wire ? push_wire(repo, remote, url, wire, specs.strings[0], &n)
              : PUSH_UNSUPPORTED;
  if (rc == PUSH_UNSUPPORTED) rc = git_remote_push(remote, &specs, &po);
  git_remote_free(remote);

  char target[1200], safe[512];
  redact(name, safe, sizeof safe);
  const char *dst = strchr(specs.strings[0], ':');
  snprintf(target, sizeof target, "%s %s", safe, dst ? dst + 1 : specs.strings[0]);
  if (rc == GIT_ENONFASTFORWARD)
    return fail_with(L, rc, n.token, "rejected (non-fast-forward)", "EREJECTED", "push %s", target);
  if (rc < 0) return fail_net(L, rc, &n, "push", target);
  if (n.rejected[0]) {
    char reason[2600];
    size_t m = strlen(n.remote_msg);
    while (m > 0 && (n.remote_msg[m - 1] == '\n' || n.remote_msg[m - 1] == '\r' ||
                     n.remote_msg[m - 1] == ' '))
      n.remote_msg[--m] = '\0';
    for (char *p = n.remote_msg; *p; p++)
      if (*p == '\n' || *p == '\r') *p = ' ';
    if (m)
      snprintf(reason, sizeof reason, "rejected (%s; remote: %s)", n.rejected, n.remote_msg);
    else
      snprintf(reason, sizeof reason, "rejected (%s)", n.rejected);
    return fail_with(L, 0, n.token, reason, "EREJECTED", "push %s", target);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- repository: history and trees --------------------------------------- */

/* repo:merge_base(a, b) -> sha | nil (unrelated) | nil, err */
static int repo_merge_base(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  const char *a = luaL_checkstring(L, 2), *b = luaL_checkstring(L, 3);
  git_commit *ca = NULL, *cb = NULL;
  git_oid base;
  int rc = lookup_commit(&ca, repo, a);
  if (rc < 0) return fail_git(L, rc, "merge base: resolve %s", a);
  rc = lookup_commit(&cb, repo, b);
  if (rc < 0) {
    git_commit_free(ca);
    return fail_git(L, rc, "merge base: resolve %s", b);
  }
  rc = git_merge_base(&base, repo, git_commit_id(ca), git_commit_id(cb));
  git_commit_free(ca);
  git_commit_free(cb);
  if (rc == GIT_ENOTFOUND) {
    git_error_clear();
    lua_pushnil(L);
    return 1;
  }
  if (rc < 0) return fail_git(L, rc, "merge base of %s and %s", a, b);
  push_oid(L, &base);
  return 1;
}

static const char *delta_change(git_delta_t s) {
  switch (s) {
  case GIT_DELTA_ADDED:
  case GIT_DELTA_COPIED:
  case GIT_DELTA_UNTRACKED: return "added";
  case GIT_DELTA_DELETED: return "deleted";
  case GIT_DELTA_RENAMED: return "renamed";
  default: return "modified";
  }
}

/* What a diff reports beyond the list of files. */
typedef struct {
  int renames;
  int stats;          /* additions, deletions, binary */
  int hunks;          /* hunk ranges per file */
  int lines;          /* and the lines of each hunk */
  int context;        /* context lines around each change */
  git_strarray paths; /* only these paths (exact, not patterns); count 0 = all */
} diff_opts;

static const char *line_origin(char origin) {
  switch (origin) {
  case GIT_DIFF_LINE_ADDITION: return "+";
  case GIT_DIFF_LINE_DELETION: return "-";
  case GIT_DIFF_LINE_CONTEXT: return " ";
  default: return "\\"; /* the end-of-file newline markers */
  }
}

/* Push the hunks of `patch` as a list of {old_start=, old_lines=, new_start=, new_lines=, header=,
 * additions=, deletions= [, lines={{origin=, old_line=, new_line=, text=}}]}. */
static int push_hunks(lua_State *L, git_patch *patch, int with_lines) {
  size_t nh = git_patch_num_hunks(patch);
  lua_createtable(L, (int)nh, 0);
  for (size_t h = 0; h < nh; h++) {
    const git_diff_hunk *hunk = NULL;
    size_t nl = 0;
    int rc = git_patch_get_hunk(&hunk, &nl, patch, h);
    if (rc < 0) return rc;
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, hunk->old_start);
    lua_setfield(L, -2, "old_start");
    lua_pushinteger(L, hunk->old_lines);
    lua_setfield(L, -2, "old_lines");
    lua_pushinteger(L, hunk->new_start);
    lua_setfield(L, -2, "new_start");
    lua_pushinteger(L, hunk->new_lines);
    lua_setfield(L, -2, "new_lines");
    size_t hl = hunk->header_len;
    while (hl > 0 && (hunk->header[hl - 1] == '\n' || hunk->header[hl - 1] == '\r'))
      hl--;
    lua_pushlstring(L, hunk->header, hl);
    lua_setfield(L, -2, "header");
    lua_Integer adds = 0, dels = 0;
    if (with_lines) lua_createtable(L, (int)nl, 0);
    for (size_t i = 0; i < nl; i++) {
      const git_diff_line *line = NULL;
      if ((rc = git_patch_get_line_in_hunk(&line, patch, h, i)) < 0) return rc;
      if (line->origin == GIT_DIFF_LINE_ADDITION) adds++;
      if (line->origin == GIT_DIFF_LINE_DELETION) dels++;
      if (!with_lines) continue;
      lua_createtable(L, 0, 4);
      lua_pushstring(L, line_origin(line->origin));
      lua_setfield(L, -2, "origin");
      if (line->old_lineno > 0) {
        lua_pushinteger(L, line->old_lineno);
        lua_setfield(L, -2, "old_line");
      }
      if (line->new_lineno > 0) {
        lua_pushinteger(L, line->new_lineno);
        lua_setfield(L, -2, "new_line");
      }
      size_t len = line->content_len;
      if (line->origin == GIT_DIFF_LINE_CONTEXT || line->origin == GIT_DIFF_LINE_ADDITION ||
          line->origin == GIT_DIFF_LINE_DELETION) {
        if (len > 0 && line->content[len - 1] == '\n') len--;
        lua_pushlstring(L, line->content, len);
      } else {
        lua_pushliteral(L, "No newline at end of file");
      }
      lua_setfield(L, -2, "text");
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    if (with_lines) {
      mo_mark_array(L, -1);
      lua_setfield(L, -2, "lines");
    }
    lua_pushinteger(L, adds);
    lua_setfield(L, -2, "additions");
    lua_pushinteger(L, dels);
    lua_setfield(L, -2, "deletions");
    lua_rawseti(L, -2, (lua_Integer)h + 1);
  }
  mo_mark_array(L, -1);
  return 0;
}

/* Push the list of changed files between two trees (either may be NULL). */
static int push_diff(lua_State *L, git_repository *repo, git_tree *a, git_tree *b,
                     const diff_opts *o) {
  git_diff *diff = NULL;
  git_diff_options dopt;
  git_diff_options_init(&dopt, GIT_DIFF_OPTIONS_VERSION);
  dopt.context_lines = (uint32_t)o->context;
  if (o->paths.count) {
    dopt.pathspec = o->paths;
    dopt.flags |= GIT_DIFF_DISABLE_PATHSPEC_MATCH;
  }
  int rc = git_diff_tree_to_tree(&diff, repo, a, b, &dopt);
  if (rc < 0) return rc;
  if (o->renames) {
    git_diff_find_options fo;
    git_diff_find_options_init(&fo, GIT_DIFF_FIND_OPTIONS_VERSION);
    fo.flags = GIT_DIFF_FIND_RENAMES;
    if ((rc = git_diff_find_similar(diff, &fo)) < 0) {
      git_diff_free(diff);
      return rc;
    }
  }
  size_t count = git_diff_num_deltas(diff);
  lua_createtable(L, (int)count, 0);
  for (size_t i = 0; i < count; i++) {
    const git_diff_delta *d = git_diff_get_delta(diff, i);
    size_t adds = 0, dels = 0;
    int binary = (d->flags & GIT_DIFF_FLAG_BINARY) != 0;
    lua_createtable(L, 0, 8);
    if (o->stats || o->hunks) {
      git_patch *patch = NULL;
      if ((rc = git_patch_from_diff(&patch, diff, i)) < 0) {
        git_diff_free(diff);
        return rc;
      }
      if (patch) {
        git_patch_line_stats(NULL, &adds, &dels, patch);
        binary = (git_patch_get_delta(patch)->flags & GIT_DIFF_FLAG_BINARY) != 0;
        if (o->hunks && (rc = push_hunks(L, patch, o->lines)) == 0) lua_setfield(L, -2, "hunks");
        git_patch_free(patch);
        if (rc < 0) {
          git_diff_free(diff);
          return rc;
        }
      }
    }
    const char *path = d->status == GIT_DELTA_DELETED ? d->old_file.path : d->new_file.path;
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
    if (d->status == GIT_DELTA_RENAMED) {
      lua_pushstring(L, d->old_file.path);
      lua_setfield(L, -2, "old_path");
    }
    lua_pushstring(L, delta_change(d->status));
    lua_setfield(L, -2, "status");
    lua_pushstring(L, delta_change(d->status));
    lua_setfield(L, -2, "change");
    if (o->stats || o->hunks) {
      lua_pushinteger(L, (lua_Integer)adds);
      lua_setfield(L, -2, "additions");
      lua_pushinteger(L, (lua_Integer)dels);
      lua_setfield(L, -2, "deletions");
      lua_pushboolean(L, binary);
      lua_setfield(L, -2, "binary");
    }
    if (o->hunks && binary) {
      lua_newtable(L);
      mo_mark_array(L, -1);
      lua_setfield(L, -2, "hunks");
    }
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  mo_mark_array(L, -1);
  git_diff_free(diff);
  return 0;
}

/* repo:diff(a, b [, {renames=true, hunks=false, lines=false, context=3, paths={...}}])
 *   -> list {path=, old_path=, status=, additions=, deletions=, binary=, hunks=} | nil, err
 * `a` may be nil (the empty tree). hunks=true adds each file's hunks {old_start=, old_lines=,
 * new_start=, new_lines=, header=, additions=, deletions=}; lines=true adds their lines
 * {origin="+"|"-"|" "|"\\", old_line=, new_line=, text=}. `paths` limits the diff to those
 * exact paths. A binary file has no hunks. */
static int repo_diff(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  const char *a = luaL_optstring(L, 2, NULL);
  const char *b = luaL_checkstring(L, 3);
  diff_opts o = {1, 1, 0, 0, 3, {NULL, 0}};
  if (lua_istable(L, 4)) {
    o.renames = mo_optfield_boolean(L, 4, "renames", 1);
    o.lines = mo_optfield_boolean(L, 4, "lines", 0);
    o.hunks = o.lines || mo_optfield_boolean(L, 4, "hunks", 0);
    lua_Integer ctx = mo_optfield_integer(L, 4, "context", 3);
    if (ctx < 0 || ctx > 100000) return luaL_error(L, "option 'context' must be 0..100000");
    o.context = (int)ctx;
    if (lua_getfield(L, 4, "paths") != LUA_TNIL) {
      check_strarray(L, lua_gettop(L), &o.paths, "paths");
      if (o.paths.count == 0) { /* an empty list selects nothing */
        lua_newtable(L);
        mo_mark_array(L, -1);
        return 1;
      }
    }
  }
  git_tree *ta = NULL, *tb = NULL;
  int rc = 0;
  if (a && (rc = lookup_tree(&ta, repo, a)) < 0) return fail_git(L, rc, "diff: resolve %s", a);
  if ((rc = lookup_tree(&tb, repo, b)) < 0) {
    git_tree_free(ta);
    return fail_git(L, rc, "diff: resolve %s", b);
  }
  rc = push_diff(L, repo, ta, tb, &o);
  git_tree_free(ta);
  git_tree_free(tb);
  if (rc < 0) return fail_git(L, rc, "diff %s %s", a ? a : "(empty)", b);
  return 1;
}

static const char *conflict_kind(git_repository *repo, const git_index_entry *anc,
                                 const git_index_entry *ours, const git_index_entry *theirs,
                                 git_tree *our_tree, git_tree *their_tree) {
  const git_index_entry *any = ours ? ours : theirs ? theirs : anc;
  if ((ours && ours->mode == GIT_FILEMODE_COMMIT) ||
      (theirs && theirs->mode == GIT_FILEMODE_COMMIT))
    return "submodule";
  if (anc && ours && !theirs) return "modify/delete";
  if (anc && !ours && theirs) return "delete/modify";
  if (!anc && ours && theirs) return "add/add";
  if (anc && ours && theirs) return "content";
  /* one side only, no ancestor: a directory on the other side, or a rename */
  git_tree_entry *te = NULL;
  git_tree *other = ours ? their_tree : our_tree;
  const char *kind = "rename";
  if (other && git_tree_entry_bypath(&te, other, any->path) == 0) {
    if (git_tree_entry_type(te) == GIT_OBJECT_TREE) kind = "file/directory";
    git_tree_entry_free(te);
  }
  git_error_clear();
  (void)repo;
  return kind;
}

/*
 * Rename conflicts. libgit2 lists a rename that conflicts as separate entries, one per path
 * (the old path with only a base, each new path with only one side), and records the paths
 * that belong together in the index's name entries ({ancestor, ours, theirs}). They are
 * reported as one conflict each, as git reports them:
 *   rename/rename  both sides renamed the same file, differently (path: the old name,
 *                  ours_path and theirs_path: the new ones); or both renamed a different
 *                  file to the same name (path: that name, ours_from and theirs_from)
 *   rename/delete  ours renamed it (ours_path), theirs deleted it; delete/rename the reverse
 */
typedef struct {
  const char *path, *kind, *ours_path, *theirs_path, *ours_from, *theirs_from;
  size_t first, second; /* name entries of the group: 1 + index, 0 for none */
} rename_conflict;

static int same_path(const char *a, const char *b) {
  return a && b && strcmp(a, b) == 0;
}

/* The rename conflict `path` belongs to; 0 when it is not part of one. */
static int find_rename_conflict(git_index *index, const char *path, rename_conflict *rc) {
  size_t count = git_index_name_entrycount(index);
  memset(rc, 0, sizeof *rc);
  for (size_t i = 0; i < count; i++) {
    const git_index_name_entry *e = git_index_name_get_byindex(index, i);
    if (!e || !e->ancestor) continue;
    int ours_renamed = e->ours && !same_path(e->ours, e->ancestor);
    int theirs_renamed = e->theirs && !same_path(e->theirs, e->ancestor);
    if (!same_path(path, e->ancestor) && !same_path(path, e->ours) && !same_path(path, e->theirs))
      continue;
    rc->first = i + 1;
    rc->path = e->ancestor;
    if (ours_renamed && theirs_renamed) {
      rc->kind = "rename/rename";
      rc->ours_path = e->ours;
      rc->theirs_path = e->theirs;
      return 1;
    }
    if (ours_renamed && !e->theirs) {
      rc->kind = "rename/delete";
      rc->ours_path = e->ours;
      return 1;
    }
    if (theirs_renamed && !e->ours) {
      rc->kind = "delete/rename";
      rc->theirs_path = e->theirs;
      return 1;
    }
    /* one side renamed onto a name the other side also renamed a file to */
    const char *to = ours_renamed ? e->ours : theirs_renamed ? e->theirs : NULL;
    for (size_t j = 0; to && j < count; j++) {
      const git_index_name_entry *f = git_index_name_get_byindex(index, j);
      if (j == i || !f || !f->ancestor) continue;
      const char *other = ours_renamed ? f->theirs : f->ours;
      const char *kept = ours_renamed ? f->ours : f->theirs;
      if (!same_path(other, to) || !same_path(kept, f->ancestor)) continue;
      rc->kind = "rename/rename";
      rc->path = to;
      rc->ours_from = ours_renamed ? e->ancestor : f->ancestor;
      rc->theirs_from = ours_renamed ? f->ancestor : e->ancestor;
      rc->first = (i < j ? i : j) + 1;
      rc->second = (i < j ? j : i) + 1;
      return 1;
    }
    memset(rc, 0, sizeof *rc);
  }
  return 0;
}

static void set_string_field(lua_State *L, const char *key, const char *value) {
  if (!value) return;
  lua_pushstring(L, value);
  lua_setfield(L, -2, key);
}

static void push_entry_id(lua_State *L, const git_index_entry *e, const char *key) {
  if (!e) return;
  push_oid(L, &e->id);
  lua_setfield(L, -2, key);
}

static int make_signature(lua_State *L, git_repository *repo, int opts, const char *key,
                          git_signature **out) {
  if (opts && lua_getfield(L, opts, key) == LUA_TTABLE) {
    int t = lua_absindex(L, -1);
    const char *name = mo_optfield_string(L, t, "name", "moonops");
    const char *email = mo_optfield_string(L, t, "email", "moonops@localhost");
    lua_Integer when = mo_optfield_integer(L, t, "time", -1);
    int rc = when >= 0 ? git_signature_new(out, name, email, (git_time_t)when, 0)
                       : git_signature_now(out, name, email);
    lua_pop(L, 1);
    return rc;
  }
  if (opts) lua_pop(L, 1);
  if (git_signature_default(out, repo) == 0) return 0;
  git_error_clear();
  return git_signature_now(out, "moonops", "moonops@localhost");
}

/* Set result.files to the changes from `from` to `to_tree` (added/modified/deleted). */
static int set_files(lua_State *L, git_repository *repo, git_commit *from, git_tree *to_tree) {
  git_tree *ft = NULL;
  int rc = git_commit_tree(&ft, from);
  if (rc < 0) return rc;
  diff_opts o = {0, 0, 0, 0, 3, {NULL, 0}};
  rc = push_diff(L, repo, ft, to_tree, &o);
  git_tree_free(ft);
  if (rc < 0) return rc;
  lua_setfield(L, -2, "files");
  return 0;
}

/*
 * repo:merge(ours, theirs [, {favor="theirs"|"ours"|"union", allow_unrelated=, message=, author=,
 * no_ff=}])
 *   -> {commit=, tree=, up_to_date=, fast_forward=, unrelated=, base=, conflicts={{path=, kind=,
 * ours=, theirs=}}, files=} | nil, err, code Computed in memory; no ref, index or file is touched.
 * With conflicts, commit is nil.
 */
static int repo_merge(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  const char *ours_rev = luaL_checkstring(L, 2);
  const char *theirs_rev = luaL_checkstring(L, 3);
  int opts = lua_istable(L, 4) ? 4 : 0;
  const char *favor = opts ? mo_optfield_string(L, opts, "favor", "normal") : "normal";
  int allow_unrelated = opts ? mo_optfield_boolean(L, opts, "allow_unrelated", 0) : 0;
  int no_ff = opts ? mo_optfield_boolean(L, opts, "no_ff", 0) : 0;
  const char *message = opts ? mo_optfield_string(L, opts, "message", NULL) : NULL;

  git_merge_options mo;
  git_merge_options_init(&mo, GIT_MERGE_OPTIONS_VERSION);
  if (strcmp(favor, "theirs") == 0)
    mo.file_favor = GIT_MERGE_FILE_FAVOR_THEIRS;
  else if (strcmp(favor, "ours") == 0)
    mo.file_favor = GIT_MERGE_FILE_FAVOR_OURS;
  else if (strcmp(favor, "union") == 0)
    mo.file_favor = GIT_MERGE_FILE_FAVOR_UNION;
  else if (strcmp(favor, "normal") != 0)
    return luaL_error(L, "option 'favor' must be theirs, ours, union or normal");

  git_commit *ours = NULL, *theirs = NULL;
  git_tree *tree = NULL, *our_tree = NULL, *their_tree = NULL;
  git_index *index = NULL;
  git_signature *sig = NULL;
  git_oid base, tree_id, commit_id;
  int rc, unrelated = 0, nret = 0;

  if ((rc = lookup_commit(&ours, repo, ours_rev)) < 0) {
    nret = fail_git(L, rc, "merge: resolve %s", ours_rev);
    goto done;
  }
  if ((rc = lookup_commit(&theirs, repo, theirs_rev)) < 0) {
    nret = fail_git(L, rc, "merge: resolve %s", theirs_rev);
    goto done;
  }
  rc = git_merge_base(&base, repo, git_commit_id(ours), git_commit_id(theirs));
  if (rc == GIT_ENOTFOUND) {
    git_error_clear();
    unrelated = 1;
    if (!allow_unrelated) {
      nret = fail_with(L, rc, NULL, "refusing to merge unrelated histories", "EUNRELATED",
                       "merge %s into %s", theirs_rev, ours_rev);
      goto done;
    }
  } else if (rc < 0) {
    nret = fail_git(L, rc, "merge %s into %s", theirs_rev, ours_rev);
    goto done;
  }

  lua_createtable(L, 0, 9);
  lua_pushboolean(L, unrelated);
  lua_setfield(L, -2, "unrelated");
  if (!unrelated) {
    push_oid(L, &base);
    lua_setfield(L, -2, "base");
  }
  lua_newtable(L);
  mo_mark_array(L, -1);
  lua_setfield(L, -2, "conflicts");

  if (!unrelated && git_oid_equal(&base, git_commit_id(theirs))) { /* nothing new */
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "up_to_date");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "fast_forward");
    push_oid(L, git_commit_id(ours));
    lua_setfield(L, -2, "commit");
    push_oid(L, git_commit_tree_id(ours));
    lua_setfield(L, -2, "tree");
    lua_newtable(L);
    mo_mark_array(L, -1);
    lua_setfield(L, -2, "files");
    nret = 1;
    goto done;
  }
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "up_to_date");

  if (!unrelated && !no_ff && git_oid_equal(&base, git_commit_id(ours))) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "fast_forward");
    push_oid(L, git_commit_id(theirs));
    lua_setfield(L, -2, "commit");
    push_oid(L, git_commit_tree_id(theirs));
    lua_setfield(L, -2, "tree");
    if ((rc = git_commit_tree(&tree, theirs)) < 0 || (rc = set_files(L, repo, ours, tree)) < 0) {
      lua_pop(L, 1);
      nret = fail_git(L, rc, "merge %s into %s", theirs_rev, ours_rev);
      goto done;
    }
    nret = 1;
    goto done;
  }
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "fast_forward");

  if ((rc = git_merge_commits(&index, repo, ours, theirs, &mo)) < 0) {
    lua_pop(L, 1);
    nret = fail_git(L, rc, "merge %s into %s", theirs_rev, ours_rev);
    goto done;
  }
  if (git_index_has_conflicts(index)) {
    git_index_conflict_iterator *it = NULL;
    const git_index_entry *anc, *our, *their;
    git_commit_tree(&our_tree, ours);
    git_commit_tree(&their_tree, theirs);
    lua_getfield(L, -1, "conflicts");
    int n = 0;
    size_t names = git_index_name_entrycount(index);
    unsigned char *reported = calloc(names + 1, 1); /* rename groups already listed */
    if (reported && git_index_conflict_iterator_new(&it, index) == 0) {
      while (git_index_conflict_next(&anc, &our, &their, it) == 0) {
        const git_index_entry *any = our ? our : their ? their : anc;
        rename_conflict rn;
        if (find_rename_conflict(index, any->path, &rn)) {
          if (reported[rn.first] || (rn.second && reported[rn.second])) continue;
          reported[rn.first] = 1;
          if (rn.second) reported[rn.second] = 1;
          lua_createtable(L, 0, 6);
          set_string_field(L, "path", rn.path);
          set_string_field(L, "kind", rn.kind);
          set_string_field(L, "ours_path", rn.ours_path);
          set_string_field(L, "theirs_path", rn.theirs_path);
          set_string_field(L, "ours_from", rn.ours_from);
          set_string_field(L, "theirs_from", rn.theirs_from);
          lua_rawseti(L, -2, ++n);
          continue;
        }
        lua_createtable(L, 0, 4);
        lua_pushstring(L, any->path);
        lua_setfield(L, -2, "path");
        lua_pushstring(L, conflict_kind(repo, anc, our, their, our_tree, their_tree));
        lua_setfield(L, -2, "kind");
        push_entry_id(L, our, "ours");
        push_entry_id(L, their, "theirs");
        push_entry_id(L, anc, "base");
        lua_rawseti(L, -2, ++n);
      }
      git_index_conflict_iterator_free(it);
    }
    free(reported);
    git_error_clear();
    lua_pop(L, 1);
    nret = 1;
    goto done;
  }
  if ((rc = git_index_write_tree_to(&tree_id, index, repo)) < 0 ||
      (rc = git_tree_lookup(&tree, repo, &tree_id)) < 0 ||
      (rc = make_signature(L, repo, opts, "author", &sig)) < 0) {
    lua_pop(L, 1);
    nret = fail_git(L, rc, "merge %s into %s", theirs_rev, ours_rev);
    goto done;
  }
  {
    char msgbuf[1024];
    if (!message) {
      snprintf(msgbuf, sizeof msgbuf, "Merge %s into %s\n", theirs_rev, ours_rev);
      message = msgbuf;
    }
    const git_commit *parents[2] = {ours, theirs};
    rc = git_commit_create(&commit_id, repo, NULL, sig, sig, NULL, message, tree, 2, parents);
  }
  if (rc < 0 || (rc = set_files(L, repo, ours, tree)) < 0) {
    lua_pop(L, 1);
    nret = fail_git(L, rc, "merge %s into %s: create commit", theirs_rev, ours_rev);
    goto done;
  }
  push_oid(L, &commit_id);
  lua_setfield(L, -2, "commit");
  push_oid(L, &tree_id);
  lua_setfield(L, -2, "tree");
  nret = 1;
done:
  git_signature_free(sig);
  git_index_free(index);
  git_tree_free(tree);
  git_tree_free(our_tree);
  git_tree_free(their_tree);
  git_commit_free(ours);
  git_commit_free(theirs);
  return nret;
}

/* Follow HEAD to the branch ref it names ("HEAD" stays when detached). */
static const char *direct_ref_name(git_repository *repo, const char *ref, git_reference **hold) {
  *hold = NULL;
  if (strcmp(ref, "HEAD") != 0) return ref;
  if (git_reference_lookup(hold, repo, "HEAD") == 0 &&
      git_reference_type(*hold) == GIT_REFERENCE_SYMBOLIC)
    return git_reference_symbolic_target(*hold);
  git_error_clear();
  return ref;
}

/* repo:update_ref(ref, sha [, {expect=old, message=}]) -> true | nil, err, code ("EMOVED") */
static int repo_update_ref(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  const char *ref = luaL_checkstring(L, 2);
  const char *rev = luaL_checkstring(L, 3);
  int opts = lua_istable(L, 4) ? 4 : 0;
  const char *expect = opts ? mo_optfield_string(L, opts, "expect", NULL) : NULL;
  const char *msg =
      opts ? mo_optfield_string(L, opts, "message", "moonops: update") : "moonops: update";
  git_object *obj = NULL;
  git_reference *out = NULL, *hold = NULL;
  git_oid old;
  int rc = git_revparse_single(&obj, repo, rev);
  if (rc < 0) return fail_git(L, rc, "update %s: resolve %s", ref, rev);
  const char *name = direct_ref_name(repo, ref, &hold);
  if (expect && parse_expect(repo, expect, &old) < 0) {
    git_object_free(obj);
    git_reference_free(hold);
    return fail_git(L, GIT_ENOTFOUND, "update %s: expected value %s", ref, expect);
  }
  if (expect && git_oid_is_zero(&old))
    rc = git_reference_create(&out, repo, name, git_object_id(obj), 0, msg);
  else if (expect)
    rc = git_reference_create_matching(&out, repo, name, git_object_id(obj), 1, &old, msg);
  else
    rc = git_reference_create(&out, repo, name, git_object_id(obj), 1, msg);
  git_object_free(obj);
  git_reference_free(out);
  git_reference_free(hold);
  if (rc == GIT_EMODIFIED || rc == GIT_EEXISTS || (expect && rc == GIT_ENOTFOUND))
    return fail_with(L, GIT_EMODIFIED, NULL, "it moved (not at the expected value)", "EMOVED",
                     "update %s", ref);
  if (rc < 0) return fail_git(L, rc, "update %s", ref);
  lua_pushboolean(L, 1);
  return 1;
}

/* repo:delete_ref(ref) -> true (also when it did not exist) | nil, err */
static int repo_delete_ref(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  const char *ref = luaL_checkstring(L, 2);
  git_reference *r = NULL;
  int rc = git_reference_lookup(&r, repo, ref);
  if (rc == GIT_ENOTFOUND) {
    git_error_clear();
    lua_pushboolean(L, 1);
    return 1;
  }
  if (rc == 0) rc = git_reference_delete(r);
  git_reference_free(r);
  if (rc < 0) return fail_git(L, rc, "delete %s", ref);
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- export and read ----------------------------------------------------- */

typedef struct {
  git_repository *repo;
  const char *dir;
  lua_State *L;
  int match; /* stack index of a list of fnmatch patterns, or 0 */
  lua_Integer files;
  char failure[1024];
  git_index *index; /* when filling a new work tree: entries with the files' stat data */
} export_ctx;

static int safe_name(const char *name) {
  return name[0] && strcmp(name, ".") != 0 && strcmp(name, "..") != 0 &&
         strcasecmp(name, ".git") != 0 && strchr(name, '/') == NULL;
}

static int export_wanted(export_ctx *x, const char *path) {
  if (!x->match) return 1;
  size_t n = lua_rawlen(x->L, x->match);
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(x->L, x->match, (lua_Integer)i);
    const char *pat = lua_tostring(x->L, -1);
    int hit = pat && fnmatch(pat, path, 0) == 0;
    lua_pop(x->L, 1);
    if (hit) return 1;
  }
  return 0;
}

static int mkdirs_for(char *path) {
  for (char *p = strchr(path + 1, '/'); p; p = strchr(p + 1, '/')) {
    *p = '\0';
    int rc = mkdir(path, 0777);
    *p = '/';
    if (rc < 0 && errno != EEXIST) return -1;
  }
  return 0;
}

static int write_all(int fd, const char *data, size_t len) {
  while (len > 0) {
    ssize_t w = write(fd, data, len);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    data += w;
    len -= (size_t)w;
  }
  return 0;
}

/* Add the file just written at `path` to the index with its stat data, as git's checkout
 * does, so that no later status has to read and hash it again. */
static int index_written(export_ctx *x, const git_tree_entry *entry, const char *path,
                         const char *rel) {
  struct stat st;
  if (lstat(path, &st) < 0) {
    snprintf(x->failure, sizeof x->failure, "stat %s: %s", rel, strerror(errno));
    return -1;
  }
  git_index_entry e;
  memset(&e, 0, sizeof e);
  e.ctime.seconds = (int32_t)st.st_ctim.tv_sec;
  e.ctime.nanoseconds = (uint32_t)st.st_ctim.tv_nsec;
  e.mtime.seconds = (int32_t)st.st_mtim.tv_sec;
  e.mtime.nanoseconds = (uint32_t)st.st_mtim.tv_nsec;
  e.dev = (uint32_t)st.st_dev;
  e.ino = (uint32_t)st.st_ino;
  e.mode = git_tree_entry_filemode(entry);
  e.uid = st.st_uid;
  e.gid = st.st_gid;
  e.file_size = (uint32_t)st.st_size;
  git_oid_cpy(&e.id, git_tree_entry_id(entry));
  e.path = rel;
  if (git_index_add(x->index, &e) < 0) {
    const git_error *err = git_error_last();
    snprintf(x->failure, sizeof x->failure, "index %s: %s", rel, err ? err->message : "failed");
    return -1;
  }
  return 0;
}

static int export_entry(const char *root, const git_tree_entry *entry, void *payload) {
  export_ctx *x = payload;
  const char *name = git_tree_entry_name(entry);
  if (!safe_name(name)) {
    snprintf(x->failure, sizeof x->failure, "unsafe path %s%s in tree", root, name);
    return -1;
  }
  git_filemode_t mode = git_tree_entry_filemode(entry);
  if (mode == GIT_FILEMODE_TREE) return 0; /* directories are made for the files in them */
  size_t relsz = strlen(root) + strlen(name) + 1;
  size_t sz = strlen(x->dir) + 1 + relsz;
  char *path = malloc(sz);
  if (!path) {
    snprintf(x->failure, sizeof x->failure, "out of memory");
    return -1;
  }
  snprintf(path, sz, "%s/%s%s", x->dir, root, name);
  const char *rel = path + strlen(x->dir) + 1;
  int rc = 0;
  if (!export_wanted(x, rel)) goto out;
  if (mkdirs_for(path) < 0) {
    snprintf(x->failure, sizeof x->failure, "create directory for %s: %s", rel, strerror(errno));
    rc = -1;
    goto out;
  }
  if (mode == GIT_FILEMODE_COMMIT) {
    if (mkdir(path, 0777) < 0 && errno != EEXIST) {
      snprintf(x->failure, sizeof x->failure, "create %s: %s", rel, strerror(errno));
      rc = -1;
    }
    goto out;
  }
  git_blob *blob = NULL;
  if (git_blob_lookup(&blob, x->repo, git_tree_entry_id(entry)) < 0) {
    const git_error *e = git_error_last();
    snprintf(x->failure, sizeof x->failure, "read %s: %s", rel, e ? e->message : "missing blob");
    rc = -1;
    goto out;
  }
  const char *data = git_blob_rawcontent(blob);
  size_t len = (size_t)git_blob_rawsize(blob);
  if (mode == GIT_FILEMODE_LINK) {
    char *target = malloc(len + 1);
    if (target) {
      memcpy(target, data, len);
      target[len] = '\0';
      unlink(path);
      if (symlink(target, path) < 0) {
        snprintf(x->failure, sizeof x->failure, "create symlink %s: %s", rel, strerror(errno));
        rc = -1;
      }
      free(target);
    } else {
      rc = -1;
    }
  } else {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
                  mode == GIT_FILEMODE_BLOB_EXECUTABLE ? 0777 : 0666);
    if (fd < 0 || write_all(fd, data, len) < 0) {
      snprintf(x->failure, sizeof x->failure, "write %s: %s", rel, strerror(errno));
      rc = -1;
    }
    if (fd >= 0 && close(fd) < 0 && rc == 0) {
      snprintf(x->failure, sizeof x->failure, "write %s: %s", rel, strerror(errno));
      rc = -1;
    }
  }
  git_blob_free(blob);
  if (rc == 0 && x->index) rc = index_written(x, entry, path, rel);
  if (rc == 0) x->files++;
out:
  free(path);
  return rc;
}

/* repo:export(rev, dir [, {match={"*.yml", ...}}]) -> number of files | nil, err
 * Writes the tree of `rev` into `dir` (created if missing): modes and symlinks kept, no .git.
 * With `match`, only paths matching one of the fnmatch patterns are written. */
static int repo_export(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  const char *rev = luaL_checkstring(L, 2);
  const char *dir = luaL_checkstring(L, 3);
  export_ctx x = {repo, dir, L, 0, 0, "", NULL};
  if (lua_istable(L, 4)) {
    if (lua_getfield(L, 4, "match") == LUA_TTABLE)
      x.match = lua_absindex(L, -1);
    else
      lua_pop(L, 1);
  }
  git_tree *tree = NULL;
  int rc = lookup_tree(&tree, repo, rev);
  if (rc < 0) return fail_git(L, rc, "export %s", rev);
  if (mkdir(dir, 0777) < 0 && errno != EEXIST) {
    int e = errno;
    git_tree_free(tree);
    return mo_fail(L, "export %s: create %s: %s", rev, dir, strerror(e));
  }
  rc = git_tree_walk(tree, GIT_TREEWALK_PRE, export_entry, &x);
  git_tree_free(tree);
  if (rc != 0) return fail_with(L, rc, NULL, x.failure, "EEXPORT", "export %s to %s", rev, dir);
  lua_pushinteger(L, x.files);
  return 1;
}

/*
 * Fill an empty work tree and index with `commit`'s tree by plain writes, much
 * cheaper than git_checkout_tree for a large first checkout. Returns 1 when the
 * fast path does not apply (index not empty, .gitattributes or submodules in the
 * tree: filters would change the files), 0 on success, <0 with `failure` set.
 */
static int tree_needs_checkout(const char *root, const git_tree_entry *entry, void *payload) {
  (void)root;
  if (strcmp(git_tree_entry_name(entry), ".gitattributes") == 0 ||
      git_tree_entry_filemode(entry) == GIT_FILEMODE_COMMIT) {
    *(int *)payload = 1;
    return 1;
  }
  return 0;
}

static int populate_workdir(lua_State *L, git_repository *repo, git_commit *commit, char *failure,
                            size_t size) {
  git_index *idx = NULL;
  git_tree *tree = NULL;
  int rc, slow = 0;
  const char *wd = git_repository_workdir(repo);
  if (!wd) return 1;
  if ((rc = git_repository_index(&idx, repo)) < 0) return rc;
  if (git_index_entrycount(idx) != 0) {
    git_index_free(idx);
    return 1;
  }
  if ((rc = git_commit_tree(&tree, commit)) < 0) goto done;
  git_tree_walk(tree, GIT_TREEWALK_PRE, tree_needs_checkout, &slow);
  git_error_clear();
  if (slow) {
    rc = 1;
    goto done;
  }
  {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", wd);
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
      dir[--n] = '\0';
    export_ctx x = {repo, dir, L, 0, 0, "", idx};
    rc = git_tree_walk(tree, GIT_TREEWALK_PRE, export_entry, &x);
    if (rc != 0) {
      snprintf(failure, size, "%s", x.failure);
      rc = -1;
      goto done;
    }
  }
  rc = git_index_write(idx);
done:
  git_tree_free(tree);
  git_index_free(idx);
  return rc;
}

/* repo:checkout(rev [, {force=, populate=}]) -> true | nil, err
 * A local branch name (or refs/heads/...) makes HEAD point at it; any other revision detaches HEAD.
 * populate=true: the work tree is new and empty; fill it with plain writes when no
 * .gitattributes filter could apply (else a normal checkout). */
static int repo_checkout(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  const char *rev = luaL_checkstring(L, 2);
  int force = lua_istable(L, 3) ? mo_optfield_boolean(L, 3, "force", 0) : 0;
  int populate = lua_istable(L, 3) ? mo_optfield_boolean(L, 3, "populate", 0) : 0;
  git_commit *commit = NULL;
  git_reference *ref = NULL;
  git_index *idx = NULL;
  char failure[1024] = "";
  int rc = lookup_commit(&commit, repo, rev);
  if (rc < 0) return fail_git(L, rc, "checkout %s", rev);
  rc = populate ? populate_workdir(L, repo, commit, failure, sizeof failure) : 1;
  if (rc == 1) {
    git_checkout_options co;
    git_checkout_options_init(&co, GIT_CHECKOUT_OPTIONS_VERSION);
    co.checkout_strategy = force ? GIT_CHECKOUT_FORCE : GIT_CHECKOUT_SAFE;
    if (!force && git_repository_index(&idx, repo) == 0) co.baseline_index = idx;
    rc = git_checkout_tree(repo, (const git_object *)commit, &co);
  }
  if (rc == 0 && strcmp(rev, "HEAD") != 0) {
    if (git_reference_dwim(&ref, repo, rev) == 0 && git_reference_is_branch(ref))
      rc = git_repository_set_head(repo, git_reference_name(ref));
    else
      rc = git_repository_set_head_detached(repo, git_commit_id(commit));
  }
  git_reference_free(ref);
  git_index_free(idx);
  git_commit_free(commit);
  if (rc < 0) return fail_with(L, rc, NULL, failure, NULL, "checkout %s", rev);
  lua_pushboolean(L, 1);
  return 1;
}

/* repo:read(rev, path) -> content | nil, err, "ENOENT" */
static int repo_read(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  const char *rev = luaL_checkstring(L, 2);
  const char *path = luaL_checkstring(L, 3);
  git_tree *tree = NULL;
  git_tree_entry *entry = NULL;
  git_blob *blob = NULL;
  int rc = lookup_tree(&tree, repo, rev);
  if (rc < 0) return fail_git(L, rc, "read %s:%s", rev, path);
  rc = git_tree_entry_bypath(&entry, tree, path);
  git_tree_free(tree);
  if (rc == GIT_ENOTFOUND)
    return fail_with(L, rc, NULL, "no such file", "ENOENT", "read %s:%s", rev, path);
  if (rc < 0) return fail_git(L, rc, "read %s:%s", rev, path);
  if (git_tree_entry_type(entry) != GIT_OBJECT_BLOB) {
    git_tree_entry_free(entry);
    return fail_with(L, 0, NULL, "not a file", "EISDIR", "read %s:%s", rev, path);
  }
  rc = git_blob_lookup(&blob, repo, git_tree_entry_id(entry));
  git_tree_entry_free(entry);
  if (rc < 0) return fail_git(L, rc, "read %s:%s", rev, path);
  lua_pushlstring(L, git_blob_rawcontent(blob), (size_t)git_blob_rawsize(blob));
  git_blob_free(blob);
  return 1;
}

/* ---- commits ------------------------------------------------------------- */

/* repo:add_all() -> true | nil, err (stage every change, deletions included) */
static int repo_add_all(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  git_index *idx = NULL;
  char *all[] = {"*"};
  git_strarray spec = {all, 1};
  int rc = git_repository_index(&idx, repo);
  if (rc == 0) rc = git_index_add_all(idx, &spec, GIT_INDEX_ADD_DEFAULT, NULL, NULL);
  if (rc == 0) rc = git_index_update_all(idx, &spec, NULL, NULL);
  if (rc == 0) rc = git_index_write(idx);
  git_index_free(idx);
  if (rc < 0) return fail_git(L, rc, "add files in %s", git_repository_workdir(repo));
  lua_pushboolean(L, 1);
  return 1;
}

/* repo:commit({message=, author={name=, email=, time=}, committer=, parents={rev...},
 * ref="HEAD"|false}) -> sha | nil, err The tree is the index. Parents default to HEAD (none on an
 * unborn branch). */
static int repo_commit(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  const char *message = mo_optfield_string(L, 2, "message", NULL);
  if (!message) return luaL_argerror(L, 2, "a commit needs a message");
  const char *update = "HEAD";
  if (lua_getfield(L, 2, "ref") == LUA_TBOOLEAN && !lua_toboolean(L, -1))
    update = NULL;
  else if (lua_type(L, -1) == LUA_TSTRING)
    update = lua_tostring(L, -1);
  lua_pop(L, 1); /* a string stays anchored by the options table */

  git_commit *parents[16] = {NULL};
  size_t nparents = 0;
  git_index *idx = NULL;
  git_tree *tree = NULL;
  git_signature *author = NULL, *committer = NULL;
  git_oid tree_id, id;
  int rc = 0, nret = 0;

  if (lua_getfield(L, 2, "parents") == LUA_TTABLE) {
    size_t n = lua_rawlen(L, -1);
    if (n > 16) return luaL_error(L, "at most 16 parents");
    for (size_t i = 0; i < n; i++) {
      lua_rawgeti(L, -1, (lua_Integer)i + 1);
      const char *rev = lua_tostring(L, -1);
      if (!rev) return luaL_error(L, "parents[%d] must be a string", (int)i + 1);
      rc = lookup_commit(&parents[nparents], repo, rev);
      if (rc < 0) {
        nret = fail_git(L, rc, "commit: resolve parent %s", rev);
        goto done;
      }
      nparents++;
      lua_pop(L, 1);
    }
  } else {
    git_commit *head = NULL;
    rc = lookup_commit(&head, repo, "HEAD");
    if (rc == 0)
      parents[nparents++] = head;
    else
      git_error_clear();
  }
  lua_pop(L, 1);

  if ((rc = git_repository_index(&idx, repo)) < 0 ||
      (rc = git_index_write_tree(&tree_id, idx)) < 0 ||
      (rc = git_tree_lookup(&tree, repo, &tree_id)) < 0 ||
      (rc = make_signature(L, repo, 2, "author", &author)) < 0) {
    nret = fail_git(L, rc, "commit in %s", git_repository_path(repo));
    goto done;
  }
  if (lua_getfield(L, 2, "committer") == LUA_TTABLE) {
    lua_pop(L, 1);
    rc = make_signature(L, repo, 2, "committer", &committer);
  } else {
    lua_pop(L, 1);
    rc = git_signature_dup(&committer, author);
  }
  if (rc == 0)
    rc = git_commit_create(&id, repo, update, author, committer, NULL, message, tree, nparents,
                           (const git_commit **)parents);
  if (rc < 0) {
    nret = fail_git(L, rc, "commit in %s", git_repository_path(repo));
    goto done;
  }
  push_oid(L, &id);
  nret = 1;
done:
  for (size_t i = 0; i < nparents; i++)
    git_commit_free(parents[i]);
  git_signature_free(author);
  git_signature_free(committer);
  git_tree_free(tree);
  git_index_free(idx);
  return nret;
}

/* repo:log(rev [, {limit=}]) -> list {sha=, parents={...}, author=, email=, time=, message=} | nil,
 * err Newest first. */
static int repo_log(lua_State *L) {
  git_repository *repo = check_repo(L, 1);
  const char *rev = luaL_optstring(L, 2, "HEAD");
  lua_Integer limit = lua_istable(L, 3) ? mo_optfield_integer(L, 3, "limit", 0) : 0;
  git_commit *start = NULL;
  git_revwalk *walk = NULL;
  git_oid id;
  int rc = lookup_commit(&start, repo, rev);
  if (rc < 0) return fail_git(L, rc, "log %s", rev);
  if ((rc = git_revwalk_new(&walk, repo)) < 0 ||
      (rc = git_revwalk_sorting(walk, GIT_SORT_TIME)) < 0 ||
      (rc = git_revwalk_push(walk, git_commit_id(start))) < 0) {
    git_commit_free(start);
    git_revwalk_free(walk);
    return fail_git(L, rc, "log %s", rev);
  }
  git_commit_free(start);
  lua_newtable(L);
  lua_Integer n = 0;
  while ((limit <= 0 || n < limit) && (rc = git_revwalk_next(&id, walk)) == 0) {
    git_commit *c = NULL;
    if ((rc = git_commit_lookup(&c, repo, &id)) < 0) break;
    const git_signature *a = git_commit_author(c);
    lua_createtable(L, 0, 6);
    push_oid(L, &id);
    lua_setfield(L, -2, "sha");
    unsigned int np = git_commit_parentcount(c);
    lua_createtable(L, (int)np, 0);
    for (unsigned int i = 0; i < np; i++) {
      push_oid(L, git_commit_parent_id(c, i));
      lua_rawseti(L, -2, i + 1);
    }
    mo_mark_array(L, -1);
    lua_setfield(L, -2, "parents");
    lua_pushstring(L, a->name);
    lua_setfield(L, -2, "author");
    lua_pushstring(L, a->email);
    lua_setfield(L, -2, "email");
    lua_pushinteger(L, (lua_Integer)a->when.time);
    lua_setfield(L, -2, "time");
    lua_pushstring(L, git_commit_message(c));
    lua_setfield(L, -2, "message");
    lua_rawseti(L, -2, ++n);
    git_commit_free(c);
  }
  git_revwalk_free(walk);
  if (rc < 0 && rc != GIT_ITEROVER) {
    lua_pop(L, 1);
    return fail_git(L, rc, "log %s", rev);
  }
  git_error_clear();
  mo_mark_array(L, -1);
  return 1;
}

/* ---- registration -------------------------------------------------------- */

static const luaL_Reg repo_methods[] = {
    {"path", repo_path},
    {"workdir", repo_workdir},
    {"head", repo_head},
    {"resolve", repo_resolve},
    {"status", repo_status},
    {"is_clean", repo_is_clean},
    {"state", repo_state},
    {"remote_add", repo_remote_add},
    {"remote_set_url", repo_remote_set_url},
    {"remotes", repo_remotes},
    {"fetch", repo_fetch},
    {"ls_remote", repo_ls_remote},
    {"merge_base", repo_merge_base},
    {"merge", repo_merge},
    {"update_ref", repo_update_ref},
    {"delete_ref", repo_delete_ref},
    {"checkout", repo_checkout},
    {"export", repo_export},
    {"read", repo_read},
    {"diff", repo_diff},
    {"add_all", repo_add_all},
    {"commit", repo_commit},
    {"push", repo_push},
    {"log", repo_log},
    {NULL, NULL},
};

static const luaL_Reg git_funcs[] = {
    {"open", git_open}, {"init", git_init}, {"clone", git_clone_}, {"redact_url", git_redact_url},
    {NULL, NULL},
};

int luaopen_moonops_git(lua_State *L) {
  pthread_once(&git_once, git_global_init);
  mo_newclass(L, REPO_MT, repo_methods, repo_close);
  luaL_getmetatable(L, REPO_MT);
  lua_pushcfunction(L, repo_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  luaL_newlib(L, git_funcs);
  return 1;
}
