/*
 * The ceiling for the server benchmark: a bare libmicrohttpd program that only
 * checks X-Hub-Signature-256 (HMAC-SHA256 of the body) and answers a constant.
 * Same threading as moonops serve (epoll, a pool of N threads).
 *
 *   cc -O2 -o bare bare.c $(pkg-config --cflags --libs libmicrohttpd openssl)
 *   ./bare PORT SECRET [THREADS]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <microhttpd.h>
#include <openssl/crypto.h>
#include <openssl/hmac.h>

static const char *secret;

struct body {
  char *data;
  size_t len;
};

static void to_hex(const unsigned char *in, unsigned n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (unsigned i = 0; i < n; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * n] = '\0';
}

static enum MHD_Result answer(struct MHD_Connection *c, unsigned status, const char *text) {
  struct MHD_Response *r =
      MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
  enum MHD_Result rc = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *size, void **ctx) {
  (void)cls, (void)url, (void)method, (void)version;
  struct body *b = *ctx;
  if (b == NULL) {
    *ctx = calloc(1, sizeof *b);
    return *ctx ? MHD_YES : MHD_NO;
  }
  if (*size) {
    char *grown = realloc(b->data, b->len + *size);
    if (grown == NULL) return MHD_NO;
    memcpy(grown + b->len, data, *size);
    b->data = grown;
    b->len += *size;
    *size = 0;
    return MHD_YES;
  }
  const char *sig = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Hub-Signature-256");
  unsigned char mac[32];
  unsigned int n = 0;
  char hex[65];
  HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)b->data, b->len, mac, &n);
  to_hex(mac, n, hex);
  if (sig == NULL || strncmp(sig, "sha256=", 7) != 0 || strlen(sig + 7) != 64 ||
      CRYPTO_memcmp(sig + 7, hex, 64) != 0)
    return answer(c, 401, "{\"error\":\"invalid signature\"}\n");
  return answer(c, 200, "{\"ignored\":\"ref is not the deployed branch\"}\n");
}

static void on_done(void *cls, struct MHD_Connection *c, void **ctx,
                    enum MHD_RequestTerminationCode toe) {
  (void)cls, (void)c, (void)toe;
  struct body *b = *ctx;
  if (b) {
    free(b->data);
    free(b);
  }
  *ctx = NULL;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s PORT SECRET [THREADS]\n", argv[0]);
    return 2;
  }
  secret = argv[2];
  unsigned threads = argc > 3 ? (unsigned)atoi(argv[3]) : 2;
  struct MHD_Daemon *d = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, (uint16_t)atoi(argv[1]), NULL, NULL,
      on_request, NULL, MHD_OPTION_NOTIFY_COMPLETED, on_done, NULL, MHD_OPTION_THREAD_POOL_SIZE,
      threads, MHD_OPTION_CONNECTION_LIMIT, 1024u, MHD_OPTION_END);
  if (d == NULL) {
    perror("MHD_start_daemon");
    return 1;
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigprocmask(SIG_BLOCK, &set, NULL);
  int sig;
  sigwait(&set, &sig);
  MHD_stop_daemon(d);
  return 0;
}
