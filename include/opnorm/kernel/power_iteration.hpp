#pragma once
// THE kernel: one power-iteration loop, three policies.
//
//   power_iteration<Operator, Norm, Step>
//
// Each iteration k is, for any Operator A at the current point,
//
//   u_k = A v_{k-1}                  Operator::apply (the forward half)
//   g_k = A^T u_k                    Operator::adjoint (the backward half)
//   v_k = Norm::steepest_ascent(g_k)
//   x_k = Step::advance(x, x_{k-1}, v_k)
//
// and sigma = ||g_K||_* / ||u_K||. This file names no operator, direction
// or loss: each policy owns its part (operators.hpp, norms.hpp, steps.hpp,
// losses.hpp) and checks, with its own static_assert, the policies it is
// composed with.
//
// The paper's methods are compositions of these policies; operators.hpp
// lists them. Operators on a model evaluate it in eval mode: BatchNorm uses
// running statistics and nothing in the model changes.
#include <type_traits>

#include "../detail/options.hpp"
#include "../core/mode.hpp"
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
  static_assert(is_operator<Operator>::value,
                "the Operator of a power iteration must be an operator policy (operators.hpp): tensor_type<Subject>, "
                "state<Subject>, prepare, apply, adjoint and composition<Norm, Step>");
  static_assert(detail::has_steepest_ascent<Norm>::value,
                "the Norm of a power iteration must provide steepest_ascent(g, v), the unit direction v that maximizes <g, v>");
  static_assert(detail::has_dual_norms<Norm>::value,
                "the Norm of a power iteration must provide dual_norms(g, out), the dual norm of each row, from which sigma comes");
  static_assert(detail::has_random_direction<Norm>::value,
                "the Norm of a power iteration must provide random_direction(x, seed, v), the random start of the iteration");
  static_assert(is_step<Step>::value,
                "the Step of a power iteration must be a step policy such as no_step, unbounded_step or projected_step: "
                "start<Norm>, advance<Norm> and composition<Norm>");
  // Each policy checks what it needs of the others, with its own message.
  static_assert(Step::template composition<Norm>::value && Operator::template composition<Norm, Step>::value);

 public:
  using operator_type = Operator;
  using norm_type = Norm;
  using step_type = Step;

  /// The tensors the iteration runs on, for a subject (a model, or a
  /// weight matrix).
  template <class Subject>
  using tensor_type = typename Operator::template tensor_type<std::remove_const_t<Subject>>;

  /// Buffers reused across calls so that steady-state iterations do not
  /// allocate. One workspace per subject type; not shared between threads.
  template <class Subject>
  struct workspace {
    typename Operator::template state<Subject> operator_state;
    tensor_type<Subject> u, g, v, point, norms, duals;
  };

  /// Runs options.iterations iterations from the batch x and returns the
  /// final pairs. labels are the class labels (true classes, or the targets
  /// when options.targeted) for operators that compare with labels, and are
  /// ignored otherwise. v0, when given, is the starting direction; otherwise
  /// a random one per example. observe(k, v_k, u_k, x_k) is called after
  /// each iteration.
  template <class Subject, class Observer = ignore_iterates>
  auto run(Subject& subject, const tensor_type<Subject>& x,
           const label_tensor<typename tensor_type<Subject>::backend_type>* labels,
           const iteration_options<typename tensor_type<Subject>::value_type>& options,
           workspace<std::remove_const_t<Subject>>& ws, const tensor_type<Subject>* v0 = nullptr,
           Observer&& observe = Observer{}) const {
    using T = typename tensor_type<Subject>::value_type;
    using B = typename tensor_type<Subject>::backend_type;

    detail::require_count(options.iterations, "power_iteration", "iterations", 1);
    detail::require_real(static_cast<double>(options.eps), "power_iteration", "eps", detail::at_least(0));
    detail::require_real(static_cast<double>(options.alpha), "power_iteration", "alpha", detail::at_least(0));
    detail::require_box(options.clip_to_box, options.box_min, options.box_max, "power_iteration");
    if (v0)
      assign(*v0, ws.v);
    else
      Norm::random_direction(x, options.seed, ws.v);
    Step::template start<Norm>(x, ws.v, options, ws.point);
    Operator::prepare(subject, x, labels, ws.operator_state);

    for (int k = 1; k <= options.iterations; ++k) {
      Operator::apply(subject, x, ws.point, ws.v, labels, options, ws.operator_state, ws.u);  // u_k = A v_{k-1}
      Operator::adjoint(subject, ws.operator_state, ws.u, ws.g);                             // g_k = A^T u_k
      Norm::steepest_ascent(ws.g, ws.v);
      Step::template advance<Norm>(x, ws.v, options, ws.point);
      observe(k, static_cast<const tensor<T, B>&>(ws.v), static_cast<const tensor<T, B>&>(ws.u),
              static_cast<const tensor<T, B>&>(ws.point));
    }

    singular_pairs<T, B> out;
    // sigma = u^T A v with u = u_K / ||u_K|| and v = v_K: <g_K, v_K> / ||u_K||,
    // which is ||A^T u_K||_* / ||u_K|| (the dual norm of the last adjoint).
    Norm::dual_norms(ws.g, ws.duals);
    l2_norms(ws.u, ws.norms);
    divide_where_positive(ws.duals, ws.norms, out.sigma);
    assign(ws.u, out.u);
    assign(ws.v, out.v);
    assign(ws.point, out.point);
    return out;
  }

  /// Convenience overload with a fresh workspace.
  template <class Subject>
  auto run(Subject& subject, const tensor_type<Subject>& x,
           const label_tensor<typename tensor_type<Subject>::backend_type>* labels,
           const iteration_options<typename tensor_type<Subject>::value_type>& options) const {
    workspace<std::remove_const_t<Subject>> ws;
    return run(subject, x, labels, options, ws);
  }

  // Launches an OPNORM_HD kernel, and nvcc rejects an extended lambda in a
  // private member function, so it is public; it is not part of the interface.
  /// out_i = numerator_i / denominator_i, and 0 where the denominator is 0
  /// (a zero operator has sigma 0, not 0/0).
  template <class T, class B>
  static void divide_where_positive(const tensor<T, B>& numerator, const tensor<T, B>& denominator,
                                    tensor<T, B>& out) {
    out.resize(numerator.shape());
    const T* d = numerator.data();
    const T* nu = denominator.data();
    T* s = out.data();
    backend_ops<B>::for_each_index(out.size(), [=] OPNORM_HD(index_t i) { s[i] = nu[i] > T(0) ? d[i] / nu[i] : T(0); });
  }
};

}  // namespace opnorm
