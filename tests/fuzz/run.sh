#!/usr/bin/env bash
# Build every fuzz target (tests/fuzz/*_fuzz.c) with clang and libFuzzer under
# ASan+UBSan, replay the inputs saved under regressions/, then fuzz each target.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]     (make fuzz FUZZ_SECONDS=N)
#
# SECONDS per target (default 60). TARGET names such as `cron_fuzz` pick a
# subset. FUZZ_BUILD sets the build directory (default build-fuzz), CC the
# compiler (default clang). A crash, leak, timeout or broken property fails the
# run and its input is saved as tests/fuzz/regressions/<target>/<kind>-<sha1>,
# which the ctest fuzz/<target> replays from then on.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
seconds=${1:-${FUZZ_SECONDS:-60}}
[ $# -gt 0 ] && shift
[[ $seconds =~ ^[0-9]+$ ]] || { echo "run.sh: SECONDS must be a whole number, got '$seconds'" >&2; exit 2; }
build=${FUZZ_BUILD:-$root/build-fuzz}
cc=${CC:-clang}
command -v "$cc" >/dev/null || { echo "run.sh: $cc not found (Debian package clang)" >&2; exit 2; }

pkgs="lua5.4 libgit2 libcurl libmicrohttpd yaml-0.1 sqlite3 openssl"
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cflags="-std=c11 -g -O1 -D_GNU_SOURCE -Wall -Wextra $san -I$root/engine -I$root/include $(pkg-config --cflags $pkgs)"
libs="$(pkg-config --libs $pkgs) -lpthread -ldl -lm"

# The engine is built by the project's own CMake (so the fuzz targets load the
# same modules the same way moonops does) with clang, coverage instrumentation
# and the sanitizers; the targets then link its static core.
engine="$build/engine"
mkdir -p "$engine"
if [ ! -f "$engine/CMakeCache.txt" ]; then
  CC="$cc" cmake -S "$root" -B "$engine" -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_C_FLAGS="-O1 -fsanitize=fuzzer-no-link $san" \
    -DCMAKE_EXE_LINKER_FLAGS="$san" -DCMAKE_SHARED_LINKER_FLAGS="$san" \
    -DCMAKE_MODULE_LINKER_FLAGS="$san" >"$build/cmake.log" 2>&1 ||
    { cat "$build/cmake.log"; exit 1; }
fi
echo "== engine: build ($engine)"
cmake --build "$engine" -j "${JOBS:-2}" --target moonops >"$build/engine.log" 2>&1 ||
  { tail -40 "$build/engine.log"; exit 1; }
core="$engine/libmoonops_core.a"

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in "$root"/tests/fuzz/*_fuzz.c; do targets+=("$(basename "$f" .c)"); done
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/lsan.supp}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=()
for t in "${targets[@]}"; do
  src="$root/tests/fuzz/$t.c"
  [ -f "$src" ] || { echo "run.sh: no target $src" >&2; exit 2; }
  bin="$build/$t"
  echo "== $t: build"
  # shellcheck disable=SC2086
  "$cc" $cflags -fsanitize=fuzzer "$src" -Wl,--whole-archive "$core" -Wl,--no-whole-archive $libs -Wl,-E \
    -o "$bin"

  seeds="$root/tests/fuzz/corpus/$t"
  saved="$root/tests/fuzz/regressions/$t"
  work="$build/corpus/$t"
  mkdir -p "$saved" "$work"
  dirs=("$work")
  [ -d "$seeds" ] && dirs+=("$seeds")

  # Saved crash inputs first: they must all pass now.
  mapfile -t old < <(find "$saved" -maxdepth 1 -type f ! -name '.*' | sort)
  if [ ${#old[@]} -gt 0 ]; then
    echo "== $t: replay ${#old[@]} saved inputs"
    if ! "$bin" -runs=1 "${old[@]}" >"$build/$t.replay.log" 2>&1; then
      tail -40 "$build/$t.replay.log"
      echo "== $t: a saved regression input fails again (log: $build/$t.replay.log)"
      failed+=("$t")
      continue
    fi
  fi

  if [ "$seconds" -eq 0 ]; then continue; fi
  echo "== $t: fuzz for ${seconds}s"
  # New corpus entries go to the scratch directory, never into the checked-in seeds.
  if "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$saved/" "${dirs[@]}" >"$build/$t.log" 2>&1; then
    grep -E '^stat::(number_of_executed_units|new_units_added)' "$build/$t.log" | tr '\n' ' '
    echo
  else
    tail -60 "$build/$t.log"
    echo "== $t: FAILED; input saved under tests/fuzz/regressions/$t/ (log: $build/$t.log)"
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${seconds}s each: no failure"
