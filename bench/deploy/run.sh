#!/usr/bin/env bash
# Push-to-live latency of a small workspace (meltano.yml + 50 files) served by git daemon:
# `moonops deploy W` against the equivalent shell sequence (git fetch into a bare mirror,
# git archive | tar -x into a new release directory, ln -sfn + mv -T), interleaved in one run.
#
#   bench/deploy/run.sh [path/to/moonops] [rounds]
set -euo pipefail

MOONOPS=${1:-$(dirname "$0")/../../build/moonops}
MOONOPS=$(realpath "$MOONOPS")
ROUNDS=${2:-21}
export GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.com \
  GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.com

D=$(mktemp -d /tmp/moonops-bench-deploy.XXXXXX)
export HOME=$D
DAEMON_PID=
cleanup() {
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
  rm -rf "$D"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$D/repos" "$D/src" "$D/ops" "$D/shell/releases"
git init -q --bare -b main "$D/repos/ws.git"
git daemon --reuseaddr --listen=127.0.0.1 --port="$PORT" --base-path="$D/repos" --export-all \
  --enable=receive-pack "$D/repos" >"$D/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
URL="git://127.0.0.1:$PORT/ws.git"

# The workspace: meltano.yml plus 50 files.
cd "$D/src"
git init -q -b main
cat >meltano.yml <<'EOF'
version: 1
default_environment: dev
environments:
- name: dev
- name: prod
plugins:
  extractors:
  - name: tap-auth0
    config:
      domain: example.eu.auth0.com
  loaders:
  - name: target-postgres
    config:
      host: localhost
EOF
mkdir -p transform/models
for i in $(seq 50); do printf 'select %d as n -- model %d\n' "$i" "$i" >"transform/models/m$i.sql"; done
git add -A && git commit -q -m initial
git remote add origin "$URL"
git push -q origin main

cat >"$D/ops/moonops.yml" <<EOF
data_dir: data
workspaces:
  - id: 0b8d7c1e-5a3f-4e2b-9c6d-1f0e2d3c4b5a
    name: ws
    repository: $URL
EOF

# The shell sequence's bare mirror, set up once like moonops' own.
git init -q --bare "$D/shell/repo.git"
git -C "$D/shell/repo.git" remote add origin "$URL"

push() {
  printf -- '-- round %s %s\n' "$1" "$2" >>"$D/src/transform/models/m1.sql"
  git -C "$D/src" commit -q -am "round $1 $2"
  git -C "$D/src" push -q origin main
}

shell_deploy() {
  local mirror=$D/shell/repo.git sha name
  git -C "$mirror" fetch -q --prune origin '+refs/heads/*:refs/heads/*'
  sha=$(git -C "$mirror" rev-parse refs/heads/main)
  name=$(date -u +%Y%m%dT%H%M%S.%3NZ)-${sha:0:12}
  mkdir "$D/shell/releases/$name.tmp"
  git -C "$mirror" archive "$sha" | tar -x -C "$D/shell/releases/$name.tmp"
  mv "$D/shell/releases/$name.tmp" "$D/shell/releases/$name"
  ln -sfn "releases/$name" "$D/shell/current.tmp"
  mv -T "$D/shell/current.tmp" "$D/shell/current"
}

moonops_deploy() {
  (cd "$D/ops" && "$MOONOPS" --quiet deploy ws >/dev/null)
}

now() { echo "${EPOCHREALTIME/./}"; } # microseconds

declare -a M_LIVE S_LIVE M_DEP S_DEP
# One warm-up round each (first fetch creates the mirror's objects), not counted.
push 0 moonops && moonops_deploy
push 0 shell && shell_deploy
for r in $(seq "$ROUNDS"); do
  t0=$(now); push "$r" moonops; t1=$(now); moonops_deploy; t2=$(now)
  M_LIVE+=($((t2 - t0))); M_DEP+=($((t2 - t1)))
  t0=$(now); push "$r" shell; t1=$(now); shell_deploy; t2=$(now)
  S_LIVE+=($((t2 - t0))); S_DEP+=($((t2 - t1)))
done

# Check both really went live with the same tree (moonops catches up with the last push).
moonops_deploy
diff -r "$D/ops/data/workspaces/ws/current/" "$D/shell/current/" || {
  echo "bench: the two live releases differ" >&2
  exit 1
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ms() { awk -v u="$1" 'BEGIN {printf "%.1f", u/1000}'; }
m_live=$(median "${M_LIVE[@]}"); s_live=$(median "${S_LIVE[@]}")
m_dep=$(median "${M_DEP[@]}"); s_dep=$(median "${S_DEP[@]}")
echo "rounds: $ROUNDS (medians; push = git push over git daemon)"
printf '%-40s %10s %10s\n' "" "moonops" "shell"
printf '%-40s %8s ms %7s ms\n' "push-to-live (push + deploy)" "$(ms "$m_live")" "$(ms "$s_live")"
printf '%-40s %8s ms %7s ms\n' "deploy only (fetch..switch)" "$(ms "$m_dep")" "$(ms "$s_dep")"
awk -v a="$m_live" -v b="$s_live" -v c="$m_dep" -v d="$s_dep" \
  'BEGIN {printf "ratio moonops/shell: push-to-live %.2f, deploy %.2f\n", a/b, c/d}'
