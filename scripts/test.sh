#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite through ctest:
#  1. the host build (g++): every numerical test on cpu, thrust<omp> and thrust<cpp>;
#  2. the CUDA build (nvcc, -DOPNORM_CUDA=ON): compiles and links the CUDA test
#     program and the train example for thrust<cuda>, and runs the CUDA test,
#     which reports "no CUDA device: skipped" on a machine without a GPU.
#  3. the libFuzzer targets, 20 s each (scripts/fuzz.sh).
#  The host build has OPNORM_MPI=ON: OpenMPI from Debian, and the data-parallel
#  tests run by ctest under `mpirun -np 2` on loopback (tests/distributed.cmake).
#  It also has OPNORM_BLAS=ON: backend::cpu_blas (OpenBLAS's GEMMs) is checked
#  against cpu by test_backend_agreement_blas.
#  The CUDA build, its test and the fuzzing come before the host tests run, so that the
#  run ends with the host suite's summary (on a machine without a GPU the
#  CUDA summary would otherwise be the last word, saying only "skipped").
#     `cmake --build build-cuda --target opnorm_cuda_suite` builds every test
#     program with nvcc; CI builds the CUDA test and the train example only,
#     to stay within its time budget.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each stage's wall time goes to stderr, so a slow CI run says where its time went.
stage_start=$SECONDS
stage_done() {
  echo "opnorm: $1 took $((SECONDS - stage_start)) s" >&2
  stage_start=$SECONDS
}
bash scripts/install_dependencies.sh test
stage_done "installing the dependencies"
build="${OPNORM_BUILD_DIR:-build}"

# The APGD cross-check (tests/apgd_crosscheck.py) runs torchattacks 3.5.1,
# which Debian does not package. pip installs it into a virtual environment
# in the build folder that sees the system's packages (Debian's torch, numpy,
# scipy): --no-deps, or pip would pull a torch of its own. Without PyPI the
# install fails, and the check reports itself skipped with the reason.
torchattacks_version=3.5.1
mkdir -p "$build"
venv="$(cd "$build" && pwd)/venv-torchattacks"
if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  /usr/bin/python3 -m venv --clear --system-site-packages "$venv" ||
    echo "opnorm: could not create the virtual environment $venv: the APGD cross-check will be skipped" >&2
fi
if [ -x "$venv/bin/python" ] && ! "$venv/bin/python" -c "import importlib.metadata as m, sys
sys.exit(m.version('torchattacks') != '$torchattacks_version')" 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --retries 1 --timeout 20 \
    --no-deps "torchattacks==$torchattacks_version" ||
    echo "opnorm: pip could not install torchattacks $torchattacks_version: the APGD cross-check will be skipped" >&2
fi
torchattacks_python=/usr/bin/python3
[ ! -x "$venv/bin/python" ] || torchattacks_python="$venv/bin/python"

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DOPNORM_BUILD_BENCHMARKS=OFF -DOPNORM_MPI=ON -DOPNORM_BLAS=ON \
  -DOPNORM_TORCHATTACKS_PYTHON="$torchattacks_python" >/dev/null
cmake --build "$build" -j "$(nproc)"
stage_done "the host build"

nvcc_path="$(command -v nvcc || true)"
[ -n "$nvcc_path" ] || [ ! -x /usr/local/cuda/bin/nvcc ] || nvcc_path=/usr/local/cuda/bin/nvcc
if [ -z "$nvcc_path" ]; then
  echo "opnorm: nvcc not found: the CUDA build is not checked on this machine" >&2
else
  cuda_build="${OPNORM_CUDA_BUILD_DIR:-build-cuda}"
  cmake -S . -B "$cuda_build" -DCMAKE_BUILD_TYPE=Release -DOPNORM_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc_path" \
    -DOPNORM_BUILD_BENCHMARKS=OFF >/dev/null
  cmake --build "$cuda_build" -j "$(nproc)" --target opnorm_cuda_ci
  (cd "$cuda_build" && ctest --output-on-failure -R '^cuda_')
  stage_done "the CUDA build and its tests"
fi

# The libFuzzer targets of tests/fuzz/ (IDX, CIFAR-10, safetensors, model and
# training checkpoints), 20 s each: a short regression run of what
# `bash scripts/fuzz.sh SECONDS` does at length (docs/reliability.md). It
# installs clang-14 and its sanitizer runtimes itself.
bash scripts/fuzz.sh "${OPNORM_FUZZ_SECONDS:-20}"
stage_done "fuzzing"

status=0
(cd "$build" && ctest --output-on-failure -j "$(nproc)") || status=$?
stage_done "the host tests"
exit "$status"
