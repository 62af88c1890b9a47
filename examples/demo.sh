#!/usr/bin/env bash
# The moonops demo: the whole DataOps loop on loopback, in a temporary directory.
#   examples/demo.sh [path/to/moonops]
# Starts git daemon, moonops serve and (when buildah is there) a docker-registry on free
# 127.0.0.1 ports, and stops every one of them on exit. Touches nothing outside its
# temporary directory except your git config (never) and crontab (never).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
MOONOPS=$(cd "$(dirname "${1:-$here/../build/moonops}")" && pwd)/$(basename "${1:-moonops}")
[ -x "$MOONOPS" ] || { echo "demo: no moonops binary at $MOONOPS (run 'make build')" >&2; exit 1; }

D=$(mktemp -d /tmp/moonops-demo.XXXXXX)
pids=()
cleanup() {
  local code=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -d "$D/containers" ]; then
    buildah --root "$D/containers/root" --runroot "$D/containers/run" --storage-driver vfs rm -a >/dev/null 2>&1 || true
    buildah --root "$D/containers/root" --runroot "$D/containers/run" --storage-driver vfs rmi -a -f >/dev/null 2>&1 || true
  fi
  rm -rf "$D" 2>/dev/null || true
  [ $code -eq 0 ] && echo && echo "demo: done; every process it started is stopped and $D is removed."
  exit $code
}
trap cleanup EXIT INT TERM

bold() { if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }
step() { echo; bold "== $*"; }
say() { printf '   %s\n' "$*"; }
show() { printf '\n$ %s\n' "$*"; "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

export HOME="$D/home" GIT_CONFIG_NOSYSTEM=1 NO_COLOR=${NO_COLOR:-}
mkdir -p "$HOME"
git config --global user.name "Demo Engineer"
git config --global user.email "demo@example.invalid"
git config --global init.defaultBranch main
moonops() { "$MOONOPS" --config "$D/ops/moonops.yml" "$@"; }

step "1. Three workspaces backed by git repositories on a local git daemon"
GIT_PORT=$(free_port)
mkdir -p "$D/repos"
for r in demo-dev demo-staging demo; do git init -q --bare "$D/repos/$r.git"; done
git daemon --reuseaddr --listen=127.0.0.1 --port="$GIT_PORT" --base-path="$D/repos" --export-all \
  --enable=receive-pack "$D/repos" >"$D/git-daemon.log" 2>&1 &
pids+=($!)
wait_port "$GIT_PORT"
say "git daemon serves git://127.0.0.1:$GIT_PORT/{demo-dev,demo-staging,demo}.git"
# Every repository starts from the same example project (examples/workspace).
git clone -q "git://127.0.0.1:$GIT_PORT/demo-dev.git" "$D/dev"
cp -R "$here/workspace/." "$D/dev/"
git -C "$D/dev" add -A && git -C "$D/dev" commit -qm "Example Meltano project"
git -C "$D/dev" push -q origin main
for r in demo-staging demo; do git -C "$D/dev" push -q "git://127.0.0.1:$GIT_PORT/$r.git" main; done
show moonops init "$D/ops" --name demo --repository-base "git://127.0.0.1:$GIT_PORT/"
ws_id() { awk -v n="$1" '/- id:/{id=$3} $1=="name:" && $2==n {print id}' "$D/ops/moonops.yml"; }
DEV_ID=$(ws_id demo-dev); STAGING_ID=$(ws_id demo-staging); PROD_ID=$(ws_id demo)

step "2. moonops serve: a signed push webhook deploys the dev workspace"
API_PORT=$(free_port)
export MOONOPS_API_TOKENS="demo-api-token-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
moonops --log-format json serve --listen "127.0.0.1:$API_PORT" >"$D/serve.log" 2>&1 &
pids+=($!)
wait_port "$API_PORT"
say "listening on http://127.0.0.1:$API_PORT (log in serve.log, one JSON line per request)"
api() { curl -sS -H "Authorization: Bearer $MOONOPS_API_TOKENS" "$@"; }
webhook() { # workspace-id secret-file after-sha [signing-secret-override]
  local body secret sig
  body=$(printf '{"ref":"refs/heads/main","before":"%040d","after":"%s","deleted":false,"repository":{"full_name":"demo/%s"}}' 0 "$3" "$1")
  secret=${4:-$(tr -d '\n' <"$2")}
  sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)
  curl -sS -o "$D/answer.json" -w '%{http_code}' -X POST \
    -H "Content-Type: application/json" -H "X-GitHub-Event: push" \
    -H "X-GitHub-Delivery: $(cat /proc/sys/kernel/random/uuid)" -H "X-Hub-Signature-256: sha256=$sig" \
    --data-binary "$body" "http://127.0.0.1:$API_PORT/api/workspaces/$1/deployments/github-webhook"
}
wait_deployment() { # workspace-id deployment-id
  local status
  for _ in $(seq 300); do
    status=$(api "http://127.0.0.1:$API_PORT/api/workspaces/$1/deployments/$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
    case $status in COMPLETE) return 0 ;; ERROR|INTERRUPTED|SUPERSEDED) echo "deployment $2: $status"; return 1 ;; esac
    sleep 0.1
  done
  return 1
}
say "A data engineer changes the dev project and pushes:"
sed -i 's/job_start_date: "2024-01-01"/job_start_date: "2024-06-01"/' "$D/dev/meltano.yml"
git -C "$D/dev" commit -qam "Load auth0 users from June" && git -C "$D/dev" push -q origin main
AFTER=$(git -C "$D/dev" rev-parse HEAD)
say "GitHub would now POST a signed push event; the demo sends the same request."
say "First with a wrong signature - refused, nothing queued:"
code=$(webhook "$DEV_ID" "$D/ops/secrets/demo-dev.secret" "$AFTER" "not-the-secret")
say "HTTP $code $(cat "$D/answer.json")"
say "Then correctly signed:"
code=$(webhook "$DEV_ID" "$D/ops/secrets/demo-dev.secret" "$AFTER")
say "HTTP $code $(cat "$D/answer.json")"
DEP=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$D/answer.json")
wait_deployment "$DEV_ID" "$DEP"
show moonops deploy demo-dev --list
say "The live release is a plain directory behind an atomically swapped symlink:"
say "$(readlink "$D/ops/.moonops/workspaces/demo-dev/current")"

step "3. Environments: what each pipeline runs with, and where every value comes from"
show moonops env show --workspace demo-dev --plugin tap-auth0
show moonops env show --workspace demo-dev --environment prod --plugin tap-auth0
show moonops env diff dev prod --workspace demo-dev
show moonops env use staging --workspace demo-dev
show moonops env list --workspace demo-dev
moonops env use dev --workspace demo-dev >/dev/null

step "4. Promotion: dev -> staging -> prod, reviewed, pushed, deployed by webhook"
show moonops promote --from demo-dev --to demo-staging --yes
code=$(webhook "$STAGING_ID" "$D/ops/secrets/demo-staging.secret" "$(git ls-remote "git://127.0.0.1:$GIT_PORT/demo-staging.git" main | cut -f1)")
DEP=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$D/answer.json")
wait_deployment "$STAGING_ID" "$DEP" && say "demo-staging deployment $DEP: COMPLETE (webhook HTTP $code)"
show moonops promote --to demo --yes
code=$(webhook "$PROD_ID" "$D/ops/secrets/demo.secret" "$(git ls-remote "git://127.0.0.1:$GIT_PORT/demo.git" main | cut -f1)")
DEP=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$D/answer.json")
wait_deployment "$PROD_ID" "$DEP" && say "demo deployment $DEP: COMPLETE (webhook HTTP $code)"
show moonops promote --to demo --yes

step "5. The pipelines image: built with buildah, pushed, skipped when it already exists"
if command -v buildah >/dev/null && command -v docker-registry >/dev/null && [ -x /bin/busybox ]; then
  REG_PORT=$(free_port)
  printf 'version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: "127.0.0.1:%s", secret: demo}\n' \
    "$D/registry" "$REG_PORT" >"$D/registry.yml"
  docker-registry serve "$D/registry.yml" >"$D/registry.log" 2>&1 &
  pids+=($!)
  wait_port "$REG_PORT"
  mkdir -p "$D/containers" "$D/base"
  export CONTAINERS_STORAGE_CONF="$D/containers/storage.conf"
  printf '[storage]\ndriver = "vfs"\nrunroot = "%s/containers/run"\ngraphroot = "%s/containers/root"\n' "$D" "$D" >"$CONTAINERS_STORAGE_CONF"
  cp /bin/busybox "$D/base/busybox"
  printf '#!/bin/sh\necho "meltano $*: (demo stand-in for Meltano)"\n' >"$D/base/meltano"
  chmod +x "$D/base/meltano"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nCOPY meltano /bin/meltano\nRUN mkdir -p /tmp /root\n' >"$D/base/Dockerfile"
  say "A small base image (busybox plus a stand-in meltano command) goes to the loopback registry first."
  buildah --storage-driver vfs bud -q --isolation chroot -t "127.0.0.1:$REG_PORT/demo-base:latest" "$D/base" >/dev/null
  buildah --storage-driver vfs push -q --tls-verify=false "127.0.0.1:$REG_PORT/demo-base:latest" >/dev/null
  export MELTANO_DATAFLOW_DOCKERREGISTRY="127.0.0.1:$REG_PORT"
  show moonops image --workspace demo --builder buildah --base "127.0.0.1:$REG_PORT/demo-base:latest"
  say "Second run: the registry already has this commit's image, so nothing is built."
  show moonops image --workspace demo --builder buildah --base "127.0.0.1:$REG_PORT/demo-base:latest"
else
  say "skipped: needs buildah, docker-registry and busybox-static ('make deps' installs them)."
fi

step "6. Schedules: any recipe from cron, never overlapping"
cat >>"$D/ops/moonops.yml" <<YAML
schedules:
  - { name: nightly-image, cron: "0 2 * * *", recipe: image, args: [--workspace, demo] }
  - { name: promote-staging, cron: "0 6 * * 1-5", recipe: promote, args: [--to, demo-staging, --yes] }
YAML
show moonops schedule list
show moonops schedule crontab
say "('moonops schedule install' writes these lines into your crontab between markers.)"

step "7. Stopping"
