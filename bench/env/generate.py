#!/usr/bin/env python3
"""Generate a large Meltano project for the `env show` benchmark.

    generate.py OUTDIR [--plugins N] [--seed S]

Writes OUTDIR/meltano.yml (extractors, utilities, three environments, top-level
env), OUTDIR/plugins/loaders.meltano.yml and OUTDIR/plugins/mappers.meltano.yml
(pulled in with include_paths) and OUTDIR/.env. The project exercises every
resolution rule: environment overrides, inherit_from chains, declared settings
with defaults and sensitivity, extras (select, metadata), env blocks at every
level, `$VAR`/`${VAR}` expansion, `null` fall-through and `{}` hiding.

Every scalar that YAML 1.1 and YAML 1.2 read differently is quoted, so the
PyYAML baseline and moonops see the same values.
"""
import argparse
import os
import random

ENVIRONMENTS = ["dev", "staging", "prod"]


def q(s):
    return "'" + str(s).replace("'", "''") + "'"


class Writer:
    def __init__(self):
        self.lines = []

    def add(self, indent, text):
        self.lines.append("  " * indent + text)

    def text(self):
        return "\n".join(self.lines) + "\n"


def plugin_names(n):
    """(type, name, parent) triples: about half extractors, the rest spread out."""
    counts = [("extractors", n * 50 // 100), ("loaders", n * 30 // 100),
              ("mappers", n * 10 // 100)]
    counts.append(("utilities", n - sum(c for _, c in counts)))
    out = []
    for ptype, count in counts:
        prefix = {"extractors": "tap", "loaders": "target", "mappers": "map",
                  "utilities": "util"}[ptype]
        i = 0
        while i < count:
            base = "%s-source%d" % (prefix, i)
            out.append((ptype, base, None))
            i += 1
            # every 8th plugin gets a chain of two children (depth 2 inheritance)
            if i % 8 == 1 and i + 2 <= count:
                child = base + "--eu"
                out.append((ptype, child, base))
                out.append((ptype, child + "-archive", child))
                i += 2
    return out


def write_plugin(w, rnd, ptype, name, parent, idx):
    w.add(1, "- name: " + name)
    if parent:
        w.add(2, "inherit_from: " + parent)
    else:
        w.add(2, "variant: meltanolabs")
        w.add(2, "pip_url: git+https://example.invalid/%s.git" % name)
    if idx % 5 == 0 and not parent:
        w.add(2, "settings:")
        w.add(2, "- name: api_secret_value")
        w.add(3, "kind: password")
        w.add(2, "- name: region")
        w.add(3, "value: eu-west-%d" % (idx % 3 + 1))
        w.add(2, "- name: options.retries")
        w.add(3, "kind: integer")
        w.add(3, "value: %d" % (idx % 7))
        w.add(2, "- name: options.verbose")
        w.add(3, "kind: boolean")
        w.add(3, "value: false")
        w.add(2, "- name: account")
        w.add(3, "sensitive: true")
        w.add(3, "value: acct-%d" % idx)
    if idx % 20 == 3:
        w.add(2, "env:")
        w.add(3, "PLUGIN_SCHEMA_%d: schema_%d" % (idx, idx))
    w.add(2, "config:")
    w.add(3, "host: ${DB_HOST_BASE}-%d.internal" % idx)
    if not parent or idx % 2 == 0:
        w.add(3, "port: %d" % (5000 + idx % 1000))
    w.add(3, "user: user_%d" % idx)
    w.add(3, "password: $DB_PASSWORD_%d" % (idx % 10))
    w.add(3, "start_date: %s" % q("2024-0%d-01" % (idx % 9 + 1)))
    w.add(3, "batch_size: %d" % (100 * (idx % 50 + 1)))
    w.add(3, "flatten: %s" % ("true" if idx % 2 else "false"))
    if idx % 20 == 3:
        w.add(3, "schema: ${PLUGIN_SCHEMA_%d}" % idx)
    w.add(3, "tags:")
    for t in range(idx % 3 + 1):
        w.add(3, "- tag%d" % t)
    w.add(3, "jsonpath: %s" % q("$.items[*].id"))
    w.add(3, "stream_maps:")
    for s in range(2):
        w.add(4, "stream_%d:" % s)
        w.add(5, "id: str(id)")
        w.add(5, "note: %s" % q("cost \\$AMOUNT_%d" % s))
    if ptype == "extractors":
        w.add(2, "select:")
        for s in range(3):
            w.add(2, "- stream_%d.*" % s)
        w.add(2, "metadata:")
        w.add(3, "stream_0:")
        w.add(4, "replication-method: INCREMENTAL")
        w.add(4, "replication-key: updated_at")


def write_env_override(w, rnd, ptype, name, idx, env):
    w.add(5, "- name: " + name)
    w.add(6, "config:")
    w.add(7, "host: %s-%d.%s.internal" % (env, idx, env))
    w.add(7, "batch_size: %d" % rnd.randint(1, 10000))
    if idx % 6 == 0:
        w.add(7, "stream_maps: {}")
    elif idx % 6 == 1:
        w.add(7, "stream_maps:")
        w.add(8, "stream_1:")
        w.add(9, "id: int(id)")
    if idx % 9 == 0:
        w.add(7, "port:")
    if idx % 4 == 0:
        w.add(7, "tags: [%s]" % env)
    if ptype == "extractors" and idx % 5 == 2:
        w.add(6, "select:")
        w.add(6, "- stream_%s.*" % env)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--plugins", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    plugins = plugin_names(args.plugins)
    os.makedirs(os.path.join(args.outdir, "plugins"), exist_ok=True)

    by_type = {}
    for i, (ptype, name, parent) in enumerate(plugins):
        by_type.setdefault(ptype, []).append((name, parent, i))

    main_w = Writer()
    main_w.add(0, "# generated by bench/env/generate.py: %d plugins" % len(plugins))
    main_w.add(0, "version: 1")
    main_w.add(0, "default_environment: dev")
    main_w.add(0, "project_id: 00000000-0000-4000-8000-000000000000")
    main_w.add(0, "include_paths:")
    main_w.add(0, "- ./plugins/*.meltano.yml")
    main_w.add(0, "env:")
    main_w.add(1, "DB_HOST_BASE: db")
    main_w.add(1, "SHARED_ROOT: ${MELTANO_PROJECT_ROOT}/shared")
    main_w.add(0, "environments:")
    for env in ENVIRONMENTS:
        main_w.add(0, "- name: " + env)
        main_w.add(1, "env:")
        main_w.add(2, "DB_HOST_BASE: %s-db" % env)
        # settings set through an environment's env: block (UTIL_SOURCE<n>_USER)
        for name, parent, i in by_type.get("utilities", [])[:20:4]:
            main_w.add(2, "%s_USER: %s-user-%d" % (name.upper().replace("-", "_"), env, i))
        main_w.add(1, "config:")
        main_w.add(2, "plugins:")
        for ptype in ["extractors", "utilities"]:
            main_w.add(3, ptype + ":")
            for name, parent, i in by_type.get(ptype, []):
                if rnd.random() < 0.4:
                    write_env_override(main_w, rnd, ptype, name, i, env)
    main_w.add(0, "plugins:")
    for ptype in ["extractors", "utilities"]:
        main_w.add(0, "  " + ptype + ":")
        w = Writer()
        for name, parent, i in by_type.get(ptype, []):
            write_plugin(w, rnd, ptype, name, parent, i)
        main_w.lines.extend("  " + line for line in w.lines)
    with open(os.path.join(args.outdir, "meltano.yml"), "w") as f:
        f.write(main_w.text())

    for ptype in ["loaders", "mappers"]:
        w = Writer()
        w.add(0, "plugins:")
        w.add(1, ptype + ":")
        inner = Writer()
        for name, parent, i in by_type.get(ptype, []):
            write_plugin(inner, rnd, ptype, name, parent, i)
        w.lines.extend("  " + line for line in inner.lines)
        with open(os.path.join(args.outdir, "plugins", ptype + ".meltano.yml"), "w") as f:
            f.write(w.text())

    with open(os.path.join(args.outdir, ".env"), "w") as f:
        f.write("# secrets for the generated project\n")
        for i in range(10):
            f.write("DB_PASSWORD_%d=pw-%08x\n" % (i, rnd.getrandbits(32)))
        for name, parent, i in by_type.get("extractors", [])[:50:5]:
            var = name.upper().replace("-", "_") + "_USER"
            f.write('%s="dotenv-user-%d"\n' % (var, i))
    print("%s: %d plugins, environments %s" % (args.outdir, len(plugins), ", ".join(ENVIRONMENTS)))


if __name__ == "__main__":
    main()
