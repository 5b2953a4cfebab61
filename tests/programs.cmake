# The example programs' failure semantics: exit codes, one-line messages,
# refused NaN and out-of-range values (typed or restored by --resume),
# refused NaN weights, no empty folders after a failed run
# (tests/programs/check_errors.sh; docs/reliability.md). Skipped (77)
# without Fashion-MNIST.
add_test(NAME program_errors
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/programs/check_errors.sh $<TARGET_FILE_DIR:train>
                 ${CMAKE_CURRENT_BINARY_DIR}/program_errors)
set_tests_properties(program_errors PROPERTIES SKIP_RETURN_CODE 77 ENVIRONMENT "OMP_NUM_THREADS=1")
