/*
 * moonops.yaml: YAML 1.2 (core schema) on libyaml's event parser.
 *
 * Values are built straight into Lua tables. Every mapping and sequence gets a
 * provenance record (its "meta", layout in internal.h) in a weak-keyed registry
 * table, so nothing shows up as a key. The record is one array, cheap to build;
 * a mapping's key -> line index is added to it the first time a large mapping
 * is asked for a line.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "internal.h"

#define LOADER_T "moonops.yaml.loader"
#define DUMPER_T "moonops.yaml.dumper"
#define MAX_DEPTH 1000
#define MAX_ALIAS_NODES 1000000

#define TAG_PREFIX "tag:yaml.org,2002:"

/* Only its address is used: the registry key of the provenance table. */
static const char provenance_key = 'p';

/* ------------------------------------------------------------------------ */
/* null, arrays, provenance                                                  */

/* yaml.null is the lightuserdata NULL, the same value as json.null (cjson). */
static void push_null(lua_State *L) {
  lua_pushlightuserdata(L, NULL);
}

static int is_null(lua_State *L, int idx) {
  return lua_islightuserdata(L, idx) && lua_touserdata(L, idx) == NULL;
}

static void push_provenance(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &provenance_key) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &provenance_key);
}

void mo_yaml_push_meta(lua_State *L, int table_idx) {
  table_idx = lua_absindex(L, table_idx);
  if (!lua_istable(L, table_idx)) {
    lua_pushnil(L);
    return;
  }
  push_provenance(L);
  lua_pushvalue(L, table_idx);
  lua_rawget(L, -2);
  lua_remove(L, -2);
}

void mo_yaml_set_meta(lua_State *L, int table_idx, int meta_idx) {
  table_idx = lua_absindex(L, table_idx);
  meta_idx = lua_absindex(L, meta_idx);
  push_provenance(L);
  lua_pushvalue(L, table_idx);
  lua_pushvalue(L, meta_idx);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

static int is_array_mt(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return 0;
  mo_push_array_mt(L);
  int eq = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return eq;
}

/* Number of keys recorded in a mapping's meta (at meta_idx). */
static lua_Integer meta_nkeys(lua_State *L, int meta_idx) {
  lua_Integer len = (lua_Integer)lua_rawlen(L, meta_idx);
  return len > MO_META_HEAD ? (len - MO_META_HEAD) / 2 : 0;
}

/* Line of `key` in the mapping meta at meta_idx (0 when not recorded). */
static lua_Integer meta_key_line(lua_State *L, int meta_idx, int key_idx) {
  lua_Integer line = 0, n = meta_nkeys(L, meta_idx);
  if (n > 8) {
    if (lua_rawgeti(L, meta_idx, 0) == LUA_TNIL) {
      /* build the key -> line index once */
      for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, meta_idx, MO_META_HEAD + 2 * i - 1);
        lua_rawgeti(L, meta_idx, MO_META_HEAD + 2 * i);
        lua_rawset(L, meta_idx);
      }
      lua_pushboolean(L, 1);
      lua_rawseti(L, meta_idx, 0);
    }
    lua_pop(L, 1);
    lua_pushvalue(L, key_idx);
    if (lua_rawget(L, meta_idx) == LUA_TNUMBER) line = lua_tointeger(L, -1);
    lua_pop(L, 1);
    return line;
  }
  for (lua_Integer i = 1; i <= n && line == 0; i++) {
    lua_rawgeti(L, meta_idx, MO_META_HEAD + 2 * i - 1);
    if (lua_rawequal(L, -1, key_idx)) {
      lua_rawgeti(L, meta_idx, MO_META_HEAD + 2 * i);
      line = lua_tointeger(L, -1);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  return line;
}

int mo_yaml_meta_line(lua_State *L, int meta_idx, int key_idx) {
  lua_Integer line = meta_key_line(L, lua_absindex(L, meta_idx), lua_absindex(L, key_idx));
  return line > 0 && line <= 0x7fffffff ? (int)line : 0;
}

int mo_yaml_key_line(lua_State *L, int table_idx, int key_idx) {
  table_idx = lua_absindex(L, table_idx);
  key_idx = lua_absindex(L, key_idx);
  lua_Integer line = 0;
  mo_yaml_push_meta(L, table_idx);
  int meta = lua_gettop(L);
  if (!lua_istable(L, meta) || lua_isnil(L, key_idx)) {
  } else if (is_array_mt(L, table_idx)) {
    if (lua_isinteger(L, key_idx) && lua_tointeger(L, key_idx) >= 1) {
      lua_Integer i = lua_tointeger(L, key_idx);
      if (i <= (lua_Integer)lua_rawlen(L, meta) - MO_META_HEAD &&
          lua_rawgeti(L, meta, MO_META_HEAD + i) == LUA_TNUMBER)
        line = lua_tointeger(L, -1);
      lua_settop(L, meta);
    }
  } else if (lua_type(L, key_idx) == LUA_TSTRING) {
    line = meta_key_line(L, meta, key_idx);
  }
  lua_pop(L, 1);
  return line > 0 && line <= 0x7fffffff ? (int)line : 0;
}

const char *mo_yaml_source(lua_State *L, int table_idx) {
  const char *s = NULL;
  mo_yaml_push_meta(L, table_idx);
  if (lua_istable(L, -1)) {
    /* the string stays alive through the meta table, itself kept alive by the table */
    if (lua_rawgeti(L, -1, MO_META_SOURCE) == LUA_TSTRING) s = lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return s;
}

/* Order for keys that have no recorded position: numbers, then strings, then the rest. */
typedef struct {
  int rank;
  lua_Number num;
  const char *str;
  size_t len;
  int slot; /* index in the scratch table holding the key */
} key_entry;

static int key_entry_cmp(const void *pa, const void *pb) {
  const key_entry *a = pa, *b = pb;
  if (a->rank != b->rank) return a->rank < b->rank ? -1 : 1;
  if (a->rank == 0) return a->num < b->num ? -1 : a->num > b->num ? 1 : 0;
  if (a->rank == 1) {
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->str, b->str, n);
    if (c != 0) return c;
    return a->len < b->len ? -1 : a->len > b->len ? 1 : 0;
  }
  return a->slot - b->slot;
}

/* Append to `out` (holding n keys) the keys of t not in the set `known`, sorted. */
static lua_Integer push_extra_keys(lua_State *L, int t, int known, int out, lua_Integer n) {
  lua_newtable(L);
  int extra = lua_gettop(L);
  int nextra = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    if (known == 0 || lua_rawget(L, known) == LUA_TNIL) {
      lua_pushvalue(L, -2);
      lua_rawseti(L, extra, ++nextra);
    }
    lua_pop(L, 1);
  }
  if (nextra > 0) {
    key_entry *e = lua_newuserdatauv(L, sizeof(key_entry) * (size_t)nextra, 0);
    for (int i = 0; i < nextra; i++) {
      int kt = lua_rawgeti(L, extra, i + 1);
      e[i].slot = i + 1;
      e[i].rank = kt == LUA_TNUMBER ? 0 : kt == LUA_TSTRING ? 1 : 2;
      e[i].num = kt == LUA_TNUMBER ? lua_tonumber(L, -1) : 0;
      e[i].str = kt == LUA_TSTRING ? lua_tolstring(L, -1, &e[i].len) : NULL;
      lua_pop(L, 1); /* the string stays referenced by `extra` */
    }
    qsort(e, (size_t)nextra, sizeof *e, key_entry_cmp);
    for (int i = 0; i < nextra; i++) {
      lua_rawgeti(L, extra, e[i].slot);
      lua_rawseti(L, out, ++n);
    }
  }
  lua_settop(L, extra - 1);
  return n;
}

/*
 * Push an array of the keys of the table at idx: the keys recorded by the
 * loader first, in document order (those still present), then any other keys
 * sorted. An array gives 1..#t.
 */
static void push_keys(lua_State *L, int idx, int mark) {
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 10, "yaml keys");
  int array = is_array_mt(L, idx);
  lua_Integer len = array ? (lua_Integer)lua_rawlen(L, idx) : 0;
  lua_createtable(L, (int)len, 0);
  int out = lua_gettop(L);
  if (mark) mo_mark_array(L, out);
  if (array) {
    for (lua_Integer i = 1; i <= len; i++) {
      lua_pushinteger(L, i);
      lua_rawseti(L, out, i);
    }
    return;
  }
  lua_Integer n = 0;
  mo_yaml_push_meta(L, idx);
  int meta = lua_gettop(L);
  if (!lua_istable(L, meta)) {
    push_extra_keys(L, idx, 0, out, 0);
    lua_settop(L, out);
    return;
  }
  lua_Integer nk = meta_nkeys(L, meta);
  for (lua_Integer i = 1; i <= nk; i++) {
    lua_rawgeti(L, meta, MO_META_HEAD + 2 * i - 1);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, idx) != LUA_TNIL) {
      lua_pop(L, 1);
      lua_rawseti(L, out, ++n);
    } else {
      lua_pop(L, 2);
    }
  }
  /* keys added after loading: only look for them when the counts differ */
  lua_Integer total = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    total++;
  }
  if (total != n) {
    lua_createtable(L, 0, (int)n);
    int known = lua_gettop(L);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, out, i);
      lua_pushboolean(L, 1);
      lua_rawset(L, known);
    }
    push_extra_keys(L, idx, known, out, n);
  }
  lua_settop(L, out);
}

void mo_yaml_push_keys(lua_State *L, int idx) {
  push_keys(L, idx, 1);
}

void mo_yaml_push_key_list(lua_State *L, int idx) {
  push_keys(L, idx, 0);
}

/* ------------------------------------------------------------------------ */
/* Scalar resolution (YAML 1.2 core schema)                                  */

static int digit_value(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return 99;
}

static int is_digit(int c) {
  return c >= '0' && c <= '9';
}

static int word_is(const char *s, size_t n, const char *lower, const char *title,
                   const char *upper) {
  size_t w = strlen(lower);
  return n == w &&
         (memcmp(s, lower, n) == 0 || memcmp(s, title, n) == 0 || memcmp(s, upper, n) == 0);
}

/*
 * The type a plain scalar resolves to under the core schema. When L is not
 * NULL the value is pushed for every type except strings (LUA_TSTRING is
 * returned and nothing is pushed). Integers that do not fit 64 bits stay strings.
 */
static int plain_type(lua_State *L, const char *s, size_t n) {
  if (n == 0) {
    if (L) push_null(L);
    return LUA_TLIGHTUSERDATA;
  }
  switch (s[0]) {
  case '~':
  case 'n':
  case 'N':
    if ((n == 1 && s[0] == '~') || word_is(s, n, "null", "Null", "NULL")) {
      if (L) push_null(L);
      return LUA_TLIGHTUSERDATA;
    }
    return LUA_TSTRING;
  case 't':
  case 'T':
  case 'f':
  case 'F':
    if (word_is(s, n, "true", "True", "TRUE")) {
      if (L) lua_pushboolean(L, 1);
      return LUA_TBOOLEAN;
    }
    if (word_is(s, n, "false", "False", "FALSE")) {
      if (L) lua_pushboolean(L, 0);
      return LUA_TBOOLEAN;
    }
    return LUA_TSTRING;
  case '.':
  case '+':
  case '-': break;
  default:
    if (!is_digit((unsigned char)s[0])) return LUA_TSTRING;
  }

  if (n > 2 && s[0] == '0' && (s[1] == 'o' || s[1] == 'x')) {
    lua_Unsigned base = s[1] == 'o' ? 8 : 16, v = 0;
    for (size_t i = 2; i < n; i++) {
      lua_Unsigned d = (lua_Unsigned)digit_value((unsigned char)s[i]);
      if (d >= base) return LUA_TSTRING;
      if (v > ((lua_Unsigned)LUA_MAXINTEGER - d) / base) return LUA_TSTRING;
      v = v * base + d;
    }
    if (L) lua_pushinteger(L, (lua_Integer)v);
    return LUA_TNUMBER;
  }

  size_t i = 0;
  int neg = 0;
  if (s[0] == '+' || s[0] == '-') {
    neg = s[0] == '-';
    i = 1;
  }
  if (i < n && s[i] == '.' && n - i == 4) {
    const char *w = s + i + 1;
    if (word_is(w, 3, "inf", "Inf", "INF")) {
      if (L) lua_pushnumber(L, neg ? -HUGE_VAL : HUGE_VAL);
      return LUA_TNUMBER;
    }
    if (i == 0 && word_is(w, 3, "nan", "NaN", "NAN")) {
      if (L) lua_pushnumber(L, NAN);
      return LUA_TNUMBER;
    }
  }
  size_t int_start = i;
  while (i < n && is_digit((unsigned char)s[i]))
    i++;
  size_t nint = i - int_start;
  if (i == n) {
    if (nint == 0) return LUA_TSTRING;
    lua_Unsigned v = 0, limit = neg ? (lua_Unsigned)LUA_MAXINTEGER + 1u : LUA_MAXINTEGER;
    for (size_t k = int_start; k < n; k++) {
      lua_Unsigned d = (lua_Unsigned)(s[k] - '0');
      if (v > (limit - d) / 10) return LUA_TSTRING;
      v = v * 10 + d;
    }
    if (L) lua_pushinteger(L, neg ? (lua_Integer)(0u - v) : (lua_Integer)v);
    return LUA_TNUMBER;
  }
  size_t nfrac = 0;
  if (s[i] == '.') {
    i++;
    while (i < n && is_digit((unsigned char)s[i]))
      i++, nfrac++;
  }
  if (nint == 0 && nfrac == 0) return LUA_TSTRING;
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    size_t nexp = 0;
    while (i < n && is_digit((unsigned char)s[i]))
      i++, nexp++;
    if (nexp == 0) return LUA_TSTRING;
  }
  if (i != n) return LUA_TSTRING;
  /* validated above; libyaml values are NUL-terminated, and so are Lua strings */
  if (L && lua_stringtonumber(L, s) == 0) lua_pushnumber(L, strtod(s, NULL));
  return LUA_TNUMBER;
}

/* Words other YAML readers (1.1: PyYAML, older tools) take for a non-string. */
static int yaml11_special(const char *s, size_t n) {
  static const char *const words[] = {"y",  "Y",  "yes", "Yes", "YES", "n",   "N",   "no", "No",
                                      "NO", "on", "On",  "ON",  "off", "Off", "OFF", NULL};
  for (int i = 0; words[i]; i++)
    if (strlen(words[i]) == n && memcmp(words[i], s, n) == 0) return 1;
  /* dates and times: 2023-02-05, 2017-01-01T00:00:00Z */
  if (n >= 8 && is_digit((unsigned char)s[0]) && is_digit((unsigned char)s[1]) &&
      is_digit((unsigned char)s[2]) && is_digit((unsigned char)s[3]) && s[4] == '-')
    return 1;
  /* octal 0777, sexagesimal 1:30, underscores 1_000 */
  size_t i = (n > 0 && (s[0] == '-' || s[0] == '+')) ? 1 : 0;
  if (i < n && is_digit((unsigned char)s[i])) {
    int only_num = 1;
    for (size_t k = i; k < n; k++)
      if (!is_digit((unsigned char)s[k]) && s[k] != '_' && s[k] != ':' && s[k] != '.') only_num = 0;
    if (only_num) return 1;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* The loader resource: a libyaml parser and its current event               */

typedef struct {
  int parser_live;
  int event_live;
  FILE *fp;
  yaml_parser_t parser;
  yaml_event_t event;
} yaml_loader;

static int loader_close(lua_State *L) {
  yaml_loader *ld = luaL_checkudata(L, 1, LOADER_T);
  if (ld->event_live) {
    yaml_event_delete(&ld->event);
    ld->event_live = 0;
  }
  if (ld->parser_live) {
    yaml_parser_delete(&ld->parser);
    ld->parser_live = 0;
  }
  if (ld->fp) {
    fclose(ld->fp);
    ld->fp = NULL;
  }
  return 0;
}

static yaml_loader *new_loader(lua_State *L) {
  yaml_loader *ld = lua_newuserdatauv(L, sizeof *ld, 0);
  memset(ld, 0, sizeof *ld);
  luaL_setmetatable(L, LOADER_T);
  return ld;
}

static void loader_start(lua_State *L, yaml_loader *ld, const char *text, size_t len) {
  if (!yaml_parser_initialize(&ld->parser)) luaL_error(L, "yaml: out of memory");
  ld->parser_live = 1;
  yaml_parser_set_encoding(&ld->parser, YAML_UTF8_ENCODING);
  yaml_parser_set_input_string(&ld->parser, (const unsigned char *)text, len);
}

/* Byte offset in text of the character at index `chars` (libyaml counts characters). */
static size_t char_to_byte(const char *text, size_t len, size_t chars) {
  size_t b = 0;
  while (b < len && chars > 0) {
    b++;
    while (b < len && ((unsigned char)text[b] & 0xC0) == 0x80)
      b++;
    chars--;
  }
  return b;
}

typedef struct {
  int line, col;
} node_mark;

typedef struct {
  lua_State *L;
  yaml_loader *ld;
  const char *text; /* after the BOM */
  size_t len;
  int name_idx, prov_idx, anchors_idx;
  long alias_nodes;
  node_mark *marks; /* positions of the entries waiting to go into their tables */
  size_t nmarks, cap;
  int marks_idx; /* stack index of the userdata holding `marks` */
} builder;

static int raise_at(builder *b, yaml_mark_t mark, const char *fmt, ...) {
  lua_State *L = b->L;
  va_list ap;
  lua_pushfstring(L, "%s:%d:%d: ", lua_tostring(L, b->name_idx), (int)mark.line + 1,
                  (int)mark.column + 1);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 2);
  return lua_error(L);
}

static int parse_error(builder *b) {
  yaml_parser_t *p = &b->ld->parser;
  if (p->error == YAML_MEMORY_ERROR)
    return luaL_error(b->L, "%s: out of memory", lua_tostring(b->L, b->name_idx));
  const char *problem = p->problem ? p->problem : "invalid YAML";
  yaml_mark_t mark = p->problem_mark;
  if (p->error == YAML_READER_ERROR) {
    /* the reader reports a byte offset only */
    size_t off = p->problem_offset < b->len ? p->problem_offset : b->len, ls = 0;
    mark.line = 0;
    for (size_t i = 0; i < off; i++)
      if (b->text[i] == '\n') mark.line++, ls = i + 1;
    mark.column = 0;
    for (size_t i = ls; i < off; i++)
      if (((unsigned char)b->text[i] & 0xC0) != 0x80) mark.column++;
    char byte[8];
    snprintf(byte, sizeof byte, "0x%02X", off < b->len ? (unsigned char)b->text[off] : 0u);
    return raise_at(b, mark, "%s (byte %s)", problem, byte);
  }
  size_t at = char_to_byte(b->text, b->len, mark.index);
  if (at < b->len && b->text[at] == '\t')
    return raise_at(b, mark,
                    "tab character where indentation is expected (YAML allows only spaces)");
  if (p->context && p->context_mark.line != mark.line)
    return raise_at(b, mark, "%s %s (started on line %d)", problem, p->context,
                    (int)p->context_mark.line + 1);
  if (p->context) return raise_at(b, mark, "%s %s", problem, p->context);
  return raise_at(b, mark, "%s", problem);
}

static yaml_event_t *next_event(builder *b) {
  yaml_loader *ld = b->ld;
  if (ld->event_live) {
    yaml_event_delete(&ld->event);
    ld->event_live = 0;
  }
  if (!yaml_parser_parse(&ld->parser, &ld->event)) parse_error(b);
  ld->event_live = 1;
  return &ld->event;
}

static void build_node(builder *b, int depth);

static void push_new_meta(builder *b, yaml_mark_t mark, int size) {
  lua_State *L = b->L;
  lua_createtable(L, MO_META_HEAD + size, 0);
  lua_pushinteger(L, (lua_Integer)mark.line + 1);
  lua_rawseti(L, -2, MO_META_LINE);
  lua_pushinteger(L, (lua_Integer)mark.column + 1);
  lua_rawseti(L, -2, MO_META_COL);
  lua_pushvalue(L, b->name_idx);
  lua_rawseti(L, -2, MO_META_SOURCE);
}

static void count_alias_node(builder *b, yaml_mark_t mark, const char *alias) {
  if (++b->alias_nodes > MAX_ALIAS_NODES)
    raise_at(b, mark, "alias *%s expands the document beyond %d nodes (alias bomb?)", alias,
             MAX_ALIAS_NODES);
}

/* Push a deep copy of the value at idx (tables copied, provenance shared). */
static void copy_alias(builder *b, int idx, int depth, yaml_mark_t mark, const char *alias) {
  lua_State *L = b->L;
  count_alias_node(b, mark, alias);
  if (!lua_istable(L, idx)) {
    lua_pushvalue(L, idx);
    return;
  }
  if (depth > MAX_DEPTH)
    raise_at(b, mark, "alias *%s nests deeper than %d levels", alias, MAX_DEPTH);
  luaL_checkstack(L, 6, "yaml alias");
  int array = is_array_mt(L, idx);
  lua_createtable(L, array ? (int)lua_rawlen(L, idx) : 0, 0);
  int t = lua_gettop(L);
  if (array) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, idx, i);
      copy_alias(b, lua_gettop(L), depth + 1, mark, alias);
      lua_rawseti(L, t, i);
      lua_pop(L, 1);
    }
    mo_mark_array(L, t);
  } else {
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      copy_alias(b, lua_gettop(L), depth + 1, mark, alias);
      lua_remove(L, -2);
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, t);
    }
  }
  lua_pushvalue(L, idx);
  if (lua_rawget(L, b->prov_idx) == LUA_TTABLE) {
    lua_pushvalue(L, t);
    lua_insert(L, -2);
    lua_rawset(L, b->prov_idx);
  } else {
    lua_pop(L, 1);
  }
}

static void push_alias(builder *b, yaml_event_t *e, int depth) {
  lua_State *L = b->L;
  const char *alias = (const char *)e->data.alias.anchor;
  yaml_mark_t mark = e->start_mark;
  if (lua_getfield(L, b->anchors_idx, alias) == LUA_TNIL)
    raise_at(b, mark, "alias *%s refers to no anchor defined before it", alias);
  copy_alias(b, lua_gettop(L), depth, mark, alias);
  lua_remove(L, -2);
}

static int tag_is(const char *tag, const char *name) {
  size_t np = sizeof TAG_PREFIX - 1;
  return strncmp(tag, TAG_PREFIX, np) == 0 && strcmp(tag + np, name) == 0;
}

static void push_scalar(builder *b, yaml_event_t *e) {
  lua_State *L = b->L;
  const char *s = (const char *)e->data.scalar.value;
  size_t n = e->data.scalar.length;
  const char *tag = (const char *)e->data.scalar.tag;
  if (tag != NULL && !(tag[0] == '!' && tag[1] == '\0') && !tag_is(tag, "str")) {
    int want = tag_is(tag, "int") || tag_is(tag, "float") ? LUA_TNUMBER
               : tag_is(tag, "bool")                      ? LUA_TBOOLEAN
               : tag_is(tag, "null")                      ? LUA_TLIGHTUSERDATA
                                                          : LUA_TNONE;
    if (want != LUA_TNONE) {
      int got = plain_type(L, s, n);
      const char *short_tag = tag + sizeof TAG_PREFIX - 1;
      if (got != want || (tag_is(tag, "int") && !lua_isinteger(L, -1)))
        raise_at(b, e->start_mark, "'%s' is not a valid !!%s", s, short_tag);
      if (tag_is(tag, "float") && lua_isinteger(L, -1)) {
        lua_Number f = (lua_Number)lua_tointeger(L, -1);
        lua_pop(L, 1);
        lua_pushnumber(L, f);
      }
      return;
    }
    /* other tags (custom, !!binary, !!timestamp...): resolved as if untagged */
  } else if (tag != NULL) {
    lua_pushlstring(L, s, n);
    return;
  }
  if (e->data.scalar.style != YAML_PLAIN_SCALAR_STYLE || plain_type(L, s, n) == LUA_TSTRING)
    lua_pushlstring(L, s, n);
}

static void register_anchor(builder *b, int name_idx, int value_idx) {
  lua_State *L = b->L;
  lua_pushvalue(L, name_idx);
  lua_pushvalue(L, value_idx);
  lua_rawset(L, b->anchors_idx);
}

/* Merge `<<` sources (list at merges_idx, highest precedence first) into the mapping. */
static void apply_merges(builder *b, int t, int m, int merges, lua_Integer *n,
                         lua_Integer merge_line) {
  lua_State *L = b->L;
  lua_Integer count = (lua_Integer)lua_rawlen(L, merges);
  for (lua_Integer i = 1; i <= count; i++) {
    lua_rawgeti(L, merges, i);
    int src = lua_gettop(L);
    mo_yaml_push_meta(L, src);
    int src_meta = lua_gettop(L);
    push_keys(L, src, 0);
    int keys = lua_gettop(L);
    lua_Integer nk = (lua_Integer)lua_rawlen(L, keys);
    for (lua_Integer k = 1; k <= nk; k++) {
      lua_rawgeti(L, keys, k);
      int key = lua_gettop(L);
      lua_pushvalue(L, key);
      if (lua_rawget(L, t) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushvalue(L, key);
        lua_rawget(L, src);
        lua_pushvalue(L, key);
        lua_insert(L, -2);
        lua_rawset(L, t);
        lua_Integer line = merge_line;
        if (lua_istable(L, src_meta)) {
          lua_Integer l = meta_key_line(L, src_meta, key);
          if (l > 0) line = l;
        }
        ++*n;
        lua_pushvalue(L, key);
        lua_rawseti(L, m, MO_META_HEAD + 2 * *n - 1);
        lua_pushinteger(L, line);
        lua_rawseti(L, m, MO_META_HEAD + 2 * *n);
      } else {
        lua_pop(L, 1);
      }
      lua_settop(L, keys);
    }
    lua_settop(L, src - 1);
  }
}

static void add_merge_source(builder *b, int merges, int value, yaml_mark_t km) {
  lua_State *L = b->L;
  int ok = lua_istable(L, value);
  if (ok && is_array_mt(L, value)) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, value);
    for (lua_Integer i = 1; i <= n && ok; i++) {
      lua_rawgeti(L, value, i);
      ok = lua_istable(L, -1) && !is_array_mt(L, -1);
      if (ok)
        lua_rawseti(L, merges, (lua_Integer)lua_rawlen(L, merges) + 1);
      else
        lua_pop(L, 1);
    }
  } else if (ok) {
    lua_pushvalue(L, value);
    lua_rawseti(L, merges, (lua_Integer)lua_rawlen(L, merges) + 1);
  }
  if (!ok) raise_at(b, km, "the merge key << needs a mapping or a list of mappings");
}

/* Line and column (0-based, as libyaml gives them) of a pending mapping key or sequence item. */
static void push_mark(builder *b, yaml_mark_t mark) {
  if (b->nmarks == b->cap) {
    size_t cap = b->cap * 2;
    node_mark *p = lua_newuserdatauv(b->L, cap * sizeof *p, 0);
    memcpy(p, b->marks, b->nmarks * sizeof *p);
    lua_replace(b->L, b->marks_idx);
    b->marks = p;
    b->cap = cap;
  }
  b->marks[b->nmarks].line = (int)mark.line;
  b->marks[b->nmarks].col = (int)mark.column;
  b->nmarks++;
}

/*
 * Entries of a mapping (key, value pairs) and items of a sequence wait on the stack
 * until the node ends, so its table and meta are made at their final size; a long
 * one is moved into its table every PENDING_MAX entries.
 */
#define PENDING_MAX 256

/* Move the `pending` key/value pairs above `base` into the mapping at t (made here the
 * first time, with its meta at m); their marks start at b->marks[mark0]. */
static void flush_mapping(builder *b, int t, int m, int base, int pending, size_t mark0,
                          lua_Integer *n, yaml_mark_t start) {
  lua_State *L = b->L;
  if (lua_isnil(L, t)) {
    lua_createtable(L, 0, pending);
    lua_replace(L, t);
    push_new_meta(b, start, 2 * pending);
    lua_replace(L, m);
  }
  for (int i = 0; i < pending; i++) {
    int key = base + 1 + 2 * i;
    node_mark km = b->marks[mark0 + (size_t)i];
    lua_pushvalue(L, key);
    if (lua_rawget(L, t) != LUA_TNIL) {
      yaml_mark_t at = {.line = (size_t)km.line, .column = (size_t)km.col};
      raise_at(b, at, "duplicate key \"%s\" (first defined on line %d)", lua_tostring(L, key),
               (int)meta_key_line(L, m, key));
    }
    lua_pop(L, 1);
    ++*n;
    lua_pushvalue(L, key);
    lua_rawseti(L, m, MO_META_HEAD + 2 * *n - 1);
    lua_pushinteger(L, (lua_Integer)km.line + 1);
    lua_rawseti(L, m, MO_META_HEAD + 2 * *n);
    lua_pushvalue(L, key);
    lua_pushvalue(L, key + 1);
    lua_rawset(L, t);
  }
  lua_settop(L, base);
  b->nmarks = mark0;
}

static void build_mapping(builder *b, int depth) {
  lua_State *L = b->L;
  yaml_event_t *e = &b->ld->event;
  yaml_mark_t start = e->start_mark;
  luaL_checkstack(L, 12, "yaml nesting");
  lua_pushnil(L); /* the table, made when its size is known */
  int t = lua_gettop(L);
  lua_pushnil(L); /* its meta */
  int m = t + 1;
  lua_pushnil(L); /* the sources of merge keys (<<), if any */
  int merges = t + 2;
  int anchor = 0;
  if (e->data.mapping_start.anchor) {
    lua_pushstring(L, (const char *)e->data.mapping_start.anchor);
    anchor = lua_gettop(L);
  }
  int base = lua_gettop(L), pending = 0;
  size_t mark0 = b->nmarks;
  lua_Integer merge_line = 0, n = 0;
  for (;;) {
    e = next_event(b);
    if (e->type == YAML_MAPPING_END_EVENT) break;
    luaL_checkstack(L, 8, "yaml mapping");
    yaml_mark_t km = e->start_mark;
    int is_merge = 0;
    if (e->type == YAML_SCALAR_EVENT) {
      const char *s = (const char *)e->data.scalar.value;
      size_t len = e->data.scalar.length;
      if (e->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && len == 2 && s[0] == '<' &&
          s[1] == '<' &&
          (e->data.scalar.tag == NULL || tag_is((const char *)e->data.scalar.tag, "merge"))) {
        is_merge = 1;
      } else {
        lua_pushlstring(L, s, len);
        if (e->data.scalar.anchor) {
          int key = lua_gettop(L);
          lua_pushstring(L, (const char *)e->data.scalar.anchor);
          push_scalar(b, e);
          register_anchor(b, key + 1, key + 2);
          lua_settop(L, key);
        }
      }
    } else if (e->type == YAML_ALIAS_EVENT) {
      const char *alias = (const char *)e->data.alias.anchor;
      int kt = lua_getfield(L, b->anchors_idx, alias);
      if (kt == LUA_TNIL) raise_at(b, km, "alias *%s refers to no anchor defined before it", alias);
      if (kt == LUA_TTABLE) raise_at(b, km, "mapping keys must be scalars, *%s is not", alias);
      if (is_null(L, -1)) {
        lua_pop(L, 1);
        lua_pushliteral(L, "null");
      } else if (kt != LUA_TSTRING) {
        luaL_tolstring(L, -1, NULL);
        lua_remove(L, -2);
      }
    } else {
      raise_at(b, km, "mapping keys must be scalars (complex keys are not supported)");
    }

    e = next_event(b);
    if (is_merge) {
      if (lua_isnil(L, merges)) {
        lua_newtable(L);
        lua_replace(L, merges);
        merge_line = (lua_Integer)km.line + 1;
      }
      build_node(b, depth + 1);
      add_merge_source(b, merges, lua_gettop(L), km);
      lua_pop(L, 1);
      continue;
    }
    push_mark(b, km);
    build_node(b, depth + 1);
    if (++pending == PENDING_MAX) {
      flush_mapping(b, t, m, base, pending, mark0, &n, start);
      pending = 0;
    }
  }
  if (pending > 0 || lua_isnil(L, t)) flush_mapping(b, t, m, base, pending, mark0, &n, start);
  if (!lua_isnil(L, merges)) apply_merges(b, t, m, merges, &n, merge_line);
  lua_pushvalue(L, t);
  lua_pushvalue(L, m);
  lua_rawset(L, b->prov_idx);
  if (anchor) register_anchor(b, anchor, t);
  lua_settop(L, t);
}

/* Move the `pending` items above `base` into the sequence at t (made here the first time,
 * with its meta at m); their marks start at b->marks[mark0]. */
static void flush_sequence(builder *b, int t, int m, int base, int pending, size_t mark0,
                           lua_Integer *n, yaml_mark_t start) {
  lua_State *L = b->L;
  if (lua_isnil(L, t)) {
    lua_createtable(L, pending, 0);
    mo_mark_array(L, -1);
    lua_replace(L, t);
    push_new_meta(b, start, pending);
    lua_replace(L, m);
  }
  for (int i = 0; i < pending; i++) {
    ++*n;
    lua_pushvalue(L, base + 1 + i);
    lua_rawseti(L, t, *n);
    lua_pushinteger(L, (lua_Integer)b->marks[mark0 + (size_t)i].line + 1);
    lua_rawseti(L, m, MO_META_HEAD + *n);
  }
  lua_settop(L, base);
  b->nmarks = mark0;
}

static void build_sequence(builder *b, int depth) {
  lua_State *L = b->L;
  yaml_event_t *e = &b->ld->event;
  yaml_mark_t start = e->start_mark;
  luaL_checkstack(L, 8, "yaml nesting");
  lua_pushnil(L); /* the table, made when its size is known */
  int t = lua_gettop(L);
  lua_pushnil(L); /* its meta */
  int m = t + 1;
  int anchor = 0;
  if (e->data.sequence_start.anchor) {
    lua_pushstring(L, (const char *)e->data.sequence_start.anchor);
    anchor = lua_gettop(L);
  }
  int base = lua_gettop(L), pending = 0;
  size_t mark0 = b->nmarks;
  lua_Integer n = 0;
  for (;;) {
    e = next_event(b);
    if (e->type == YAML_SEQUENCE_END_EVENT) break;
    luaL_checkstack(L, 8, "yaml sequence");
    push_mark(b, e->start_mark);
    build_node(b, depth + 1);
    if (++pending == PENDING_MAX) {
      flush_sequence(b, t, m, base, pending, mark0, &n, start);
      pending = 0;
    }
  }
  if (pending > 0 || lua_isnil(L, t)) flush_sequence(b, t, m, base, pending, mark0, &n, start);
  lua_pushvalue(L, t);
  lua_pushvalue(L, m);
  lua_rawset(L, b->prov_idx);
  if (anchor) register_anchor(b, anchor, t);
  lua_settop(L, t);
}

/* Build the node whose first event is current; push its value. */
static void build_node(builder *b, int depth) {
  yaml_event_t *e = &b->ld->event;
  if (depth >= MAX_DEPTH) raise_at(b, e->start_mark, "nesting deeper than %d levels", MAX_DEPTH);
  switch (e->type) {
  case YAML_SCALAR_EVENT:
    push_scalar(b, e);
    if (e->data.scalar.anchor) {
      lua_State *L = b->L;
      lua_pushstring(L, (const char *)e->data.scalar.anchor);
      register_anchor(b, lua_gettop(L), lua_gettop(L) - 1);
      lua_pop(L, 1);
    }
    break;
  case YAML_ALIAS_EVENT: push_alias(b, e, depth); break;
  case YAML_MAPPING_START_EVENT: build_mapping(b, depth); break;
  case YAML_SEQUENCE_START_EVENT: build_sequence(b, depth); break;
  default: raise_at(b, e->start_mark, "unexpected YAML event");
  }
}

/* Skip a UTF-8 byte order mark. */
static const char *skip_bom(const char *text, size_t *len) {
  if (*len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) {
    *len -= 3;
    return text + 3;
  }
  return text;
}

/* Protected part of load: (loader, text, name) -> value */
static int load_protected(lua_State *L) {
  yaml_loader *ld = luaL_checkudata(L, 1, LOADER_T);
  size_t len;
  const char *text = skip_bom(lua_tolstring(L, 2, &len), &len);
  builder b = {.L = L, .ld = ld, .text = text, .len = len, .name_idx = 3};
  push_provenance(L);
  b.prov_idx = lua_gettop(L);
  lua_newtable(L);
  b.anchors_idx = lua_gettop(L);
  b.cap = 64;
  b.marks = lua_newuserdatauv(L, b.cap * sizeof *b.marks, 0);
  b.marks_idx = lua_gettop(L);
  loader_start(L, ld, text, len);

  yaml_event_t *e = next_event(&b); /* stream start */
  e = next_event(&b);
  if (e->type == YAML_STREAM_END_EVENT) {
    push_null(L);
    return 1;
  }
  e = next_event(&b); /* the root node */
  build_node(&b, 0);
  e = next_event(&b); /* document end */
  e = next_event(&b);
  if (e->type == YAML_DOCUMENT_START_EVENT)
    raise_at(&b, e->start_mark, "a second YAML document (---) where one was expected");
  return 1;
}

/* Run load_protected on (loader, text, name); always closes the loader. */
static int run_load(lua_State *L, int ld_idx, int text_idx, int name_idx) {
  lua_pushcfunction(L, load_protected);
  lua_pushvalue(L, ld_idx);
  lua_pushvalue(L, text_idx);
  lua_pushvalue(L, name_idx);
  int rc = lua_pcall(L, 3, 1, 0);
  lua_pushcfunction(L, loader_close);
  lua_pushvalue(L, ld_idx);
  lua_call(L, 1, 0);
  if (rc == LUA_OK) return 1;
  if (rc == LUA_ERRMEM) {
    lua_pop(L, 1);
    return mo_fail(L, "%s: out of memory", lua_tostring(L, name_idx));
  }
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}

/* yaml.load(text [, name]) -> value | nil, "name:line:col: message" */
static int yaml_load(lua_State *L) {
  luaL_checkstring(L, 1);
  luaL_optstring(L, 2, NULL);
  lua_settop(L, 2);
  if (lua_isnil(L, 2)) {
    lua_pushliteral(L, "<string>");
    lua_replace(L, 2);
  }
  new_loader(L);
  return run_load(L, 3, 1, 2);
}

/* yaml.load_file(path) -> value | nil, message [, code] */
static int yaml_load_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_settop(L, 1);
  yaml_loader *ld = new_loader(L);
  ld->fp = fopen(path, "rb");
  if (ld->fp == NULL) {
    int e = errno;
    lua_pushfstring(L, "read %s", path);
    errno = e;
    return mo_fail_errno(L, lua_tostring(L, -1));
  }
  luaL_Buffer buf;
  luaL_buffinit(L, &buf);
  size_t n;
  do {
    char *p = luaL_prepbuffsize(&buf, 65536);
    n = fread(p, 1, 65536, ld->fp);
    luaL_addsize(&buf, n);
  } while (n == 65536);
  int err = ferror(ld->fp) ? errno : 0;
  luaL_pushresult(&buf);
  fclose(ld->fp);
  ld->fp = NULL;
  if (err) {
    lua_pushfstring(L, "read %s", path);
    errno = err;
    return mo_fail_errno(L, lua_tostring(L, -1));
  }
  return run_load(L, 2, 3, 1);
}

/* yaml.is_array(v) -> boolean */
static int yaml_is_array(lua_State *L) {
  lua_pushboolean(L, lua_istable(L, 1) && is_array_mt(L, 1));
  return 1;
}

/* yaml.keys(t) -> array of keys, document order first */
static int yaml_keys(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  mo_yaml_push_keys(L, 1);
  return 1;
}

/* yaml.line(t, key) -> line | nil */
static int yaml_line(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checkany(L, 2);
  if (lua_isinteger(L, 2) && lua_tointeger(L, 2) < 1) return 0;
  int line = mo_yaml_key_line(L, 1, 2);
  if (line <= 0) return 0;
  lua_pushinteger(L, line);
  return 1;
}

/* yaml.pos(t) -> line, col | nil */
static int yaml_pos(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  mo_yaml_push_meta(L, 1);
  if (!lua_istable(L, -1) || lua_rawgeti(L, -1, MO_META_LINE) != LUA_TNUMBER ||
      lua_tointeger(L, -1) < 1)
    return 0;
  lua_rawgeti(L, -2, MO_META_COL);
  return 2;
}

/* yaml.source(t) -> name | nil */
static int yaml_source(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *s = mo_yaml_source(L, 1);
  if (s == NULL) return 0;
  lua_pushstring(L, s);
  return 1;
}

/* ------------------------------------------------------------------------ */
/* dump                                                                      */

typedef struct {
  int live;
  yaml_emitter_t emitter;
  char *buf;
  size_t len, cap;
} yaml_dumper;

static int dumper_close(lua_State *L) {
  yaml_dumper *d = luaL_checkudata(L, 1, DUMPER_T);
  if (d->live) {
    yaml_emitter_delete(&d->emitter);
    d->live = 0;
  }
  free(d->buf);
  d->buf = NULL;
  return 0;
}

static int dumper_write(void *data, unsigned char *bytes, size_t size) {
  yaml_dumper *d = data;
  if (size > d->cap - d->len) {
    size_t cap = d->cap ? d->cap : 4096;
    while (cap - d->len < size)
      cap *= 2;
    char *nb = realloc(d->buf, cap);
    if (nb == NULL) return 0;
    d->buf = nb;
    d->cap = cap;
  }
  memcpy(d->buf + d->len, bytes, size);
  d->len += size;
  return 1;
}

static void emit(lua_State *L, yaml_dumper *d, yaml_event_t *ev) {
  if (!yaml_emitter_emit(&d->emitter, ev))
    luaL_error(L, "yaml.dump: %s", d->emitter.problem ? d->emitter.problem : "out of memory");
}

static void fmt_float(char *buf, size_t size, lua_Number v) {
  if (v != v) {
    snprintf(buf, size, ".nan");
    return;
  }
  if (v == HUGE_VAL || v == -HUGE_VAL) {
    snprintf(buf, size, "%s.inf", v < 0 ? "-" : "");
    return;
  }
  for (int prec = 15; prec <= 17; prec++) {
    snprintf(buf, size, "%.*g", prec, (double)v);
    if (strtod(buf, NULL) == v) break;
  }
  if (strpbrk(buf, ".eE") == NULL) strncat(buf, ".0", size - strlen(buf) - 1);
}

/* Plain text of a number (integers as such, floats so they read back as floats). */
static void fmt_number(lua_State *L, int idx, char *buf, size_t size) {
  if (lua_isinteger(L, idx))
    snprintf(buf, size, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
  else
    fmt_float(buf, size, lua_tonumber(L, idx));
}

/* True when a plain scalar `s` would be read back as another type, by us or by YAML 1.1 readers. */
static int plain_misreads(const char *s, size_t n) {
  return plain_type(NULL, s, n) != LUA_TSTRING || yaml11_special(s, n) ||
         (n == 2 && s[0] == '<' && s[1] == '<');
}

static void emit_scalar(lua_State *L, yaml_dumper *d, const char *s, size_t n,
                        yaml_scalar_style_t style) {
  yaml_event_t ev;
  if (n > (size_t)0x7fffffff) luaL_error(L, "yaml.dump: string too long");
  if (!yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)n, 1, 1, style))
    luaL_error(L, "yaml.dump: string is not valid UTF-8: %s", s);
  emit(L, d, &ev);
}

static void emit_string(lua_State *L, yaml_dumper *d, const char *s, size_t n) {
  yaml_scalar_style_t style = YAML_ANY_SCALAR_STYLE;
  if (plain_misreads(s, n))
    style = YAML_SINGLE_QUOTED_SCALAR_STYLE;
  else if (memchr(s, '\n', n))
    style = YAML_LITERAL_SCALAR_STYLE;
  emit_scalar(L, d, s, n, style);
}

/* A table dumps as a sequence when marked as an array, or when its keys are exactly 1..n. */
static int dump_as_sequence(lua_State *L, int idx) {
  if (is_array_mt(L, idx)) return 1;
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx), count = 0;
  if (n == 0) return 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > n) {
      lua_pop(L, 1);
      return 0;
    }
    count++;
  }
  return count == n;
}

static void dump_value(lua_State *L, yaml_dumper *d, int idx, int depth, int seen);

static void dump_table(lua_State *L, yaml_dumper *d, int idx, int depth, int seen) {
  yaml_event_t ev;
  if (depth > MAX_DEPTH) luaL_error(L, "yaml.dump: nesting deeper than %d levels", MAX_DEPTH);
  luaL_checkstack(L, 8, "yaml.dump");
  lua_pushvalue(L, idx);
  if (lua_rawget(L, seen) != LUA_TNIL) luaL_error(L, "yaml.dump: a table contains itself");
  lua_pop(L, 1);
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, seen);
  if (dump_as_sequence(L, idx)) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1,
                                         n ? YAML_BLOCK_SEQUENCE_STYLE : YAML_FLOW_SEQUENCE_STYLE);
    emit(L, d, &ev);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, idx, i);
      dump_value(L, d, lua_gettop(L), depth + 1, seen);
      lua_pop(L, 1);
    }
    yaml_sequence_end_event_initialize(&ev);
    emit(L, d, &ev);
  } else {
    push_keys(L, idx, 0);
    int keys = lua_gettop(L);
    lua_Integer n = (lua_Integer)lua_rawlen(L, keys);
    yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1,
                                        n ? YAML_BLOCK_MAPPING_STYLE : YAML_FLOW_MAPPING_STYLE);
    emit(L, d, &ev);
    for (lua_Integer i = 1; i <= n; i++) {
      int kt = lua_rawgeti(L, keys, i);
      if (kt == LUA_TSTRING) {
        size_t len;
        const char *k = lua_tolstring(L, -1, &len);
        emit_string(L, d, k, len);
      } else if (kt == LUA_TNUMBER) {
        char num[64];
        fmt_number(L, -1, num, sizeof num);
        emit_scalar(L, d, num, strlen(num), YAML_ANY_SCALAR_STYLE);
      } else {
        luaL_error(L, "yaml.dump: cannot dump a key of type %s", luaL_typename(L, -1));
      }
      lua_rawget(L, idx);
      dump_value(L, d, lua_gettop(L), depth + 1, seen);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
    yaml_mapping_end_event_initialize(&ev);
    emit(L, d, &ev);
  }
  lua_pushvalue(L, idx);
  lua_pushnil(L);
  lua_rawset(L, seen);
}

static void dump_value(lua_State *L, yaml_dumper *d, int idx, int depth, int seen) {
  char num[64];
  switch (lua_type(L, idx)) {
  case LUA_TNIL: emit_scalar(L, d, "null", 4, YAML_PLAIN_SCALAR_STYLE); break;
  case LUA_TBOOLEAN:
    if (lua_toboolean(L, idx))
      emit_scalar(L, d, "true", 4, YAML_PLAIN_SCALAR_STYLE);
    else
      emit_scalar(L, d, "false", 5, YAML_PLAIN_SCALAR_STYLE);
    break;
  case LUA_TNUMBER:
    fmt_number(L, idx, num, sizeof num);
    emit_scalar(L, d, num, strlen(num), YAML_PLAIN_SCALAR_STYLE);
    break;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    emit_string(L, d, s, n);
    break;
  }
  case LUA_TTABLE: dump_table(L, d, idx, depth, seen); break;
  case LUA_TLIGHTUSERDATA:
    if (is_null(L, idx)) {
      emit_scalar(L, d, "null", 4, YAML_PLAIN_SCALAR_STYLE);
      break;
    }
    /* fallthrough */
  default: luaL_error(L, "yaml.dump: cannot dump a %s", luaL_typename(L, idx));
  }
}

/* yaml.dump(value) -> YAML text */
static int yaml_dump(lua_State *L) {
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  yaml_dumper *d = lua_newuserdatauv(L, sizeof *d, 0);
  memset(d, 0, sizeof *d);
  luaL_setmetatable(L, DUMPER_T);
  int ud = lua_gettop(L);
  if (!yaml_emitter_initialize(&d->emitter)) return luaL_error(L, "yaml.dump: out of memory");
  d->live = 1;
  yaml_emitter_set_output(&d->emitter, dumper_write, d);
  yaml_emitter_set_unicode(&d->emitter, 1);
  yaml_emitter_set_width(&d->emitter, -1);
  yaml_emitter_set_indent(&d->emitter, 2);
  lua_newtable(L);
  int seen = lua_gettop(L);
  yaml_event_t ev;
  yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING);
  emit(L, d, &ev);
  yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1);
  emit(L, d, &ev);
  dump_value(L, d, 1, 0, seen);
  yaml_document_end_event_initialize(&ev, 1);
  emit(L, d, &ev);
  yaml_stream_end_event_initialize(&ev);
  emit(L, d, &ev);
  yaml_emitter_flush(&d->emitter);
  lua_pushlstring(L, d->buf ? d->buf : "", d->len);
  lua_pushcfunction(L, dumper_close);
  lua_pushvalue(L, ud);
  lua_call(L, 1, 0);
  return 1;
}

/* ------------------------------------------------------------------------ */
/* edit                                                                      */

static int utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    size_t k;
    unsigned cp;
    if (c < 0x80) {
      i++;
      continue;
    } else if ((c & 0xE0) == 0xC0)
      k = 1, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0)
      k = 2, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0)
      k = 3, cp = c & 0x07;
    else
      return 0;
    for (size_t j = 1; j <= k; j++) {
      if (i + j >= n || (s[i + j] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (s[i + j] & 0x3F);
    }
    if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    i += k + 1;
  }
  return 1;
}

/* Characters only a double-quoted scalar can hold: controls, NEL, LS, PS, BOM. */
static int needs_double(const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] < 0x20 || s[i] == 0x7F) return 1;
    if (s[i] == 0xC2 && i + 1 < n && s[i + 1] == 0x85) return 1;
    if (s[i] == 0xE2 && i + 2 < n && s[i + 1] == 0x80 && (s[i + 2] == 0xA8 || s[i + 2] == 0xA9))
      return 1;
    if (s[i] == 0xEF && i + 2 < n && s[i + 1] == 0xBB && s[i + 2] == 0xBF) return 1;
  }
  return 0;
}

/* A string that reads back as itself when written plain, in block and in flow context. */
static int safe_plain(const char *s, size_t n) {
  if (n == 0 || strchr("-?:,[]{}#&*!|>'\"%@` ", s[0]) != NULL) return 0;
  if (s[n - 1] == ' ' || s[n - 1] == ':') return 0;
  if (n >= 3 && memcmp(s, "...", 3) == 0) return 0;
  for (size_t i = 0; i < n; i++) {
    switch (s[i]) {
    case ',':
    case '[':
    case ']':
    case '{':
    case '}':
    case '\0': return 0;
    case ':':
      if (i + 1 < n && s[i + 1] == ' ') return 0;
      break;
    case '#':
      if (s[i - 1] == ' ') return 0;
      break;
    }
  }
  return !plain_misreads(s, n);
}

static void add_single_quoted(luaL_Buffer *b, const char *s, size_t n) {
  luaL_addchar(b, '\'');
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '\'') luaL_addchar(b, '\'');
    luaL_addchar(b, s[i]);
  }
  luaL_addchar(b, '\'');
}

static void add_double_quoted(luaL_Buffer *b, const char *str, size_t n) {
  const unsigned char *s = (const unsigned char *)str;
  char esc[8];
  luaL_addchar(b, '"');
  for (size_t i = 0; i < n; i++) {
    unsigned c = s[i];
    switch (c) {
    case '"': luaL_addstring(b, "\\\""); continue;
    case '\\': luaL_addstring(b, "\\\\"); continue;
    case '\n': luaL_addstring(b, "\\n"); continue;
    case '\t': luaL_addstring(b, "\\t"); continue;
    case '\r': luaL_addstring(b, "\\r"); continue;
    }
    if (c < 0x20 || c == 0x7F) {
      snprintf(esc, sizeof esc, "\\x%02X", c);
      luaL_addstring(b, esc);
    } else if (c == 0xC2 && i + 1 < n && s[i + 1] == 0x85) {
      luaL_addstring(b, "\\N");
      i += 1;
    } else if (c == 0xE2 && i + 2 < n && s[i + 1] == 0x80 &&
               (s[i + 2] == 0xA8 || s[i + 2] == 0xA9)) {
      luaL_addstring(b, s[i + 2] == 0xA8 ? "\\L" : "\\P");
      i += 2;
    } else if (c == 0xEF && i + 2 < n && s[i + 1] == 0xBB && s[i + 2] == 0xBF) {
      luaL_addstring(b, "\\uFEFF");
      i += 2;
    } else {
      luaL_addchar(b, (char)c);
    }
  }
  luaL_addchar(b, '"');
}

/*
 * Push the text of a scalar for value v replacing one written in `style`:
 * non-strings plain; strings keep the old quoting when they can, plain stays
 * plain when the string reads back as the same string, else single quotes,
 * else double quotes. Returns 0 (nothing pushed) for a string that is not UTF-8.
 */
static int push_scalar_text(lua_State *L, int v, yaml_scalar_style_t style) {
  char num[64];
  switch (lua_type(L, v)) {
  case LUA_TBOOLEAN: lua_pushstring(L, lua_toboolean(L, v) ? "true" : "false"); return 1;
  case LUA_TNUMBER:
    fmt_number(L, v, num, sizeof num);
    lua_pushstring(L, num);
    return 1;
  case LUA_TSTRING: break;
  default: lua_pushliteral(L, "null"); return 1;
  }
  size_t n;
  const char *s = lua_tolstring(L, v, &n);
  if (!utf8_valid((const unsigned char *)s, n)) return 0;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (needs_double((const unsigned char *)s, n) || style == YAML_DOUBLE_QUOTED_SCALAR_STYLE)
    add_double_quoted(&b, s, n);
  else if (style != YAML_SINGLE_QUOTED_SCALAR_STYLE && safe_plain(s, n))
    luaL_addlstring(&b, s, n);
  else
    add_single_quoted(&b, s, n);
  luaL_pushresult(&b);
  return 1;
}

static int is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Skip the node whose first event is current (all of it, when a collection). */
static void skip_node(builder *b) {
  yaml_event_type_t t = b->ld->event.type;
  if (t != YAML_MAPPING_START_EVENT && t != YAML_SEQUENCE_START_EVENT) return;
  long depth = 1;
  while (depth > 0) {
    t = next_event(b)->type;
    if (t == YAML_MAPPING_START_EVENT || t == YAML_SEQUENCE_START_EVENT)
      depth++;
    else if (t == YAML_MAPPING_END_EVENT || t == YAML_SEQUENCE_END_EVENT)
      depth--;
  }
}

/* Read the rest of the stream: a parse error or a second document anywhere wins over other errors.
 */
static void drain(builder *b) {
  yaml_event_t *e = &b->ld->event;
  while (b->ld->event_live && e->type != YAML_STREAM_END_EVENT && e->type != YAML_NO_EVENT) {
    e = next_event(b);
    if (e->type == YAML_DOCUMENT_START_EVENT)
      raise_at(b, e->start_mark, "a second YAML document (---) where one was expected");
  }
}

static int edit_fail(builder *b, const char *fmt, ...) {
  lua_State *L = b->L;
  va_list ap;
  lua_pushfstring(L, "yaml.edit %s: ", lua_tostring(L, 6));
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 2);
  drain(b);
  return lua_error(L);
}

/* Push prefix .. middle .. suffix of the original text (with its BOM). */
static void push_spliced(lua_State *L, const char *orig, size_t bom, size_t start, size_t end,
                         size_t len, int middle) {
  luaL_Buffer out;
  luaL_buffinit(L, &out);
  luaL_addlstring(&out, orig, bom + start);
  lua_pushvalue(L, middle);
  luaL_addvalue(&out);
  luaL_addlstring(&out, orig + bom + end, len - end);
  luaL_pushresult(&out);
}

/* Insert `key: value` as the last entry of the block mapping whose end event is current. */
static int edit_insert(builder *b, const char *orig, size_t bom, int key, int value, size_t col) {
  lua_State *L = b->L;
  yaml_mark_t m = b->ld->event.start_mark;
  size_t at = char_to_byte(b->text, b->len, m.index), p = at;
  while (p > 0 && b->text[p - 1] == ' ')
    p--;
  int newline = 0;
  if (p == 0 || b->text[p - 1] == '\n')
    at = p; /* the next token starts its line: insert before it */
  else
    newline = 1; /* the text ends mid-line */
  drain(b);
  luaL_Buffer ins;
  if (!push_scalar_text(L, value,
                        lua_toboolean(L, 8) ? YAML_DOUBLE_QUOTED_SCALAR_STYLE
                                            : YAML_PLAIN_SCALAR_STYLE))
    edit_fail(b, "the value is not valid UTF-8");
  if (!push_scalar_text(L, key, YAML_PLAIN_SCALAR_STYLE))
    edit_fail(b, "the key is not valid UTF-8");
  luaL_buffinit(L, &ins);
  if (newline) luaL_addchar(&ins, '\n');
  for (size_t i = 0; i < col; i++)
    luaL_addchar(&ins, ' ');
  lua_pushvalue(L, -2);
  luaL_addvalue(&ins);
  luaL_addstring(&ins, ": ");
  lua_pushvalue(L, -3);
  luaL_addvalue(&ins);
  luaL_addchar(&ins, '\n');
  luaL_pushresult(&ins);
  push_spliced(L, orig, bom, at, at, b->len, lua_gettop(L));
  return 1;
}

/* Protected part of edit: (loader, text, path, value, opts, pathname, name, quote) -> text;
 * quote: write a string value double-quoted whatever the style of the old one. */
static int edit_protected(lua_State *L) {
  yaml_loader *ld = luaL_checkudata(L, 1, LOADER_T);
  size_t len;
  const char *orig = lua_tolstring(L, 2, &len);
  const char *text = skip_bom(orig, &len);
  size_t bom = (size_t)(text - orig);
  int create = lua_istable(L, 5) && mo_optfield_boolean(L, 5, "create", 0);
  builder b = {.L = L, .ld = ld, .text = text, .len = len, .name_idx = 7};
  loader_start(L, ld, text, len);

  yaml_event_t *e = next_event(&b);
  e = next_event(&b);
  if (e->type != YAML_DOCUMENT_START_EVENT) edit_fail(&b, "the document is empty");
  e = next_event(&b);
  lua_Integer np = (lua_Integer)lua_rawlen(L, 3);
  for (lua_Integer i = 1; i <= np; i++) {
    lua_rawgeti(L, 3, i);
    int comp = lua_gettop(L);
    if (e->type == YAML_MAPPING_START_EVENT) {
      int flow = e->data.mapping_start.style == YAML_FLOW_MAPPING_STYLE;
      size_t col = 0;
      int nkeys = 0, found = 0;
      lua_pushvalue(L, comp);
      size_t wlen;
      const char *want = lua_tolstring(L, -1, &wlen);
      for (;;) {
        e = next_event(&b);
        if (e->type == YAML_MAPPING_END_EVENT) break;
        if (nkeys++ == 0) col = e->start_mark.column;
        int match = e->type == YAML_SCALAR_EVENT && e->data.scalar.length == wlen &&
                    memcmp(e->data.scalar.value, want, wlen) == 0;
        if (!match) skip_node(&b);
        e = next_event(&b);
        if (match) {
          found = 1;
          break;
        }
        skip_node(&b);
      }
      if (!found) {
        if (create && i == np && !flow && nkeys > 0)
          return edit_insert(&b, orig, bom, comp, 4, col);
        edit_fail(&b, "no key \"%s\"", want);
      }
    } else if (e->type == YAML_SEQUENCE_START_EVENT) {
      if (!lua_isinteger(L, comp) || lua_tointeger(L, comp) < 1)
        edit_fail(&b, "element %d of the path must be an index (1, 2, ...) into a sequence",
                  (int)i);
      lua_Integer k = lua_tointeger(L, comp);
      for (lua_Integer j = 1; j <= k; j++) {
        e = next_event(&b);
        if (e->type == YAML_SEQUENCE_END_EVENT)
          edit_fail(&b, "index %d is past the end of the sequence", (int)k);
        if (j < k) skip_node(&b);
      }
    } else if (e->type == YAML_ALIAS_EVENT) {
      edit_fail(&b, "the path goes through the alias *%s", (const char *)e->data.alias.anchor);
    } else {
      edit_fail(&b, "element %d of the path indexes into a scalar", (int)i);
    }
    lua_settop(L, comp - 1);
  }
  if (e->type == YAML_ALIAS_EVENT) edit_fail(&b, "the value is an alias, not a scalar");
  if (e->type != YAML_SCALAR_EVENT)
    edit_fail(&b, "the value is a %s, not a scalar",
              e->type == YAML_MAPPING_START_EVENT ? "mapping" : "sequence");

  yaml_scalar_style_t style = e->data.scalar.style;
  size_t start = char_to_byte(text, len, e->start_mark.index);
  size_t end =
      start + char_to_byte(text + start, len - start, e->end_mark.index - e->start_mark.index);
  /* The node starts at its properties (&anchor, !tag): keep the anchor, drop the tag,
   * which would fight the new value's type. */
  size_t anchor = 0, anchor_len = 0, p = start;
  size_t name_len = e->data.scalar.anchor ? strlen((const char *)e->data.scalar.anchor) : 0;
  while (p < end && (text[p] == '&' || text[p] == '!')) {
    size_t q = p;
    if (text[p] == '&') {
      q = p + 1 + name_len < end ? p + 1 + name_len : end; /* the scalar may follow directly */
      anchor = p, anchor_len = q - p;
    } else {
      while (q < end && !is_space(text[q]) && text[q] != ',')
        q++;
    }
    while (q < end && is_space(text[q]))
      q++;
    p = q;
  }
  int empty = e->data.scalar.length == 0 && style == YAML_PLAIN_SCALAR_STYLE && p >= end;
  if (style == YAML_LITERAL_SCALAR_STYLE || style == YAML_FOLDED_SCALAR_STYLE) {
    /* keep the line break after the content and any blank lines that follow */
    size_t q = end;
    while (q > p && is_space(text[q - 1]))
      q--;
    while (q < end && text[q] != '\n' && text[q] != '\r')
      q++;
    end = q;
    style = YAML_PLAIN_SCALAR_STYLE;
  }
  /* An empty value is written after its indicator: a ':' or a sequence's "- " (not the
   * '-' of a block scalar header such as ">-" that ends an explicit "?" key). */
  int after_indicator =
      start > 0 && (text[start - 1] == ':' ||
                    (text[start - 1] == '-' && (start == 1 || is_space(text[start - 2]))));
  if (empty && start == end && !after_indicator)
    edit_fail(&b, "the value is empty and has no ':' or '-' to write it after");
  drain(&b);
  if (lua_toboolean(L, 8)) style = YAML_DOUBLE_QUOTED_SCALAR_STYLE; /* the second try */
  if (!push_scalar_text(L, 4, style)) edit_fail(&b, "the value is not valid UTF-8");
  if (anchor_len > 0) {
    lua_pushlstring(L, text + anchor, anchor_len);
    lua_pushliteral(L, " ");
    lua_rotate(L, -3, 2);
    lua_concat(L, 3);
  }
  if ((empty && start == end) ||
      (np > 0 && start > 0 && (text[start - 1] == '\n' || text[start - 1] == '\r'))) {
    /* after the indicator, or a value that began a line: a plain value there would be a key */
    lua_pushliteral(L, " ");
    lua_insert(L, -2);
    lua_concat(L, 2);
  }
  push_spliced(L, orig, bom, start, end, len, lua_gettop(L));
  return 1;
}

/* Whether the text at `tidx` loads with the value at `vidx` under the path at `pidx`. */
static int edit_took(lua_State *L, int tidx, int pidx, int vidx) {
  int top = lua_gettop(L);
  lua_pushcfunction(L, yaml_load);
  lua_pushvalue(L, tidx);
  int ok = lua_pcall(L, 1, 1, 0) == LUA_OK;
  lua_Integer np = (lua_Integer)lua_rawlen(L, pidx);
  for (lua_Integer i = 1; ok && i <= np; i++) {
    if (!lua_istable(L, -1)) {
      ok = 0;
      break;
    }
    lua_rawgeti(L, pidx, i);
    lua_rawget(L, -2);
    lua_remove(L, -2);
  }
  if (ok) ok = is_null(L, vidx) ? is_null(L, -1) : lua_rawequal(L, -1, vidx);
  lua_settop(L, top);
  return ok;
}

/* One try of edit_protected: the new text, or the error message, on the stack; LUA_OK or not. */
static int edit_try(lua_State *L, int quote) {
  lua_pushcfunction(L, loader_close); /* what an earlier try left */
  lua_pushvalue(L, 7);
  lua_call(L, 1, 0);
  lua_pushcfunction(L, edit_protected);
  lua_pushvalue(L, 7);
  for (int i = 1; i <= 6; i++)
    lua_pushvalue(L, i); /* text, path, value, opts, the path as text, name */
  lua_pushboolean(L, quote);
  return lua_pcall(L, 8, 1, 0);
}

/* yaml.edit(text, path, value [, opts]) -> new text | nil, err
 * opts: {create = true} adds the last key of path to its block mapping when missing;
 *       {name = "meltano.yml"} names the text in parse errors. */
static int yaml_edit(lua_State *L) {
  luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int vt = lua_type(L, 3);
  luaL_argcheck(L, vt == LUA_TSTRING || vt == LUA_TNUMBER || vt == LUA_TBOOLEAN || is_null(L, 3), 3,
                "a string, number, boolean or yaml.null");
  if (!lua_isnoneornil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
  lua_settop(L, 4);
  luaL_Buffer pb;
  lua_Integer np = (lua_Integer)lua_rawlen(L, 2);
  luaL_buffinit(L, &pb);
  for (lua_Integer i = 1; i <= np; i++) {
    int t = lua_rawgeti(L, 2, i);
    if (t == LUA_TNUMBER && !lua_isinteger(L, -1)) t = LUA_TNONE;
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
      return luaL_argerror(L, 2, "path elements must be strings or integers");
    if (i > 1) luaL_addchar(&pb, '.');
    luaL_addvalue(&pb); /* converts integers to their text */
  }
  luaL_pushresult(&pb); /* 5: the path as text, for messages */
  const char *name = lua_istable(L, 4) ? mo_optfield_string(L, 4, "name", "<string>") : "<string>";
  lua_pushstring(L, name); /* 6 */
  new_loader(L);           /* 7 */
  /* The new text must load with the value in place: a plain value can run into what
   * follows it (an empty value before a line break, say); then it goes double-quoted. */
  int rc = edit_try(L, 0);
  if (rc == LUA_OK && !edit_took(L, lua_gettop(L), 2, 3)) {
    lua_pop(L, 1);
    rc = edit_try(L, 1);
    if (rc == LUA_OK && !edit_took(L, lua_gettop(L), 2, 3)) {
      lua_pop(L, 1);
      lua_pushfstring(L,
                      "yaml.edit %s: the value cannot be written there without changing what "
                      "the text means",
                      lua_tostring(L, 5));
      rc = LUA_ERRRUN;
    }
  }
  lua_pushcfunction(L, loader_close);
  lua_pushvalue(L, 7);
  lua_call(L, 1, 0);
  if (rc == LUA_OK) return 1;
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}

int luaopen_moonops_yaml(lua_State *L) {
  static const luaL_Reg no_methods[] = {{NULL, NULL}};
  static const luaL_Reg funcs[] = {
      {"load", yaml_load},         {"load_file", yaml_load_file},
      {"dump", yaml_dump},         {"edit", yaml_edit},
      {"is_array", yaml_is_array}, {"keys", yaml_keys},
      {"line", yaml_line},         {"pos", yaml_pos},
      {"source", yaml_source},     {NULL, NULL},
  };
  mo_newclass(L, LOADER_T, no_methods, loader_close);
  mo_newclass(L, DUMPER_T, no_methods, dumper_close);
  luaL_newlib(L, funcs);
  push_null(L);
  lua_setfield(L, -2, "null");
  mo_push_array_mt(L);
  lua_setfield(L, -2, "array_mt");
  return 1;
}
