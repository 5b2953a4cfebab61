# The registration shared by the cross-checks against PyTorch
# (torch_crosscheck.cmake, apgd_crosscheck.cmake), kept in one place so that
# they build, order and skip alike. Outside tests/*.cmake, which the test
# directory includes as registrations of their own.
#
#   opnorm_python_crosscheck(<name> PYTHON <interpreter> WHAT <description>
#                            [WRITER_ARGS <arg>...])
#
# registers
#   * the program <name>_dump, from tools/<name>_dump.cpp;
#   * the test <name>_write: <name>_dump <build dir>/<name> [WRITER_ARGS],
#     a fixture setup step, so `ctest -R <name>` writes the files first;
#   * the test <name>: <interpreter> <name>.py <build dir>/<name>, only when
#     the interpreter exists (a status message names <description> otherwise).
# Either step exits 77, which ctest reports as skipped, when what it needs is
# missing (torch, torchattacks, a data set). Both run single-threaded: they
# check numbers, not speed, and ctest runs tests side by side on every core.
include_guard(GLOBAL)

function(opnorm_python_crosscheck name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "PYTHON;WHAT" "WRITER_ARGS")
  add_executable(${name}_dump ${CMAKE_CURRENT_SOURCE_DIR}/tools/${name}_dump.cpp)
  target_link_libraries(${name}_dump PRIVATE opnorm_programs)

  set(directory ${CMAKE_CURRENT_BINARY_DIR}/${name})
  add_test(NAME ${name}_write COMMAND ${name}_dump ${directory} ${arg_WRITER_ARGS})
  set_tests_properties(${name}_write PROPERTIES
    FIXTURES_SETUP ${name}_files
    SKIP_RETURN_CODE 77
    ENVIRONMENT "OMP_NUM_THREADS=1")

  if(EXISTS ${arg_PYTHON})
    add_test(NAME ${name} COMMAND ${arg_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/${name}.py ${directory})
    set_tests_properties(${name} PROPERTIES
      FIXTURES_REQUIRED ${name}_files
      SKIP_RETURN_CODE 77
      ENVIRONMENT "OMP_NUM_THREADS=1")
  else()
    message(STATUS "opnorm: ${arg_PYTHON} not found; ${arg_WHAT} is not registered")
  endif()
endfunction()
