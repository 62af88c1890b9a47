#!/usr/bin/env bash
# Every benchmark, side by side with its peer, one after another: `make bench`.
#   bench/run.sh [path/to/moonops] [names...]     names: startup env deploy promote image server
# Each writes its own section of bench/RESULTS.md. Run on a quiet machine: the ratios
# are what matter, and a busy machine makes them noisy.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(realpath "${1:-$here/../build/moonops}")
shift || true
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(startup env deploy promote image server)
failed=()
for n in "${names[@]}"; do
  echo "== bench: $n"
  case $n in
    startup) "$here/startup.sh" "$bin" ;;
    env) python3 "$here/env/run.py" "$bin" ;;
    *) "$here/$n/run.sh" "$bin" ;;
  esac || failed+=("$n")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "bench: failed: ${failed[*]}" >&2
  exit 1
fi
echo "bench: results in bench/RESULTS.md"
