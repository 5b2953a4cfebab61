# Cross-check of the safetensors files with PyTorch. A small C++ program
# (tests/tools/write_safetensors_for_python.cpp) writes a dense-relu-dense
# checkpoint and a probe batch with its logits; tests/check_safetensors.py,
# which needs only the standard library and torch, checks the byte layout,
# loads the checkpoint into the same torch.nn.Sequential with
# load_state_dict(strict=True) and compares logits. The writer is a ctest
# fixture setup step, so running the check alone (ctest -R
# safetensors_python_check) writes the files first.
#
# The interpreter must be one with torch (on the CI machine the python3 on
# PATH has none). Without torch the script exits 77, which ctest reports as
# skipped.
set(OPNORM_TORCH_PYTHON /usr/bin/python3 CACHE FILEPATH "Python interpreter with torch, for cross-checks")

add_executable(write_safetensors_for_python ${CMAKE_CURRENT_SOURCE_DIR}/tools/write_safetensors_for_python.cpp)
target_link_libraries(write_safetensors_for_python PRIVATE opnorm_programs)

set(OPNORM_SAFETENSORS_CHECK_DIR ${CMAKE_CURRENT_BINARY_DIR}/safetensors_python_check)
add_test(NAME safetensors_python_write
         COMMAND write_safetensors_for_python ${OPNORM_SAFETENSORS_CHECK_DIR})
set_tests_properties(safetensors_python_write PROPERTIES FIXTURES_SETUP safetensors_python_files)

if(EXISTS ${OPNORM_TORCH_PYTHON})
  add_test(NAME safetensors_python_check
           COMMAND ${OPNORM_TORCH_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/check_safetensors.py
                   ${OPNORM_SAFETENSORS_CHECK_DIR})
  set_tests_properties(safetensors_python_check PROPERTIES
    FIXTURES_REQUIRED safetensors_python_files
    SKIP_RETURN_CODE 77)
else()
  message(STATUS "opnorm: ${OPNORM_TORCH_PYTHON} not found; the PyTorch safetensors cross-check is not registered")
endif()
