#!/usr/bin/env python3
"""The benchmark baseline: `moonops env show --json` written plainly in Python 3 + PyYAML.

    baseline.py PROJECT_DIR [--environment E] [--unsafe] [--strict]

Same resolution rules as lua/moonops/meltano.lua (see docs/readme/environments.md),
written the way a team would script them: yaml.safe_load, dicts, recursion. It
prints the same JSON document (`origin` carries the file name only: PyYAML's
safe_load keeps no line numbers). `--cloader` uses PyYAML's libyaml-backed
CSafeLoader instead of the pure-Python loader.
"""
import argparse
import glob
import json
import os
import re
import sys

import yaml

PLUGIN_TYPES = ["extractors", "loaders", "transforms", "orchestrators", "transformers",
                "files", "utilities", "mappers"]
KNOWN_KEYS = {"name", "config", "env", "variant", "pip_url", "namespace", "inherit_from",
              "settings", "executable", "capabilities", "settings_group_validation",
              "commands", "requires", "docs", "repo", "label", "description", "logo_url",
              "hidden", "update", "ext_repo", "python", "supported_python_versions",
              "default_variant"}
SENSITIVE_SUFFIXES = ("password", "secret", "token", "key", "private_key", "client_secret")
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Fail(Exception):
    pass


def load_yaml(path, loader):
    with open(path, encoding="utf-8-sig") as f:
        return yaml.load(f, Loader=loader)


def parse_dotenv(path):
    out = {}
    if not os.path.isfile(path):
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[7:].lstrip()
            key, sep, value = line.partition("=")
            key = key.strip()
            if not sep or not NAME_RE.fullmatch(key):
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                quote, value = value[0], value[1:-1]
                if quote == '"':
                    value = (value.replace("\\n", "\n").replace('\\"', '"')
                             .replace("\\\\", "\\"))
            else:
                value = re.sub(r"\s+#.*$", "", value)
            out[key] = value
    return out


def expand(value, env, strict):
    if isinstance(value, str):
        if "$" not in value:
            return value
        out, i, n = [], 0, len(value)
        while i < n:
            c = value[i]
            if c == "\\" and i + 1 < n and value[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if c == "$":
                if value.startswith("{", i + 1):
                    m = NAME_RE.match(value, i + 2)
                    if m and value.startswith("}", m.end()):
                        out.append(lookup(env, m.group(0), strict))
                        i = m.end() + 1
                        continue
                else:
                    m = NAME_RE.match(value, i + 1)
                    if m:
                        out.append(lookup(env, m.group(0), strict))
                        i = m.end()
                        continue
            out.append(c)
            i += 1
        return "".join(out)
    if isinstance(value, list):
        return [expand(v, env, strict) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, env, strict) for k, v in value.items()}
    return value


def lookup(env, name, strict):
    if name in env:
        return env[name]
    if strict:
        raise Fail("$%s is not set" % name)
    return ""


def merge(base, over):
    """Deep merge: mappings merge, lists replace, None falls through, {} hides."""
    if over is None:
        return base
    if isinstance(over, dict) and isinstance(base, dict) and over:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base.get(k), v)
        return out
    return over


def escape(key):
    return str(key).replace("\\", "\\\\").replace(".", "\\.")


def flatten(value, prefix="", out=None):
    """Leaves by dotted name; None leaves are kept (a setting with no value)."""
    if out is None:
        out = {}
    for k, v in value.items():
        name = prefix + escape(k)
        if isinstance(v, dict) and v:
            flatten(v, name + ".", out)
        else:
            out[name] = v
    return out


def split_name(name):
    parts, cur, i = [], [], 0
    while i < len(name):
        c = name[i]
        if c == "\\" and i + 1 < len(name):
            cur.append(name[i + 1])
            i += 2
            continue
        if c == ".":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def set_path(table, name, value):
    parts = split_name(name)
    for p in parts[:-1]:
        if not isinstance(table.get(p), dict):
            table[p] = {}
        table = table[p]
    table[parts[-1]] = value


def var_name(text):
    return re.sub(r"[^A-Za-z0-9]", "_", text).upper()


def split_entry(entry):
    config = entry.get("config") or {}
    extras = {"_" + k: v for k, v in entry.items() if k not in KNOWN_KEYS}
    return config, extras


class Project:
    def __init__(self, root, loader):
        self.dir = root
        doc = load_yaml(os.path.join(root, "meltano.yml"), loader) or {}
        self.doc = doc
        self.plugins = []  # (type, name, entry)
        self.index = {}
        self.envs = []
        self.add_file(doc, "meltano.yml")
        for pattern in doc.get("include_paths") or []:
            for path in sorted(glob.glob(os.path.join(root, pattern))):
                real = os.path.realpath(path)
                if not real.startswith(os.path.realpath(root) + os.sep):
                    raise Fail("%s: outside the project" % path)
                inc = load_yaml(path, loader) or {}
                self.add_file(inc, os.path.relpath(path, root))
        self.dotenv = parse_dotenv(os.path.join(root, ".env"))

    def add_file(self, doc, fname):
        for ptype, entries in (doc.get("plugins") or {}).items():
            for entry in entries or []:
                key = (ptype, entry["name"])
                if key in self.index:
                    prev = self.index[key]
                    if prev[3] != fname:
                        raise Fail("%s %s declared in %s and %s" % (ptype, entry["name"],
                                                                    prev[3], fname))
                    prev[2] = merge(prev[2], entry)
                    continue
                rec = [ptype, entry["name"], entry, fname]
                self.index[key] = rec
                self.plugins.append(rec)
        for env in doc.get("environments") or []:
            for prev in self.envs:
                if prev[0] == env["name"]:
                    if prev[2] != fname:
                        raise Fail("environment %s declared in %s and %s" % (env["name"],
                                                                            prev[2], fname))
                    prev[1] = merge(prev[1], env)
                    break
            else:
                self.envs.append([env["name"], env, fname])

    def env_entry(self, env, ptype, name):
        if env is None:
            return None
        for entry in ((env[1].get("config") or {}).get("plugins") or {}).get(ptype) or []:
            if entry.get("name") == name:
                return entry
        return None


def build_stack(builtins, blocks, process, dotenv, strict):
    """blocks: env mappings, lowest first. Returns (the blocks' variables, the full
    expansion env: built-ins < process < .env < blocks)."""
    full = dict(builtins)
    full.update(process)
    full.update(dotenv)
    env = {}
    for block in blocks:
        for k, v in (block or {}).items():
            env[k] = full[k] = expand(env_text(v), full, strict)
    return env, full


def env_text(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else str(v)


def resolve(project, env_name, unsafe, strict):
    env = None
    if env_name is not None:
        for e in project.envs:
            if e[0] == env_name:
                env = e
        if env is None:
            raise Fail("environment %s not found" % env_name)
    process = dict(os.environ)
    builtins = {"MELTANO_PROJECT_ROOT": project.dir}
    if env_name:
        builtins["MELTANO_ENVIRONMENT"] = env_name
    top_blocks = [project.doc.get("env"), env[1].get("env") if env else None]
    cache = {}

    def plugin_blocks(rec, seen):
        ptype, name, entry = rec[0], rec[1], rec[2]
        blocks = []
        parent = project.index.get((ptype, entry.get("inherit_from")))
        if parent and entry.get("inherit_from") not in seen:
            blocks = plugin_blocks(parent, seen | {name})
        blocks = blocks + [entry.get("env")]
        env_entry = project.env_entry(env, ptype, name)
        if env_entry:
            blocks.append(env_entry.get("env"))
        return blocks

    def declared(rec, seen=()):
        ptype, name, entry = rec[0], rec[1], rec[2]
        out = {}
        parent = project.index.get((ptype, entry.get("inherit_from")))
        if parent and parent[1] not in seen:
            out.update(declared(parent, seen + (name,)))
        for s in entry.get("settings") or []:
            out[s["name"]] = s
        return out

    def resolve_plugin(rec, chain):
        ptype, name, entry = rec[0], rec[1], rec[2]
        if (ptype, name) in cache:
            return cache[(ptype, name)]
        if name in chain:
            raise Fail("inherit_from cycle: %s" % " -> ".join(chain + [name]))
        blocks = top_blocks + plugin_blocks(rec, frozenset())
        lowenv, fullenv = build_stack(builtins, blocks, process, project.dotenv, strict)
        decls = declared(rec)
        own_decls = {s["name"]: s for s in entry.get("settings") or []}

        base_cfg, base_extras = split_entry(entry)
        env_entry = project.env_entry(env, ptype, name)
        env_cfg, env_extras = split_entry(env_entry) if env_entry else ({}, {})
        inherited = {"flat": {}, "value": {}}
        parent = project.index.get((ptype, entry.get("inherit_from")))
        if parent:
            inherited = resolve_plugin(parent, chain + [name])
        default = {}
        for sname, s in own_decls.items():
            if s.get("value") is not None:
                set_path(default, sname, s["value"])

        file_layers = [env_cfg, env_extras, base_cfg, base_extras, inherited["value"], default]
        merged = {}
        for layer in reversed(file_layers):
            if layer:
                merged = merge(merged, layer)
        candidates = set(flatten(merged))
        candidates.update(decls)
        candidates.update(k for layer in file_layers for k in layer if k.startswith("_"))
        prefix = var_name(name) + "_"
        env_layers = {"env": {}, "dotenv": {}, "block": {}}
        for cand in sorted(candidates, key=len):
            var = prefix + var_name(cand)
            if var in lowenv:
                layer, value = "block", lowenv[var]
            elif var in project.dotenv:
                layer, value = "dotenv", project.dotenv[var]
            elif var in process:
                layer, value = "env", process[var]
            else:
                continue
            kind = (decls.get(cand) or {}).get("kind")
            is_extra = cand.startswith("_") and "." not in cand
            if kind in ("array", "object") or is_extra:
                try:
                    parsed = json.loads(value)
                    if isinstance(parsed, (list, dict)):
                        value = parsed
                except ValueError:
                    pass
            elif kind == "boolean":
                low = value.strip().lower()
                if low in ("true", "1", "yes", "on", "y", "t"):
                    value = True
                elif low in ("false", "0", "no", "off", "n", "f", ""):
                    value = False
            elif kind == "integer":
                try:
                    value = int(value.strip())
                except ValueError:
                    pass
            set_path(env_layers[layer], cand, value)

        layers = [("env", env_layers["block"]), ("dotenv", env_layers["dotenv"]),
                  ("env", env_layers["env"]),
                  ("environment", {**env_cfg, **env_extras}),
                  ("base", {**base_cfg, **base_extras}),
                  ("inherited", inherited.get("value", {})),
                  ("default", default)]
        value = {}
        sources = {}
        null_source = {}
        for lname, layer in reversed(layers):
            if not layer:
                continue  # an empty layer adds nothing (only a nested {} hides)
            value = merge(value, layer)
            for k, v in flatten(layer).items():
                # a null only counts where no layer below has a value
                if v is not None or k not in sources or null_source.get(k):
                    sources[k] = lname
                    null_source[k] = v is None
        flat = flatten(value)
        settings = []
        for sname in sorted(flat):
            v = flat[sname]
            src = sources[sname]
            if src in ("environment", "base", "default") and not sname.startswith("_"):
                v = expand(v, fullenv, strict)
            sensitive = any(sname == d or sname.startswith(d + ".")
                            for d, s in decls.items()
                            if s.get("sensitive") is True or s.get("kind") in ("password", "oauth"))
            if not sname.startswith("_") and sname.lower().endswith(SENSITIVE_SUFFIXES):
                sensitive = True
            flat[sname] = v
            settings.append({"name": sname, "value": "(redacted)" if sensitive and not unsafe
                             else v, "source": src,
                             "origin": rec[3], "redacted": sensitive and not unsafe})
        result = {"type": ptype, "name": name, "settings": settings, "flat": flat,
                  "value": unflatten(flat)}
        cache[(ptype, name)] = result
        return result

    plugins = []
    for rec in project.plugins:
        r = resolve_plugin(rec, [])
        plugins.append({"type": r["type"], "name": r["name"], "settings": r["settings"]})
    return {"environment": env_name, "plugins": plugins}


def unflatten(flat):
    out = {}
    for k, v in flat.items():
        set_path(out, k, v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("project")
    ap.add_argument("--environment")
    ap.add_argument("--unsafe", action="store_true")
    ap.add_argument("--strict", action="store_true")
    ap.add_argument("--cloader", action="store_true")
    args = ap.parse_args()
    loader = yaml.CSafeLoader if args.cloader else yaml.SafeLoader
    try:
        project = Project(args.project, loader)
        env_name = args.environment or os.environ.get("MELTANO_ENVIRONMENT") or \
            project.doc.get("default_environment")
        if env_name == "null":
            env_name = None
        out = resolve(project, env_name, args.unsafe, args.strict)
    except Fail as e:
        print("baseline: %s" % e, file=sys.stderr)
        return 1
    json.dump(out, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
