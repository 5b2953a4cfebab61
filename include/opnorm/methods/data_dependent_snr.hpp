#pragma once
// data_dependent_snr: data-dependent spectral norm regularization, paper
// Eq. 9 (the form the paper trains with):
//
//   l(y, f(x)) + lambda / 2 ||f(x + eps v) - f(x)||^2
//
// v is the top right singular vector of J_f(x) from the power-iteration
// kernel composed with a finite-difference forward half and the unbounded
// step (eval mode, held constant: no gradient flows into v). Parameter
// gradients flow through both forward passes, f(x + eps v) and f(x).
// By Theorem 1 this is adversarial training with the sum-of-squares loss and
// alpha -> infinity; its cost equals PGA's: one forward and one VJP per
// iteration.
#include "../power_iteration.hpp"
#include "method.hpp"
#include "workspace_cache.hpp"

namespace opnorm {

template <class Norm = l2>
struct data_dependent_snr {
  static constexpr const char* name = "data_dependent_snr";
  using kernel = power_iteration<jacobian_operator<finite_difference>, Norm, unbounded_step>;

  double eps = 1.75;  // pixel units ([0, 1] inputs)
  double lambda = 0.03;
  int iterations = 10;
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
    const auto pairs = kernel{}.run(model, x, nullptr, o, ws.power);
    return accumulate_gradients_at(model, tape, x, pairs.point, y);
  }

  /// The objective's gradients with the probe point x + eps v given (v held
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
    // Perturbed pass at x + eps v (pairs.point): r = f(x + eps v) - f(x).
    const auto& perturbed = model.forward(probe, ws.perturbed_tape, mode::train);
    subtract(perturbed, clean, ws.residual);
    const double penalty = lambda / 2 * sum_of_squares_mean(ws.residual, n);

    // d/dz' = lambda r / n at the perturbed logits, and -lambda r / n at the clean ones.
    const T scale = static_cast<T>(lambda / static_cast<double>(n));
    axpby(scale, ws.residual, T(0), ws.perturbed_gradient);
    axpby(-scale, ws.residual, T(1), ws.clean_gradient);
    model.vjp(ws.perturbed_tape, ws.perturbed_gradient, nullptr, true);
    model.vjp(tape, ws.clean_gradient, nullptr, true);
    return {ce + penalty, correct, n};
  }

 private:
  template <class Model>
  struct workspace {
    typename kernel::template workspace<Model> power;
    typename Model::tape perturbed_tape;
    typename Model::tensor_type residual, clean_gradient, perturbed_gradient;
  };

  // sum_i ||r_i||^2 / n, accumulated in double on the host.
  template <class T, class B>
  static double sum_of_squares_mean(const tensor<T, B>& r, index_t n) {
    double s = 0;
    for (T e : r.to_vector()) s += static_cast<double>(e) * static_cast<double>(e);
    return s / static_cast<double>(n);
  }

  detail::workspace_cache cache_;
  std::uint64_t step_ = 0;
};

}  // namespace opnorm
