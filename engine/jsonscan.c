/*
 * moonops.jsonscan: check that a text is one JSON value and decode only the
 * fields asked for. A webhook handler needs a handful of strings from a push
 * payload of tens of kilobytes; decoding all of it builds a table or string for
 * every value, while this scan builds nothing until the whole text is known to
 * be valid, and then only the requested values.
 *
 * Where lua-cjson 2.1.0 decodes the same text, the values are the ones it gives
 * (escapes, surrogate pairs, strtod for numbers, the last of duplicate keys,
 * its nesting limit of 1000), with whole numbers up to 2^53 as Lua integers as
 * moonops.json returns them. The grammar is RFC 8259's, so some texts cjson
 * takes are refused: control characters in strings, `01`, `1.`, `-.5`, `+1`,
 * hex, NaN and Infinity, and anything (even a NUL byte) after the value.
 */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_DEPTH 1000 /* lua-cjson's decode_max_depth */

enum kind { K_NONE, K_STRING, K_NUMBER, K_TRUE, K_FALSE, K_NULL, K_OBJECT, K_ARRAY };
static const char *const kind_names[] = {NULL,      "string", "number", "boolean",
                                         "boolean", "null",   "object", "array"};

/* The requested paths as a tree of key segments; node 0 is the top-level object. */
struct node {
  const char *seg;
  size_t len;
  int parent, child, next; /* -1: none */
  int slot;                /* the result of the path ending here, or -1 */
};

/* Where the value of one requested path was found. */
struct slot {
  int path;          /* index in `paths` of (one of) the path strings */
  int kind;          /* K_NONE while absent */
  size_t start, end; /* string contents without quotes, or the number's text */
  int flag;          /* a string holds escapes; a number has no fraction or exponent */
};

struct scan {
  const char *text;
  size_t len;
  struct node *nodes; /* the requested paths */
  struct slot *slots;
  int nnodes, nslots, cap_nodes, cap_slots;
  const char *what; /* why the text is not JSON */
  size_t at;        /* 1-based byte where it went wrong */
};

/* bytes that may continue a number in lua-cjson's eyes: one right after a
 * complete RFC 8259 number makes the whole token an invalid number */
static int number_char(int c) {
  return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || c == '.' ||
         c == '+' || c == '-';
}

static int fail(struct scan *S, const char *what, const char *at) {
  S->what = what;
  S->at = (size_t)(at - S->text) + 1;
  return 0;
}

static const char *skip_space(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
    p++;
  return p;
}

/* The first byte at or after p that is a quote, a backslash or a control
 * character (end when none), eight bytes at a time: most of a payload is the
 * inside of strings. */
static const char *skip_plain(const char *p, const char *end) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
  while (end - p >= 8) {
    uint64_t v, q, b;
    memcpy(&v, p, 8);
    q = v ^ (ones * '"');
    b = v ^ (ones * '\\');
    /* a byte's high bit is set where it is zero in q or b, or below 0x20 in v;
     * bits above the lowest one may be false positives, so only it is used */
    uint64_t hit = (((q - ones) & ~q) | ((b - ones) & ~b) | ((v - ones * 0x20) & ~v)) & highs;
    if (hit) return p + (__builtin_ctzll(hit) >> 3);
    p += 8;
  }
#endif
  while (p < end && (unsigned char)*p >= 0x20 && *p != '"' && *p != '\\')
    p++;
  return p;
}

static int hex4(const char *p) {
  int v = 0;
  for (int i = 0; i < 4; i++) {
    int c = (unsigned char)p[i], d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
      d = (c | 0x20) - 'a' + 10;
    else
      return -1;
    v = v << 4 | d;
  }
  return v;
}

/* Check the escape at p (a backslash) as lua-cjson does; returns its length or 0. */
static size_t check_escape(const char *p, const char *end) {
  if (end - p < 2) return 0;
  switch (p[1]) {
  case '"':
  case '\\':
  case '/':
  case 'b':
  case 'f':
  case 'n':
  case 'r':
  case 't': return 2;
  case 'u': break;
  default: return 0;
  }
  int hi = end - p >= 6 ? hex4(p + 2) : -1;
  if (hi < 0 || (hi & 0xFC00) == 0xDC00) return 0; /* not hex, or a lone low surrogate */
  if ((hi & 0xFC00) != 0xD800) return 6;
  if (end - p < 12 || p[6] != '\\' || p[7] != 'u') return 0;
  int lo = hex4(p + 8);
  return lo >= 0 && (lo & 0xFC00) == 0xDC00 ? 12 : 0;
}

/* Decode the (checked) escape at *pp into out; returns the number of bytes. */
static int decode_escape(const char **pp, char *out) {
  const char *p = *pp;
  *pp += 2;
  switch (p[1]) {
  case 'b': *out = '\b'; return 1;
  case 'f': *out = '\f'; return 1;
  case 'n': *out = '\n'; return 1;
  case 'r': *out = '\r'; return 1;
  case 't': *out = '\t'; return 1;
  case 'u': break;
  default: *out = p[1]; return 1;
  }
  unsigned cp = (unsigned)hex4(p + 2);
  *pp += 4;
  if ((cp & 0xFC00) == 0xD800) {
    cp = 0x10000 + ((cp - 0xD800) << 10) + ((unsigned)hex4(p + 8) - 0xDC00);
    *pp += 6;
  }
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | cp >> 6);
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | cp >> 12);
    out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | cp >> 18);
  out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
  out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
  out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Scan the string whose opening quote is at *pp; on success *pp is past the
 * closing quote and [*start, *stop) is its contents. */
static int scan_string(struct scan *S, const char **pp, const char *end, const char **start,
                       const char **stop, int *escaped) {
  const char *open = *pp, *p = open + 1;
  *escaped = 0;
  for (;;) {
    p = skip_plain(p, end);
    if (p == end) return fail(S, "unterminated string", open);
    if (*p == '"') break;
    if (*p != '\\') return fail(S, "control character in string", p);
    size_t n = check_escape(p, end);
    if (n == 0) {
      int unicode = end - p >= 2 && p[1] == 'u';
      return fail(S, unicode ? "invalid unicode escape" : "invalid escape", p);
    }
    *escaped = 1;
    p += n;
  }
  *start = open + 1;
  *stop = p;
  *pp = p + 1;
  return 1;
}

/* memcmp(a, b, n) == 0 for the short keys of a payload, without a call */
static int same(const char *a, const char *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (a[i] != b[i]) return 0;
  return 1;
}

/* Does the string [s, e) decode to the bytes seg[0..len)? */
static int key_is(const char *s, const char *e, int escaped, const char *seg, size_t len) {
  if (!escaped) return (size_t)(e - s) == len && same(s, seg, len);
  size_t i = 0;
  while (s < e) {
    char buf[4];
    int n = 1;
    if (*s == '\\')
      n = decode_escape(&s, buf);
    else
      buf[0] = *s++;
    if (len - i < (size_t)n || memcmp(seg + i, buf, (size_t)n) != 0) return 0;
    i += (size_t)n;
  }
  return i == len;
}

/* The requested path one key below `parent`, or -1. */
static int child_for_key(struct scan *S, int parent, const char *s, const char *e, int escaped) {
  for (int c = S->nodes[parent].child; c >= 0; c = S->nodes[c].next)
    if (key_is(s, e, escaped, S->nodes[c].seg, S->nodes[c].len)) return c;
  return -1;
}

/* A key seen again replaces its whole value (the last one wins, as in cjson):
 * forget what was found below it. */
static void forget(struct scan *S, int top) {
  struct node *nodes = S->nodes;
  int n = top;
  for (;;) {
    if (nodes[n].slot >= 0) S->slots[nodes[n].slot].kind = K_NONE;
    if (nodes[n].child >= 0) {
      n = nodes[n].child;
      continue;
    }
    while (n != top && nodes[n].next < 0)
      n = nodes[n].parent;
    if (n == top) return;
    n = nodes[n].next;
  }
}

static void found(struct scan *S, int node, int kind, const char *start, const char *stop,
                  int flag) {
  if (node < 0 || S->nodes[node].slot < 0) return;
  struct slot *r = &S->slots[S->nodes[node].slot];
  r->kind = kind;
  r->start = (size_t)(start - S->text);
  r->end = (size_t)(stop - S->text);
  r->flag = flag;
}

/* An RFC 8259 number at *pp; sets *whole when it has no fraction or exponent. */
static int scan_number(struct scan *S, const char **pp, const char *end, int *whole) {
  const char *s = *pp, *p = s;
  *whole = 1;
  if (*p == '-') p++;
  if (p < end && *p == '0') {
    p++;
  } else if (p < end && *p >= '1' && *p <= '9') {
    while (p < end && *p >= '0' && *p <= '9')
      p++;
  } else {
    return fail(S, "invalid number", s);
  }
  if (p < end && *p == '.') {
    *whole = 0;
    const char *digits = ++p;
    while (p < end && *p >= '0' && *p <= '9')
      p++;
    if (p == digits) return fail(S, "invalid number", s);
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    *whole = 0;
    p++;
    if (p < end && (*p == '+' || *p == '-')) p++;
    const char *digits = p;
    while (p < end && *p >= '0' && *p <= '9')
      p++;
    if (p == digits) return fail(S, "invalid number", s);
  }
  if (p < end && number_char((unsigned char)*p)) return fail(S, "invalid number", s);
  *pp = p;
  return 1;
}

enum state { EXPECT_VALUE, AFTER_VALUE, EXPECT_KEY };

/* Validate the whole text, filling in the slots; 0 with S->what on error. */
static int scan(struct scan *S) {
  /* per open container: -2 an array, -1 an object with nothing requested
   * inside, else the node of the requested paths that continue inside it */
  int open[MAX_DEPTH];
  int depth = 0, target = 0;
  const char *p = S->text, *end = S->text + S->len;
  enum state st = EXPECT_VALUE;
  for (;;) {
    p = skip_space(p, end);
    if (st == AFTER_VALUE) {
      if (depth == 0) return p == end ? 1 : fail(S, "unexpected data after the value", p);
      if (p == end) return fail(S, "unexpected end of input", p);
      int array = open[depth - 1] == -2;
      if (*p == ',') {
        p++;
        st = array ? EXPECT_VALUE : EXPECT_KEY;
      } else if (*p == (array ? ']' : '}')) {
        p++;
        depth--;
      } else {
        return fail(S, array ? "expected ',' or ']'" : "expected ',' or '}'", p);
      }
      continue;
    }
    if (p == end) return fail(S, "unexpected end of input", p);

    if (st == EXPECT_KEY) {
      const char *s, *e;
      int escaped, parent = open[depth - 1];
      if (*p != '"') return fail(S, "expected a string as object key", p);
      if (!scan_string(S, &p, end, &s, &e, &escaped)) return 0;
      target = parent >= 0 ? child_for_key(S, parent, s, e, escaped) : -1;
      p = skip_space(p, end);
      if (p == end) return fail(S, "unexpected end of input", p);
      if (*p != ':') return fail(S, "expected ':'", p);
      p++;
      st = EXPECT_VALUE;
      continue;
    }

    /* a value, whose path is `target` (or -1 when nobody asked for it) */
    int node = target;
    if (node > 0) forget(S, node);
    target = -1;
    st = AFTER_VALUE;
    const char *s = p, *e;
    int escaped = 0, whole;
    switch (*p) {
    case '{':
    case '[': {
      if (depth == MAX_DEPTH) return fail(S, "nested too deep (more than 1000 levels)", p);
      found(S, node, *p == '{' ? K_OBJECT : K_ARRAY, p, p, 0);
      open[depth++] = *p == '[' ? -2 : node >= 0 && S->nodes[node].child >= 0 ? node : -1;
      char close = *p == '{' ? '}' : ']';
      p = skip_space(p + 1, end);
      if (p < end && *p == close) {
        p++;
        depth--;
      } else {
        st = close == ']' ? EXPECT_VALUE : EXPECT_KEY;
      }
      break;
    }
    case '"':
      if (!scan_string(S, &p, end, &s, &e, &escaped)) return 0;
      found(S, node, K_STRING, s, e, escaped);
      break;
    case 't':
      if (end - p < 4 || memcmp(p, "true", 4) != 0) return fail(S, "expected a value", p);
      p += 4;
      found(S, node, K_TRUE, s, p, 0);
      break;
    case 'f':
      if (end - p < 5 || memcmp(p, "false", 5) != 0) return fail(S, "expected a value", p);
      p += 5;
      found(S, node, K_FALSE, s, p, 0);
      break;
    case 'n':
      if (end - p < 4 || memcmp(p, "null", 4) != 0) return fail(S, "expected a value", p);
      p += 4;
      found(S, node, K_NULL, s, p, 0);
      break;
    default:
      if (*p != '-' && !(*p >= '0' && *p <= '9')) {
        if (*p == '+' || *p == '.') return fail(S, "invalid number", p);
        return fail(S, "expected a value", p);
      }
      if (!scan_number(S, &p, end, &whole)) return 0;
      found(S, node, K_NUMBER, s, p, whole);
      break;
    }
  }
}

static void push_string(lua_State *L, const char *s, const char *e, int escaped) {
  if (!escaped) {
    lua_pushlstring(L, s, (size_t)(e - s));
    return;
  }
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, (size_t)(e - s)); /* decoding never grows it */
  size_t n = 0;
  while (s < e) {
    if (*s == '\\')
      n += (size_t)decode_escape(&s, out + n);
    else
      out[n++] = *s++;
  }
  luaL_pushresultsize(&b, n);
}

/* strtod, as lua-cjson converts numbers, then whole values that a double holds
 * exactly (|v| <= 2^53) as integers, as moonops.json does. */
static void push_number(lua_State *L, const char *s, const char *e, int whole) {
  size_t digits = (size_t)(e - s) - (*s == '-');
  if (whole && digits <= 15) {
    lua_Integer v = 0;
    for (const char *p = s + (*s == '-'); p < e; p++)
      v = v * 10 + (*p - '0');
    lua_pushinteger(L, *s == '-' ? -v : v);
    return;
  }
  /* the text is a Lua string (so NUL-terminated) and the byte after a checked
   * number is one strtod does not take */
  double d = strtod(s, NULL);
  const double limit = 9007199254740992.0;
  if (d >= -limit && d <= limit && (double)(lua_Integer)d == d)
    lua_pushinteger(L, (lua_Integer)d);
  else
    lua_pushnumber(L, d);
}

/* Add one path to the tree; 0 when the tree's arrays are full. */
static int add_path(struct scan *S, const char *s, size_t len, int index) {
  struct node *nodes = S->nodes;
  const char *end = s + len;
  int at = 0;
  for (;;) {
    const char *stop = s;
    while (stop < end && *stop != '.')
      stop++;
    size_t seglen = (size_t)(stop - s);
    int c = nodes[at].child;
    while (c >= 0 && !(nodes[c].len == seglen && memcmp(nodes[c].seg, s, seglen) == 0))
      c = nodes[c].next;
    if (c < 0) {
      if (S->nnodes == S->cap_nodes) return 0;
      c = S->nnodes++;
      nodes[c] = (struct node){s, seglen, at, -1, nodes[at].child, -1};
      nodes[at].child = c;
    }
    at = c;
    if (stop == end) break;
    s = stop + 1;
  }
  if (nodes[at].slot < 0) {
    if (S->nslots == S->cap_slots) return 0;
    nodes[at].slot = S->nslots;
    S->slots[S->nslots++] = (struct slot){index, K_NONE, 0, 0, 0};
  }
  return 1;
}

static void reset_paths(struct scan *S) {
  S->nodes[0] = (struct node){NULL, 0, -1, -1, -1, -1};
  S->nnodes = 1;
  S->nslots = 0;
}

/* Check `paths` (a sequence of strings) and build the tree of their segments,
 * in the caller's arrays when they are big enough, else in a userdata. */
static void build_paths(lua_State *L, int idx, struct scan *S) {
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
  if (n >= INT_MAX / 2) luaL_argerror(L, idx, "too many paths");
  size_t segments = 1;
  int fits = 1;
  reset_paths(S);
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_rawgeti(L, idx, i) != LUA_TSTRING)
      luaL_argerror(L, idx,
                    lua_pushfstring(L, "paths[%I] is a %s, not a string", i, luaL_typename(L, -1)));
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    lua_pop(L, 1); /* still referenced by the table */
    if (fits) fits = add_path(S, s, len, (int)i);
    for (size_t j = 0; j < len; j++)
      segments += s[j] == '.';
    segments++;
  }
  /* other keys after the sequence (how Lua's next() orders a table built by a
   * constructor such as {"a", x = 1}) */
  if (n > 0)
    lua_pushinteger(L, n);
  else
    lua_pushnil(L);
  if (lua_next(L, idx)) luaL_argerror(L, idx, "paths must be a sequence of strings");
  if (fits) return;
  if (segments > INT_MAX / 2) luaL_argerror(L, idx, "too many paths");
  /* scratch memory the collector owns, so an error cannot leak it */
  S->nodes = lua_newuserdatauv(L, segments * sizeof *S->nodes + (size_t)n * sizeof *S->slots, 0);
  S->slots = (struct slot *)(S->nodes + segments);
  S->cap_nodes = (int)segments;
  S->cap_slots = (int)n;
  reset_paths(S);
  for (lua_Integer i = 1; i <= n; i++) {
    size_t len;
    lua_rawgeti(L, idx, i);
    const char *s = lua_tolstring(L, -1, &len);
    lua_pop(L, 1);
    add_path(S, s, len, (int)i);
  }
}

/*
 * jsonscan.pick(text, paths) -> values, kinds | nil, err
 * `paths` are dotted keys into nested objects ("repository.full_name").
 * values[path] is the decoded string, number, boolean or null (cjson.null) at
 * each path that holds one; kinds[path] is "string", "number", "boolean",
 * "null", "object" or "array" for every path present. The whole text must be
 * JSON with an object at the top.
 */
static int jsonscan_pick(lua_State *L) {
  struct node nodes[32];
  struct slot slots[16];
  struct scan S = {0};
  luaL_checktype(L, 1, LUA_TSTRING);
  S.text = lua_tolstring(L, 1, &S.len);
  S.nodes = nodes;
  S.slots = slots;
  S.cap_nodes = 32;
  S.cap_slots = 16;
  build_paths(L, 2, &S);
  if (!scan(&S)) return mo_fail(L, "invalid JSON: %s at byte %I", S.what, (lua_Integer)S.at);
  const char *first = S.text;
  while (*first == ' ' || *first == '\n' || *first == '\r' || *first == '\t')
    first++;
  if (*first != '{') return mo_fail(L, "payload is not a JSON object");

  int present = 0;
  for (int i = 0; i < S.nslots; i++)
    present += S.slots[i].kind != K_NONE;
  lua_createtable(L, 0, present);
  lua_createtable(L, 0, present);
  int values = lua_gettop(L) - 1, kinds = values + 1;
  for (int i = 0; i < S.nslots; i++) {
    struct slot *r = &S.slots[i];
    if (r->kind == K_NONE) continue;
    lua_rawgeti(L, 2, r->path);
    lua_pushvalue(L, -1);
    lua_pushvalue(L, lua_upvalueindex(r->kind)); /* its kind's name */
    lua_rawset(L, kinds);
    const char *s = S.text + r->start, *e = S.text + r->end;
    switch (r->kind) {
    case K_STRING: push_string(L, s, e, r->flag); break;
    case K_NUMBER: push_number(L, s, e, r->flag); break;
    case K_TRUE: lua_pushboolean(L, 1); break;
    case K_FALSE: lua_pushboolean(L, 0); break;
    case K_NULL: lua_pushlightuserdata(L, NULL); break; /* cjson.null */
    default: lua_pop(L, 1); continue;                   /* objects and arrays: kind only */
    }
    lua_rawset(L, values);
  }
  return 2;
}

int luaopen_moonops_jsonscan(lua_State *L) {
  static const luaL_Reg funcs[] = {{"pick", jsonscan_pick}, {NULL, NULL}};
  luaL_newlibtable(L, funcs);
  for (int k = K_STRING; k <= K_ARRAY; k++)
    lua_pushstring(L, kind_names[k]);
  luaL_setfuncs(L, funcs, K_ARRAY);
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  return 1;
}
