# Cross-check of opnorm's APGD against torchattacks 3.5.1, an independent
# implementation of AutoAttack's APGD. A small C++ program
# (tests/tools/apgd_crosscheck_dump.cpp) trains a small CNN on Fashion-MNIST
# for a few seconds, attacks 200 test points with APGD-CE and APGD-T in l2
# and linf, and writes the checkpoint, the points and opnorm's per-example
# results; tests/apgd_crosscheck.py rebuilds the network in PyTorch, loads
# the checkpoint with load_state_dict(strict=True), runs torchattacks' APGD
# and APGDT with the same settings, and requires the two robust accuracies
# of every setting to lie within 2 points of each other. The writer is a
# ctest fixture setup step, so `ctest -R apgd_crosscheck` writes the files
# first.
#
# torchattacks is not a Debian package: scripts/test.sh installs it with
# `pip install --no-deps` into a virtual environment that sees the system's
# packages (Debian's torch, numpy and scipy; a plain install would pull a
# torch of its own) and passes that environment's interpreter here. Without
# torch or torchattacks (no network for pip, another interpreter) the script
# exits 77, which ctest reports as skipped, with the reason.
set(OPNORM_TORCHATTACKS_PYTHON /usr/bin/python3 CACHE FILEPATH
    "Python interpreter with torch and torchattacks 3.5.1, for the APGD cross-check (scripts/test.sh makes one)")
set(OPNORM_FASHION_MNIST_DIR /usr/share/datasets/fashion-mnist CACHE PATH
    "Fashion-MNIST idx files (Debian package dataset-fashion-mnist), for the APGD cross-check")

include(${CMAKE_CURRENT_LIST_DIR}/cmake/python_crosscheck.cmake)
opnorm_python_crosscheck(apgd_crosscheck
  PYTHON ${OPNORM_TORCHATTACKS_PYTHON}
  WHAT "the torchattacks APGD cross-check"
  WRITER_ARGS ${OPNORM_FASHION_MNIST_DIR})
