#!/usr/bin/env bash
# Data-parallel scaling on this machine (docs/distributed.md): for standard
# training, l2-PGA-10 adversarial training and data-dependent SNR with 10
# power iterations, 20 steps of fmnist_cnn at batch 128 on Fashion-MNIST,
#   one process with 2 OpenMP threads   against
#   mpirun -np 2, one thread per rank   (train --distributed, synchronized BatchNorm).
# Prints a markdown table: images/s of each, their ratio, and the share of a
# step that the ranks spend in collectives (which includes waiting for the
# slower rank).
#
# Usage: bench/distributed_scaling.sh [build folder with examples/train built with OPNORM_MPI=ON]
set -euo pipefail
build="${1:-build}"
train="$(cd "$build/examples" && pwd)/train"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
common=(--limit-train 2560 --batch-size 128 --epochs 1 --iterations 10 --progress-every 1000 --seed 0)

# images/s of the epoch line: "... 361 img/s ..."
images_per_second() { grep -o '[0-9.]* img/s' "$1" | tail -n 1 | cut -d' ' -f1; }

echo "| method | 1 process x 2 threads, img/s | 2 ranks x 1 thread, img/s | ratio (2 ranks / 1 process) | step in collectives, rank 0 / rank 1 |"
echo "|---|---|---|---|---|"
for method in standard adversarial data_dependent_snr; do
  OMP_NUM_THREADS=2 "$train" --method "$method" "${common[@]}" --out "$work/one-$method" 2>"$work/one.err" >/dev/null
  OMP_NUM_THREADS=1 mpirun -np 2 --oversubscribe "$train" --distributed --method "$method" "${common[@]}" \
    --out "$work/two-$method" 2>"$work/two.err" >/dev/null
  one=$(images_per_second "$work/one.err")
  two=$(images_per_second "$work/two.err")
  # Collective seconds over 20 steps against the step time from img/s.
  shares=$(grep -o 'rank [01]: [0-9.]* s' "$work/two.err" | awk -v ips="$two" '{ printf "%s%.1f%%", (NR > 1 ? " / " : ""), 100 * $3 / (2560 / ips) }')
  awk -v m="$method" -v a="$one" -v b="$two" -v s="$shares" 'BEGIN { printf "| %s | %.0f | %.0f | %.2f | %s |\n", m, a, b, b / a, s }'
done
