#!/usr/bin/env bash
# Cold-start time: median wall time of `moonops lua -e ''` and `moonops recipes` next to
# `lua5.4 -e ''` and `python3 -c ''`, written into the "Startup" section of bench/RESULTS.md.
#
#   bench/startup.sh [MOONOPS_BIN] [RUNS]      (defaults: build/moonops, 200)
#
# Uses hyperfine when it is installed, otherwise a loop timed with bash's $EPOCHREALTIME
# (no extra process per measurement). Each command runs in an empty temporary directory
# with HOME pointing there, so only the bundled recipes are found.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../build/moonops}
runs=${2:-200}
results=$here/RESULTS.md

[ -x "$bin" ] || { echo "startup.sh: no moonops binary at $bin (build first, or pass its path)" >&2; exit 2; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
case $runs in '' | *[!0-9]*) echo "startup.sh: RUNS must be a number" >&2; exit 2 ;; esac

work=$(mktemp -d /tmp/moonops-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
export HOME=$work NO_COLOR=1
unset MOONOPS_RECIPE_PATH MOONOPS_LUA_PATH

# median_ms CMD... -> median wall time in milliseconds (3 decimals)
median_ms() {
  if command -v hyperfine >/dev/null; then
    hyperfine -N --warmup 10 --runs "$runs" --export-json "$work/h.json" -- "$(printf '%q ' "$@")" >/dev/null
    python3 -c 'import json,sys; print("%.3f" % (json.load(open(sys.argv[1]))["results"][0]["median"]*1000))' "$work/h.json"
    return
  fi
  local i t0 t1 samples=()
  for ((i = 0; i < 10; i++)); do "$@" >/dev/null 2>&1 || true; done # warm the page cache
  for ((i = 0; i < runs; i++)); do
    t0=$EPOCHREALTIME
    "$@" >/dev/null 2>&1 || true
    t1=$EPOCHREALTIME
    samples+=("$(((${t1/./} - ${t0/./})))") # microseconds
  done
  printf '%s\n' "${samples[@]}" | sort -n | awk '{ a[NR] = $1 } END {
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.3f\n", m / 1000 }'
}

declare -a names=("moonops lua -e ''" "moonops recipes" "lua5.4 -e ''" "python3 -c ''")
declare -a times
times[0]=$(median_ms "$bin" lua -e '')
times[1]=$(median_ms "$bin" recipes)
if command -v lua5.4 >/dev/null; then times[2]=$(median_ms lua5.4 -e ''); else times[2]="n/a"; fi
if command -v python3 >/dev/null; then times[3]=$(median_ms python3 -c ''); else times[3]="n/a"; fi

tool="a bash loop timed with \$EPOCHREALTIME"
command -v hyperfine >/dev/null && tool="hyperfine -N ($(hyperfine --version))"
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' || echo unknown)

section=$(mktemp "$work/section.XXXXXX")
{
  echo "## Startup"
  echo
  echo "Median wall time of $runs runs each, measured with $tool, on $(nproc) x $cpu,"
  echo "$(date -u +%Y-%m-%d) (\`bench/startup.sh\`). Target: the moonops lines well under 10 ms."
  echo
  echo "| command | median (ms) |"
  echo "| --- | ---: |"
  for i in "${!names[@]}"; do echo "| \`${names[$i]}\` | ${times[$i]} |"; done
  echo
  echo "$("$bin" version)"
  echo
} >"$section"

# Replace the Startup section (up to the next "## " heading), or add it; other sections stay.
if [ -f "$results" ] && grep -q '^## Startup$' "$results"; then
  awk -v section="$section" '
    /^## Startup$/ { while ((getline line < section) > 0) print line; skip = 1; next }
    skip && /^## / { skip = 0 }
    !skip { print }' "$results" >"$work/RESULTS.md"
else
  { if [ -f "$results" ]; then cat "$results"; else printf '# Benchmarks\n\n'; fi; cat "$section"; } >"$work/RESULTS.md"
fi
cp "$work/RESULTS.md" "$results"

for i in "${!names[@]}"; do printf '%-22s %8s ms\n' "${names[$i]}" "${times[$i]}"; done
