#!/usr/bin/env bash
# Builds opnorm's programs for this machine's CPU, for the one-machine runs
# (the reproduction and its studies):
#
#   bash scripts/native_build.sh <target>...     e.g. reproduce, or train attack
#
# The folder is build-reproduce/ (or $REPRODUCE_BUILD_DIR), compiled with
# -march=native: AVX-512 where there is one, which makes a training step
# about 8% faster than the portable -mavx2 -mfma that build/ uses
# (docs/performance.md). Its binaries run only where they were built, which
# is all a one-machine run needs. A folder configured as Debug would make a
# run many times slower, so it insists on Release.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build="${REPRODUCE_BUILD_DIR:-build-reproduce}"
arch_flags="-march=native"
echo 'int main() { return 0; }' | "${CXX:-c++}" -x c++ -march=native -o /dev/null - 2>/dev/null || arch_flags="-mavx2;-mfma"
if [ ! -f "$build/CMakeCache.txt" ] || ! grep -q '^CMAKE_BUILD_TYPE:STRING=Release$' "$build/CMakeCache.txt"; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DOPNORM_BUILD_TESTS=OFF -DOPNORM_BUILD_BENCHMARKS=OFF \
    -DOPNORM_ARCH_FLAGS="$arch_flags" >/dev/null
fi
cmake --build "$build" --target "$@" -j "$(nproc)" >&2
