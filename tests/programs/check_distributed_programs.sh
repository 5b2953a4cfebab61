#!/usr/bin/env bash
# A data-parallel job that loses a rank stops with a clear error instead of
# hanging, and the run resumes from its last checkpoint (docs/distributed.md):
#   1. `mpirun -np 2 train --distributed` with a checkpoint every 4 steps;
#      once a mid-epoch checkpoint exists, rank 1 is killed with SIGKILL;
#   2. the job must end within a timeout with a non-zero exit status and
#      mpirun's message naming the killed rank, and last.safetensors must
#      still load (it was written atomically by rank 0);
#   3. `mpirun -np 2 train --distributed --resume` completes the run;
#   4. the same checkpoint also resumes in one process (any number of ranks);
#   5. `mpirun -np 2 attack --distributed` reports the clean and robust
#      accuracies that one process reports (the images split across ranks);
#   6. `mpirun -np 2 reproduce --distributed`, a small reproduction from the
#      trained model, measures the untrained and standard models as one
#      process does (counts to the last bit, continuous values to rounding),
#      and every curve of every model covers all of its points
#      (compare_reproductions.py); a test set with fewer points than ranks is
#      refused with exit 2.
#
# Usage: check_distributed_programs.sh <folder with train, attack and reproduce> <scratch folder> <mpiexec>
# Skipped (77) without Fashion-MNIST.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(cd "$1" && pwd)"
work="$2"
mpiexec="$3"
data=/usr/share/datasets/fashion-mnist
if [ ! -d "$data" ]; then
  echo "skipping: Fashion-MNIST is not installed under $data"
  exit 77
fi
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo
rm -rf "$work"
mkdir -p "$work"
cd "$work"
fail() { echo "FAILED: $*"; exit 1; }

# Evaluation on 1000 test images keeps the epochs short; it does not steer training.
run=(--distributed --limit-train 1024 --limit-test 1000 --batch-size 64 --epochs 2 --checkpoint-every 4 --progress-every 4)

# 1. Start the job and wait for a checkpoint written inside the first epoch.
"$mpiexec" -np 2 --oversubscribe "$bin/train" "${run[@]}" --out run >job.out 2>job.err &
job=$!
for _ in $(seq 1 600); do
  [ -f run/last.safetensors ] && break
  kill -0 "$job" 2>/dev/null || { cat job.err; fail "the job ended before its first checkpoint"; }
  sleep 0.2
done
[ -f run/last.safetensors ] || fail "no checkpoint after 120 s"
sleep 1  # into the next steps, so the kill lands mid-epoch

# The rank-1 process: OpenMPI gives each rank OMPI_COMM_WORLD_RANK.
victim=""
for pid in $(pgrep -f "$bin/train"); do
  if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1"; then victim=$pid; fi
done
[ -n "$victim" ] || fail "rank 1 of the job was not found"
kill -9 "$victim"
echo "killed rank 1 (pid $victim)"

# 2. The job must stop, not hang.
for _ in $(seq 1 300); do
  kill -0 "$job" 2>/dev/null || break
  sleep 0.2
done
if kill -0 "$job" 2>/dev/null; then
  kill -9 "$job"
  fail "the job still ran 60 s after rank 1 was killed"
fi
wait "$job"
status=$?
[ "$status" != 0 ] || fail "the job exited 0 after losing a rank"
grep -q "rank 1" job.err || { cat job.err; fail "mpirun's message does not name the killed rank"; }
echo "ok: the job stopped with exit $status: $(grep -m1 "rank 1" job.err)"
[ ! -f run/final.safetensors ] || fail "a broken run wrote final.safetensors"
ls run | grep -q '\.tmp' && fail "a temporary checkpoint file was left behind: $(ls run)"
cp run/last.safetensors checkpoint.safetensors

# 3. Resume on two ranks and finish.
"$mpiexec" -np 2 --oversubscribe "$bin/train" --distributed --resume run/last.safetensors --limit-test 1000 --out run \
  >resume2.out 2>resume2.err || { cat resume2.err; fail "resuming on 2 ranks failed"; }
grep -q "test accuracy" resume2.out || fail "the resumed 2-rank run printed no result"
[ -f run/final.safetensors ] || fail "the resumed 2-rank run wrote no final.safetensors"
echo "ok: resumed on 2 ranks: $(cat resume2.out)"

# 4. The same checkpoint, resumed in one process.
"$bin/train" --resume checkpoint.safetensors --limit-test 1000 --out single >resume1.out 2>resume1.err ||
  { cat resume1.err; fail "resuming in one process failed"; }
grep -q "test accuracy" resume1.out || fail "the resumed 1-process run printed no result"
echo "ok: resumed in one process: $(cat resume1.out)"

# 5. Distributed evaluation: the accuracies of one process, to the digit.
attack=(--checkpoint run/final.safetensors --examples 41 --eps 0.5,1.5 --iterations 5)
"$mpiexec" -np 2 --oversubscribe "$bin/attack" --distributed "${attack[@]}" >attack2.out 2>attack2.err ||
  { cat attack2.err; fail "attack on 2 ranks failed"; }
"$bin/attack" "${attack[@]}" >attack1.out 2>attack1.err || { cat attack1.err; fail "attack in one process failed"; }
grep "accuracy" attack1.out >attack1.numbers
grep "accuracy" attack2.out >attack2.numbers
[ "$(wc -l <attack1.numbers)" = 3 ] || fail "attack printed $(wc -l <attack1.numbers) accuracy lines, expected 3"
diff attack1.numbers attack2.numbers || fail "the 2-rank attack's accuracies differ from one process's"
grep -q "2 ranks" attack2.out || fail "the 2-rank attack does not say it ran on 2 ranks"
echo "ok: attack on 2 ranks agrees with one process: $(tr '\n' ' ' <attack2.numbers)"

# 6. A small reproduction from the trained model, in one process and on 2 ranks.
reproduce=(--preset quick --standard-checkpoint run/final.safetensors --finetune-examples 128 --clean-points 400
  --eps 1.5 --gsnr-lambda 1 --eps-points 16 --robust-points 24 --ensemble-points 8 --apgd-targets 1
  --apgd-iterations 10 --points 6 --profile-points 6 --curve-points 12)
"$bin/reproduce" "${reproduce[@]}" --out reproduce1 >reproduce1.out 2>reproduce1.err ||
  { cat reproduce1.err; fail "reproduce in one process failed"; }
"$mpiexec" -np 2 --oversubscribe "$bin/reproduce" --distributed "${reproduce[@]}" --out reproduce2 \
  >reproduce2.out 2>reproduce2.err || { cat reproduce2.err; fail "reproduce on 2 ranks failed"; }
python3 "$here/compare_reproductions.py" reproduce1/results.json reproduce2/results.json 2 || fail "see above"
[ "$(grep -c "Table 1, Standard" reproduce2.err)" = 1 ] || fail "the 2-rank reproduction did not log exactly once"
ls reproduce2/models | grep -q '\.tmp' && fail "a temporary file was left behind: $(ls reproduce2/models)"
[ "$(ls reproduce2/models | wc -l)" = "$(ls reproduce1/models | wc -l)" ] ||
  fail "the 2-rank reproduction wrote $(ls reproduce2/models | wc -l) models, one process $(ls reproduce1/models | wc -l)"
echo "ok: reproduce on 2 ranks: $(tail -1 reproduce2.err)"

"$mpiexec" -np 2 --oversubscribe "$bin/reproduce" --distributed "${reproduce[@]}" --linf-points 1 --out too_few \
  >too_few.out 2>too_few.err
status=$?
[ "$status" = 2 ] || { cat too_few.err; fail "too few points for the ranks exited $status, expected 2"; }
grep -q "reproduce: error on rank [01] of 2: --linf-points 1 is fewer than the 2 ranks of the job" too_few.err ||
  { cat too_few.err; fail "no clear message for too few points"; }
[ ! -e too_few ] || fail "the refused run left its output folder behind"
echo "ok: too few points for the ranks is refused: $(grep -m1 "error on rank" too_few.err)"
