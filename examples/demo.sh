#!/usr/bin/env bash
# The moonops demo: the whole DataOps loop on this machine, in a temporary directory.
#   examples/demo.sh [path/to/moonops]          (`make demo` installs, builds and runs it)
# Starts git daemon, `moonops serve` and (when buildah is there) a docker-registry on
# free 127.0.0.1 ports and stops every one of them on exit, whatever happens. It
# writes only inside its temporary directory (HOME points there too, so your git
# config and crontab are never read or changed) and removes that directory at the end.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../build/moonops}
[ -x "$bin" ] || { echo "demo: no moonops binary at $bin (run 'make build' first)" >&2; exit 1; }
MOONOPS=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
for tool in git curl openssl python3; do
  command -v "$tool" >/dev/null || { echo "demo: needs $tool ('make deps' installs it)" >&2; exit 1; }
done

D=$(mktemp -d "${TMPDIR:-/tmp}/moonops-demo.XXXXXX")
declare -A started=() # pid -> what it is
stopped=0

bold() { if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }
step() { echo; bold "== $*"; }
say() { printf '   %s\n' "$*"; }
show() { printf '\n$ %s\n' "$*"; "$@"; }

# Every process runs in a session of its own, so stopping it stops its children too.
start() { # what log-file command...
  local what=$1 log=$2
  shift 2
  setsid "$@" >"$log" 2>&1 </dev/null &
  started[$!]=$what
}
stop_all() {
  local pid i
  for pid in "${!started[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${!started[@]}"; do
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || true
      say "${started[$pid]} (pid $pid) did not stop within 10 s: killed"
    fi
    local code=0
    wait "$pid" 2>/dev/null || code=$?
    if [ "$stopped" = 1 ]; then
      case $code in
        0) say "stopped ${started[$pid]} (pid $pid): it finished its work and exited 0" ;;
        143) say "stopped ${started[$pid]} (pid $pid)" ;;
        *) say "stopped ${started[$pid]} (pid $pid): exit status $code" ;;
      esac
    fi
    unset "started[$pid]"
  done
}
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  stop_all
  if [ -d "$D/containers" ] && command -v buildah >/dev/null; then
    buildah rm -a >/dev/null 2>&1 || true
    buildah rmi -a -f >/dev/null 2>&1 || true
  fi
  rm -rf "$D" 2>/dev/null || true
  if [ "$code" -eq 0 ]; then
    echo
    bold "demo: done. Every process it started is stopped and $D is gone."
  else
    echo "demo: failed (exit $code); every process it started is stopped and $D is removed." >&2
  fi
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { for _ in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

export HOME="$D/home" GIT_CONFIG_NOSYSTEM=1 XDG_CONFIG_HOME="$D/home/.config" XDG_DATA_HOME="$D/home/.local/share"
unset MOONOPS_CONFIG MOONOPS_RECIPE_PATH MOONOPS_PLUGIN_PATH MELTANO_ENVIRONMENT MOONOPS_GIT_TOKEN
mkdir -p "$HOME"
git config --global user.name "Dana Engineer"
git config --global user.email "dana@example.invalid"
git config --global init.defaultBranch main
cd "$D"
moonops() { "$MOONOPS" "$@"; }

bold "moonops demo: deploy on push, environments, promotion, images and schedules for a Meltano project"
say "Everything runs on 127.0.0.1 in $D and is removed at the end."
say "$("$MOONOPS" version)"

step "1. Three workspaces - dev, staging, prod - each a git repository on a local git daemon"
GIT_PORT=$(free_port)
mkdir -p "$D/repos"
for r in demo-dev demo-staging demo; do git init -q --bare "$D/repos/$r.git"; done
start "git daemon" "$D/git-daemon.log" git daemon --reuseaddr --listen=127.0.0.1 --port="$GIT_PORT" --base-path="$D/repos" \
  --export-all --enable=receive-pack --log-destination=none "$D/repos"
wait_port "$GIT_PORT"
say "git daemon serves git://127.0.0.1:$GIT_PORT/demo-dev.git, demo-staging.git and demo.git."
say "Each starts with the same example Meltano project (examples/workspace): a meltano.yml with"
say "dev, staging and prod environments, and a workspace.yml naming the pipelines image."
git clone -q "git://127.0.0.1:$GIT_PORT/demo-dev.git" "$D/dev" 2>/dev/null
cp -R "$here/workspace/." "$D/dev/"
git -C "$D/dev" add -A && git -C "$D/dev" commit -qm "Example Meltano project"
for r in demo-dev demo-staging demo; do git -C "$D/dev" push -q "git://127.0.0.1:$GIT_PORT/$r.git" main; done
git -C "$D/dev" fetch -q origin && git -C "$D/dev" branch -q -u origin/main
say "moonops init writes moonops.yml: one entry per workspace, a fresh id and webhook secret each."
show moonops init ops --name demo --repository-base "git://127.0.0.1:$GIT_PORT/"
export MOONOPS_CONFIG="$D/ops/moonops.yml"
say "MOONOPS_CONFIG=ops/moonops.yml from here on, so every moonops command below uses it."
ws_id() { awk -v n="$1" '/- id:/{id=$3} $1=="name:" && $2==n {print id}' "$D/ops/moonops.yml"; }
DEV_ID=$(ws_id demo-dev) STAGING_ID=$(ws_id demo-staging) PROD_ID=$(ws_id demo)

step "2. moonops serve: a signed push webhook deploys the dev workspace"
API_PORT=$(free_port)
export MOONOPS_API_TOKENS="demo-token-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
start "moonops serve" "$D/serve.log" "$MOONOPS" serve --listen "127.0.0.1:$API_PORT"
wait_port "$API_PORT"
say "moonops serve listens on http://127.0.0.1:$API_PORT: webhooks, the REST API, /healthz, /metrics."
api() { curl -sS -H "Authorization: Bearer $MOONOPS_API_TOKENS" "http://127.0.0.1:$API_PORT$1"; }
webhook() { # workspace-id after-sha secret -> prints the HTTP status, body in $D/answer.json
  local body sig
  body=$(printf '{"ref":"refs/heads/main","before":"%040d","after":"%s","deleted":false,"repository":{"full_name":"demo/%s"}}' 0 "$2" "$1")
  sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$3" -r | cut -d' ' -f1)
  curl -sS -o "$D/answer.json" -w '%{http_code}' -X POST \
    -H "Content-Type: application/json" -H "X-GitHub-Event: push" \
    -H "X-GitHub-Delivery: $(python3 -c 'import uuid; print(uuid.uuid4())')" -H "X-Hub-Signature-256: sha256=$sig" \
    --data-binary "$body" "http://127.0.0.1:$API_PORT/api/workspaces/$1/deployments/github-webhook"
}
secret() { tr -d '\n' <"$D/ops/secrets/$1.secret"; }
wait_deployment() { # workspace-id deployment-id
  local status
  for _ in $(seq 600); do
    status=$(api "/api/workspaces/$1/deployments/$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
    case $status in
      COMPLETE) return 0 ;;
      ERROR | INTERRUPTED | SUPERSEDED) say "deployment $2 ended $status"; return 1 ;;
    esac
    sleep 0.1
  done
  say "deployment $2 did not finish within a minute"
  return 1
}
say "A data engineer moves the dev extraction start date and pushes to the dev repository:"
sed -i 's/job_start_date: "2024-01-01"/job_start_date: "2024-06-01"/' "$D/dev/meltano.yml"
git -C "$D/dev" commit -qam "Load auth0 users from June"
show git -C dev push -q origin main
AFTER=$(git -C "$D/dev" rev-parse HEAD)
say "GitHub would now POST a signed push event; git daemon has no webhooks, so the demo sends it."
say "First with a signature made from the wrong secret - refused, nothing is queued:"
code=$(webhook "$DEV_ID" "$AFTER" "not-the-secret")
say "HTTP $code $(cat "$D/answer.json")"
say "Then signed with the workspace's secret (secrets/demo-dev.secret) - accepted and queued:"
code=$(webhook "$DEV_ID" "$AFTER" "$(secret demo-dev)")
say "HTTP $code $(cat "$D/answer.json")"
DEP=$(json_field "$D/answer.json" id)
wait_deployment "$DEV_ID" "$DEP"
say "The server's log has one line per request (secrets never appear in it):"
grep -E 'github-webhook|deployment complete' "$D/serve.log" | sed -e 's/^/     /' -e 's/ remote=[^ ]*//' || true
say "The fetch, validation and switch ran in the server's deploy worker. The history:"
show moonops deploy demo-dev --list
say "What is live is a plain directory behind the atomically swapped 'current' symlink:"
say "ops/.moonops/workspaces/demo-dev/current -> $(readlink "$D/ops/.moonops/workspaces/demo-dev/current")"
say "The REST API tells the same (bearer token from \$MOONOPS_API_TOKENS):"
printf '\n$ curl -s -H "Authorization: Bearer $MOONOPS_API_TOKENS" http://127.0.0.1:%s/api/workspaces/demo-dev\n' "$API_PORT"
api "/api/workspaces/demo-dev" | python3 -m json.tool --sort-keys

step "3. Environments: what the pipelines run with, and where every value comes from"
say "The same project resolves differently per environment. dev, then prod; client_secret is a"
say "secret, so it shows as (redacted):"
show moonops env show --workspace demo-dev --plugin tap-auth0
show moonops env show --workspace demo-dev --environment prod --plugin tap-auth0
say "Side by side, only what differs:"
show moonops env diff dev prod --workspace demo-dev
say "The active environment of a workspace is moonops state; the next deployment validates against it:"
show moonops env use staging --workspace demo-dev
show moonops env list --workspace demo-dev
show moonops env use dev --workspace demo-dev

step "4. Promotion: dev -> staging -> prod, reviewed, pushed, deployed by webhook"
say "moonops promote merges like 'git pull -X theirs --allow-unrelated-histories', then shows the"
say "changed files and the configuration change of the target's environment before pushing."
show moonops promote --from demo-dev --to demo-staging --yes
say "The push lands in demo-staging; its webhook (sent by the demo, as above) deploys it:"
code=$(webhook "$STAGING_ID" "$(git ls-remote "git://127.0.0.1:$GIT_PORT/demo-staging.git" main | cut -f1)" "$(secret demo-staging)")
DEP=$(json_field "$D/answer.json" id)
wait_deployment "$STAGING_ID" "$DEP" && say "webhook HTTP $code -> demo-staging deployment $DEP: COMPLETE"
say "With the promotion chain in moonops.yml, --to alone names the next step (source: demo-staging):"
show moonops promote --to demo --yes
code=$(webhook "$PROD_ID" "$(git ls-remote "git://127.0.0.1:$GIT_PORT/demo.git" main | cut -f1)" "$(secret demo)")
DEP=$(json_field "$D/answer.json" id)
wait_deployment "$PROD_ID" "$DEP" && say "webhook HTTP $code -> demo deployment $DEP: COMPLETE"
say "Promoting again changes nothing and pushes nothing:"
show moonops promote --to demo --yes

step "5. The pipelines image: built with buildah, pushed, skipped when it already exists"
if ! command -v buildah >/dev/null || ! command -v docker-registry >/dev/null || [ ! -x /bin/busybox ]; then
  say "skipped: this needs buildah, docker-registry and busybox-static, and this machine lacks"
  say "$(for t in buildah docker-registry; do command -v $t >/dev/null || printf '%s ' $t; done; [ -x /bin/busybox ] || printf busybox-static)"
  say "('make deps' installs them)."
else
  REG_PORT=$(free_port)
  printf 'version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: "127.0.0.1:%s", secret: demo}\n' \
    "$D/registry" "$REG_PORT" >"$D/registry.yml"
  start "docker-registry" "$D/registry.log" docker-registry serve "$D/registry.yml"
  wait_port "$REG_PORT"
  mkdir -p "$D/containers" "$D/base"
  export CONTAINERS_STORAGE_CONF="$D/containers/storage.conf" STORAGE_DRIVER=vfs
  printf '[storage]\ndriver = "vfs"\nrunroot = "%s/containers/run"\ngraphroot = "%s/containers/root"\n' "$D" "$D" >"$CONTAINERS_STORAGE_CONF"
  say "A docker-registry runs on 127.0.0.1:$REG_PORT. The real base image would be meltano/meltano;"
  say "offline, the demo builds a tiny one (busybox and a stand-in 'meltano' command) and pushes it there."
  cp /bin/busybox "$D/base/busybox"
  printf '#!/bin/sh\necho "meltano $*: done (demo stand-in for Meltano)"\n' >"$D/base/meltano"
  chmod +x "$D/base/meltano"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nCOPY meltano /bin/meltano\nRUN mkdir -p /tmp /root\n' >"$D/base/Dockerfile"
  buildah bud -q --isolation chroot -t "127.0.0.1:$REG_PORT/demo-base:latest" "$D/base" >/dev/null 2>&1
  buildah push -q --tls-verify=false "127.0.0.1:$REG_PORT/demo-base:latest" >/dev/null 2>&1
  export MELTANO_DATAFLOW_DOCKERREGISTRY="127.0.0.1:$REG_PORT"
  say "The image is \$MELTANO_DATAFLOW_DOCKERREGISTRY/<pipelines_image from workspace-prod.yml>,"
  say "tagged with that tag and with sha-<commit>. (The builder's own output is trimmed here.)"
  image() {
    printf '\n$ moonops image --workspace demo --builder buildah --base %s\n' "127.0.0.1:$REG_PORT/demo-base:latest"
    moonops image --workspace demo --builder buildah --base "127.0.0.1:$REG_PORT/demo-base:latest" 2>&1 |
      grep -E '^(20[0-9-]+T[0-9:]+Z (INFO|WARN|ERROR)|STEP |meltano |[^ ]+@sha256:)'
  }
  image
  say "Second run on the same commit: the registry already has sha-<commit>, so nothing is built:"
  image
fi

step "6. Schedules: any recipe from cron, never overlapping"
cat >>"$D/ops/moonops.yml" <<YAML
schedules:
  - { name: nightly-image, cron: "0 2 * * *", recipe: image, args: [--workspace, demo] }
  - { name: promote-staging, cron: "0 6 * * 1-5", recipe: promote, args: [--to, demo-staging, --yes] }
YAML
say "Two schedules added to moonops.yml: a nightly image build, and a weekday promotion to staging."
show moonops schedule list
show moonops schedule crontab
say "'moonops schedule install' writes these lines into your crontab between marker comments;"
say "'moonops serve --scheduler' runs them in the server instead."

step "7. Stopping everything the demo started"
stopped=1
stop_all
