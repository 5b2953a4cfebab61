# Cross-check of the reference network fmnist_cnn against PyTorch. A small
# C++ program (tests/tools/torch_crosscheck_dump.cpp) writes a checkpoint, a
# probe batch and what opnorm computes on it (eval and train logits, input
# and parameter gradients, the power-iteration kernel's top singular pairs,
# an FGM step); tests/torch_crosscheck.py rebuilds the network as a
# torch.nn.Sequential, loads the checkpoint with load_state_dict(strict=True)
# and recomputes every quantity. The writer is a ctest fixture setup step, so
# running the check alone (ctest -R torch_crosscheck) writes the files first.
#
# Both steps run single-threaded: this checks numbers, not speed, and the
# writer's 200 power iterations on two examples are many small parallel
# loops, which on a loaded 2-core machine take seconds per iteration with
# two spinning OpenMP threads and about 5 ms with one.
#
# The interpreter must be one with torch (on the CI machine the python3 on
# PATH has none). Without torch the script exits 77, which ctest reports as
# skipped.
set(OPNORM_TORCH_PYTHON /usr/bin/python3 CACHE FILEPATH "Python interpreter with torch, for cross-checks")

add_executable(torch_crosscheck_dump ${CMAKE_CURRENT_SOURCE_DIR}/tools/torch_crosscheck_dump.cpp)
target_link_libraries(torch_crosscheck_dump PRIVATE opnorm_programs)

set(OPNORM_TORCH_CROSSCHECK_DIR ${CMAKE_CURRENT_BINARY_DIR}/torch_crosscheck)
add_test(NAME torch_crosscheck_write
         COMMAND torch_crosscheck_dump ${OPNORM_TORCH_CROSSCHECK_DIR})
set_tests_properties(torch_crosscheck_write PROPERTIES
  FIXTURES_SETUP torch_crosscheck_files
  ENVIRONMENT "OMP_NUM_THREADS=1")

if(EXISTS ${OPNORM_TORCH_PYTHON})
  add_test(NAME torch_crosscheck
           COMMAND ${OPNORM_TORCH_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/torch_crosscheck.py
                   ${OPNORM_TORCH_CROSSCHECK_DIR})
  set_tests_properties(torch_crosscheck PROPERTIES
    FIXTURES_REQUIRED torch_crosscheck_files
    SKIP_RETURN_CODE 77
    ENVIRONMENT "OMP_NUM_THREADS=1")
else()
  message(STATUS "opnorm: ${OPNORM_TORCH_PYTHON} not found; the PyTorch fmnist_cnn cross-check is not registered")
endif()
