#pragma once
// THE kernel: one power-iteration loop, three policies.
//
//   power_iteration<Operator, Norm, Step>
//
// For a jacobian_operator, each iteration k is
//
//   u_k = forward half      (exact JVP | finite difference | loss gradient)
//   g_k = J_f(x_{k-1})^T u_k        one VJP, no parameter gradients
//   v_k = Norm::steepest_ascent(g_k)
//   x_k = Step::advance(x, x_{k-1}, v_k)
//
// and the compositions are the paper's methods (see methods/ and attacks.hpp):
//
//   data-dependent SNR (Eq. 7/9)  jacobian_operator<finite_difference>, l2, unbounded_step
//   exact power method (Eq. 7/8)  jacobian_operator<exact_jvp>,         l2, no_step
//   l2-PGA (Eq. 11/12)            jacobian_operator<loss_gradient<CE>>, l2, projected_step
//   Theorem 1's PGA               jacobian_operator<loss_gradient<sum_of_squares>>, l2, projected_step
//                                 with alpha -> infinity, whose iterates Lemma 1 shows are x + eps v_k:
//                                 the unbounded_step (tests/test_power_iteration.cpp checks both)
//   global SNR (Yoshida-Miyato)   weight_operator, l2, no_step
//
// The model is evaluated in mode::eval throughout: BatchNorm uses running
// statistics and nothing in the model changes.
#include <type_traits>

#include "detail/options.hpp"
#include "mode.hpp"
#include "norms.hpp"
#include "operators.hpp"
#include "steps.hpp"

namespace opnorm {

/// Per-example result of a Jacobian power iteration on a batch of n inputs.
template <class T, class B>
struct singular_pairs {
  tensor<T, B> sigma;  // (n): u^T J v with the final u (normalized) and v
  tensor<T, B> u;      // (n, outputs): the final forward half u_K (not normalized)
  tensor<T, B> v;      // (n, ...input shape): the final right direction v_K
  tensor<T, B> point;  // (n, ...input shape): the final iterate x_K (x_adv for attacks)
};

/// Calls nothing: the default observer of the iterates.
struct ignore_iterates {
  template <class... A>
  void operator()(A&&...) const {}
};

template <class Operator, class Norm, class Step>
class power_iteration {
  static_assert(is_norm<Norm>::value, "the Norm of a power iteration must be a norm policy such as l2 or linf");
  static_assert(is_step<Step>::value, "the Step of a power iteration must be no_step, unbounded_step or projected_step");
  static_assert(is_jacobian_operator<Operator>::value,
                "the Operator of a power iteration must be jacobian_operator<Direction> or weight_operator");

  using direction = typename Operator::direction;
  static_assert(!std::is_same_v<direction, exact_jvp> || std::is_same_v<Step, no_step>,
                "exact_jvp iterates on J_f(x) at a fixed x, so it must be composed with no_step");
  static_assert(!std::is_same_v<direction, finite_difference> || std::is_same_v<Step, unbounded_step>,
                "finite_difference probes f at x + eps v, which is exactly the unbounded step: compose it with unbounded_step");
  static_assert(!is_loss_gradient<direction>::value || !std::is_same_v<Step, no_step>,
                "loss_gradient evaluates the loss at the moving iterate x_k, so it needs projected_step or unbounded_step, not no_step");

 public:
  using operator_type = Operator;
  using norm_type = Norm;
  using step_type = Step;

  /// Buffers reused across calls so that steady-state iterations do not
  /// allocate. One workspace per model type; not shared between threads.
  template <class Model>
  struct workspace {
    using tensor_type = typename Model::tensor_type;
    typename Model::tape at_x, at_point;
    tensor_type reference_logits, u, g, v, point, norms, duals;
  };

  /// Runs options.iterations iterations on the batch x and returns the final
  /// pairs. labels are the true labels (untargeted) or the target labels
  /// (targeted) for loss_gradient<softmax_cross_entropy>, and are ignored
  /// otherwise. v0, when given, is the starting direction; otherwise a random
  /// one per example. observe(k, v_k, u_k, x_k) is called after each iteration.
  template <class Model, class Observer = ignore_iterates>
  singular_pairs<typename Model::scalar, typename Model::backend_type> run(
      Model& model, const typename Model::tensor_type& x, const label_tensor<typename Model::backend_type>* labels,
      const iteration_options<typename Model::scalar>& options, workspace<Model>& ws,
      const typename Model::tensor_type* v0 = nullptr, Observer&& observe = Observer{}) const {
    using T = typename Model::scalar;
    using B = typename Model::backend_type;

    detail::require_count(options.iterations, "power_iteration", "iterations", 1);
    detail::require_real(static_cast<double>(options.eps), "power_iteration", "eps", detail::at_least(0));
    detail::require_real(static_cast<double>(options.alpha), "power_iteration", "alpha", detail::at_least(0));
    detail::require_box(options.clip_to_box, options.box_min, options.box_max, "power_iteration");
    if (v0)
      assign(*v0, ws.v);
    else
      Norm::random_direction(x, options.seed, ws.v);
    Step::template start<Norm>(x, ws.v, options, ws.point);
    prepare(model, x, labels, ws);

    for (int k = 1; k <= options.iterations; ++k) {
      forward_half(model, x, labels, options, ws);
      // The backward half: one VJP at the point of the forward half.
      model.vjp(tape_of_forward(ws), ws.u, &ws.g, false);
      Norm::steepest_ascent(ws.g, ws.v);
      Step::template advance<Norm>(x, ws.v, options, ws.point);
      observe(k, static_cast<const tensor<T, B>&>(ws.v), static_cast<const tensor<T, B>&>(ws.u),
              static_cast<const tensor<T, B>&>(ws.point));
    }

    singular_pairs<T, B> out;
    // sigma = u^T J v with u = u_K / ||u_K|| and v = v_K: <g_K, v_K> / ||u_K||,
    // which is ||J^T u_K||_* / ||u_K|| (the dual norm of the last VJP).
    Norm::dual_norms(ws.g, ws.duals);
    l2_norms(ws.u, ws.norms);
    out.sigma.resize(ws.duals.shape());
    {
      const T* d = ws.duals.data();
      const T* nu = ws.norms.data();
      T* s = out.sigma.data();
      backend_ops<B>::for_each_index(out.sigma.size(), [=] OPNORM_HD(index_t i) { s[i] = nu[i] > T(0) ? d[i] / nu[i] : T(0); });
    }
    assign(ws.u, out.u);
    assign(ws.v, out.v);
    assign(ws.point, out.point);
    return out;
  }

  /// Convenience overload with a fresh workspace.
  template <class Model>
  singular_pairs<typename Model::scalar, typename Model::backend_type> run(
      Model& model, const typename Model::tensor_type& x, const label_tensor<typename Model::backend_type>* labels,
      const iteration_options<typename Model::scalar>& options) const {
    workspace<Model> ws;
    return run(model, x, labels, options, ws);
  }

 private:
  template <class Model>
  static typename Model::tape& tape_of_forward(workspace<Model>& ws) {
    if constexpr (std::is_same_v<direction, exact_jvp>)
      return ws.at_x;
    else
      return ws.at_point;
  }

  // What must be known at the clean point before iterating.
  template <class Model>
  static void prepare(Model& model, const typename Model::tensor_type& x,
                      const label_tensor<typename Model::backend_type>* labels, workspace<Model>& ws) {
    if constexpr (std::is_same_v<direction, exact_jvp>) {
      model.forward(x, ws.at_x, mode::eval);
    } else if constexpr (std::is_same_v<direction, finite_difference>) {
      // Only f(x) is needed at x (the VJPs run at the point): no full tape.
      assign(model.forward_output_only(x, ws.at_x, mode::eval), ws.reference_logits);
    } else {
      using loss = typename direction::loss;
      if constexpr (std::is_same_v<loss, sum_of_squares>) {
        // l_adv(f(x), f(x*)) = 1/2 ||f(x*) - f(x)||^2: the target is f(x).
        assign(model.forward_output_only(x, ws.at_x, mode::eval), ws.reference_logits);
      } else if (!labels) {
        throw std::invalid_argument("opnorm::power_iteration: loss_gradient<softmax_cross_entropy> needs labels");
      }
    }
  }

  template <class Model>
  static void forward_half(Model& model, const typename Model::tensor_type& x,
                           const label_tensor<typename Model::backend_type>* labels,
                           const iteration_options<typename Model::scalar>& o, workspace<Model>& ws) {
    using T = typename Model::scalar;
    if constexpr (std::is_same_v<direction, exact_jvp>) {
      (void)x;
      model.jvp(ws.at_x, ws.v, ws.u);
    } else if constexpr (std::is_same_v<direction, finite_difference>) {
      // u = f(x + eps v) - f(x); ws.point already holds x + eps v.
      subtract(model.forward(ws.point, ws.at_point, mode::eval), ws.reference_logits, ws.u);
    } else {
      using loss = typename direction::loss;
      const auto& logits = model.forward(ws.point, ws.at_point, mode::eval);
      // reduction::sum: each example's u is its own loss gradient, so the
      // batch an example sits in does not change its attack.
      if constexpr (std::is_same_v<loss, sum_of_squares>)
        loss::evaluate(logits, ws.reference_logits, &ws.u, reduction::sum);
      else
        loss::evaluate(logits, *labels, &ws.u, reduction::sum);
      if (o.targeted) axpby(T(-1), ws.u, T(0), ws.u);
    }
  }
};

/// Global spectral norm regularization's iteration on one weight matrix
/// (Yoshida & Miyato 2017): W is viewed as (rows = dim 0, cols = the rest),
/// as torch.nn.utils.spectral_norm does for conv kernels; u persists across
/// calls (amortizing the iteration over training steps).
template <>
class power_iteration<weight_operator, l2, no_step> {
 public:
  /// Runs `iterations` steps v = normalize(W^T u), u = normalize(W v) and
  /// returns sigma = u^T W v. u (rows) is read and updated; v (cols) is written.
  template <class T, class B>
  static T run(const tensor<T, B>& w, tensor<T, B>& u, tensor<T, B>& v, int iterations) {
    const index_t rows = w.dim(0), cols = w.size() / rows;
    if (u.size() != rows) throw std::invalid_argument("opnorm::power_iteration<weight_operator>: u has " + std::to_string(u.size()) + " entries for a matrix with " + std::to_string(rows) + " rows");
    v.resize({cols});
    tensor<T, B> wv({rows});
    for (int k = 0; k < iterations; ++k) {
      backend_ops<B>::gemm(true, false, cols, 1, rows, T(1), w.data(), cols, u.data(), 1, T(0), v.data(), 1);
      normalize(v);
      backend_ops<B>::gemm(false, false, rows, 1, cols, T(1), w.data(), cols, v.data(), 1, T(0), wv.data(), 1);
      assign(wv, u);
      normalize(u);
    }
    backend_ops<B>::gemm(false, false, rows, 1, cols, T(1), w.data(), cols, v.data(), 1, T(0), wv.data(), 1);
    // sigma = <u, W v> on the backend: u and v never leave it.
    const T* us = u.data();
    const T* wvs = wv.data();
    const double sigma = backend_ops<B>::template sum<double>(
        rows, [=] OPNORM_HD(index_t i) { return static_cast<double>(us[i]) * static_cast<double>(wvs[i]); });
    return static_cast<T>(sigma);
  }

 private:
  // A vector is normalized as a batch of one example (in place).
  template <class T, class B>
  static void normalize(tensor<T, B>& x) {
    const shape_t shape = x.shape();
    x.reshape({1, x.size()});
    l2::steepest_ascent(x, x);
    x.reshape(shape);
  }
};

template <class Norm, class Step>
class power_iteration<weight_operator, Norm, Step> {
  static_assert(std::is_same_v<Norm, l2>,
                "weight_operator supports only the l2 norm: the linf operator norm of a matrix is its largest absolute row sum and needs no power iteration");
  static_assert(std::is_same_v<Step, no_step>,
                "weight_operator iterates on a fixed matrix, so it must be composed with no_step");
};

}  // namespace opnorm
