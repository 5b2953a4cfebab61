#!/usr/bin/env bash
# Installs the Debian packages opnorm's build, tests and reproduction need,
# and only those that are missing. Safe to run repeatedly.
#   scripts/install_dependencies.sh [build|test|sanitize|reproduce|fuzz]
set -euo pipefail

purpose="${1:-test}"
packages=(build-essential cmake pkg-config libeigen3-dev xtensor-dev libxsimd-dev doctest-dev
          libbenchmark-dev zlib1g-dev libcli11-dev nlohmann-json3-dev)
case "$purpose" in
  build) ;;
  # The PyTorch cross-checks run in the test suite. The APGD cross-check also
  # needs torchattacks, which scripts/test.sh installs with pip into a venv
  # over these packages (python3-venv); torchattacks imports scipy.
  # OpenMPI: the data-parallel tests run under mpirun (tests/distributed.cmake).
  # OpenBLAS (its OpenMP build): backend::cpu_blas is built and checked against cpu.
  test) packages+=(python3 python3-torch python3-numpy python3-scipy python3-venv dataset-fashion-mnist
                   libopenmpi-dev openmpi-bin libopenblas-openmp-dev) ;;
  # scripts/sanitize.sh: the test suite built by clang 14 with its sanitizer
  # runtimes and LLVM's libomp, whose Archer tool makes OpenMP visible to TSan.
  sanitize) packages+=(python3 python3-torch python3-numpy python3-scipy python3-venv dataset-fashion-mnist
                       clang-14 libclang-rt-14-dev libomp-14-dev) ;;
  # The reproduction trains on Fashion-MNIST and plots with matplotlib.
  reproduce) packages+=(python3 python3-matplotlib python3-numpy dataset-fashion-mnist) ;;
  # scripts/fuzz.sh: clang-14 with libFuzzer and the sanitizer runtimes.
  fuzz) packages+=(clang-14 libclang-rt-14-dev) ;;
  *) echo "usage: $0 [build|test|sanitize|reproduce|fuzz]" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "opnorm: installing ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
