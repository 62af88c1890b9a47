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
    samples+=("$((${t1/[.,]/} - ${t0/[.,]/}))") # microseconds
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

# The floor set by the dynamic loader: an empty C program linked against the same
# libraries, and against all of them but libcurl, libgit2 and libmicrohttpd.
floor_all="n/a" floor_light="n/a"
if command -v cc >/dev/null && command -v pkg-config >/dev/null; then
  echo 'int main(void) { return 0; }' >"$work/empty.c"
  # shellcheck disable=SC2046 # the flags are meant to split into words
  if cc "$work/empty.c" -o "$work/floor_all" -Wl,--no-as-needed \
    $(pkg-config --libs lua5.4 yaml-0.1 libcurl libgit2 openssl libmicrohttpd sqlite3) 2>/dev/null &&
    cc "$work/empty.c" -o "$work/floor_light" -Wl,--no-as-needed \
      $(pkg-config --libs lua5.4 yaml-0.1 openssl sqlite3) 2>/dev/null; then
    floor_all=$(median_ms "$work/floor_all")
    floor_light=$(median_ms "$work/floor_light")
  fi
fi

tool="a bash loop timed with \$EPOCHREALTIME"
command -v hyperfine >/dev/null && tool="hyperfine -N ($(hyperfine --version))"
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' || echo unknown)
load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo unknown)

section=$(mktemp "$work/section.XXXXXX")
{
  echo "## Startup"
  echo
  echo "Median wall time of $runs runs each, measured with $tool, on $(nproc) x $cpu,"
  echo "$(date -u +%Y-%m-%d), load average $load when done (\`bench/startup.sh\`). Target: the moonops"
  echo "lines well under 10 ms. Other work on the machine inflates every line alike."
  echo
  echo "| command | median (ms) |"
  echo "| --- | ---: |"
  for i in "${!names[@]}"; do echo "| \`${names[$i]}\` | ${times[$i]} |"; done
  echo "| an empty C program linked like moonops | $floor_all |"
  echo "| ... without libcurl, libgit2, libmicrohttpd | $floor_light |"
  echo
  echo "Most of moonops' start-up is the dynamic loader: the two last lines show what"
  echo "mapping and relocating the linked libraries costs before any moonops code runs"
  echo "(Debian builds them with BIND_NOW, so every symbol is resolved at start). Loading"
  echo "libcurl, libgit2 and libmicrohttpd only when a module needs them would save the"
  echo "difference on every cron run that does not talk to git or HTTP."
  echo
  "$bin" version
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
printf '%-22s %8s ms\n' "empty, linked alike" "$floor_all" "empty, lighter links" "$floor_light"
