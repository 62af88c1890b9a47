/* moonops.crypto: digests, HMAC, constant-time comparison, randomness, encodings. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "internal.h"

#define HASHER_T "moonops.crypto.hasher"
#define HMAC_KEY_T "moonops.crypto.hmac_key"

static const char *const alg_names[] = {"sha1", "sha256", "sha384", "sha512", NULL};
static const char *const fetch_names[] = {"SHA1", "SHA256", "SHA384", "SHA512"};

/* The digests, fetched from the default provider once per process. OpenSSL 3's
 * implicit fetch (EVP_sha256() passed to HMAC() or EVP_Digest) looks the
 * algorithm up on every call, under a lock that threads contend for. */
static EVP_MD *fetched[4];
static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;

static void fetch_all(void) {
  for (int i = 0; i < 4; i++)
    fetched[i] = EVP_MD_fetch(NULL, fetch_names[i], NULL);
}

static const EVP_MD *check_alg(lua_State *L, int idx) {
  int i = luaL_checkoption(L, idx, NULL, alg_names);
  pthread_once(&fetch_once, fetch_all);
  if (fetched[i]) return fetched[i];
  switch (i) {
  case 0: return EVP_sha1();
  case 1: return EVP_sha256();
  case 2: return EVP_sha384();
  default: return EVP_sha512();
  }
}

static void push_hex(lua_State *L, const unsigned char *p, size_t n) {
  static const char digits[] = "0123456789abcdef";
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, n * 2);
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  luaL_pushresultsize(&b, n * 2);
}

/* HMAC (RFC 2104) as two digests whose key blocks are absorbed once: `inner`
 * and `outer` hold H after (key ^ ipad) and (key ^ opad); each message then
 * costs a copy of each and the message itself. */
struct hmac_key {
  EVP_MD_CTX *inner, *outer, *work;
};

static void hmac_key_free(struct hmac_key *k) {
  EVP_MD_CTX_free(k->inner);
  EVP_MD_CTX_free(k->outer);
  EVP_MD_CTX_free(k->work);
  k->inner = k->outer = k->work = NULL;
}

static int hmac_key_init(struct hmac_key *k, const EVP_MD *md, const char *key, size_t klen) {
  unsigned char block[128], pad[128];
  int bs = EVP_MD_get_block_size(md);
  if (bs <= 0 || bs > (int)sizeof block) return 0;
  memset(block, 0, sizeof block);
  if (klen > (size_t)bs) {
    unsigned int n = 0;
    if (!EVP_Digest(key, klen, block, &n, md, NULL)) return 0;
  } else {
    memcpy(block, key, klen);
  }
  k->inner = EVP_MD_CTX_new();
  k->outer = EVP_MD_CTX_new();
  k->work = EVP_MD_CTX_new();
  if (!k->inner || !k->outer || !k->work) return 0;
  for (int i = 0; i < bs; i++)
    pad[i] = block[i] ^ 0x36;
  if (!EVP_DigestInit_ex(k->inner, md, NULL) || !EVP_DigestUpdate(k->inner, pad, (size_t)bs))
    return 0;
  for (int i = 0; i < bs; i++)
    pad[i] = block[i] ^ 0x5c;
  if (!EVP_DigestInit_ex(k->outer, md, NULL) || !EVP_DigestUpdate(k->outer, pad, (size_t)bs))
    return 0;
  OPENSSL_cleanse(block, sizeof block);
  OPENSSL_cleanse(pad, sizeof pad);
  return 1;
}

static int hmac_key_sign(struct hmac_key *k, const char *data, size_t len, unsigned char *out,
                         unsigned int *olen) {
  unsigned char ih[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  return EVP_MD_CTX_copy_ex(k->work, k->inner) && EVP_DigestUpdate(k->work, data, len) &&
         EVP_DigestFinal_ex(k->work, ih, &n) && EVP_MD_CTX_copy_ex(k->work, k->outer) &&
         EVP_DigestUpdate(k->work, ih, n) && EVP_DigestFinal_ex(k->work, out, olen);
}

/* crypto.hmac(alg, key, data) -> lowercase hex */
static int crypto_hmac(lua_State *L) {
  const EVP_MD *md = check_alg(L, 1);
  size_t klen, dlen;
  const char *key = luaL_checklstring(L, 2, &klen);
  const char *data = luaL_checklstring(L, 3, &dlen);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int olen = 0;
  struct hmac_key k = {0};
  int ok = hmac_key_init(&k, md, key, klen) && hmac_key_sign(&k, data, dlen, out, &olen);
  hmac_key_free(&k);
  if (!ok) return luaL_error(L, "hmac %s: OpenSSL failure", lua_tostring(L, 1));
  push_hex(L, out, olen);
  return 1;
}

static int hmac_key_close(lua_State *L) {
  struct hmac_key *k = luaL_checkudata(L, 1, HMAC_KEY_T);
  hmac_key_free(k);
  return 0;
}

/* crypto.hmac_key(alg, key) -> key object whose :hex(data) is crypto.hmac(alg, key, data),
 * for signing or checking many messages with one secret */
/* key:matches(data, hex) -> true when hex (either case) is the HMAC of data. The
 * comparison takes time that depends only on the lengths; anything that is not
 * the hex of the right length is false. */
static int hmac_key_matches(lua_State *L) {
  struct hmac_key *k = mo_checkhandle(L, 1, HMAC_KEY_T, "hmac key");
  if (k->inner == NULL) return luaL_error(L, "use of a closed hmac key");
  size_t dlen, glen;
  const char *data = luaL_checklstring(L, 2, &dlen);
  const unsigned char *given = (const unsigned char *)luaL_checklstring(L, 3, &glen);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int olen = 0;
  if (!hmac_key_sign(k, data, dlen, out, &olen)) return luaL_error(L, "hmac: OpenSSL failure");
  static const char digits[] = "0123456789abcdef";
  char want[2 * EVP_MAX_MD_SIZE];
  for (unsigned int i = 0; i < olen; i++) {
    want[2 * i] = digits[out[i] >> 4];
    want[2 * i + 1] = digits[out[i] & 15];
  }
  size_t wlen = 2 * (size_t)olen;
  volatile unsigned char diff = (unsigned char)(glen != wlen);
  for (size_t i = 0; i < glen; i++) {
    unsigned char c = given[i];
    if (c >= 'A' && c <= 'Z') c = (unsigned char)(c + 32);
    diff |= (unsigned char)(c ^ (unsigned char)want[i < wlen ? i : 0]);
  }
  lua_pushboolean(L, diff == 0);
  return 1;
}

static int crypto_hmac_key(lua_State *L) {
  const EVP_MD *md = check_alg(L, 1);
  size_t klen;
  const char *key = luaL_checklstring(L, 2, &klen);
  struct hmac_key *k = (struct hmac_key *)mo_newhandle(L, sizeof *k, HMAC_KEY_T);
  memset(k, 0, sizeof *k);
  if (!hmac_key_init(k, md, key, klen)) {
    hmac_key_free(k);
    return luaL_error(L, "hmac %s: OpenSSL failure", lua_tostring(L, 1));
  }
  return 1;
}

/* key:hex(data) -> lowercase hex HMAC of data */
static int hmac_key_hex(lua_State *L) {
  struct hmac_key *k = mo_checkhandle(L, 1, HMAC_KEY_T, "hmac key");
  if (k->inner == NULL) return luaL_error(L, "use of a closed hmac key");
  size_t dlen;
  const char *data = luaL_checklstring(L, 2, &dlen);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int olen = 0;
  if (!hmac_key_sign(k, data, dlen, out, &olen)) return luaL_error(L, "hmac: OpenSSL failure");
  push_hex(L, out, olen);
  return 1;
}

/* crypto.digest(alg, data) -> lowercase hex */
static int crypto_digest(lua_State *L) {
  const EVP_MD *md = check_alg(L, 1);
  size_t dlen;
  const char *data = luaL_checklstring(L, 2, &dlen);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int olen = 0;
  if (!EVP_Digest(data, dlen, out, &olen, md, NULL))
    return luaL_error(L, "digest %s: OpenSSL failure", lua_tostring(L, 1));
  push_hex(L, out, olen);
  return 1;
}

static EVP_MD_CTX *check_hasher(lua_State *L) {
  return *(EVP_MD_CTX **)mo_checkhandle(L, 1, HASHER_T, "hasher");
}

static int hasher_close(lua_State *L) {
  EVP_MD_CTX **h = luaL_checkudata(L, 1, HASHER_T);
  if (*h) {
    EVP_MD_CTX_free(*h);
    *h = NULL;
  }
  return 0;
}

/* crypto.hasher(alg) -> hasher */
static int crypto_hasher(lua_State *L) {
  const EVP_MD *md = check_alg(L, 1);
  EVP_MD_CTX **h = (EVP_MD_CTX **)mo_newhandle(L, sizeof *h, HASHER_T);
  *h = EVP_MD_CTX_new();
  if (*h == NULL) return luaL_error(L, "hasher %s: out of memory", lua_tostring(L, 1));
  if (!EVP_DigestInit_ex(*h, md, NULL))
    return luaL_error(L, "hasher %s: OpenSSL failure", lua_tostring(L, 1));
  return 1;
}

/* hasher:update(data) -> hasher */
static int hasher_update(lua_State *L) {
  EVP_MD_CTX *ctx = check_hasher(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  if (!EVP_DigestUpdate(ctx, data, len)) return luaL_error(L, "hasher update: OpenSSL failure");
  lua_settop(L, 1);
  return 1;
}

/* hasher:final() -> lowercase hex; the hasher is closed afterwards */
static int hasher_final(lua_State *L) {
  EVP_MD_CTX *ctx = check_hasher(L);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int olen = 0;
  int ok = EVP_DigestFinal_ex(ctx, out, &olen);
  hasher_close(L);
  if (!ok) return luaL_error(L, "hasher final: OpenSSL failure");
  push_hex(L, out, olen);
  return 1;
}

/*
 * crypto.equal(a, b) -> boolean, in time that depends only on the lengths.
 * The loop always runs over all of b (the value an attacker controls), so a
 * length mismatch does not end it early either.
 */
static int crypto_equal(lua_State *L) {
  size_t la, lb;
  const unsigned char *a = (const unsigned char *)luaL_checklstring(L, 1, &la);
  const unsigned char *b = (const unsigned char *)luaL_checklstring(L, 2, &lb);
  volatile unsigned char diff = (unsigned char)(la != lb);
  for (size_t i = 0; i < lb; i++) {
    unsigned char x = la ? a[i % la] : 0;
    diff |= (unsigned char)(x ^ b[i]);
  }
  lua_pushboolean(L, diff == 0);
  return 1;
}

/* crypto.random(n) -> n random bytes from the OpenSSL CSPRNG */
static int crypto_random(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 0 && n <= (1 << 30), 1, "byte count out of range");
  luaL_Buffer b;
  unsigned char *p = (unsigned char *)luaL_buffinitsize(L, &b, (size_t)n);
  if (n > 0 && RAND_bytes(p, (int)n) != 1) return luaL_error(L, "random: OpenSSL RNG failure");
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

/* crypto.uuid() -> random (version 4) UUID string */
static int crypto_uuid(lua_State *L) {
  unsigned char u[16];
  char s[37];
  static const char digits[] = "0123456789abcdef";
  if (RAND_bytes(u, sizeof u) != 1) return luaL_error(L, "uuid: OpenSSL RNG failure");
  u[6] = (unsigned char)((u[6] & 0x0f) | 0x40);
  u[8] = (unsigned char)((u[8] & 0x3f) | 0x80);
  int j = 0;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s[j++] = '-';
    s[j++] = digits[u[i] >> 4];
    s[j++] = digits[u[i] & 15];
  }
  s[j] = '\0';
  lua_pushstring(L, s);
  return 1;
}

/* crypto.hex(s) -> lowercase hex */
static int crypto_hex(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  push_hex(L, (const unsigned char *)s, n);
  return 1;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* crypto.unhex(s) -> bytes | nil, err */
static int crypto_unhex(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  if (n % 2) return mo_fail(L, "unhex: odd number of digits (%d)", (int)n);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, n / 2);
  for (size_t i = 0; i < n; i += 2) {
    int hi = hexval((unsigned char)s[i]), lo = hexval((unsigned char)s[i + 1]);
    if (hi < 0 || lo < 0)
      return mo_fail(L, "unhex: invalid hex digit at position %d", (int)(i + (hi < 0 ? 1 : 2)));
    out[i / 2] = (char)(hi << 4 | lo);
  }
  luaL_pushresultsize(&b, n / 2);
  return 1;
}

static const char b64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64_url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int opt_url(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return 0;
  luaL_checktype(L, idx, LUA_TTABLE);
  return mo_optfield_boolean(L, idx, "url", 0);
}

/* crypto.base64(s [, {url=true}]) -> text; url=true uses "-_" and no padding */
static int crypto_base64(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  int url = opt_url(L, 2);
  const char *tab = url ? b64_url : b64_std;
  luaL_Buffer b;
  size_t cap = (n + 2) / 3 * 4, j = 0;
  char *out = luaL_buffinitsize(L, &b, cap);
  size_t i = 0;
  for (; i + 2 < n; i += 3) {
    uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
    out[j++] = tab[v >> 18 & 63];
    out[j++] = tab[v >> 12 & 63];
    out[j++] = tab[v >> 6 & 63];
    out[j++] = tab[v & 63];
  }
  if (i < n) {
    uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0);
    out[j++] = tab[v >> 18 & 63];
    out[j++] = tab[v >> 12 & 63];
    if (i + 1 < n)
      out[j++] = tab[v >> 6 & 63];
    else if (!url)
      out[j++] = '=';
    if (!url) out[j++] = '=';
  }
  luaL_pushresultsize(&b, j);
  return 1;
}

static int b64val(int c, int url) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == (url ? '-' : '+')) return 62;
  if (c == (url ? '_' : '/')) return 63;
  return -1;
}

/*
 * crypto.unbase64(s [, {url=true}]) -> bytes | nil, err
 * Padding is optional; ASCII whitespace (line breaks) is skipped.
 */
static int crypto_unbase64(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  int url = opt_url(L, 2);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, n / 4 * 3 + 3);
  size_t j = 0, pad = 0;
  int k = 0;
  uint32_t acc = 0;
  for (size_t i = 0; i < n; i++) {
    int c = (unsigned char)s[i];
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      pad++;
      continue;
    }
    int v = b64val(c, url);
    if (v < 0) return mo_fail(L, "unbase64: invalid character at position %d", (int)i + 1);
    if (pad) return mo_fail(L, "unbase64: data after padding at position %d", (int)i + 1);
    acc = acc << 6 | (uint32_t)v;
    if (++k == 4) {
      out[j++] = (char)(acc >> 16);
      out[j++] = (char)(acc >> 8);
      out[j++] = (char)acc;
      k = 0;
      acc = 0;
    }
  }
  if (k == 1) return mo_fail(L, "unbase64: truncated input");
  if (k == 2) {
    out[j++] = (char)(acc >> 4);
    if (pad != 0 && pad != 2) return mo_fail(L, "unbase64: bad padding");
  } else if (k == 3) {
    out[j++] = (char)(acc >> 10);
    out[j++] = (char)(acc >> 2);
    if (pad != 0 && pad != 1) return mo_fail(L, "unbase64: bad padding");
  } else if (pad) {
    return mo_fail(L, "unbase64: bad padding");
  }
  luaL_pushresultsize(&b, j);
  return 1;
}

int luaopen_moonops_crypto(lua_State *L) {
  static const luaL_Reg hasher_methods[] = {
      {"update", hasher_update},
      {"final", hasher_final},
      {NULL, NULL},
  };
  static const luaL_Reg funcs[] = {
      {"hmac", crypto_hmac},     {"hmac_key", crypto_hmac_key}, {"digest", crypto_digest},
      {"hasher", crypto_hasher}, {"equal", crypto_equal},       {"random", crypto_random},
      {"uuid", crypto_uuid},     {"hex", crypto_hex},           {"unhex", crypto_unhex},
      {"base64", crypto_base64}, {"unbase64", crypto_unbase64}, {NULL, NULL},
  };
  static const luaL_Reg hmac_key_methods[] = {
      {"hex", hmac_key_hex},
      {"matches", hmac_key_matches},
      {NULL, NULL},
  };
  mo_newclass(L, HASHER_T, hasher_methods, hasher_close);
  mo_newclass(L, HMAC_KEY_T, hmac_key_methods, hmac_key_close);
  luaL_newlib(L, funcs);
  return 1;
}
