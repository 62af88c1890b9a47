#!/usr/bin/env bash
# `moonops image` against doing the same by hand, on a real docker-registry (loopback)
# with buildah (vfs storage, chroot isolation), written into the "Image" section of
# bench/RESULTS.md:
#
#  1. the skip path: the commit's image is already in the registry. Median wall time of
#     `moonops image --project P` next to the checks a script would do by hand
#     (`curl -I` of the manifest, `skopeo inspect`). Target: under 50 ms.
#  2. a full build and push, interleaved: `moonops image --force --builder buildah`
#     against the same buildah commands typed by hand (bud with both tags, two pushes).
#     Target: moonops adds under 5% to the builder's own time.
#
#   bench/image/run.sh [path/to/moonops] [skip-runs] [build-rounds]   (defaults: build/moonops, 51, 5)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
MOONOPS=${1:-$here/../../build/moonops}
[ -x "$MOONOPS" ] || { echo "image bench: no moonops binary at $MOONOPS (build first)" >&2; exit 2; }
MOONOPS=$(realpath "$MOONOPS")
RUNS=${2:-51}
ROUNDS=${3:-5}
RESULTS=$here/../RESULTS.md

D=$(mktemp -d /tmp/moonops-bench-image.XXXXXX)
REG_PID=
cleanup() {
  [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null
  rm -rf "$D"
}
trap cleanup EXIT
export HOME=$D NO_COLOR=1 CONTAINERS_STORAGE_CONF=$D/storage.conf
unset DOCKER_CONFIG REGISTRY_AUTH_FILE MATATIKA_DATAFLOW_DOCKERREGISTRY MOONOPS_CONFIG
printf '[storage]\ndriver = "vfs"\nrunroot = "%s/run"\ngraphroot = "%s/graph"\n' "$D" "$D" >"$D/storage.conf"

# A registry without auth on a free loopback port.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
printf 'version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s/reg}}\nhttp: {addr: "%s", secret: bench}\n' \
  "$D" "$REG" >"$D/reg.yml"
docker-registry serve "$D/reg.yml" >"$D/reg.log" 2>&1 &
REG_PID=$!
for _ in $(seq 200); do curl -sf "http://$REG/v2/" >/dev/null && break; sleep 0.05; done
export MELTANO_DATAFLOW_DOCKERREGISTRY=$REG

# A base image with a shell and a stand-in `meltano`, built from busybox-static.
mkdir -p "$D/base"
cp /bin/busybox "$D/base/busybox"
printf '#!/bin/sh\nmkdir -p .meltano && echo installed > .meltano/installed\n' >"$D/base/meltano"
chmod +x "$D/base/meltano"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nCOPY meltano /bin/meltano\n' \
  >"$D/base/Dockerfile"
buildah --storage-driver vfs bud --isolation chroot -q -t localhost/bench-base "$D/base" >/dev/null
BASE=localhost/bench-base

# The project: meltano.yml, workspace.yml and 50 transform files, committed.
P=$D/project
mkdir -p "$P/transform/models"
printf 'version: 1\ndefault_environment: dev\nenvironments:\n- name: dev\n' >"$P/meltano.yml"
printf 'pipelines_image: bench/pipelines\n' >"$P/workspace.yml"
for i in $(seq 50); do printf 'select %d as n\n' "$i" >"$P/transform/models/m$i.sql"; done
git -C "$P" init -q -b main
git -C "$P" add -A
git -C "$P" -c user.name=bench -c user.email=bench@example.com commit -qm initial
SHA=$(git -C "$P" rev-parse HEAD)
NAME=$REG/bench/pipelines
TAG=sha-${SHA:0:12}

"$MOONOPS" image --project "$P" --builder buildah --base "$BASE" >/dev/null 2>&1

# median_ms CMD... -> median wall milliseconds over $RUNS runs (after 5 warm-up runs)
median_ms() {
  local i t0 t1 samples=()
  for ((i = 0; i < 5; i++)); do "$@" >/dev/null 2>&1; done
  for ((i = 0; i < RUNS; i++)); do
    t0=$EPOCHREALTIME
    "$@" >/dev/null 2>&1
    t1=$EPOCHREALTIME
    samples+=("$((${t1/[.,]/} - ${t0/[.,]/}))")
  done
  printf '%s\n' "${samples[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1000}'
}

ACCEPT='application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json'
skip_moonops=$(median_ms "$MOONOPS" image --project "$P")
skip_curl=$(median_ms curl -sfI -H "Accept: $ACCEPT" "http://$REG/v2/bench/pipelines/manifests/$TAG")
skip_skopeo=$(median_ms skopeo inspect --raw --tls-verify=false "docker://$NAME:$TAG")
"$MOONOPS" image --project "$P" --json | grep -q '"status": "skipped"' || { echo "skip path did not skip" >&2; exit 1; }

# The same build and push by hand: the generated Dockerfile, bud with both tags, two pushes.
printf 'FROM %s\nRUN mkdir workspace\nWORKDIR /workspace\nCOPY . .\nRUN meltano install\nRUN rm -rf ~/.cache\n' "$BASE" \
  >"$D/Dockerfile"
by_hand() {
  buildah --storage-driver vfs bud --isolation chroot -f "$D/Dockerfile" -t "$NAME:latest" -t "$NAME:$TAG" "$P" &&
    buildah --storage-driver vfs push --tls-verify=false --digestfile "$D/digest" "$NAME:$TAG" "docker://$NAME:$TAG" &&
    buildah --storage-driver vfs push --tls-verify=false "$NAME:latest" "docker://$NAME:latest"
}
with_moonops() {
  "$MOONOPS" image --project "$P" --builder buildah --base "$BASE" --force
}
elapsed_ms() {
  local t0 t1
  t0=$EPOCHREALTIME
  "$@" >/dev/null 2>&1 || { echo "image bench: $* failed" >&2; exit 1; }
  t1=$EPOCHREALTIME
  echo $(((${t1/[.,]/} - ${t0/[.,]/}) / 1000))
}
hand=() ours=()
for ((r = 0; r < ROUNDS; r++)); do
  hand+=("$(elapsed_ms by_hand)")
  ours+=("$(elapsed_ms with_moonops)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
build_hand=$(median "${hand[@]}")
build_ours=$(median "${ours[@]}")
overhead=$(awk -v a="$build_ours" -v b="$build_hand" 'BEGIN {printf "%+.1f", (a - b) * 100 / b}')

cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
section=$(cat <<EOF
## Image

\`bench/image/run.sh\` on $(nproc) x $cpu, $(date -u +%Y-%m-%d): docker-registry 2.8 on loopback
(no auth), buildah $(buildah --version | awk '{print $3}') with vfs storage and chroot isolation, a project of
meltano.yml + 50 files, base image built from busybox-static.

Skip path (the registry already has \`sha-<commit12>\`), median of $RUNS runs. Target: under 50 ms.

| command | median (ms) |
| --- | ---: |
| \`moonops image --project P\` (reads workspace.yml, git HEAD, HEAD of the manifest) | $skip_moonops |
| \`curl -sfI\` of the manifest (the HTTP request alone) | $skip_curl |
| \`skopeo inspect --raw\` of the manifest | $skip_skopeo |

Full build and push, $ROUNDS interleaved rounds, median wall time. Target: under 5% over the builder.

| | median (ms) |
| --- | ---: |
| by hand: \`buildah bud\` (both tags) + two \`buildah push\` | $build_hand |
| \`moonops image --force --builder buildah\` (same commands, plus the registry check and digest read-back) | $build_ours |
| overhead | $overhead% |
EOF
)

# Replace the Image section of RESULTS.md (or append it), leaving the others alone.
python3 - "$RESULTS" "$section" <<'EOF'
import os, re, sys
path, section = sys.argv[1], sys.argv[2].rstrip("\n") + "\n"
text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
pattern = re.compile(r"^## Image\n.*?(?=^## |\Z)", re.S | re.M)
if pattern.search(text):
    text = pattern.sub(lambda m: section + "\n", text, count=1)
else:
    text = text.rstrip("\n") + "\n\n" + section
tmp = path + ".tmp"
open(tmp, "w").write(text.rstrip("\n") + "\n")
os.replace(tmp, path)
EOF
echo "$section"
