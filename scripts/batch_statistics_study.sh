#!/usr/bin/env bash
# Data-dependent SNR's three BatchNorm options on Table 1's setup:
#
#   bash scripts/batch_statistics_study.sh [reproduction folder]
#
# Fine-tunes the standard model of a finished reproduction (default:
# out/reproduction/default, written by `bash scripts/reproduce.sh`) with
# data-dependent SNR (sum-of-squares form) once per --batch-statistics
# option, with Table 1's settings (the reproduction's eps* and lambda,
# 10 power iterations, the first 8000 training images, one epoch, SGD
# lr 0.02 with momentum 0.9 and weight decay 5e-4, cosine, batch 128), then
# measures clean accuracy on the test set and l2 robust accuracy at eps*:
# PGA-10 on the first 1000 test images, the APGD ensemble (APGD-CE, then
# APGD-T with 3 target classes) on the first 300, as in Table 1.
# Writes out/batch-statistics/summary.md (the table docs/batch-statistics.md
# quotes) and each run's log. About 15 minutes on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
run="${1:-out/reproduction/default}"
standard="$run/models/standard.safetensors"
results="$run/results.json"
if [ ! -f "$standard" ] || [ ! -f "$results" ]; then
  echo "batch_statistics_study.sh: $standard or $results is missing; run bash scripts/reproduce.sh first" >&2
  exit 2
fi
read -r eps lambda < <(/usr/bin/python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
print(r['models']['data_dependent_snr']['hyper']['eps'], r['models']['data_dependent_snr']['hyper']['lambda'])" "$results")

cmake --build build --target train attack -j 2 >/dev/null
out=out/batch-statistics
mkdir -p "$out"
summary="$out/summary.md"
{
  echo "Data-dependent SNR (sum-of-squares form) fine-tuned from $standard, eps = $eps, lambda = $lambda;"
  echo "l2 robust accuracy at eps: PGA-10 on the first 1000 test images, the APGD ensemble on the first 300."
  echo "Command: bash scripts/batch_statistics_study.sh $run"
  echo
  echo "| --batch-statistics | clean accuracy | l2-PGA-10 (1000) | APGD ensemble (300) | training time |"
  echo "|---|---|---|---|---|"
} >"$summary.tmp"
threads="$(nproc)"
# Passive waiting keeps idle OpenMP threads from spinning on a shared machine.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
for option in clean_batch independent_batches running; do
  dir="$out/$option"
  rm -rf "$dir"
  start=$(date +%s)
  OMP_NUM_THREADS="$threads" build/examples/train --method data_dependent_snr --init "$standard" --limit-train 8000 \
    --epochs 1 --lr 0.02 --schedule cosine --momentum 0.9 --weight-decay 5e-4 --batch-size 128 \
    --eps "$eps" --lambda "$lambda" --iterations 10 --batch-statistics "$option" --progress-every 20 \
    --out "$dir" >"$out/$option.train.log" 2>&1
  seconds=$(( $(date +%s) - start ))
  clean=$(grep -o 'test accuracy: [0-9.]*%' "$out/$option.train.log" | tail -1 | grep -o '[0-9.]*%')
  OMP_NUM_THREADS="$threads" build/examples/attack --checkpoint "$dir/final.safetensors" --eps "$eps" --examples 1000 \
    --attack pga >"$out/$option.pga.txt"
  OMP_NUM_THREADS="$threads" build/examples/attack --checkpoint "$dir/final.safetensors" --eps "$eps" --examples 300 \
    --attack ensemble --target-classes 3 >"$out/$option.ensemble.txt"
  pga=$(grep -o 'robust accuracy [0-9.]*%' "$out/$option.pga.txt" | head -1 | grep -o '[0-9.]*%')
  ensemble=$(grep -o 'robust accuracy [0-9.]*%' "$out/$option.ensemble.txt" | head -1 | grep -o '[0-9.]*%')
  echo "| $option | $clean | $pga | $ensemble | ${seconds} s |" >>"$summary.tmp"
  echo "batch_statistics_study.sh: $option: clean $clean, PGA-10 $pga, ensemble $ensemble (${seconds} s)" >&2
done
mv "$summary.tmp" "$summary"
cat "$summary"
