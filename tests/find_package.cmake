# find_package(opnorm) from a separate project: install the package into the
# build tree, then configure and build tests/consumer against it.
set(_opnorm_prefix ${CMAKE_BINARY_DIR}/tests/find_package/prefix)
set(_opnorm_consumer ${CMAKE_BINARY_DIR}/tests/find_package/consumer)
add_test(NAME find_package_install
  COMMAND ${CMAKE_COMMAND} --install ${CMAKE_BINARY_DIR} --prefix ${_opnorm_prefix})
add_test(NAME find_package_consumer
  COMMAND ${CMAKE_COMMAND} -E chdir ${CMAKE_CURRENT_SOURCE_DIR}/consumer
    sh -c "${CMAKE_COMMAND} -S . -B ${_opnorm_consumer} -DCMAKE_PREFIX_PATH=${_opnorm_prefix} -DCMAKE_BUILD_TYPE=Release >/dev/null && ${CMAKE_COMMAND} --build ${_opnorm_consumer} && ${_opnorm_consumer}/app")
set_tests_properties(find_package_install PROPERTIES FIXTURES_SETUP opnorm_installed)
set_tests_properties(find_package_consumer PROPERTIES FIXTURES_REQUIRED opnorm_installed PASS_REGULAR_EXPRESSION "20 logits")
