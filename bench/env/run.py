#!/usr/bin/env python3
"""`moonops env show --json` against the Python 3 + PyYAML baseline, side by side.

    run.py [MOONOPS_BIN] [--plugins N] [--runs R] [--keep DIR]

Generates a project (bench/env/generate.py: N plugins, 3 environments), then for
each environment runs moonops, the baseline with PyYAML's pure-Python SafeLoader
(what `yaml.safe_load` gives) and the baseline with PyYAML's libyaml CSafeLoader,
interleaved, R times each, and prints the median wall and CPU (user + system) times
and the ratios. It also checks that every implementation resolves the same values,
sources and redactions, and times the seed-auth0 fixture (target: under 5 ms).
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SEED = os.path.join(ROOT, "..", "shared", "fixtures", "seed-auth0")

# Settings given through the process environment (source "env").
PROCESS_ENV = {
    "TAP_SOURCE5_BATCH_SIZE": "7",
    "TAP_SOURCE10__SELECT": '["only_this.*"]',
    "TARGET_SOURCE3_HOST": "from-the-shell",
}


def cpu_of_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(argv, env):
    """Wall time, CPU time (user + system) and stdout of one run."""
    cpu = cpu_of_children()
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit("failed: %s\n%s" % (" ".join(argv), proc.stderr.decode()))
    return elapsed, proc.stdout, cpu_of_children() - cpu


def comparable(text):
    doc = json.loads(text)
    return (doc["environment"], [
        (p["type"], p["name"], [(s["name"], json.dumps(s["value"], sort_keys=True), s["source"], s["redacted"])
                                for s in p["settings"]])
        for p in doc["plugins"]])


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def ms(seconds):
    return "%.1f ms" % (seconds * 1000)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("moonops", nargs="?", default=os.path.join(ROOT, "build", "moonops"))
    ap.add_argument("--plugins", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", help="generate the project here and keep it")
    args = ap.parse_args()
    moonops = os.path.abspath(args.moonops)
    if not os.access(moonops, os.X_OK):
        sys.exit("no moonops binary at %s (build it first)" % moonops)

    project = args.keep or tempfile.mkdtemp(prefix="moonops-envbench.")
    try:
        subprocess.run([sys.executable, os.path.join(HERE, "generate.py"), project,
                        "--plugins", str(args.plugins)], check=True, stdout=subprocess.DEVNULL)
        env = dict(os.environ)
        env.pop("MELTANO_ENVIRONMENT", None)
        env.update(PROCESS_ENV)
        baseline = [sys.executable, os.path.join(HERE, "baseline.py")]
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(project) for f in fs)
        print("env show --json: %d plugins, %.1f MB of YAML, median of %d runs; load average %s" %
              (args.plugins, size / 1e6, args.runs, load_average()))
        print("%-8s %11s %13s %14s %8s %8s %11s %13s %8s" % (
            "env", "moonops", "py safe_load", "py CSafeLoader", "x safe", "x CSafe",
            "moonops CPU", "safe_load CPU", "x CPU"))
        worst = None
        for e in ["dev", "staging", "prod"]:
            cmds = {
                "moonops": [moonops, "env", "show", "--json", "--project", project, "--environment", e],
                "safe": baseline + [project, "--environment", e],
                "csafe": baseline + ["--cloader", project, "--environment", e],
            }
            times = {k: [] for k in cmds}
            cpus = {k: [] for k in cmds}
            outputs = {}
            for _ in range(args.runs):
                for k, argv in cmds.items():
                    t, out, cpu = timed(argv, env)
                    times[k].append(t)
                    cpus[k].append(cpu)
                    outputs[k] = out
            ref = comparable(outputs["safe"])
            for k in ("moonops", "csafe"):
                if comparable(outputs[k]) != ref:
                    sys.exit("%s resolves %s differently from the baseline" % (k, e))
            med = {k: statistics.median(v) for k, v in times.items()}
            cpu = {k: statistics.median(v) for k, v in cpus.items()}
            ratio_safe, ratio_c = med["safe"] / med["moonops"], med["csafe"] / med["moonops"]
            worst = ratio_safe if worst is None else min(worst, ratio_safe)
            print("%-8s %11s %13s %14s %7.1fx %7.1fx %11s %13s %7.1fx" % (
                e, ms(med["moonops"]), ms(med["safe"]), ms(med["csafe"]), ratio_safe, ratio_c,
                ms(cpu["moonops"]), ms(cpu["safe"]), cpu["safe"] / max(cpu["moonops"], 1e-6)))
        print("outputs agree (values, sources, redactions) in every environment")

        seed_runs = max(20, args.runs * 4)
        seed = [moonops, "env", "show", "--json", "--project", os.path.abspath(SEED)]
        runs = [timed(seed, env) for _ in range(seed_runs)]
        t = statistics.median(r[0] for r in runs)
        tc = statistics.median(r[2] for r in runs)
        tp = statistics.median(timed(baseline + [os.path.abspath(SEED)], env)[0] for _ in range(seed_runs // 2))
        print("seed-auth0: moonops %s (CPU %s), py safe_load %s (median of %d; target < 5 ms)%s" %
              (ms(t), ms(tc), ms(tp), seed_runs, "" if t < 0.005 else "  ** over target **"))
        print("target 10x faster than py safe_load: %s (worst %.1fx); load average %s" % (
            "met" if worst >= 10 else "NOT met", worst, load_average()))
    finally:
        if not args.keep:
            shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
