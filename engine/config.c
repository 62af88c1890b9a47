/*
 * moonops.config: layered configuration. Deep merge (mappings key by key,
 * arrays whole, null falls through, {} hides), flattening to dotted names and
 * back, resolution of a stack of layers with the origin of every leaf, and
 * $VAR / ${VAR} expansion.
 *
 * Results are always new tables; copies of mappings loaded by moonops.yaml keep
 * their provenance (key order and lines).
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_DEPTH 1000
#define MAX_LAYERS 64

/* ------------------------------------------------------------------------ */
/* values                                                                    */

static int is_null(lua_State *L, int idx) {
  return lua_islightuserdata(L, idx) && lua_touserdata(L, idx) == NULL;
}

static int absent(lua_State *L, int idx) {
  return lua_isnil(L, idx) || is_null(L, idx);
}

/* An array: marked with the array metatable, or a plain table whose keys are exactly 1..n. */
static int is_array(lua_State *L, int idx) {
  if (!lua_istable(L, idx)) return 0;
  if (lua_getmetatable(L, idx)) {
    mo_push_array_mt(L);
    int eq = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (eq) return 1;
  }
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

static int is_mapping(lua_State *L, int idx) {
  return lua_istable(L, idx) && !is_array(L, idx);
}

static int is_empty(lua_State *L, int idx) {
  lua_pushnil(L);
  if (lua_next(L, idx)) {
    lua_pop(L, 2);
    return 0;
  }
  return 1;
}

/* A mapping with at least one key: the only kind of value that merges. */
static int is_open_mapping(lua_State *L, int idx) {
  return is_mapping(L, idx) && !is_empty(L, idx);
}

static void too_deep(lua_State *L, const char *op) {
  luaL_error(L, "config.%s: nesting deeper than %d levels (a table that contains itself?)", op,
             MAX_DEPTH);
}

/* Give the new table at `to` the metatable and yaml provenance of the table at `from`. */
static void copy_identity(lua_State *L, int from, int to) {
  if (lua_getmetatable(L, from)) lua_setmetatable(L, to);
  mo_yaml_push_meta(L, from);
  if (lua_istable(L, -1)) mo_yaml_set_meta(L, to, -1);
  lua_pop(L, 1);
}

/* Push a deep copy of the value at idx. */
static void copy_value(lua_State *L, int idx, int depth) {
  if (!lua_istable(L, idx)) {
    lua_pushvalue(L, idx);
    return;
  }
  if (depth > MAX_DEPTH) too_deep(L, "copy");
  luaL_checkstack(L, 6, "config copy");
  lua_createtable(L, (int)lua_rawlen(L, idx), 0);
  int t = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    copy_value(L, lua_gettop(L), depth + 1);
    lua_remove(L, -2);
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, t);
  }
  copy_identity(L, idx, t);
}

/* ------------------------------------------------------------------------ */
/* flattened names: a growable buffer kept in a userdata slot on the stack   */

typedef struct {
  lua_State *L;
  int slot; /* stack index of the userdata holding the bytes */
  char *p;
  size_t len, cap;
} namebuf;

static void name_init(lua_State *L, namebuf *nb) {
  nb->L = L;
  nb->cap = 256;
  nb->len = 0;
  nb->p = lua_newuserdatauv(L, nb->cap, 0);
  nb->slot = lua_gettop(L);
}

static void name_reserve(namebuf *nb, size_t extra) {
  if (nb->len + extra <= nb->cap) return;
  size_t cap = nb->cap;
  while (cap < nb->len + extra)
    cap *= 2;
  char *p = lua_newuserdatauv(nb->L, cap, 0);
  memcpy(p, nb->p, nb->len);
  lua_replace(nb->L, nb->slot);
  nb->p = p;
  nb->cap = cap;
}

/* Append `.key` (escaping `\` and `.`; no dot before the first segment); returns the
 * previous length to restore. */
static size_t name_push(namebuf *nb, lua_State *L, int key, int first) {
  size_t old = nb->len, n;
  int converted = lua_type(L, key) != LUA_TSTRING;
  const char *k = converted ? luaL_tolstring(L, key, &n) : lua_tolstring(L, key, &n);
  name_reserve(nb, 2 * n + 1);
  if (!first) nb->p[nb->len++] = '.';
  for (size_t i = 0; i < n; i++) {
    if (k[i] == '.' || k[i] == '\\') nb->p[nb->len++] = '\\';
    nb->p[nb->len++] = k[i];
  }
  if (converted) lua_pop(L, 1);
  return old;
}

/* ------------------------------------------------------------------------ */
/* merge and resolve                                                         */

typedef struct {
  int name, file; /* stack indices of the layer's name and file (or 0) */
} layer_info;

typedef struct {
  lua_State *L;
  int sources; /* stack index of the sources table; 0 when not tracking */
  layer_info *layers;
  namebuf name;
} merger;

/* sources[name] = {layer = ..., origin = "file:line"} for a leaf of layer `id`, held under
 * `key` by a mapping whose yaml meta is at `meta` (0 or nil when it has none). */
static void record_leaf(merger *c, int id, int meta, int key) {
  lua_State *L = c->L;
  if (!c->sources) return;
  luaL_checkstack(L, 6, "config sources");
  lua_pushlstring(L, c->name.p, c->name.len);
  lua_createtable(L, 0, 2);
  layer_info *li = &c->layers[id];
  if (li->name) {
    lua_pushvalue(L, li->name);
    lua_setfield(L, -2, "layer");
  }
  int has_meta = meta && lua_istable(L, meta);
  const char *file = li->file ? lua_tostring(L, li->file) : NULL;
  if (file == NULL && has_meta && lua_rawgeti(L, meta, MO_META_SOURCE) == LUA_TSTRING)
    file = lua_tostring(L, -1); /* kept alive by the meta table */
  if (has_meta && !li->file) lua_pop(L, 1);
  int line = has_meta && key ? mo_yaml_meta_line(L, meta, key) : 0;
  if (file != NULL && line > 0)
    lua_pushfstring(L, "%s:%d", file, line);
  else if (file != NULL)
    lua_pushstring(L, file);
  else if (line > 0)
    lua_pushfstring(L, "line %d", line);
  else
    lua_pushnil(L);
  lua_setfield(L, -2, "origin");
  lua_rawset(L, c->sources);
}

static void merge_tables(merger *c, int nc, const int *tables, const int *ids, int depth);

/*
 * Push the merged value of one slot. vals[i] (highest priority first) are stack
 * indices of the values the layers hold there (nil when absent); metas[i] the yaml
 * meta of the mappings holding them and key the key (NULL and 0 at the root).
 */
static void merge_slot(merger *c, int n, const int *vals, const int *ids, const int *metas, int key,
                       int depth) {
  lua_State *L = c->L;
  int first = -1, null_at = -1;
  for (int i = 0; i < n && first < 0; i++) {
    if (!absent(L, vals[i]))
      first = i;
    else if (null_at < 0 && is_null(L, vals[i]))
      null_at = i;
  }
  if (first < 0) {
    /* nothing but null (or nothing at all) */
    if (null_at < 0) {
      lua_pushnil(L);
      return;
    }
    lua_pushlightuserdata(L, NULL);
    if (metas) record_leaf(c, ids[null_at], metas[null_at], key);
    return;
  }
  if (!is_open_mapping(L, vals[first])) {
    /* a scalar, an array or an empty mapping: taken whole, and it hides what is below */
    copy_value(L, vals[first], depth);
    if (metas) record_leaf(c, ids[first], metas[first], key);
    return;
  }
  int tables[MAX_LAYERS], tids[MAX_LAYERS], nc = 0;
  for (int i = first; i < n; i++) {
    if (absent(L, vals[i])) continue;
    if (!is_open_mapping(L, vals[i])) break; /* replaced by the mapping above it */
    tables[nc] = vals[i];
    tids[nc++] = ids[i];
  }
  if (nc == 1 && !c->sources)
    copy_value(L, tables[0], depth); /* nothing to merge or record */
  else
    merge_tables(c, nc, tables, tids, depth);
}

/* Push the merge of nc non-empty mappings (highest priority first). */
static void merge_tables(merger *c, int nc, const int *tables, const int *ids, int depth) {
  lua_State *L = c->L;
  if (depth > MAX_DEPTH) too_deep(L, "merge");
  luaL_checkstack(L, 2 * nc + 12, "config merge");
  lua_newtable(L);
  int result = lua_gettop(L);
  int meta = 0; /* with several layers: the key order, lines unknown (sources has them) */
  lua_Integer nkeys = 0;
  if (nc > 1) {
    lua_createtable(L, MO_META_HEAD + 16, 0);
    meta = lua_gettop(L);
    lua_pushinteger(L, 0);
    lua_rawseti(L, meta, MO_META_LINE);
    lua_pushinteger(L, 0);
    lua_rawseti(L, meta, MO_META_COL);
    lua_pushboolean(L, 0);
    lua_rawseti(L, meta, MO_META_SOURCE);
  }
  int metas[MAX_LAYERS];
  for (int j = 0; j < nc; j++) {
    if (c->sources)
      mo_yaml_push_meta(L, tables[j]);
    else
      lua_pushnil(L);
    metas[j] = lua_gettop(L);
  }
  int base = lua_gettop(L);
  /* keys in order: the lowest layer's first, then each higher layer's new ones */
  for (int li = nc - 1; li >= 0; li--) {
    mo_yaml_push_key_list(L, tables[li]);
    int keys = lua_gettop(L);
    lua_Integer nk = (lua_Integer)lua_rawlen(L, keys);
    for (lua_Integer k = 1; k <= nk; k++) {
      lua_rawgeti(L, keys, k);
      int key = lua_gettop(L);
      lua_pushvalue(L, key);
      if (lua_rawget(L, result) != LUA_TNIL) {
        lua_settop(L, keys);
        continue;
      }
      lua_pop(L, 1);
      int vals[MAX_LAYERS];
      for (int j = 0; j < nc; j++) {
        lua_pushvalue(L, key);
        lua_rawget(L, tables[j]);
        vals[j] = lua_gettop(L);
      }
      size_t mark = c->sources ? name_push(&c->name, L, key, depth == 0) : 0;
      merge_slot(c, nc, vals, ids, metas, key, depth + 1);
      if (c->sources) c->name.len = mark;
      if (!lua_isnil(L, -1)) {
        lua_pushvalue(L, key);
        lua_insert(L, -2);
        lua_rawset(L, result);
        if (meta && lua_type(L, key) == LUA_TSTRING) {
          nkeys++;
          lua_pushvalue(L, key);
          lua_rawseti(L, meta, MO_META_HEAD + 2 * nkeys - 1);
          lua_pushinteger(L, 0);
          lua_rawseti(L, meta, MO_META_HEAD + 2 * nkeys);
        }
      }
      lua_settop(L, keys);
    }
    lua_settop(L, base);
  }
  if (meta)
    mo_yaml_set_meta(L, result, meta);
  else
    copy_identity(L, tables[0], result);
  lua_settop(L, result);
}

/* config.merge(base, overlay) -> new value */
static int config_merge(lua_State *L) {
  lua_settop(L, 2);
  layer_info layers[2] = {{0, 0}, {0, 0}};
  merger c = {.L = L, .sources = 0, .layers = layers};
  int vals[2] = {2, 1}, ids[2] = {0, 1};
  merge_slot(&c, 2, vals, ids, NULL, 0, 0);
  return 1;
}

/* config.resolve(layers) -> value, sources
 * layers: highest priority first, each {name = "environment", value = table, file = "meltano.yml"}
 */
static int config_resolve(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  int n = (int)lua_rawlen(L, 1);
  if (n > MAX_LAYERS) return luaL_argerror(L, 1, "too many layers (at most 64)");
  luaL_checkstack(L, 3 * n + 10, "config.resolve");
  layer_info layers[MAX_LAYERS];
  int vals[MAX_LAYERS], ids[MAX_LAYERS];
  for (int i = 0; i < n; i++) {
    if (lua_rawgeti(L, 1, i + 1) != LUA_TTABLE)
      return luaL_argerror(L, 1, lua_pushfstring(L, "layer %d is not a table", i + 1));
    int layer = lua_gettop(L);
    lua_getfield(L, layer, "value");
    vals[i] = lua_gettop(L);
    ids[i] = i;
    int t = lua_getfield(L, layer, "name");
    if (t != LUA_TNIL && t != LUA_TSTRING)
      return luaL_argerror(L, 1, lua_pushfstring(L, "layer %d: name must be a string", i + 1));
    layers[i].name = t == LUA_TNIL ? 0 : lua_gettop(L);
    t = lua_getfield(L, layer, "file");
    if (t != LUA_TNIL && t != LUA_TSTRING)
      return luaL_argerror(L, 1, lua_pushfstring(L, "layer %d: file must be a string", i + 1));
    layers[i].file = t == LUA_TNIL ? 0 : lua_gettop(L);
  }
  lua_newtable(L);
  int sources = lua_gettop(L);
  merger c = {.L = L, .sources = sources, .layers = layers};
  name_init(L, &c.name);
  merge_slot(&c, n, vals, ids, NULL, 0, 0);
  if (absent(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
  }
  lua_pushvalue(L, sources);
  return 2;
}

/* ------------------------------------------------------------------------ */
/* resolve_leaves: the flattened result of resolve, without building it      */

typedef struct {
  const char *name; /* kept alive by the scratch names table */
  size_t len;
  int slot;  /* index in the scratch tables */
  int layer; /* 1-based */
  int line;  /* of the leaf's key, 0 when unknown */
} leaf;

#define LEAVES_ON_STACK 128

typedef struct {
  lua_State *L;
  int names, values; /* scratch tables: slot -> name, value */
  int store;         /* stack index of the userdata holding `leaves` once they grow */
  leaf *leaves;
  int n, cap;
  namebuf name;
} leaf_walk;

/* Record the value at idx as the leaf named by the current name, from layer id (0-based),
 * held under `key` by a mapping whose yaml meta is at `meta` (0 or nil when it has none). */
static void add_leaf(leaf_walk *w, int idx, int id, int meta, int key) {
  lua_State *L = w->L;
  if (w->n == w->cap) {
    int cap = w->cap * 2;
    leaf *p = lua_newuserdatauv(L, sizeof(leaf) * (size_t)cap, 0);
    memcpy(p, w->leaves, sizeof(leaf) * (size_t)w->n);
    lua_replace(L, w->store);
    w->leaves = p;
    w->cap = cap;
  }
  leaf *lf = &w->leaves[w->n++];
  lf->slot = w->n;
  lf->layer = id + 1;
  lf->line = meta && key && lua_istable(L, meta) ? mo_yaml_meta_line(L, meta, key) : 0;
  lua_pushvalue(L, idx);
  lua_rawseti(L, w->values, lf->slot);
  lua_pushlstring(L, w->name.p, w->name.len);
  lf->name = lua_tolstring(L, -1, &lf->len);
  lua_rawseti(L, w->names, lf->slot); /* the string stays at the same address */
}

static void leaves_of_tables(leaf_walk *w, int nc, const int *tables, const int *ids, int depth);

/* The leaves under one slot; arguments as for merge_slot. */
static void leaves_of_slot(leaf_walk *w, int n, const int *vals, const int *ids, const int *metas,
                           int key, int depth) {
  lua_State *L = w->L;
  int first = -1, null_at = -1;
  for (int i = 0; i < n && first < 0; i++) {
    if (!absent(L, vals[i]))
      first = i;
    else if (null_at < 0 && is_null(L, vals[i]))
      null_at = i;
  }
  if (first < 0) {
    if (null_at >= 0 && depth > 0) add_leaf(w, vals[null_at], ids[null_at], metas[null_at], key);
    return;
  }
  if (!is_open_mapping(L, vals[first])) {
    if (depth > 0) add_leaf(w, vals[first], ids[first], metas[first], key);
    return;
  }
  int tables[MAX_LAYERS], tids[MAX_LAYERS], nc = 0;
  for (int i = first; i < n; i++) {
    if (absent(L, vals[i])) continue;
    if (!is_open_mapping(L, vals[i])) break; /* replaced by the mapping above it */
    tables[nc] = vals[i];
    tids[nc++] = ids[i];
  }
  leaves_of_tables(w, nc, tables, tids, depth);
}

/* The leaves of the merge of nc non-empty mappings (highest priority first). */
static void leaves_of_tables(leaf_walk *w, int nc, const int *tables, const int *ids, int depth) {
  lua_State *L = w->L;
  if (depth > MAX_DEPTH) too_deep(L, "resolve_leaves");
  luaL_checkstack(L, 2 * nc + 12, "config.resolve_leaves");
  int top = lua_gettop(L);
  int metas[MAX_LAYERS];
  for (int j = 0; j < nc; j++) {
    mo_yaml_push_meta(L, tables[j]);
    metas[j] = lua_gettop(L);
  }
  for (int li = 0; li < nc; li++) {
    lua_pushnil(L);
    while (lua_next(L, tables[li])) {
      int key = lua_gettop(L) - 1;
      int seen = 0; /* the key is in a higher layer: it was walked with that one */
      for (int i = 0; i < li && !seen; i++) {
        lua_pushvalue(L, key);
        seen = lua_rawget(L, tables[i]) != LUA_TNIL;
        lua_pop(L, 1);
      }
      if (seen) {
        lua_settop(L, key);
        continue;
      }
      int vals[MAX_LAYERS];
      for (int j = 0; j < nc; j++) {
        if (j == li) {
          vals[j] = key + 1; /* the value lua_next pushed */
          continue;
        }
        if (j < li) {
          lua_pushnil(L); /* not in the higher layers (checked above) */
        } else {
          lua_pushvalue(L, key);
          lua_rawget(L, tables[j]);
        }
        vals[j] = lua_gettop(L);
      }
      size_t mark = name_push(&w->name, L, key, depth == 0);
      leaves_of_slot(w, nc, vals, ids, metas, key, depth + 1);
      w->name.len = mark;
      lua_settop(L, key);
    }
  }
  lua_settop(L, top);
}

static int leaf_cmp(const void *pa, const void *pb) {
  const leaf *a = pa, *b = pb;
  size_t n = a->len < b->len ? a->len : b->len;
  int c = memcmp(a->name, b->name, n);
  if (c != 0) return c;
  return a->len < b->len ? -1 : a->len > b->len ? 1 : 0;
}

/* config.resolve_leaves(layers) -> names, values, from, lines
 * What config.flatten would give for resolve(layers), without building the merged value:
 * parallel arrays sorted by name; from[i] is the index of the layer the value comes from,
 * lines[i] the line of its key in the YAML that layer was loaded from (0 when unknown).
 * Leaf tables (lists, empty mappings) are the layers' own, not copies. */
static int config_resolve_leaves(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  int n = (int)lua_rawlen(L, 1);
  if (n > MAX_LAYERS) return luaL_argerror(L, 1, "too many layers (at most 64)");
  luaL_checkstack(L, n + 16, "config.resolve_leaves");
  int vals[MAX_LAYERS], ids[MAX_LAYERS], metas[MAX_LAYERS];
  for (int i = 0; i < n; i++) {
    if (lua_rawgeti(L, 1, i + 1) != LUA_TTABLE)
      return luaL_argerror(L, 1, lua_pushfstring(L, "layer %d is not a table", i + 1));
    lua_getfield(L, -1, "value");
    lua_remove(L, -2);
    vals[i] = lua_gettop(L);
    ids[i] = i;
    metas[i] = 0;
  }
  leaf stack_leaves[LEAVES_ON_STACK];
  leaf_walk w = {.L = L, .leaves = stack_leaves, .cap = LEAVES_ON_STACK};
  lua_createtable(L, 32, 0);
  w.names = lua_gettop(L);
  lua_createtable(L, 32, 0);
  w.values = lua_gettop(L);
  lua_pushnil(L); /* the leaves, once they outgrow stack_leaves */
  w.store = lua_gettop(L);
  name_init(L, &w.name);
  leaves_of_slot(&w, n, vals, ids, metas, 0, 0);
  qsort(w.leaves, (size_t)w.n, sizeof(leaf), leaf_cmp);
  luaL_checkstack(L, 8, "config.resolve_leaves");
  int out = lua_gettop(L) + 1;
  for (int k = 0; k < 4; k++)
    lua_createtable(L, w.n, 0);
  for (int i = 0; i < w.n; i++) {
    const leaf *lf = &w.leaves[i];
    lua_rawgeti(L, w.names, lf->slot);
    lua_rawseti(L, out, i + 1);
    lua_rawgeti(L, w.values, lf->slot);
    lua_rawseti(L, out + 1, i + 1);
    lua_pushinteger(L, lf->layer);
    lua_rawseti(L, out + 2, i + 1);
    lua_pushinteger(L, lf->line);
    lua_rawseti(L, out + 3, i + 1);
  }
  return 4;
}

/* ------------------------------------------------------------------------ */
/* flatten and nest                                                          */

static void flatten_into(lua_State *L, int t, int flat, int names, lua_Integer *n, namebuf *nb,
                         int depth) {
  if (depth > MAX_DEPTH) too_deep(L, "flatten");
  luaL_checkstack(L, 8, "config.flatten");
  mo_yaml_push_key_list(L, t);
  int keys = lua_gettop(L);
  lua_Integer nk = (lua_Integer)lua_rawlen(L, keys);
  for (lua_Integer k = 1; k <= nk; k++) {
    lua_rawgeti(L, keys, k);
    int key = lua_gettop(L);
    size_t mark = name_push(nb, L, key, depth == 0);
    lua_pushvalue(L, key);
    lua_rawget(L, t);
    int v = lua_gettop(L);
    if (is_open_mapping(L, v)) {
      flatten_into(L, v, flat, names, n, nb, depth + 1);
    } else {
      lua_pushlstring(L, nb->p, nb->len);
      lua_pushvalue(L, -1);
      lua_rawseti(L, names, ++*n);
      lua_pushvalue(L, v);
      lua_rawset(L, flat);
    }
    nb->len = mark;
    lua_settop(L, keys);
  }
  lua_pop(L, 1);
}

/* config.flatten(t) -> {["a.b.c"] = leaf}, names (in document order) */
static int config_flatten(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  namebuf nb;
  name_init(L, &nb); /* 2 */
  lua_newtable(L);   /* 3 */
  lua_newtable(L);   /* 4 */
  mo_mark_array(L, 4);
  lua_Integer n = 0;
  if (!is_array(L, 1)) flatten_into(L, 1, 3, 4, &n, &nb, 0);
  return 2;
}

/* End of the segment of a flattened name starting at `from` (an unescaped dot or len). */
static size_t segment_end(const char *s, size_t len, size_t from, int *escaped) {
  size_t i = from;
  *escaped = 0;
  while (i < len && s[i] != '.') {
    if (s[i] == '\\' && i + 1 < len) {
      *escaped = 1;
      i++;
    }
    i++;
  }
  return i;
}

/* Push the segment s[from, to) with its escapes removed. */
static void push_segment(lua_State *L, const char *s, size_t from, size_t to, int escaped) {
  if (!escaped) {
    lua_pushlstring(L, s + from, to - from);
    return;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (size_t i = from; i < to; i++) {
    if (s[i] == '\\' && i + 1 < to) i++;
    luaL_addchar(&b, s[i]);
  }
  luaL_pushresult(&b);
}

/* config.nest(flat [, names]) -> nested table | nil, err
 * names: the flattened names to take, in that order (default: every key of flat, sorted,
 * so "a" comes before "a.b") */
static int config_nest(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_newtable(L); /* 3: result */
  lua_newtable(L); /* 4: tables made here (safe to extend) */
  lua_pushvalue(L, 3);
  lua_pushboolean(L, 1);
  lua_rawset(L, 4);
  if (lua_isnil(L, 2)) {
    mo_yaml_push_key_list(L, 1); /* names, sorted */
    lua_replace(L, 2);
  }
  lua_Integer nk = (lua_Integer)lua_rawlen(L, 2);
  for (lua_Integer k = 1; k <= nk; k++) {
    if (lua_rawgeti(L, 2, k) != LUA_TSTRING)
      return luaL_argerror(L, 1, "flattened names must be strings");
    int name = lua_gettop(L); /* 5 */
    size_t len;
    const char *s = lua_tolstring(L, name, &len);
    lua_pushvalue(L, 3); /* 6: the table the next segment goes into */
    int cur = name + 1;
    size_t from = 0;
    int escaped;
    size_t to = segment_end(s, len, from, &escaped);
    while (to < len) { /* every segment but the last: descend, making tables on the way */
      push_segment(L, s, from, to, escaped);
      lua_pushvalue(L, -1);
      int t = lua_rawget(L, cur);
      if (t == LUA_TNIL) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_pushboolean(L, 1);
        lua_rawset(L, 4);
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -2);
        lua_rawset(L, cur);
      } else {
        int ours = 0;
        if (t == LUA_TTABLE) {
          lua_pushvalue(L, -1);
          ours = lua_rawget(L, 4) != LUA_TNIL;
          lua_pop(L, 1);
        }
        if (!ours)
          return mo_fail(L, "config.nest: \"%s\" goes inside a value that is not a mapping", s);
      }
      lua_replace(L, cur); /* descend: the child replaces cur; the key above it is dropped */
      lua_settop(L, cur);
      from = to + 1;
      to = segment_end(s, len, from, &escaped);
    }
    push_segment(L, s, from, to, escaped);
    int last = lua_gettop(L);
    lua_pushvalue(L, last);
    if (lua_rawget(L, cur) != LUA_TNIL)
      return mo_fail(L, "config.nest: \"%s\" is given twice (as a value and as a mapping)", s);
    lua_pop(L, 1);
    lua_pushvalue(L, name);
    lua_rawget(L, 1);
    if (is_mapping(L, -1) && is_empty(L, lua_gettop(L))) {
      /* an empty mapping: a fresh one, so deeper names can fill it without touching the input */
      lua_pop(L, 1);
      lua_newtable(L);
      lua_pushvalue(L, -1);
      lua_pushboolean(L, 1);
      lua_rawset(L, 4);
    }
    lua_pushvalue(L, last);
    lua_insert(L, -2);
    lua_rawset(L, cur);
    lua_settop(L, 4);
  }
  lua_settop(L, 3);
  return 1;
}

/* ------------------------------------------------------------------------ */
/* expand                                                                    */

static int name_start(int c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static int name_char(int c) {
  return name_start(c) || (c >= '0' && c <= '9');
}

typedef struct {
  lua_State *L;
  int env, strict;
  namebuf path;
} expander;

/* Push the expansion of the string at idx; on a missing variable in strict mode
 * push its name and return 0. */
/* Does s hold a $VAR, ${VAR} or \$ (anything expansion changes)? */
static int has_expansion(const char *s, size_t len) {
  const char *p = s, *end = s + len;
  while ((p = memchr(p, '$', (size_t)(end - p))) != NULL) {
    if (p > s && p[-1] == '\\') return 1;
    if (p + 1 < end && name_start((unsigned char)p[1])) return 1;
    if (p + 2 < end && p[1] == '{' && name_start((unsigned char)p[2])) {
      const char *q = p + 3;
      while (q < end && name_char((unsigned char)*q))
        q++;
      if (q < end && *q == '}') return 1;
    }
    p++;
  }
  return 0;
}

static int expand_string(expander *x, int idx) {
  lua_State *L = x->L;
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  if (!has_expansion(s, len)) {
    lua_pushvalue(L, idx); /* the same string: nothing to build */
    return 1;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  size_t i = 0;
  while (i < len) {
    char ch = s[i];
    if (ch == '\\' && i + 1 < len && s[i + 1] == '$') {
      luaL_addchar(&b, '$');
      i += 2;
      continue;
    }
    if (ch != '$') {
      luaL_addchar(&b, ch);
      i++;
      continue;
    }
    size_t name = 0, nlen = 0, next = 0;
    if (i + 1 < len && name_start((unsigned char)s[i + 1])) {
      name = i + 1;
      nlen = 1;
      while (name + nlen < len && name_char((unsigned char)s[name + nlen]))
        nlen++;
      next = name + nlen;
    } else if (i + 2 < len && s[i + 1] == '{' && name_start((unsigned char)s[i + 2])) {
      name = i + 2;
      while (name + nlen < len && name_char((unsigned char)s[name + nlen]))
        nlen++;
      if (name + nlen < len && s[name + nlen] == '}')
        next = name + nlen + 1;
      else
        nlen = 0; /* "${" without a name and "}": literal */
    }
    if (nlen == 0) {
      luaL_addchar(&b, '$');
      i++;
      continue;
    }
    lua_pushlstring(L, s + name, nlen);
    lua_gettable(L, x->env);
    int t = lua_type(L, -1);
    if (t == LUA_TSTRING || t == LUA_TNUMBER) {
      luaL_addvalue(&b);
    } else {
      lua_pop(L, 1);
      if (x->strict) {
        lua_pushlstring(L, s + name, nlen);
        return 0;
      }
    }
    i = next;
  }
  luaL_pushresult(&b);
  return 1;
}

/* Push the expanded copy of the value at idx; 0 (with the variable name pushed) on a strict miss.
 */
static int expand_value(expander *x, int idx, int depth) {
  lua_State *L = x->L;
  if (lua_type(L, idx) == LUA_TSTRING) return expand_string(x, idx);
  if (!lua_istable(L, idx)) {
    lua_pushvalue(L, idx);
    return 1;
  }
  if (depth > MAX_DEPTH) too_deep(L, "expand");
  luaL_checkstack(L, 8, "config.expand");
  lua_createtable(L, (int)lua_rawlen(L, idx), 0);
  int t = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    size_t mark = name_push(&x->path, L, lua_gettop(L) - 1, depth == 0);
    if (!expand_value(x, lua_gettop(L), depth + 1)) return 0;
    x->path.len = mark;
    lua_remove(L, -2);
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, t);
  }
  copy_identity(L, idx, t);
  return 1;
}

/* config.expand(value, env [, opts]) -> expanded value | nil, err
 * opts: {strict = true} makes a missing variable an error. */
static int config_expand(lua_State *L) {
  luaL_checkany(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int strict = 0;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    strict = mo_optfield_boolean(L, 3, "strict", 0);
  }
  lua_settop(L, 2);
  expander x = {.L = L, .env = 2, .strict = strict};
  if (lua_type(L, 1) == LUA_TSTRING) {
    if (expand_string(&x, 1)) return 1;
    return mo_fail(L, "variable %s is not set", lua_tostring(L, -1));
  }
  name_init(L, &x.path); /* 3: the path of the value being expanded, for errors */
  if (expand_value(&x, 1, 0)) return 1;
  const char *var = lua_tostring(L, -1);
  if (x.path.len > 0) {
    lua_pushlstring(L, x.path.p, x.path.len);
    return mo_fail(L, "variable %s is not set (in %s)", var, lua_tostring(L, -1));
  }
  return mo_fail(L, "variable %s is not set", var);
}

int luaopen_moonops_config(lua_State *L) {
  static const luaL_Reg funcs[] = {
      {"merge", config_merge},
      {"resolve", config_resolve},
      {"resolve_leaves", config_resolve_leaves},
      {"flatten", config_flatten},
      {"nest", config_nest},
      {"expand", config_expand},
      {NULL, NULL},
  };
  luaL_newlib(L, funcs);
  return 1;
}
