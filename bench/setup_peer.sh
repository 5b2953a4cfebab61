#!/usr/bin/env bash
# Sets up the performance peer: a virtual environment with current PyTorch
# from PyPI (MKL for BLAS, oneDNN for convolutions), the library opnorm's
# steps are compared against by bench/compare.py.
#
# The environment lives outside the repository (it is several GB, because
# PyPI's Linux wheel depends on NVIDIA's CUDA libraries even when only its
# CPU side is used) and outside CI: nothing in .ci/run or scripts/test.sh
# needs it. Debian's python3-torch is not a fair peer for speed (it links
# netlib's reference BLAS); the correctness cross-checks in CI keep using it.
#
#   bash bench/setup_peer.sh                  # creates or updates the venv
#   OPNORM_PEER_VENV=DIR bash bench/setup_peer.sh
#   TORCH_VERSION=2.15.0 bash bench/setup_peer.sh
#
# bench/compare.py uses $OPNORM_PEER_VENV (default below) when it exists.
set -euo pipefail

venv="${OPNORM_PEER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/opnorm/torch-peer}"
version="${TORCH_VERSION:-}"  # empty: the newest on PyPI

python=$(command -v python3.11 || command -v python3)
if [ ! -x "$venv/bin/python" ]; then
  echo "setup_peer.sh: creating $venv with $python"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "torch${version:+==$version}" numpy

# What compare.py will report: the version, its BLAS and oneDNN's ISA.
"$venv/bin/python" - <<'EOF'
import torch
config = torch.__config__.show()
blas = next((line.split("BLAS_INFO=", 1)[1].split(",")[0] for line in config.splitlines() if "BLAS_INFO=" in line), "unknown")
print(f"setup_peer.sh: torch {torch.__version__}, BLAS {blas}, MKL {torch.backends.mkl.is_available()}, "
      f"oneDNN {torch.backends.mkldnn.is_available()}")
EOF
echo "setup_peer.sh: ready; bench/compare.py uses $venv/bin/python by default"
