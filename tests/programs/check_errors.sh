#!/usr/bin/env bash
# The example programs' failure semantics (docs/reliability.md), one case per
# reproducer of issue 11 and per rule:
#   * exit 2 for a usage error, 1 for a failed run, with one line on stderr
#     that names the option or the file and what is wrong;
#   * NaN, infinity and out-of-range numbers are refused, also when they
#     come back from a checkpoint on --resume;
#   * a checkpoint holding NaN is refused naming the tensor and the index;
#   * a failed run leaves no empty output folder behind.
#
# Usage: check_errors.sh <folder with train, attack and reproduce> <scratch folder>
# Needs Fashion-MNIST under /usr/share/datasets/fashion-mnist (exit 77,
# skipped, without it) and python3 (standard library only).
set -uo pipefail
bin="$(cd "$1" && pwd)"
work="$2"
here="$(cd "$(dirname "$0")" && pwd)"
data=/usr/share/datasets/fashion-mnist
if [ ! -d "$data" ]; then
  echo "skipping: Fashion-MNIST is not installed under $data"
  exit 77
fi
export OMP_NUM_THREADS=1
rm -rf "$work"
mkdir -p "$work"
cd "$work"
failures=0

# expect CODE SUBSTRING -- COMMAND...: runs the command, checks the exit code,
# that stderr is one line (after the lines a run prints before failing, for
# failures), and that the last line contains SUBSTRING.
expect() {
  local code="$1" text="$2"
  shift 3
  "$@" >out.txt 2>err.txt
  local got=$?
  local last
  last="$(tail -n 1 err.txt)"
  if [ "$got" != "$code" ] || [[ "$last" != *"$text"* ]]; then
    echo "FAILED: $* -> exit $got (expected $code), last stderr line: $last (expected to contain: $text)"
    failures=$((failures + 1))
    return
  fi
  if [ "$code" = 2 ] && [ "$(wc -l <err.txt)" != 1 ]; then
    echo "FAILED: $* -> a usage error printed $(wc -l <err.txt) lines:"
    cat err.txt
    failures=$((failures + 1))
    return
  fi
  echo "ok: exit $got: $last"
}

train="$bin/train"
attack="$bin/attack"
reproduce="$bin/reproduce"

# A small trained model to attack and to resume from.
"$train" --limit-train 256 --epochs 1 --batch-size 128 --out model --progress-every 100 >/dev/null 2>&1 ||
  { echo "FAILED: the small training run did not succeed"; exit 1; }

# 1. Negative and NaN eps, everywhere.
expect 2 "train: error: --eps: -1 is not a finite number >= 0" -- \
  "$train" --method adversarial --eps -1 --limit-train 256 --epochs 1 --out neg
expect 2 "train: error: --eps: nan is not a finite number >= 0" -- "$train" --eps nan --out nan_eps
expect 2 "train: error: --lr: inf is not a finite number >= 0" -- "$train" --lr inf --out inf_lr
expect 2 "train: error: --lambda: nan is not a finite number >= 0" -- "$train" --lambda nan --out nan_lambda
expect 2 "attack: error: --eps: nan is not a finite number >= 0" -- \
  "$attack" --checkpoint model/final.safetensors --eps nan --examples 20
expect 2 "attack: error: --eps: -0.5 is not a finite number >= 0" -- \
  "$attack" --checkpoint model/final.safetensors --eps 0.5,-0.5 --examples 20
expect 2 "reproduce: error: --eps: nan is not a finite number > 0" -- "$reproduce" --eps nan --out nan_reproduce

# 2. A NaN weight is refused by name, not hidden behind a plausible accuracy.
cp model/final.safetensors nan_weight.safetensors
python3 "$here/edit_safetensors.py" nan_weight.safetensors set-nan 1.weight 3
expect 1 "tensor '1.weight' holds nan at index 3 of shape (32, 1, 3, 3)" -- \
  "$attack" --checkpoint nan_weight.safetensors --examples 20
expect 1 "tensor '1.weight' holds nan at index 3" -- \
  "$train" --init nan_weight.safetensors --limit-train 256 --epochs 1 --out from_nan

# 3. Consistent command-line errors: short messages, exit 2 everywhere.
expect 2 "train: error: --batch-size: 0 is not a whole number >= 1" -- "$train" --batch-size 0
if grep -q 1797 err.txt; then echo "FAILED: --batch-size 0 printed the 300-digit bound"; failures=$((failures + 1)); fi
expect 2 "train: error: --lr: 'fast' is not a number" -- "$train" --lr fast
expect 2 "attack: error: The following argument was not expected: --bogus" -- \
  "$attack" --checkpoint model/final.safetensors --bogus
expect 2 "attack: error: --checkpoint is required" -- "$attack"
expect 2 "reproduce: error: --preset: quickest not in {quick,default,full}" -- "$reproduce" --preset quickest
expect 2 "attack: error: --examples: 0 is not a whole number >= 1" -- \
  "$attack" --checkpoint model/final.safetensors --examples 0
expect 2 "attack: error: --first 10000: the test set has 10000 images, so there is nothing to attack" -- \
  "$attack" --checkpoint model/final.safetensors --first 10000
expect 1 "attack: error: opnorm::safetensors: 'missing.safetensors': cannot open" -- \
  "$attack" --checkpoint missing.safetensors

# 4. Settings read back on --resume pass the same checks as typed ones.
cp model/last.safetensors bogus_optimizer.safetensors
python3 "$here/edit_safetensors.py" bogus_optimizer.safetensors set-metadata config.--optimizer bogus
expect 1 "stores --optimizer 'bogus', which this program refuses" -- \
  "$train" --resume bogus_optimizer.safetensors --out model --epochs 2
cp model/last.safetensors bogus_batch.safetensors
python3 "$here/edit_safetensors.py" bogus_batch.safetensors set-metadata config.--batch-size x
expect 1 "stores --batch-size 'x', which this program refuses" -- \
  "$train" --resume bogus_batch.safetensors --out model --epochs 2
cp model/last.safetensors nan_eps.safetensors
python3 "$here/edit_safetensors.py" nan_eps.safetensors set-metadata config.--eps nan
expect 1 "stores --eps 'nan', which this program refuses" -- \
  "$train" --resume nan_eps.safetensors --out model --epochs 2

# 5. Failed runs leave no empty output folder.
expect 1 "loss is" -- "$train" --lr 1e6 --limit-train 512 --epochs 1 --out diverged
if [ -e diverged ]; then echo "FAILED: the diverged run left 'diverged' behind"; failures=$((failures + 1)); fi
echo "not a checkpoint" >bad.safetensors
expect 1 "reproduce: error: opnorm::safetensors: 'bad.safetensors'" -- \
  "$reproduce" --preset quick --standard-checkpoint bad.safetensors --out failed_reproduce
if [ -e failed_reproduce ]; then echo "FAILED: the failed reproduce left 'failed_reproduce' behind"; failures=$((failures + 1)); fi
for folder in neg nan_eps inf_lr nan_lambda nan_reproduce from_nan; do
  if [ -e "$folder" ]; then echo "FAILED: a refused run left '$folder' behind"; failures=$((failures + 1)); fi
done

if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all command-line checks passed"
