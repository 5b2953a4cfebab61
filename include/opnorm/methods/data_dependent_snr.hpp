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
// BatchNorm and the sum-of-squares form. In train mode BatchNorm normalizes
// with the statistics of the batch it is given, so "f" depends on the batch.
// Which statistics the two passes of the penalty use is a choice:
//
//   statistics::clean_batch (the default)
//     The clean pass runs in train mode (its statistics update the running
//     statistics, once per step). The perturbed pass f(x + eps v) and the
//     power iteration that finds v use the clean batch's statistics
//     (sequential::forward_with_statistics_of), so r_i = f(x_i + eps v_i) -
//     f(x_i) is the finite difference of one function of example i alone,
//     and v maximizes exactly the residual the penalty measures. Gradients
//     flow through the borrowed statistics too, so they are exact.
//   statistics::independent_batches (what the authors' code does)
//     Both passes run in train mode, each normalized by its own batch
//     statistics; v comes from the eval-mode map. The perturbed
//     batch's statistics absorb part of the penalty, and the running
//     statistics are updated twice per step, once from inputs outside the
//     pixel box.
//   statistics::running
//     The penalty is measured on the test-time map: both of its passes in
//     eval mode (running statistics), and v from the same map. The
//     cross-entropy pass runs first, in train mode, and updates the running
//     statistics once; the penalty and v then see the updated ones. One
//     forward pass more than the others.
//
// docs/reproduction.md measures the three on the Table 1 setup.
//
// v is held constant (no gradient flows into it), and finding it changes
// nothing in the model. The cross-entropy pass runs in train mode.
#include "../kernel/power_iteration.hpp"
#include "../nn/sequential.hpp"
#include "method.hpp"
#include "workspace_cache.hpp"

namespace opnorm {

template <class Norm = l2>
struct data_dependent_snr {
  enum class form { sum_of_squares, jacobian };
  enum class statistics { clean_batch, independent_batches, running };

  static constexpr const char* name = "data_dependent_snr";
  using finite_difference_kernel = power_iteration<jacobian_operator<finite_difference>, Norm, unbounded_step>;
  using exact_kernel = power_iteration<jacobian_operator<exact_jvp>, Norm, no_step>;

  // eps is in [0, 1] pixel units: 0.875 is the paper's 1.75 on [-1, 1] images
  // (docs/batch-statistics.md, "Units"). Used by form::sum_of_squares.
  double eps = 0.875;
  // The weight in the form chosen. The forms agree to first order in eps
  // when lambda_jacobian = eps^2 lambda_sum_of_squares; 0.03 is meant for
  // the sum-of-squares form.
  double lambda = 0.03;
  int iterations = 10;
  form regularizer = form::sum_of_squares;
  statistics batch_statistics = statistics::clean_batch;  // BatchNorm in form::sum_of_squares (see above)
  std::uint64_t seed = 0;

  /// Refuses a NaN, infinite or negative radius or weight, and zero
  /// iterations: each would train without the penalty while looking normal.
  void check_options() const {
    detail::require_real(eps, name, "eps", detail::at_least(0));
    detail::require_real(lambda, name, "lambda", detail::at_least(0));
    detail::require_count(iterations, name, "iterations", 1);
  }

  template <class Model>
  batch_result accumulate_gradients(Model& model, typename Model::tape& tape, const typename Model::tensor_type& x,
                                    const label_tensor<typename Model::backend_type>& y) {
    using T = typename Model::scalar;
    check_options();
    auto& ws = cache_.get<workspace<Model>>();
    iteration_options<T> o;
    o.iterations = iterations;
    o.eps = static_cast<T>(eps);
    o.seed = random::hash(seed, 0xdd5, static_cast<std::uint64_t>(step_++));
    if (regularizer == form::jacobian) {
      const auto pairs = exact_kernel{}.run(model, x, nullptr, o, ws.exact);
      // The kernel's tape already holds the eval-mode pass at x.
      return jacobian_objective(model, tape, ws.exact.operator_state.tape_of_last_forward(), x, pairs.v, y);
    }
    // The clean train-mode pass comes first: it updates the running
    // statistics (once), and with statistics::clean_batch its statistics
    // define the map whose finite difference the kernel maximizes.
    model.forward(x, tape, mode::train);
    if (batch_statistics == statistics::clean_batch) {
      with_batch_statistics_of<Model> clean_statistics(model, tape);
      const auto pairs = finite_difference_kernel{}.run(clean_statistics, x, nullptr, o, ws.clean_statistics);
      return sum_of_squares_objective(model, tape, x, pairs.point, y);
    }
    const auto pairs = finite_difference_kernel{}.run(model, x, nullptr, o, ws.finite_difference);
    return sum_of_squares_objective(model, tape, x, pairs.point, y);
  }

  /// Eq. 9's gradients with the probe point x + eps v given (v held
  /// constant): what accumulate_gradients does after its power iteration.
  template <class Model>
  batch_result accumulate_gradients_at(Model& model, typename Model::tape& tape, const typename Model::tensor_type& x,
                                       const typename Model::tensor_type& probe,
                                       const label_tensor<typename Model::backend_type>& y) {
    check_options();
    model.forward(x, tape, mode::train);
    return sum_of_squares_objective(model, tape, x, probe, y);
  }

  /// Eq. 8's gradients with the direction v given (held constant).
  template <class Model>
  batch_result accumulate_jacobian_gradients_at(Model& model, typename Model::tape& tape,
                                                const typename Model::tensor_type& x,
                                                const typename Model::tensor_type& v,
                                                const label_tensor<typename Model::backend_type>& y) {
    check_options();
    auto& ws = cache_.get<workspace<Model>>();
    model.forward(x, ws.perturbed_tape, mode::eval);
    return jacobian_objective(model, tape, ws.perturbed_tape, x, v, y);
  }

 private:
  template <class Model>
  struct workspace {
    typename finite_difference_kernel::template workspace<Model> finite_difference;
    typename finite_difference_kernel::template workspace<with_batch_statistics_of<Model>> clean_statistics;
    typename exact_kernel::template workspace<Model> exact;
    typename Model::tape perturbed_tape, reference_tape;
    typename Model::tensor_type residual, clean_gradient, perturbed_gradient, reference_gradient;
  };

  // Eq. 9 with tape holding the train-mode pass at x: cross-entropy there,
  // plus lambda / 2 mean ||f(probe) - f(x)||^2 with the statistics chosen
  // by batch_statistics.
  template <class Model>
  batch_result sum_of_squares_objective(Model& model, typename Model::tape& tape, const typename Model::tensor_type& x,
                                        const typename Model::tensor_type& probe,
                                        const label_tensor<typename Model::backend_type>& y) {
    using T = typename Model::scalar;
    auto& ws = cache_.get<workspace<Model>>();
    const index_t n = x.dim(0);
    const auto& clean = tape.output();
    const double ce = softmax_cross_entropy::evaluate(clean, y, &ws.clean_gradient, reduction::mean);
    const index_t correct = count_correct(clean, y);

    // r = f(x + eps v) - f(x), both sides under the chosen statistics.
    const bool running = batch_statistics == statistics::running;
    const typename Model::tensor_type* reference = &clean;
    if (running) {
      reference = &model.forward(x, ws.reference_tape, mode::eval);
      subtract(model.forward(probe, ws.perturbed_tape, mode::eval), *reference, ws.residual);
    } else if (batch_statistics == statistics::clean_batch) {
      subtract(model.forward_with_statistics_of(probe, ws.perturbed_tape, tape), clean, ws.residual);
    } else {
      subtract(model.forward(probe, ws.perturbed_tape, mode::train), clean, ws.residual);
    }
    const double penalty = lambda / 2 * squared_norm_mean(ws.residual, n);

    // d/dz' = lambda r / n at the perturbed logits, and -lambda r / n at the
    // reference ones. The perturbed pass goes back first: with borrowed
    // statistics it hands their gradient to the clean pass.
    const T scale = static_cast<T>(lambda / static_cast<double>(n));
    axpby(scale, ws.residual, T(0), ws.perturbed_gradient);
    model.vjp(ws.perturbed_tape, ws.perturbed_gradient, nullptr, true);
    if (running) {
      axpby(-scale, ws.residual, T(0), ws.reference_gradient);
      model.vjp(ws.reference_tape, ws.reference_gradient, nullptr, true);
    } else {
      axpby(-scale, ws.residual, T(1), ws.clean_gradient);
    }
    model.vjp(tape, ws.clean_gradient, nullptr, true);
    return {ce + penalty, correct, n};
  }

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
  std::int64_t step_ = 0;  // batches seen; seeds each batch's random start

 public:
  /// The step counter, which training checkpoints save as "method.step" so
  /// that a resumed run draws the random starts an unbroken one would.
  std::vector<named_counter> counters() { return {{"step", &step_}}; }
};

}  // namespace opnorm
