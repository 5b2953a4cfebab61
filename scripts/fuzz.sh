#!/usr/bin/env bash
# Fuzzes opnorm's file readers with libFuzzer (clang-14, AddressSanitizer,
# UndefinedBehaviorSanitizer, LeakSanitizer): IDX (plain and gzip), CIFAR-10,
# safetensors (with a write/read round trip), model checkpoints and training
# checkpoints. The targets are tests/fuzz/fuzz_*.cpp.
#
#   scripts/fuzz.sh [SECONDS]     SECONDS per target, default 30
#
# Builds the targets into $OPNORM_FUZZ_BUILD_DIR (default build-fuzz), writes
# fresh seed corpora there with tests/fuzz/make_seeds.cpp, and runs the
# targets, one per core at a time, each on its own copy of its seeds. Prints the
# executions per target; exits non-zero if any target found a crash, leak,
# sanitizer report, timeout or out-of-memory, and prints the path of the
# input that triggered it (kept under <build>/artifacts/; replay it with
# <build>/<target> <file>).
set -euo pipefail

seconds="${1:-30}"
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SECONDS]  (a positive integer, default 30)" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build="${OPNORM_FUZZ_BUILD_DIR:-build-fuzz}"
mkdir -p "$build"
build="$(cd "$build" && pwd)"

bash scripts/install_dependencies.sh fuzz

cxx=clang++-14
flags=(-std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Wall -Wextra
       -I"$root/include")
# Eigen's headers sit in a subfolder; the other dependencies are in /usr/include.
read -r -a eigen <<<"$(pkg-config --cflags eigen3 2>/dev/null || echo -I/usr/include/eigen3)"
flags+=("${eigen[@]/#-I/-isystem}")
libs=(-lz)
# Without -fopenmp the cpu backend runs its loops serially, which is what a
# fuzzer wants (one process per core, no thread pool to leak-check).

targets=(idx cifar10 safetensors checkpoint training_checkpoint)

# A program is rebuilt when it is missing or older than any source or header.
stale() { [ ! -x "$1" ] || [ -n "$(find "$root/include" "$root/tests/fuzz" -newer "$1" -print -quit)" ]; }

# As many compiler processes as cores (a target takes up to a minute); a
# failed compile fails the script once all have finished.
compiles=()
compile() {  # compile <output> <flags and sources...>
  local out="$1"
  shift
  echo "fuzz: compiling $(basename "$out")" >&2
  "$cxx" "$@" -o "$out" &
  compiles+=($!)
  while [ "$(jobs -rp | wc -l)" -ge "$(nproc)" ]; do wait -n || true; done
}
if stale "$build/make_seeds"; then
  compile "$build/make_seeds" -std=c++17 -O1 -Wall -Wextra -I"$root/include" "${eigen[@]/#-I/-isystem}" \
    tests/fuzz/make_seeds.cpp "${libs[@]}"
fi
for t in "${targets[@]}"; do
  if stale "$build/fuzz_$t"; then compile "$build/fuzz_$t" "${flags[@]}" "tests/fuzz/fuzz_$t.cpp" "${libs[@]}"; fi
done
compile_failed=0
for pid in "${compiles[@]}"; do wait "$pid" || compile_failed=1; done
[ "$compile_failed" = 0 ] || { echo "fuzz: a target did not compile (see above)" >&2; exit 1; }

rm -rf "$build/seeds"
"$build/make_seeds" "$build/seeds"

# The targets write every input to a file; on tmpfs that costs no disk
# traffic, and the safetensors writer's fsync is free.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  scratch="$(mktemp -d /dev/shm/opnorm-fuzz.XXXXXX)"
else
  mkdir -p "$build/tmp"
  scratch="$(mktemp -d "$build/tmp/opnorm-fuzz.XXXXXX")"
fi
trap 'rm -rf "$scratch"' EXIT

mkdir -p "$build/artifacts" "$build/logs"
export UBSAN_OPTIONS="print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

# One target per core at a time (each libFuzzer process is single-threaded),
# each on its own copy of its seeds; the table is printed in target order
# once all have finished.
fuzz_target() {  # fuzz_target <target>: runs it, leaves its log and exit status
  local t="$1" work="$build/work/$1" largest max_len status=0
  rm -rf "$work"
  mkdir -p "$work/corpus"
  cp "$build/seeds/$t/"* "$work/corpus/"
  # Room for the largest seed (a checkpoint of the Fashion-MNIST CNN is
  # 3.5 MB, a training checkpoint with SGD momentum 7 MB) and 64 KiB at least.
  largest=$(find "$work/corpus" -type f -printf '%s\n' | sort -n | tail -1)
  max_len=$(( largest + 4096 > 65536 ? largest + 4096 : 65536 ))
  (cd "$work" && TMPDIR="$scratch" "$build/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
     -max_len="$max_len" -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" corpus) \
    >"$build/logs/$t.log" 2>&1 || status=$?
  echo "$status" >"$build/logs/$t.status"
}
for t in "${targets[@]}"; do
  fuzz_target "$t" &
  while [ "$(jobs -rp | wc -l)" -ge "$(nproc)" ]; do wait -n || true; done
done
wait

failed=()
printf '%-22s %12s %8s  %s\n' target executions exec/s result
for t in "${targets[@]}"; do
  log="$build/logs/$t.log"
  status=$(cat "$build/logs/$t.status" 2>/dev/null || echo "?")
  runs=$(sed -n 's/^Done \([0-9]*\) runs in .*/\1/p' "$log" | tail -1)
  # No "Done" line after a finding: libFuzzer's final statistics still count.
  [ -n "$runs" ] || runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *\([0-9]*\).*/\1/p' "$log" | tail -1)
  if [ "$status" = 0 ] && grep -q '^Done [0-9]* runs' "$log"; then
    printf '%-22s %12s %8s  %s\n' "fuzz_$t" "$runs" "${rate:-?}" ok
  else
    printf '%-22s %12s %8s  %s\n' "fuzz_$t" "${runs:--}" "${rate:--}" "FOUND SOMETHING (exit $status), log: $log"
    grep -E '^(==[0-9]+==ERROR|SUMMARY|opnorm fuzz target|terminate called|  what\(\)|.*runtime error)' "$log" | head -5 | sed 's/^/    /' || true
    sed -n 's/.*Test unit written to \(.*\)$/    input: \1/p' "$log"
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: findings in ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: no findings in ${#targets[@]} targets, $seconds s each"
