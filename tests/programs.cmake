# The example programs' failure semantics: exit codes, one-line messages,
# refused NaN and out-of-range values (typed or restored by --resume),
# refused NaN weights, no empty folders after a failed run
# (tests/programs/check_errors.sh; docs/reliability.md). Skipped (77)
# without Fashion-MNIST.
add_test(NAME program_errors
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/programs/check_errors.sh $<TARGET_FILE_DIR:train>
                 ${CMAKE_CURRENT_BINARY_DIR}/program_errors)
set_tests_properties(program_errors PROPERTIES SKIP_RETURN_CODE 77 ENVIRONMENT "OMP_NUM_THREADS=1")

# examples/custom_layer.cpp: a layer, an attack loss and a norm defined
# outside opnorm pass their checks (check_layer, finite differences, the
# norm's defining properties), then train and attack together
# (docs/extending.md). Skipped (77) without Fashion-MNIST.
add_test(NAME example_custom_layer
         COMMAND bash -c "[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte ] || exit 77; exec \"$0\"" $<TARGET_FILE:custom_layer>)
set_tests_properties(example_custom_layer PROPERTIES SKIP_RETURN_CODE 77 ENVIRONMENT "OMP_NUM_THREADS=1")
