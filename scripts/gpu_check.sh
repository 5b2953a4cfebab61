#!/usr/bin/env bash
# The one command a GPU machine runs for opnorm: build the CUDA programs, run
# the CUDA tests, compare opnorm's thrust<cuda> backend with PyTorch on the
# GPU, and write docs/performance-gpu.md. Bounded to about 8 minutes.
#
#   scripts/gpu_check.sh --prepare   HERE, on a machine with the Debian -dev
#                                    packages: copy the header-only
#                                    dependencies into .deps/ (git-ignored)
#   scripts/gpu_check.sh --dry-run   print the plan and what was found; needs no GPU
#   scripts/gpu_check.sh             THERE: the check itself
#
# Why .deps: the GPU machine has nvcc, CMake, ninja and PyTorch but none of
# Debian's -dev packages, and cannot download. Everything opnorm needs there
# is header-only (Eigen, xtensor, xtl, xsimd, nlohmann_json, doctest, CLI11)
# except zlib, whose static library is carried. Google Benchmark is a
# compiled library and is not carried: bench_steps falls back to its built-in
# harness (same flags, same JSON; see bench/bench_steps.cpp). .deps/ is
# git-ignored, so the device tool must be told to carry it:
#   run(command="scripts/gpu_check.sh", carry=[".deps"], timeout_s=540)
# What comes back (under $OUT, at most 8 files): performance-gpu.md,
# gpu_compare.json, summary.txt and the logs of the phases. The working tree
# there is a copy: put performance-gpu.md into docs/ here by hand.
#
# Phases, each with a time limit, under one overall deadline
# (OPNORM_GPU_CHECK_SECONDS, default 470 s):
#   preflight  nvidia-smi must list a GPU (else stop at once, exit 2); nvcc,
#              cmake, a C++ compiler; python3 with torch that sees CUDA
#   configure  -DOPNORM_CUDA=ON for the GPU's architecture only, with .deps
#   build      cuda_test_backend_agreement, cuda_test_nccl_one_rank and cuda_bench_steps, -j16
#   test       ctest -R '^cuda_'
#   compare    bench/compare.py --device cuda --markdown docs/performance-gpu.md
# A failed phase does not stop the later ones that can still run; the exit
# status is 0 only if every phase passed.
#
# Environment: OPNORM_GPU_BUILD_DIR (default build-gpu), OPNORM_PYTHON
# (default python3), OPNORM_CUDA_ARCHITECTURES (default: the GPU's compute
# capability, e.g. 90), OPNORM_GPU_CHECK_SECONDS, OPNORM_BENCH_THREADS (8).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPS="$ROOT/.deps"
BUILD="${OPNORM_GPU_BUILD_DIR:-$ROOT/build-gpu}"
PYTHON="${OPNORM_PYTHON:-python3}"
BUDGET="${OPNORM_GPU_CHECK_SECONDS:-470}"
THREADS="${OPNORM_BENCH_THREADS:-8}"
LOGS="$BUILD/gpu_check"
REPORT="$ROOT/docs/performance-gpu.md"
START=$(date +%s)
DEADLINE=$((START + BUDGET))

say() { printf '[gpu_check %3ds] %s\n' "$(($(date +%s) - START))" "$*"; }
die() {  # die MESSAGE [EXIT STATUS]
  printf '\n*** gpu_check: %s ***\n\n' "$1" >&2
  exit "${2:-1}"
}

# --------------------------------------------------------------------------
# --prepare: copy the header-only dependencies into .deps/usr, laid out as
# under /usr so that their CMake package files (which locate the headers
# relative to themselves) work from there with CMAKE_PREFIX_PATH=.deps/usr.
# (xtensor-dev is an empty transitional package; the files are in libxtensor-dev.)
DEP_PACKAGES=(libeigen3-dev libxtensor-dev xtl-dev libxsimd-dev nlohmann-json3-dev doctest-dev libcli11-dev zlib1g-dev)

prepare() {
  command -v dpkg-query >/dev/null || die "--prepare needs a Debian machine with the -dev packages (dpkg-query)"
  local p missing=()
  for p in "${DEP_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] || die "--prepare: missing packages ${missing[*]} (scripts/install_dependencies.sh build)"
  rm -rf "$DEPS"
  mkdir -p "$DEPS"
  for p in "${DEP_PACKAGES[@]}"; do
    # Headers, CMake package files and libz.a; not docs, man pages,
    # pkg-config files or libz.so (a link to a library the GPU machine may
    # lack; the static one always links).
    dpkg -L "$p" | while read -r f; do
      [ -f "$f" ] || continue
      case "$f" in
        /usr/share/doc/* | /usr/share/man/* | */pkgconfig/* | */libz.so*) continue ;;
      esac
      cp --parents -L "$f" "$DEPS/"
    done
  done
  # doctest's exported targets name /usr itself; make them relative like the others.
  local doctest_targets="$DEPS/usr/lib/cmake/doctest/doctestTargets.cmake"
  if [ -f "$doctest_targets" ]; then
    sed -i 's|^set(_IMPORT_PREFIX "/usr")$|get_filename_component(_IMPORT_PREFIX "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)|' \
      "$doctest_targets"
    grep -q 'set(_IMPORT_PREFIX "/usr")' "$doctest_targets" && die "--prepare: could not relocate $doctest_targets"
  fi
  # Every package opnorm's CMake files look for must be there.
  local config
  for config in Eigen3Config.cmake xtensorConfig.cmake xtlConfig.cmake xsimdConfig.cmake nlohmann_jsonConfig.cmake \
    doctestConfig.cmake CLI11Config.cmake zlib.h libz.a; do
    [ -n "$(find "$DEPS" -name "$config" -print -quit)" ] || die "--prepare: $config was not copied into $DEPS"
  done
  {
    echo "Header-only dependencies of opnorm for a machine without Debian's -dev packages,"
    echo "written by scripts/gpu_check.sh --prepare on $(date -u +%F) from:"
    for p in "${DEP_PACKAGES[@]}"; do dpkg-query -W -f='  ${Package} ${Version}\n' "$p"; done
    echo "Use: cmake -DCMAKE_PREFIX_PATH=$(basename "$DEPS")/usr ...  (gpu_check.sh does this)"
  } >"$DEPS/README"
  local kib
  kib=$(du -sk "$DEPS" | cut -f1)
  say "wrote $DEPS: $((kib / 1024)) MiB ($(find "$DEPS" -type f | wc -l) files)"
  [ "$kib" -lt $((48 * 1024)) ] || die "$DEPS is $((kib / 1024)) MiB: too large to carry with the working tree (64 MiB in all)"
  grep -qx '.deps/' "$ROOT/.gitignore" 2>/dev/null || say "note: add .deps/ to .gitignore"
  say "carry it to the GPU machine: run(command=\"scripts/gpu_check.sh\", carry=[\".deps\"], timeout_s=540)"
}

# --------------------------------------------------------------------------
# Helpers for the check.

# Seconds a phase may take: its own cap, and never past the deadline minus
# what the later phases keep for themselves.
phase_limit() {
  local cap=$1 keep=${2:-0} left
  left=$((DEADLINE - $(date +%s) - keep))
  [ "$left" -lt "$cap" ] && cap=$left
  echo "$cap"
}

declare -a PHASES=()
record() { PHASES+=("$(printf '%-10s %-8s %4ss  %s' "$1" "$2" "$3" "${4:-}")"); }

# run_phase NAME LIMIT COMMAND...: runs COMMAND under timeout, output to
# $LOGS/NAME.log (and its tail to the terminal on failure).
run_phase() {
  local name=$1 limit=$2
  shift 2
  local log="$LOGS/$name.log" t0 rc
  if [ "$limit" -lt 10 ]; then
    say "$name: skipped, no time left"
    record "$name" skipped 0 "no time left before the deadline"
    return 124
  fi
  say "$name (limit ${limit}s): $*"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  local took=$(($(date +%s) - t0))
  if [ $rc -eq 0 ]; then
    record "$name" ok "$took"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    say "$name: TIMED OUT after ${limit}s; last lines of $log:"
    tail -n 25 "$log"
    record "$name" TIMEOUT "$took" "limit ${limit}s"
  else
    say "$name: FAILED (exit $rc); last lines of $log:"
    tail -n 40 "$log"
    record "$name" FAILED "$took" "exit $rc"
  fi
  return $rc
}

find_nvcc() {
  if command -v nvcc >/dev/null; then
    command -v nvcc
  elif [ -x /usr/local/cuda/bin/nvcc ]; then
    echo /usr/local/cuda/bin/nvcc
  fi
}

# One line on PyTorch and the GPU; fails where torch is missing or sees no GPU.
TORCH_PROBE='import torch
if not torch.cuda.is_available():
    raise SystemExit(f"torch {torch.__version__} sees no CUDA device (torch.version.cuda = {torch.version.cuda})")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")'

# The GPU's architecture for CMAKE_CUDA_ARCHITECTURES: one architecture
# compiles in half the time of the default "80 90".
gpu_architecture() {
  local cap
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
  case "$cap" in
    [0-9][0-9] | [0-9][0-9][0-9]) echo "$cap" ;;
    *) echo 90 ;;
  esac
}

configure_arguments() {
  local nvcc=$1 arch=$2
  local args=(-S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DOPNORM_CUDA=ON
    -DCMAKE_CUDA_ARCHITECTURES="$arch" -DCMAKE_CUDA_COMPILER="$nvcc"
    -DOPNORM_BUILD_TESTS=ON -DOPNORM_BUILD_EXAMPLES=OFF -DOPNORM_BUILD_BENCHMARKS=ON)
  command -v ninja >/dev/null && args+=(-G Ninja)
  local cuda_home
  cuda_home=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
  [ -f "$cuda_home/include/cccl/thrust/version.h" ] && args+=(-DOPNORM_CCCL_INCLUDE_DIR="$cuda_home/include/cccl")
  [ -d "$DEPS/usr" ] && args+=(-DCMAKE_PREFIX_PATH="$DEPS/usr")
  local python_path
  python_path=$(command -v "$PYTHON" 2>/dev/null) && args+=(-DOPNORM_TORCH_PYTHON="$python_path")
  printf '%s\n' "${args[@]}"
}

has_target() { cmake --build "$BUILD" --target help 2>/dev/null | grep -Eq "(^|[ .])$1(:|$| )"; }

# Copies what a device run should bring back into $OUT (the device tool's
# folder; at most 8 files come back).
bring_back() {
  [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] || return 0
  local f
  for f in "$REPORT" "$LOGS/gpu_compare.json" "$LOGS/summary.txt" "$LOGS/configure.log" "$LOGS/build.log" \
    "$LOGS/test.log" "$LOGS/compare.log"; do
    [ -f "$f" ] && cp "$f" "$OUT/"
  done
  say "copied the report and logs to \$OUT"
}

# --------------------------------------------------------------------------
# The check.

dry_run=false
case "${1:-}" in
  --prepare) prepare; exit 0 ;;
  --dry-run) dry_run=true ;;
  "") ;;
  -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
  *) die "unknown argument '$1' (use --prepare, --dry-run or none)" 2 ;;
esac

# 1. preflight. The GPU first: without one nothing else is worth doing.
gpu=""
if command -v nvidia-smi >/dev/null; then
  gpu=$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1) ||
    gpu=""
fi
if [ -z "$gpu" ] || ! grep -q ',' <<<"$gpu"; then
  if $dry_run; then
    say "GPU: none (nvidia-smi missing or lists no GPU); a real run stops here with exit status 2"
  else
    die "no GPU: nvidia-smi $(command -v nvidia-smi >/dev/null && echo 'lists no GPU' || echo 'is not installed'). \
This script runs on the GPU machine; here use --dry-run or --prepare." 2
  fi
else
  say "GPU: $gpu"
fi

nvcc=$(find_nvcc)
[ -n "$nvcc" ] || die "no nvcc on PATH or in /usr/local/cuda/bin" 2
say "nvcc: $nvcc ($("$nvcc" --version | tail -n 1))"
command -v cmake >/dev/null || die "no cmake on PATH" 2
say "cmake: $(cmake --version | head -n 1)"
command -v c++ >/dev/null || command -v g++ >/dev/null || die "no C++ compiler (c++ or g++) on PATH" 2
[ -d "$DEPS/usr" ] && say "dependencies: $DEPS ($(sed -n 's/ from:$//; 2p' "$DEPS/README" 2>/dev/null))" ||
  say "dependencies: no $DEPS; using the system's (run --prepare where the -dev packages are, and carry .deps)"
torch_ok=false
if torch_line=$(timeout 60 "$PYTHON" -c "$TORCH_PROBE" 2>&1); then
  torch_ok=true
  say "PyTorch: $torch_line"
else
  say "PyTorch: NOT usable on the GPU: ${torch_line##*$'\n'}"
fi

arch=${OPNORM_CUDA_ARCHITECTURES:-$(gpu_architecture)}
mapfile -t configure_args < <(configure_arguments "$nvcc" "$arch")
build_targets=(cuda_test_backend_agreement cuda_test_nccl_one_rank cuda_bench_steps)
compare_args=(--device cuda --python "$PYTHON" --bench-binary "$BUILD/bench/cuda_bench_steps" --threads "$THREADS"
  --repetitions 3 --min-time 0.2 --warmup-time 0.3 --timeout 60 --json "$LOGS/gpu_compare.json"
  --markdown "$REPORT")

if $dry_run; then
  say "plan (deadline ${BUDGET}s):"
  echo "  cmake ${configure_args[*]}"
  echo "  cmake --build $BUILD --parallel 16 --target ${build_targets[*]}   (the ones that exist; -k 0)"
  echo "  (cd $BUILD && ctest -R '^cuda_' --output-on-failure)"
  echo "  $PYTHON bench/compare.py ${compare_args[*]}"
  echo "  then: summary, and the report and logs copied to \$OUT when it is set"
  $torch_ok || say "note: without PyTorch on CUDA the compare phase would be reported as failed"
  exit 0
fi

mkdir -p "$LOGS"
trap 'bring_back' EXIT

# 2. configure. A build folder left by another generator or source is
# started afresh rather than patched.
if [ -f "$BUILD/CMakeCache.txt" ] && ! grep -q "CMAKE_HOME_DIRECTORY:INTERNAL=$ROOT\$" "$BUILD/CMakeCache.txt"; then
  rm -rf "$BUILD"
  mkdir -p "$LOGS"
fi
run_phase configure "$(phase_limit 120 240)" cmake "${configure_args[@]}"
configured=$?

# 3. build: the targets that exist (the agreement suite's CUDA twin may not
# exist yet), together, so nvcc compiles them side by side.
built_targets=()
if [ $configured -eq 0 ]; then
  for t in "${build_targets[@]}"; do
    if has_target "$t"; then built_targets+=("$t"); else say "build: target $t does not exist; not built"; fi
  done
  keep_going=(-- -k 0)
  grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja' "$BUILD/CMakeCache.txt" || keep_going=(-- -k)
  if [ ${#built_targets[@]} -gt 0 ]; then
    run_phase build "$(phase_limit 330 130)" cmake --build "$BUILD" --parallel 16 --target "${built_targets[@]}" \
      "${keep_going[@]}" && [ ${#built_targets[@]} -lt ${#build_targets[@]} ] &&
      record build FAILED 0 "built ${built_targets[*]} only"
  else
    record build FAILED 0 "no target to build"
  fi
else
  record build skipped 0 "configure failed"
fi

# 4. the CUDA tests.
if [ $configured -eq 0 ]; then
  run_phase test "$(phase_limit 150 100)" ctest --test-dir "$BUILD" -R '^cuda_' --output-on-failure --no-tests=error --timeout 140
  grep -E "tests passed|tests failed|No tests were found" "$LOGS/test.log" | sed 's/^/  ctest: /'
else
  record test skipped 0 "configure failed"
fi

# 5. opnorm vs PyTorch on the GPU.
if [ ! -x "$BUILD/bench/cuda_bench_steps" ]; then
  record compare skipped 0 "no cuda_bench_steps"
elif ! $torch_ok; then
  record compare FAILED 0 "PyTorch does not see the GPU"
else
  rm -f "$REPORT"  # a report left from an earlier run must not pass for this one's
  run_phase compare "$(phase_limit 240 5)" "$PYTHON" "$ROOT/bench/compare.py" "${compare_args[@]}" &&
    cat "$LOGS/compare.log"
fi

# 6. summary.
{
  echo "gpu_check summary ($(date -u '+%F %T UTC'), $(($(date +%s) - START)) s of ${BUDGET}s)"
  echo "GPU: $gpu"
  for p in "${PHASES[@]}"; do echo "  $p"; done
} | tee "$LOGS/summary.txt"
if printf '%s\n' "${PHASES[@]}" | awk '{print $2}' | grep -qv '^ok$'; then
  echo "gpu_check: FAILED (logs in $LOGS)"
  exit 1
fi
echo "gpu_check: all phases passed; report in ${REPORT#"$ROOT"/}"
exit 0
