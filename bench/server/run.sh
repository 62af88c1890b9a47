#!/bin/bash
# Server benchmark: moonops serve vs adnanh/webhook vs a bare libmicrohttpd program,
# side by side in one run, with the same signed push payload and wrk settings.
#
#   bench/server/run.sh [path/to/moonops]      (DURATION=10 CONNECTIONS=32 THREADS=2 WORKERS=2 ROUNDS=3)
#
# Each round runs the five measurements one after another (the servers are started once);
# the summary gives the median of the rounds for every line, the largest size the moonops
# WAL reached during the accepted runs, and both servers' RSS after the last round.
# Paths: "filtered" = a signed push to a branch that is not deployed (answered 200
# ignored); "accepted" = a signed push to the deployed branch (moonops records the
# delivery and queues/coalesces a deployment in SQLite; webhook forks its command).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
MOONOPS=$(realpath "${1:-$HERE/../../build/moonops}")
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-2}
ROUNDS=${ROUNDS:-3}
SECRET=bench-secret-0123456789
WORK=$(mktemp -d /tmp/moonops-bench-server.XXXXXX)
PIDS=""
cleanup() {
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for p in $PIDS; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for p in $PIDS; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listening on $1" >&2; cat "$WORK"/*.log >&2
  exit 1
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# --- payloads (the same small push body for everyone, signed once) ----------
payload() { # ref
  printf '{"ref":"%s","before":"%s","after":"%s","deleted":false,"repository":{"full_name":"org/ws","clone_url":"https://example.com/org/ws.git"},"pusher":{"name":"dev"},"head_commit":{"id":"%s","message":"Update meltano.yml"}}' \
    "$1" 0000000000000000000000000000000000000000 4f2c9e1d8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e 4f2c9e1d8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e
}
payload refs/heads/feature >"$WORK/filtered.json"
payload refs/heads/main >"$WORK/accepted.json"
sig() { echo "sha256=$(openssl dgst -sha256 -hmac "$SECRET" -r "$1" | cut -d' ' -f1)"; }

# --- a workspace for moonops (a local repository, so deployments really run) --
git init -q -b main "$WORK/src"
printf 'version: 1\ndefault_environment: dev\nenvironments:\n- name: dev\n' >"$WORK/src/meltano.yml"
git -C "$WORK/src" add -A
git -C "$WORK/src" -c user.name=b -c user.email=b@example.com commit -q -m init
git clone -q --bare "$WORK/src" "$WORK/ws.git"
mkdir -p "$WORK/ops"
cat >"$WORK/ops/moonops.yml" <<YAML
data_dir: $WORK/ops/data
server:
  workers: $WORKERS
workspaces:
  - id: 7f3e2d1c-0b9a-4876-9543-210fedcba987
    name: bench
    repository: $WORK/ws.git
    secret_env: BENCH_SECRET
YAML
sed "s/@SECRET@/$SECRET/" "$HERE/hooks.json.in" >"$WORK/hooks.json"
cc -O2 -o "$WORK/bare" "$HERE/bare.c" $(pkg-config --cflags --libs libmicrohttpd openssl)

MO_PORT=$(free_port)
WH_PORT=$(free_port)
BARE_PORT=$(free_port)
(cd "$WORK/ops" && BENCH_SECRET=$SECRET exec "$MOONOPS" --quiet serve --listen "127.0.0.1:$MO_PORT" \
  >"$WORK/moonops.log" 2>&1) &
MO_PID=$!
webhook -hooks "$WORK/hooks.json" -ip 127.0.0.1 -port "$WH_PORT" >"$WORK/webhook.log" 2>&1 &
WH_PID=$!
"$WORK/bare" "$BARE_PORT" "$SECRET" "$WORKERS" &
BARE_PID=$!
PIDS="$MO_PID $WH_PID $BARE_PID"
wait_port "$MO_PORT"
wait_port "$WH_PORT"
wait_port "$BARE_PORT"

MO_URL="http://127.0.0.1:$MO_PORT/api/workspaces/7f3e2d1c-0b9a-4876-9543-210fedcba987/deployments/github-webhook"
WH_URL="http://127.0.0.1:$WH_PORT/hooks/deploy"
BARE_URL="http://127.0.0.1:$BARE_PORT/hook"

# sanity: each answers what we think it answers
check() { # url body-file expected-status
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' -H 'X-GitHub-Event: push' \
    -H "X-GitHub-Delivery: check-$$-$(date +%s%N)" -H "X-Hub-Signature-256: $(sig "$2")" --data-binary "@$2" "$1")
  [ "$code" = "$3" ] || { echo "unexpected $code from $1 (wanted $3)" >&2; exit 1; }
}
check "$MO_URL" "$WORK/filtered.json" 200
check "$MO_URL" "$WORK/accepted.json" 202
check "$BARE_URL" "$WORK/filtered.json" 200

WAL="$WORK/ops/data/moonops.db-wal"
watch_wal() { # largest size of the WAL while the caller's wrk runs, into $WORK/wal.max
  while [ ! -e "$WORK/wal.stop" ]; do
    size=$(stat -c %s "$WAL" 2>/dev/null || echo 0)
    max=$(cat "$WORK/wal.max" 2>/dev/null || echo 0)
    [ "$size" -gt "$max" ] && echo "$size" >"$WORK/wal.max"
    sleep 0.1
  done
}

run_wrk() { # name url body-file path
  [ "$1/$4" = moonops/accepted ] && { rm -f "$WORK/wal.stop"; watch_wal & WATCH=$!; }
  out=$(BENCH_BODY="$3" BENCH_SIG=$(sig "$3") wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
    -s "$HERE/push.lua" "$2")
  [ "$1/$4" = moonops/accepted ] && { touch "$WORK/wal.stop"; wait "$WATCH"; }
  rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  printf '%-5s %-10s %-9s %12s %10s %8s\n' "$ROUND" "$1" "$4" "$rps" "$p99" "${non2xx:-0}"
  # p99 in ms whatever unit wrk chose
  echo "$1 $4 $rps $(echo "$p99" | awk '/us$/ {print $1 / 1000; next} /ms$/ {print $1 + 0; next} /s$/ {print $1 * 1000}')" \
    >>"$WORK/results"
}

median() { # server path column -> median of that column over the rounds
  awk -v s="$1" -v p="$2" -v c="$3" '$1 == s && $2 == p {print $c}' "$WORK/results" | sort -g |
    awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency -s bench/server/push.lua URL   (moonops workers=$WORKERS, bare threads=$WORKERS)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %-10s %-9s %12s %10s %8s\n' round server path req/s p99 non-2xx
: >"$WORK/results"
for ROUND in $(seq "$ROUNDS"); do
  run_wrk bare "$BARE_URL" "$WORK/filtered.json" filtered
  run_wrk moonops "$MO_URL" "$WORK/filtered.json" filtered
  run_wrk webhook "$WH_URL" "$WORK/filtered.json" filtered
  run_wrk moonops "$MO_URL" "$WORK/accepted.json" accepted
  run_wrk webhook "$WH_URL" "$WORK/accepted.json" accepted
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
sleep 1
MO_RSS=$(rss_kb "$MO_PID")
WH_RSS=$(rss_kb "$WH_PID")
echo
echo "medians of $ROUNDS rounds:"
printf '%-10s %-9s %12s %10s\n' server path req/s p99-ms
for line in "bare filtered" "moonops filtered" "webhook filtered" "moonops accepted" "webhook accepted"; do
  set -- $line
  printf '%-10s %-9s %12s %10s\n' "$1" "$2" "$(median "$1" "$2" 3)" "$(median "$1" "$2" 4)"
done
awk -v a="$(median moonops filtered 3)" -v b="$(median webhook filtered 3)" -v c="$(median bare filtered 3)" \
  -v d="$(median moonops accepted 3)" -v e="$(median webhook accepted 3)" 'BEGIN {
  printf "filtered: moonops/webhook = %.2fx   moonops/bare libmicrohttpd = %.2f\n", a / b, a / c
  printf "accepted: moonops/webhook = %.2fx\n", d / e
}'
echo "RSS after the run: moonops $((MO_RSS / 1024)) MB, webhook $((WH_RSS / 1024)) MB"
echo "moonops WAL: largest $(( $(cat "$WORK/wal.max" 2>/dev/null || echo 0) / 1024 )) KiB during the accepted runs, $(( $(stat -c %s "$WAL" 2>/dev/null || echo 0) / 1024 )) KiB after"
DEPLOYS=$(python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('select count(*) from deliveries').fetchone()[0], c.execute('select count(*) from deployments').fetchone()[0])" "$WORK/ops/data/moonops.db")
echo "moonops store after the run: deliveries, deployments = $DEPLOYS"
