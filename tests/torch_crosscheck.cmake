# Cross-check of the reference network fmnist_cnn against PyTorch. A small
# C++ program (tests/tools/torch_crosscheck_dump.cpp) writes a checkpoint, a
# probe batch and what opnorm computes on it (eval and train logits, input
# and parameter gradients, the power-iteration kernel's top singular pairs,
# an FGM step); tests/torch_crosscheck.py rebuilds the network as a
# torch.nn.Sequential, loads the checkpoint with load_state_dict(strict=True)
# and recomputes every quantity. The writer is a ctest fixture setup step, so
# running the check alone (ctest -R torch_crosscheck) writes the files first.
#
# Both steps run single-threaded (tests/cmake/python_crosscheck.cmake): the
# writer's 200 power iterations on two examples are many small parallel
# loops, which on a loaded 2-core machine take seconds per iteration with
# two spinning OpenMP threads and about 5 ms with one.
#
# The interpreter must be one with torch (on the CI machine the python3 on
# PATH has none). Without torch the script exits 77, which ctest reports as
# skipped.
set(OPNORM_TORCH_PYTHON /usr/bin/python3 CACHE FILEPATH "Python interpreter with torch, for cross-checks")

include(${CMAKE_CURRENT_LIST_DIR}/cmake/python_crosscheck.cmake)
opnorm_python_crosscheck(torch_crosscheck
  PYTHON ${OPNORM_TORCH_PYTHON}
  WHAT "the PyTorch fmnist_cnn cross-check")
