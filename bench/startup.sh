#!/usr/bin/env bash
# Cold-start time: median wall time of `moonops lua -e ''` and `moonops recipes` next to
# `lua5.4 -e ''` and `python3 -c ''`, written into the "Startup" section of bench/RESULTS.md.
#
#   bench/startup.sh [MOONOPS_BIN] [RUNS]      (defaults: build/moonops, 200)
#
# Timed with bash's $EPOCHREALTIME (no extra process per measurement), the commands
# interleaved round by round. Each runs in an empty temporary directory with HOME
# pointing there, so only the bundled recipes are found.
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

# The commands, one function each. The two floor lines are an empty C program linked
# against every library moonops uses, and against Lua and libyaml only: what the dynamic
# loader costs before any code runs.
c_moonops_lua() { "$bin" lua -e ''; }
c_moonops_recipes() { "$bin" recipes; }
c_lua() { lua5.4 -e ''; }
c_python() { python3 -c ''; }
c_floor_all() { "$work/floor_all"; }
c_floor_light() { "$work/floor_light"; }
names=("moonops lua -e ''" "moonops recipes" "lua5.4 -e ''" "python3 -c ''"
  "an empty C program linked with every library moonops uses" "an empty C program linked with Lua and libyaml")
funcs=(c_moonops_lua c_moonops_recipes c_lua c_python c_floor_all c_floor_light)

have=(1 1 0 0 0 0)
command -v lua5.4 >/dev/null && have[2]=1
command -v python3 >/dev/null && have[3]=1
if command -v cc >/dev/null && command -v pkg-config >/dev/null; then
  echo 'int main(void) { return 0; }' >"$work/empty.c"
  # shellcheck disable=SC2046 # the flags are meant to split into words
  if cc "$work/empty.c" -o "$work/floor_all" -Wl,--no-as-needed \
    $(pkg-config --libs lua5.4 yaml-0.1 libcurl libgit2 openssl libmicrohttpd sqlite3) 2>/dev/null &&
    cc "$work/empty.c" -o "$work/floor_light" -Wl,--no-as-needed \
      $(pkg-config --libs lua5.4 yaml-0.1) 2>/dev/null; then
    have[4]=1 have[5]=1
  fi
fi

# Interleaved rounds: every command runs once per round, so load from other work on the
# machine hits all of them alike. Samples in microseconds, one file per command.
for i in "${!funcs[@]}"; do
  : >"$work/samples.$i"
  [ "${have[$i]}" = 1 ] && for ((w = 0; w < 5; w++)); do "${funcs[$i]}" >/dev/null 2>&1 || true; done
done
for ((round = 0; round < runs; round++)); do
  for i in "${!funcs[@]}"; do
    [ "${have[$i]}" = 1 ] || continue
    t0=$EPOCHREALTIME
    "${funcs[$i]}" >/dev/null 2>&1 || true
    t1=$EPOCHREALTIME
    echo "$((${t1/[.,]/} - ${t0/[.,]/}))" >>"$work/samples.$i"
  done
done

# median of a samples file, in milliseconds
median_ms() {
  sort -n "$1" | awk '{ a[NR] = $1 } END {
    if (NR == 0) { print "n/a"; exit }
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.3f\n", m / 1000 }'
}
times=()
for i in "${!funcs[@]}"; do times[i]=$(median_ms "$work/samples.$i"); done

cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' || echo unknown)
load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo unknown)
lazy=""
for so in "$(dirname "$bin")"/modules/*.so; do
  [ -e "$so" ] || continue
  so=${so##*/}
  lazy+="${lazy:+, }${so%.so}"
done

section=$(mktemp "$work/section.XXXXXX")
{
  echo "## Startup"
  echo
  echo "Median wall time of $runs interleaved rounds, timed with bash's \$EPOCHREALTIME, on $(nproc) x $cpu,"
  echo "$(date -u +%Y-%m-%d), load average $load when done (\`bench/startup.sh\`). Target: the moonops"
  echo "lines well under 10 ms. Other work on the machine inflates every line alike."
  echo
  echo "| command | median (ms) |"
  echo "| --- | ---: |"
  for i in 0 1 2 3; do echo "| \`${names[$i]}\` | ${times[$i]} |"; done
  for i in 4 5; do echo "| ${names[$i]} | ${times[$i]} |"; done
  echo
  echo "The two last lines are the dynamic loader's share: libgit2, libcurl, libmicrohttpd,"
  echo "OpenSSL and SQLite bring some forty libraries, all built with BIND_NOW, so every"
  echo "symbol is resolved at start."
  if [ -n "$lazy" ]; then
    echo "This moonops loads those modules as shared objects on first \`require\` ($lazy),"
    echo "so a run pays for a library only when it uses it."
  else
    echo "This moonops links all of them up front."
  fi
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

for i in "${!names[@]}"; do printf '%-60s %8s ms\n' "${names[$i]}" "${times[$i]}"; done
