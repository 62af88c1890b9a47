#!/bin/bash
# Promotion benchmark: `moonops promote --yes` versus the documented git CLI flow
#   git clone DST; git remote add src SRC; git pull -X theirs --allow-unrelated-histories src main; git push
# on identical copies of a generated target (FILES files, COMMITS commits on each side),
# with the remotes served by git daemon on loopback and as plain paths.
# Usage: bench/promote/run.sh [MOONOPS_BIN] [FILES] [COMMITS]
set -eu
BIN=${1:-build/moonops}
FILES=${2:-10000}
COMMITS=${3:-1000}
HERE=$(cd "$(dirname "$0")" && pwd)
case $BIN in /*) ;; *) BIN=$(pwd)/$BIN ;; esac

W=$(mktemp -d /tmp/moonops-bench-promote.XXXXXX)
DAEMON=
cleanup() {
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT INT TERM
export GIT_CONFIG_NOSYSTEM=1 HOME="$W/home"
mkdir -p "$HOME" "$W/srv"
git config --global user.name "Bench" && git config --global user.email bench@example.com
git config --global init.defaultBranch main

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
# wall, user+sys CPU (children included) of a command, as "wall cpu"
TIMEFORMAT='%R %U %S'
measure() { { time "$@" >/dev/null 2>&1; } 2>&1 | awk '{ printf "%.3f %.3f\n", $1, $2 + $3 }'; }
manual_flow() {
  cd "$W" && git clone -q "$(url t-git.git)" manual && cd manual && git remote add src "$(url source.git)" \
    && git -c pull.rebase=false pull -q --no-edit -X theirs --allow-unrelated-histories src main \
    && git push -q origin main
}
moonops_flow() {
  cd "$W/cwd" && "$BIN" --quiet promote --from "$(url source.git)" --to "$(url t-mo.git)" --yes
}

t=$(now)
for side in source target; do
  git init -q --bare "$W/srv/$side.git"
  "$BIN" lua "$HERE/generate.lua" "$side" "$FILES" "$COMMITS" | git -C "$W/srv/$side.git" fast-import --done --quiet
done
gen=$(since "$t")

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
git daemon --reuseaddr --listen=127.0.0.1 --port="$PORT" --base-path="$W/srv" --export-all \
  --enable=receive-pack "$W/srv" 2>/dev/null &
DAEMON=$!
i=0
until bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 100 ] || { echo "git daemon did not start" >&2; exit 1; }; sleep 0.05
done

printf 'promote: %s files, %s commits on each side (generated in %s s)\n\n' "$FILES" "$COMMITS" "$gen"
printf '| remotes | git CLI wall (s) | moonops wall (s) | wall ratio | git CLI CPU (s) | moonops CPU (s) | CPU ratio | same tree and parents |\n'
printf '| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n'
status=0
for kind in daemon path; do
  rm -rf "$W/srv/t-git.git" "$W/srv/t-mo.git" "$W/manual" "$W/cwd"
  cp -a "$W/srv/target.git" "$W/srv/t-git.git"
  cp -a "$W/srv/target.git" "$W/srv/t-mo.git"
  if [ "$kind" = daemon ]; then url() { echo "git://127.0.0.1:$PORT/$1"; }; else url() { echo "$W/srv/$1"; }; fi

  read -r cli cli_cpu < <(measure manual_flow)
  mkdir -p "$W/cwd"
  read -r mo mo_cpu < <(measure moonops_flow)
  same=yes
  [ "$(git -C "$W/srv/t-git.git" rev-parse 'main^{tree}')" = "$(git -C "$W/srv/t-mo.git" rev-parse 'main^{tree}')" ] \
    && [ "$(git -C "$W/srv/t-git.git" rev-parse 'main^@')" = "$(git -C "$W/srv/t-mo.git" rev-parse 'main^@')" ] \
    || { same=NO; status=1; }
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$kind" "$cli" "$mo" "$(ratio "$mo" "$cli")" \
    "$cli_cpu" "$mo_cpu" "$(ratio "$mo_cpu" "$cli_cpu")" "$same"
done
exit $status
