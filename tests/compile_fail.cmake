# Compositions that make no sense must fail to compile with a message that
# reads as a sentence. Each case compiles one file with -fsyntax-only and
# passes only if the compiler fails with the expected static_assert text.
get_target_property(_opnorm_eigen_includes Eigen3::Eigen INTERFACE_INCLUDE_DIRECTORIES)
function(opnorm_compile_fail name expected)
  add_test(NAME compile_fail_${name}
    COMMAND ${CMAKE_CXX_COMPILER} -std=c++17 -fsyntax-only
      -I${PROJECT_SOURCE_DIR}/include -I${_opnorm_eigen_includes}
      ${CMAKE_CURRENT_SOURCE_DIR}/compile_fail/${name}.cpp)
  set_tests_properties(compile_fail_${name} PROPERTIES WILL_FAIL FALSE PASS_REGULAR_EXPRESSION "${expected}")
endfunction()
opnorm_compile_fail(weight_operator_linf "weight_operator supports only the l2 norm")
opnorm_compile_fail(exact_jvp_with_step "exact_jvp iterates on J_f\\(x\\) at a fixed x, so it must be composed with no_step")
opnorm_compile_fail(loss_gradient_without_step "loss_gradient evaluates the loss at the moving iterate")
opnorm_compile_fail(backend_without_ops "a backend tag needs a specialization of opnorm::backend_ops<Tag>")
opnorm_compile_fail(backend_without_gemm "a backend must provide gemm, gemm_batched and gemm_batched_sum")
opnorm_compile_fail(norm_without_projection "projected_step projects every iterate onto the eps-ball, so its Norm must provide project\\(delta, eps\\)")
opnorm_compile_fail(loss_without_gradient "loss_gradient<Loss> needs Loss::evaluate\\(logits, target, gradient\\*, reduction\\) to write the gradient")
opnorm_compile_fail(layer_without_jvp "a layer must provide jvp\\(x, y, const cache& c, dx, tensor& dy\\) const: the forward-mode product")
opnorm_compile_fail(layer_without_jvp_parameter_vjp "jvp_parameter_vjp \\(data-dependent SNR's Jacobian-form gradient, Eq. 8\\) needs every layer with parameters to provide jvp_parameter_vjp")
opnorm_compile_fail(layer_parameters_without_jvp_parameter_vjp "a layer with has_parameters = true must provide jvp_parameter_vjp.*or opt out with `static constexpr bool supports_jvp_parameter_vjp = false;`")
