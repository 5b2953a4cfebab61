#!/usr/bin/env bash
# One-command reproduction of the paper's experiments on Fashion-MNIST:
#
#   bash scripts/reproduce.sh [quick|default|full] [extra reproduce options]
#
# installs what is missing, builds the `reproduce` program (Release, in
# build/), runs it with one OpenMP thread per core, and turns its
# results.json into figures and a report:
#
#   out/reproduction/<preset>/results.json   every number
#   out/reproduction/<preset>/figure*.png    the paper's figures, with standard-error bands
#   out/reproduction/<preset>/report.md      each figure beside the paper's claim
#
# Presets (2-core CPU, otherwise idle): quick ~3 min, default ~16 min,
# full several hours. See docs/reproduction.md.
set -euo pipefail

preset="${1:-default}"
case "$preset" in
  quick|default|full) ;;
  -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
  *) echo "usage: $0 [quick|default|full] [extra reproduce options]" >&2; exit 2 ;;
esac
shift || true

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${REPRODUCE_OUT:-out/reproduction/$preset}"
start=$(date +%s)

bash scripts/install_dependencies.sh reproduce

# Configure once; a build folder configured as Debug would make the run
# many times slower, so insist on Release there.
if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
elif ! grep -q '^CMAKE_BUILD_TYPE:STRING=Release$' build/CMakeCache.txt; then
  echo "reproduce.sh: build/ is not a Release build; reconfiguring it as Release" >&2
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build build --target reproduce -j 2

# One OpenMP thread per core. On a machine shared with other jobs, fewer
# threads can be much faster (threads spin at barriers while a core is
# taken): REPRODUCE_THREADS=1 bash scripts/reproduce.sh ...
threads="${REPRODUCE_THREADS:-$(nproc)}"
mkdir -p "$out"
command="bash scripts/reproduce.sh $preset${*:+ $*}"
echo "reproduce.sh: preset $preset, $threads threads, output in $out" >&2
# Passive waiting keeps idle OpenMP threads from spinning on a shared machine.
OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}" OMP_NUM_THREADS="$threads" build/examples/reproduce --preset "$preset" --out "$out" --threads "$threads" "$@" \
  2>&1 | tee "$out/log.txt"
status=${PIPESTATUS[0]}
wall=$(( $(date +%s) - start ))
if [ "$status" -ne 0 ]; then
  echo "reproduce.sh: the reproduce program failed (status $status); see $out/log.txt" >&2
  # Plot whatever stages finished: results.json is written after each one.
  [ -f "$out/results.json" ] && /usr/bin/python3 scripts/make_report.py "$out" --command "$command" \
    --wall-seconds "$wall" || true
  exit "$status"
fi
/usr/bin/python3 scripts/make_report.py "$out" --command "$command" --wall-seconds "$wall"
echo "reproduce.sh: done in ${wall} s; report: $out/report.md" >&2
