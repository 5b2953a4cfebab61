#pragma once
// data_dependent_snr: data-dependent spectral norm regularization in the
// paper's two forms,
//
//   form::sum_of_squares (Eq. 9, the one the paper trains with)
//     l(y, f(x)) + lambda / 2 ||f(x + eps v) - f(x)||^2
//     v from the kernel composed with a finite-difference forward half and
//     the unbounded step. By Theorem 1 this is adversarial training with the
//     sum-of-squares loss and alpha -> infinity, and it costs what PGA costs:
//     one forward and one VJP per iteration. Parameter gradients flow through
//     both forward passes, f(x + eps v) and f(x).
//
//   form::jacobian (Eq. 8)
//     l(y, f(x)) + lambda / 2 (u^T J_f(x) v)^2 = l + lambda / 2 ||J_f(x) v||^2
//     v from the exact-JVP power method; J v is an exact JVP (no biases, no
//     BatchNorm shifts), and its parameter gradient comes from
//     sequential::jvp_parameter_vjp. The Jacobian is the eval-mode one
//     (BatchNorm with running statistics): the map the model computes at
//     test time, whose spectral norm is what robustness depends on.
//
// v is held constant (no gradient flows into it) and found in eval mode, so
// the power iteration changes nothing in the model. The cross-entropy pass
// runs in train mode.
#include "../power_iteration.hpp"
#include "method.hpp"
#include "workspace_cache.hpp"

namespace opnorm {

template <class Norm = l2>
struct data_dependent_snr {
  enum class form { sum_of_squares, jacobian };

  static constexpr const char* name = "data_dependent_snr";
  using finite_difference_kernel = power_iteration<jacobian_operator<finite_difference>, Norm, unbounded_step>;
  using exact_kernel = power_iteration<jacobian_operator<exact_jvp>, Norm, no_step>;

  double eps = 1.75;  // pixel units ([0, 1] inputs); used by form::sum_of_squares
  double lambda = 0.03;
  int iterations = 10;
  form regularizer = form::sum_of_squares;
  std::uint64_t seed = 0;

  template <class Model>
  batch_result accumulate_gradients(Model& model, typename Model::tape& tape, const typename Model::tensor_type& x,
                                    const label_tensor<typename Model::backend_type>& y) {
    using T = typename Model::scalar;
    auto& ws = cache_.get<workspace<Model>>();
    iteration_options<T> o;
    o.iterations = iterations;
    o.eps = static_cast<T>(eps);
    o.seed = random::hash(seed, 0xdd5, step_++);
    if (regularizer == form::sum_of_squares) {
      const auto pairs = finite_difference_kernel{}.run(model, x, nullptr, o, ws.finite_difference);
      return accumulate_gradients_at(model, tape, x, pairs.point, y);
    }
    const auto pairs = exact_kernel{}.run(model, x, nullptr, o, ws.exact);
    // The kernel's tape already holds the eval-mode pass at x.
    return jacobian_objective(model, tape, ws.exact.at_x, x, pairs.v, y);
  }

  /// Eq. 9's gradients with the probe point x + eps v given (v held
  /// constant): what accumulate_gradients does after its power iteration.
  template <class Model>
  batch_result accumulate_gradients_at(Model& model, typename Model::tape& tape, const typename Model::tensor_type& x,
                                       const typename Model::tensor_type& probe,
                                       const label_tensor<typename Model::backend_type>& y) {
    using T = typename Model::scalar;
    auto& ws = cache_.get<workspace<Model>>();
    const index_t n = x.dim(0);
    // Clean pass: cross-entropy, and f(x) for the penalty.
    const auto& clean = model.forward(x, tape, mode::train);
    const double ce = softmax_cross_entropy::evaluate(clean, y, &ws.clean_gradient, reduction::mean);
    const index_t correct = count_correct(clean, y);
    // Perturbed pass: r = f(x + eps v) - f(x).
    const auto& perturbed = model.forward(probe, ws.perturbed_tape, mode::train);
    subtract(perturbed, clean, ws.residual);
    const double penalty = lambda / 2 * squared_norm_mean(ws.residual, n);

    // d/dz' = lambda r / n at the perturbed logits, and -lambda r / n at the clean ones.
    const T scale = static_cast<T>(lambda / static_cast<double>(n));
    axpby(scale, ws.residual, T(0), ws.perturbed_gradient);
    axpby(-scale, ws.residual, T(1), ws.clean_gradient);
    model.vjp(ws.perturbed_tape, ws.perturbed_gradient, nullptr, true);
    model.vjp(tape, ws.clean_gradient, nullptr, true);
    return {ce + penalty, correct, n};
  }

  /// Eq. 8's gradients with the direction v given (held constant).
  template <class Model>
  batch_result accumulate_jacobian_gradients_at(Model& model, typename Model::tape& tape,
                                                const typename Model::tensor_type& x,
                                                const typename Model::tensor_type& v,
                                                const label_tensor<typename Model::backend_type>& y) {
    auto& ws = cache_.get<workspace<Model>>();
    model.forward(x, ws.perturbed_tape, mode::eval);
    return jacobian_objective(model, tape, ws.perturbed_tape, x, v, y);
  }

 private:
  template <class Model>
  struct workspace {
    typename finite_difference_kernel::template workspace<Model> finite_difference;
    typename exact_kernel::template workspace<Model> exact;
    typename Model::tape perturbed_tape;
    typename Model::tensor_type residual, clean_gradient, perturbed_gradient;
  };

  // Cross-entropy in train mode plus lambda / 2 mean ||J v||^2 with J taken
  // at eval_tape (an eval-mode pass at x).
  template <class Model>
  batch_result jacobian_objective(Model& model, typename Model::tape& tape, typename Model::tape& eval_tape,
                                  const typename Model::tensor_type& x, const typename Model::tensor_type& v,
                                  const label_tensor<typename Model::backend_type>& y) {
    using T = typename Model::scalar;
    auto& ws = cache_.get<workspace<Model>>();
    const index_t n = x.dim(0);
    model.jvp(eval_tape, v, ws.residual);  // J v
    const double penalty = lambda / 2 * squared_norm_mean(ws.residual, n);
    axpby(static_cast<T>(lambda / static_cast<double>(n)), ws.residual, T(0), ws.perturbed_gradient);
    model.jvp_parameter_vjp(eval_tape, v, ws.perturbed_gradient);

    const auto& clean = model.forward(x, tape, mode::train);
    const double ce = softmax_cross_entropy::evaluate(clean, y, &ws.clean_gradient, reduction::mean);
    const index_t correct = count_correct(clean, y);
    model.vjp(tape, ws.clean_gradient, nullptr, true);
    return {ce + penalty, correct, n};
  }

  // sum_i ||r_i||^2 / n, accumulated in double on the backend.
 public:  // nvcc rejects extended lambdas in private member functions
  template <class T, class B>
  static double squared_norm_mean(const tensor<T, B>& r, index_t n) {
    const T* rs = r.data();
    const double s = backend_ops<B>::template sum<double>(r.size(), [=] OPNORM_HD(index_t i) {
      return static_cast<double>(rs[i]) * static_cast<double>(rs[i]);
    });
    return s / static_cast<double>(n);
  }

 private:

  detail::workspace_cache cache_;
  std::uint64_t step_ = 0;
};

}  // namespace opnorm
