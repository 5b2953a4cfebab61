#!/usr/bin/env bash
# Builds the host test suite with sanitizers and runs it through ctest; any
# finding fails the run (non-zero exit).
#
#  1. AddressSanitizer + UndefinedBehaviorSanitizer (LeakSanitizer included):
#     every tests/test_*.cpp program and the cross-check writers, built by
#     clang++-14 into $OPNORM_ASAN_BUILD_DIR (default build-asan) and run by
#     ctest, with the example programs, which the suite runs (program_errors).
#     Benchmarks and the CUDA build are not part of it.
#  2. ThreadSanitizer over the OpenMP code: the test programs that run the
#     parallel paths (the cpu backend's for_each_index / for_each_segment,
#     the threaded GEMM and for_each_task of conv2d's Winograd passes,
#     thrust<omp>, the threaded training runs), built into
#     $OPNORM_TSAN_BUILD_DIR (default build-tsan) and run with two OpenMP
#     threads.
#
# Why clang++-14 and LLVM's libomp, not g++-12 and libgomp: GCC's libgomp is
# not instrumented for ThreadSanitizer, so TSan does not see the
# synchronization in its barriers and reports a data race between two
# consecutive, correctly separated `omp parallel for` loops (checked here
# with a ten-line program: g++-12 -fsanitize=thread -fopenmp reports a race
# that is not there). LLVM's libomp ships the OMPT tool Archer
# (libarcher.so, package libomp-14-dev), which libomp loads automatically in
# a TSan program and which tells TSan about every barrier, task and
# reduction; with TSAN_OPTIONS=ignore_noninstrumented_modules=1 (which
# Archer asks for, to ignore libomp's own internals) the same program is
# clean and a real race in an `omp parallel` region is reported with its
# line. One compiler serves both passes, and clang++-14 also compiles an
# ASan+UBSan test program about twice as fast as g++-12 with less than half
# the memory (test_layer_conv2d: 113 s and 0.8 GB against 231 s and 2 GB).
#
# ctest runs only the test programs and the cross-checks: the compile-only
# entries (header_*, compile_fail_*, find_package_*) run the compiler, not
# opnorm's code, so a sanitizer has nothing to check there. The Python
# cross-checks run the uninstrumented interpreter on files an instrumented
# writer made; torchattacks is looked for in $OPNORM_TORCHATTACKS_PYTHON
# (scripts/test.sh makes such a venv); without it the APGD check reports
# itself skipped, and its writer still runs under the sanitizers.
#
# ctest's per-test limit is 3000 s: under ASan+UBSan at -O1 the slowest
# program measured so far, test_analysis_fmnist, takes about 4.5 minutes on
# a loaded 2-core machine (its sizes are tied to the 784 inputs of
# fmnist_cnn, so it runs as it is).
#
# Environment:
#   OPNORM_ASAN_BUILD_DIR  (build-asan)   OPNORM_TSAN_BUILD_DIR (build-tsan)
#   OPNORM_SANITIZE_JOBS   parallel compile jobs and ctest jobs (nproc)
#   OPNORM_SANITIZE_ASAN   0 skips the ASan+UBSan pass (1), to rerun TSan alone
#   OPNORM_SANITIZE_TSAN   0 skips the ThreadSanitizer pass (1)
#   OPNORM_TSAN_TESTS      test programs for the TSan pass
#   OPNORM_TORCHATTACKS_PYTHON  interpreter with torch and torchattacks
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_dependencies.sh sanitize

asan_build="${OPNORM_ASAN_BUILD_DIR:-build-asan}"
tsan_build="${OPNORM_TSAN_BUILD_DIR:-build-tsan}"
jobs="${OPNORM_SANITIZE_JOBS:-$(nproc)}"
cxx=clang++-14
common_flags="-O1 -g -fno-omit-frame-pointer"

seconds() { date +%s; }
elapsed() { echo "$(( $(seconds) - $1 )) s"; }

# Pass 1: ASan + UBSan. A custom build type, so that no -DNDEBUG is added:
# Eigen's own assertions (index and size checks) stay on. The ignorelist
# keeps two UBSan checks out of Thrust's headers only: Thrust dispatches
# through a null pointer by design (scripts/ubsan_ignorelist.txt says where).
ignorelist="-fsanitize-ignorelist=$(pwd)/scripts/ubsan_ignorelist.txt"
if [ "${OPNORM_SANITIZE_ASAN:-1}" = 0 ]; then
  echo "opnorm: the ASan+UBSan pass is switched off (OPNORM_SANITIZE_ASAN=0)"
else
start=$(seconds)
cmake -S . -B "$asan_build" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=Asan \
  -DCMAKE_CXX_FLAGS_ASAN="$common_flags -fsanitize=address,undefined -fno-sanitize-recover=undefined $ignorelist" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DOPNORM_BUILD_BENCHMARKS=OFF -DOPNORM_BUILD_EXAMPLES=ON -DOPNORM_CUDA=OFF \
  -DOPNORM_TORCHATTACKS_PYTHON="${OPNORM_TORCHATTACKS_PYTHON:-/usr/bin/python3}" >/dev/null
cmake --build "$asan_build" -j "$jobs"
echo "opnorm: ASan+UBSan build: $(elapsed "$start")"

# halt_on_error with -fno-sanitize-recover: the first finding aborts the
# test program, which ctest counts as a failure.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:detect_odr_violation=2"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:report_error_type=1"
export LSAN_OPTIONS="report_objects=1"
start=$(seconds)
asan_status=0
(cd "$asan_build" && ctest --output-on-failure -j "$jobs" --timeout 3000 \
  -E '^(header_|compile_fail_|find_package_)') || asan_status=$?
echo "opnorm: ASan+UBSan tests: $(elapsed "$start")"
if [ "$asan_status" -ne 0 ]; then
  echo "opnorm: the ASan+UBSan pass failed (see the reports above)" >&2
  exit "$asan_status"
fi
fi

# Pass 2: TSan with LLVM's libomp and Archer (see the top of this file).
if [ "${OPNORM_SANITIZE_TSAN:-1}" = 0 ]; then
  echo "opnorm: the ThreadSanitizer pass is switched off (OPNORM_SANITIZE_TSAN=0)"
  exit 0
fi
tsan_tests=(${OPNORM_TSAN_TESTS:-test_backend_agreement test_layer_conv2d test_networks test_trainer})
start=$(seconds)
cmake -S . -B "$tsan_build" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=Tsan \
  -DCMAKE_CXX_FLAGS_TSAN="$common_flags -fsanitize=thread" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" \
  -DOPNORM_BUILD_BENCHMARKS=OFF -DOPNORM_BUILD_EXAMPLES=ON -DOPNORM_CUDA=OFF >/dev/null
cmake --build "$tsan_build" -j "$jobs" --target "${tsan_tests[@]}"
echo "opnorm: TSan build: $(elapsed "$start")"

# Archer needs ignore_noninstrumented_modules=1 (libomp's internals are not
# instrumented); exitcode 66 is TSan's default, set here to be explicit.
# Two threads, passive waits: the machine may have two cores, and a
# spinning thread under TSan turns seconds into minutes.
export TSAN_OPTIONS="ignore_noninstrumented_modules=1:halt_on_error=1:exitcode=66:second_deadlock_stack=1"
start=$(seconds)
for t in "${tsan_tests[@]}"; do
  echo "opnorm: TSan: $t"
  t0=$(seconds)
  status=0
  OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive "$tsan_build/tests/$t" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "opnorm: the ThreadSanitizer pass failed in $t (exit status $status)" >&2
    exit "$status"
  fi
  echo "opnorm: TSan: $t passed ($(elapsed "$t0"))"
done
echo "opnorm: TSan tests: $(elapsed "$start")"
echo "opnorm: sanitizers found nothing"
