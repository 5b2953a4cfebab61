#pragma once
// Operators of the power-iteration kernel: *what* is being iterated on.
//
// Every operator is the same two-sided linear map A at a point, applied to
// a batch (row i of a tensor is example i):
//
//   template <class Subject> using tensor_type = ...;  // the tensors it maps
//   template <class Subject> struct state;             // what it keeps between its halves
//   prepare(subject, x, labels, state)                 // once, at the clean point x
//   apply(subject, x, point, v, labels, options, state, u)   // forward half:  u = A v at point
//   adjoint(subject, state, u, g)                            // backward half: g = A^T u at the
//                                                            // point of the last apply
//   template <class Norm, class Step> struct composition;    // static_asserts: the Norm and
//                                                            // Step it composes with
//
// The Subject is what the operator is built from: a model, or a weight
// matrix. The kernel (power_iteration.hpp) calls only these members, so it
// knows no operator, direction or loss by name.
//
//   jacobian_operator<Direction>    A = J_f at the current point, where the
//                                   Direction policy says how the forward
//                                   half u_k is formed:
//     exact_jvp                     u_k = J_f(x) v_{k-1}              (Eq. 7)
//     finite_difference             u_k = f(x + eps v_{k-1}) - f(x)   (Eq. 9)
//     loss_gradient<Loss>           u_k = grad_z l_adv(target, z) at z = f(x_{k-1})
//                                   (Eq. 12: the PGA attack's forward pass)
//                                   The backward half is the same for every
//                                   Direction: one VJP at the point of the
//                                   forward half, with no parameter gradients.
//   weight_operator                 A = W^T for one weight matrix W (global
//                                   SNR; a conv kernel is viewed as (out, in*kh*kw)).
//
// The paper's methods are compositions (see methods/ and attacks/):
//
//   data-dependent SNR (Eq. 7/9)  jacobian_operator<finite_difference>, l2, unbounded_step
//   exact power method (Eq. 7/8)  jacobian_operator<exact_jvp>,         l2, no_step
//   l2-PGA (Eq. 11/12)            jacobian_operator<loss_gradient<CE>>, l2, projected_step
//   Theorem 1's PGA               jacobian_operator<loss_gradient<sum_of_squares>>, l2, projected_step
//                                 with alpha -> infinity, whose iterates Lemma 1 shows are x + eps v_k:
//                                 the unbounded_step (tests/test_power_iteration.cpp checks both)
//   global SNR (Yoshida-Miyato)   weight_operator, l2, no_step   (A = W^T, one matrix at a time)
//
// A model is evaluated in mode::eval throughout: BatchNorm uses running
// statistics and nothing in the model changes.
//
// A Direction provides
//   template <class Model> struct state;
//   prepare(model, x, labels, state)
//   forward_half(model, x, point, v, labels, options, state, u) -> the tape at which the VJP runs
//   template <class Step> struct composition;                  // static_asserts on the Step
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "../nn/losses.hpp"
#include "../core/mode.hpp"
#include "norms.hpp"
#include "steps.hpp"

namespace opnorm {

// --- Directions of jacobian_operator -----------------------------------------

/// u_k = J_f(x) v_{k-1}: forward-mode product at the fixed clean point x.
struct exact_jvp {
  static constexpr const char* name = "exact_jvp";

  template <class Model>
  struct state {
    typename Model::tape at_x;  // the eval-mode pass at x, for the JVPs and the VJPs
  };

  template <class Model>
  static void prepare(Model& model, const typename Model::tensor_type& x,
                      const label_tensor<typename Model::backend_type>*, state<Model>& s) {
    model.forward(x, s.at_x, mode::eval);
  }

  template <class Model>
  static typename Model::tape& forward_half(Model& model, const typename Model::tensor_type&,
                                            const typename Model::tensor_type&, const typename Model::tensor_type& v,
                                            const label_tensor<typename Model::backend_type>*,
                                            const iteration_options<typename Model::scalar>&, state<Model>& s,
                                            typename Model::tensor_type& u) {
    model.jvp(s.at_x, v, u);
    return s.at_x;
  }

  template <class Step>
  struct composition {
    static_assert(std::is_same_v<Step, no_step>,
                  "exact_jvp iterates on J_f(x) at a fixed x, so it must be composed with no_step");
    static constexpr bool value = true;
  };
};

/// u_k = f(x + eps v_{k-1}) - f(x): the forward half of Eq. 9, a finite
/// difference along v at the probe point that the step placed.
struct finite_difference {
  static constexpr const char* name = "finite_difference";

  template <class Model>
  struct state {
    typename Model::tape at_x, at_point;
    typename Model::tensor_type reference_output;  // f(x)
  };

  template <class Model>
  static void prepare(Model& model, const typename Model::tensor_type& x,
                      const label_tensor<typename Model::backend_type>*, state<Model>& s) {
    // Only f(x) is needed at x (the VJPs run at the point): no full tape.
    assign(model.forward_output_only(x, s.at_x, mode::eval), s.reference_output);
  }

  template <class Model>
  static typename Model::tape& forward_half(Model& model, const typename Model::tensor_type&,
                                            const typename Model::tensor_type& point,
                                            const typename Model::tensor_type&,
                                            const label_tensor<typename Model::backend_type>*,
                                            const iteration_options<typename Model::scalar>&, state<Model>& s,
                                            typename Model::tensor_type& u) {
    // point = x + eps v (unbounded_step put it there).
    subtract(model.forward(point, s.at_point, mode::eval), s.reference_output, u);
    return s.at_point;
  }

  template <class Step>
  struct composition {
    static_assert(std::is_same_v<Step, unbounded_step>,
                  "finite_difference probes f at x + eps v, which is exactly the unbounded step: compose it with unbounded_step");
    static constexpr bool value = true;
  };
};

/// u_k = grad_z l_adv(target, z) at z = f(x_{k-1}), reduced per example
/// (reduction::sum: an example's attack does not depend on its batch). The
/// Loss says what it is compared with through its target_type: class labels
/// (the labels passed to the kernel: true classes, or targets when
/// targeted), or a tensor shaped like the output, which is then the clean
/// output f(x) (Theorem 1's 1/2 ||f(x*) - f(x)||^2).
template <class Loss = softmax_cross_entropy>
struct loss_gradient {
  static_assert(is_loss<Loss>::value,
                "loss_gradient<Loss> needs a loss policy: a type with target_type<T, B> (label_tensor<B> or tensor<T, B>) "
                "and a static evaluate(logits, target) returning the loss");
  static_assert(has_loss_gradient<Loss>::value,
                "loss_gradient<Loss> needs Loss::evaluate(logits, target, gradient*, reduction) to write the gradient "
                "with respect to the logits, which is the forward half u_k: this loss gives only a value");

  using loss = Loss;
  static constexpr const char* name = "loss_gradient";

  template <class Model>
  using target_of = typename Loss::template target_type<typename Model::scalar, typename Model::backend_type>;
  template <class Model>
  static constexpr bool compares_with_labels =
      std::is_same_v<target_of<Model>, label_tensor<typename Model::backend_type>>;

  template <class Model>
  struct state {
    typename Model::tape at_x, at_point;
    typename Model::tensor_type reference_output;  // f(x), for losses whose target is an output
  };

  template <class Model>
  static void prepare(Model& model, const typename Model::tensor_type& x,
                      const label_tensor<typename Model::backend_type>* labels, state<Model>& s) {
    static_assert(compares_with_labels<Model> || std::is_same_v<target_of<Model>, typename Model::tensor_type>,
                  "loss_gradient<Loss>: Loss::target_type must be label_tensor<B> (class labels) or the model's tensor "
                  "type (an output to compare with, which is the clean output f(x))");
    if constexpr (compares_with_labels<Model>) {
      if (!labels)
        throw std::invalid_argument(std::string("opnorm::power_iteration: loss_gradient<") + loss_name() +
                                    "> compares with class labels, and none were given");
    } else {
      assign(model.forward_output_only(x, s.at_x, mode::eval), s.reference_output);
    }
  }

  template <class Model>
  static typename Model::tape& forward_half(Model& model, const typename Model::tensor_type&,
                                            const typename Model::tensor_type& point,
                                            const typename Model::tensor_type&,
                                            const label_tensor<typename Model::backend_type>* labels,
                                            const iteration_options<typename Model::scalar>& o, state<Model>& s,
                                            typename Model::tensor_type& u) {
    using T = typename Model::scalar;
    const auto& logits = model.forward(point, s.at_point, mode::eval);
    if constexpr (compares_with_labels<Model>)
      Loss::evaluate(logits, *labels, &u, reduction::sum);
    else
      Loss::evaluate(logits, s.reference_output, &u, reduction::sum);
    if (o.targeted) axpby(T(-1), u, T(0), u);  // descend towards the targets
    return s.at_point;
  }

  template <class Step>
  struct composition {
    static_assert(!std::is_same_v<Step, no_step>,
                  "loss_gradient evaluates the loss at the moving iterate x_k, so it needs projected_step or unbounded_step, not no_step");
    static constexpr bool value = true;
  };

 private:
  static const char* loss_name() {
    if constexpr (has_name<Loss>::value)
      return Loss::name;
    else
      return "Loss";
  }
  template <class L, class = void>
  struct has_name : std::false_type {};
  template <class L>
  struct has_name<L, std::void_t<decltype(L::name)>> : std::true_type {};
};

// --- Structural checks for directions ----------------------------------------

namespace detail {
template <class D, class = void>
struct has_direction_state : std::false_type {};
template <class D>
struct has_direction_state<D, std::void_t<typename D::template composition<no_step>>> : std::true_type {};
}  // namespace detail

// --- Operators ---------------------------------------------------------------

/// A = J_f at the current point, for a model f (any sequential network, or
/// a view of one such as with_batch_statistics_of).
template <class Direction>
struct jacobian_operator {
  using direction = Direction;

  template <class Model>
  using tensor_type = typename Model::tensor_type;

  template <class Model>
  struct state {
    typename Direction::template state<Model> direction;
    typename Model::tape* backward_at = nullptr;  // the tape of the last forward half

    /// The tape of the last forward half: the eval-mode pass at the point
    /// where the last VJP ran (at x for exact_jvp).
    typename Model::tape& tape_of_last_forward() {
      if (!backward_at) throw std::logic_error("opnorm::jacobian_operator: no forward half has run yet");
      return *backward_at;
    }
  };

  template <class Model>
  static void prepare(Model& model, const tensor_type<Model>& x, const label_tensor<typename Model::backend_type>* labels,
                      state<Model>& s) {
    Direction::prepare(model, x, labels, s.direction);
  }

  template <class Model>
  static void apply(Model& model, const tensor_type<Model>& x, const tensor_type<Model>& point,
                    const tensor_type<Model>& v, const label_tensor<typename Model::backend_type>* labels,
                    const iteration_options<typename Model::scalar>& o, state<Model>& s, tensor_type<Model>& u) {
    s.backward_at = &Direction::forward_half(model, x, point, v, labels, o, s.direction, u);
  }

  /// g = J_f(point)^T u: one VJP, with no parameter gradients.
  template <class Model>
  static void adjoint(Model& model, state<Model>& s, const tensor_type<Model>& u, tensor_type<Model>& g) {
    model.vjp(*s.backward_at, u, &g, false);
  }

  template <class Norm, class Step>
  struct composition {
    static_assert(detail::has_direction_state<Direction>::value,
                  "jacobian_operator<Direction> needs a direction policy such as exact_jvp, finite_difference or "
                  "loss_gradient<Loss>: a type with state<Model>, prepare, forward_half and composition<Step>");
    static constexpr bool value = Direction::template composition<Step>::value;
  };
};

/// A = W^T for one weight matrix W, viewed as (rows = dim 0, cols = the
/// rest) as torch.nn.utils.spectral_norm views conv kernels. The iterate v
/// is then W's left vector (rows), which is what global SNR keeps across
/// steps, and the power iteration on W^T runs exactly spectral_norm's
/// v <- normalize(W^T u), u <- normalize(W v) with sigma = u^T W v
/// (sigma(W^T) = sigma(W)). A linear map has the same Jacobian at every
/// point: x and the point are only the (1, rows) shape of the iterate.
struct weight_operator {
  template <class Matrix>
  using tensor_type = std::remove_const_t<Matrix>;

  template <class Matrix>
  struct state {};

  template <class T, class B>
  static void prepare(const tensor<T, B>& w, const tensor<T, B>& x, const label_tensor<B>*, state<tensor<T, B>>&) {
    if (w.rank() < 2)
      throw std::invalid_argument("opnorm::weight_operator: the weight has shape " + shape_string(w.shape()) +
                                  ", which is not a matrix");
    if (x.rank() != 2 || x.dim(1) != w.dim(0))
      throw std::invalid_argument("opnorm::weight_operator: the iterate has shape " + shape_string(x.shape()) +
                                  " for a matrix with " + std::to_string(w.dim(0)) + " rows; it must be (batch, " +
                                  std::to_string(w.dim(0)) + ")");
  }

  /// u = W^T v for each row v: (n, rows) -> (n, cols).
  template <class T, class B>
  static void apply(const tensor<T, B>& w, const tensor<T, B>&, const tensor<T, B>&, const tensor<T, B>& v,
                    const label_tensor<B>*, const iteration_options<T>&, state<tensor<T, B>>&, tensor<T, B>& u) {
    const index_t n = v.dim(0), rows = w.dim(0), cols = w.size() / rows;
    u.resize({n, cols});
    backend_ops<B>::gemm(false, false, n, cols, rows, T(1), v.data(), rows, w.data(), cols, T(0), u.data(), cols);
  }

  /// g = W u for each row u: (n, cols) -> (n, rows).
  template <class T, class B>
  static void adjoint(const tensor<T, B>& w, state<tensor<T, B>>&, const tensor<T, B>& u, tensor<T, B>& g) {
    const index_t n = u.dim(0), rows = w.dim(0), cols = w.size() / rows;
    g.resize({n, rows});
    backend_ops<B>::gemm(false, true, n, rows, cols, T(1), u.data(), cols, w.data(), cols, T(0), g.data(), rows);
  }

  template <class Norm, class Step>
  struct composition {
    static_assert(std::is_same_v<Norm, l2>,
                  "weight_operator supports only the l2 norm: the linf operator norm of a matrix is its largest absolute row sum and needs no power iteration");
    static_assert(std::is_same_v<Step, no_step>,
                  "weight_operator iterates on a fixed matrix, so it must be composed with no_step");
    static constexpr bool value = true;
  };
};

// --- Structural check for operators ------------------------------------------

template <class Op, class = void>
struct is_operator : std::false_type {};
template <class Op>
struct is_operator<Op, std::void_t<typename Op::template composition<l2, no_step>>> : std::true_type {};

template <class D>
struct is_loss_gradient : std::false_type {};
template <class L>
struct is_loss_gradient<loss_gradient<L>> : std::true_type {};

}  // namespace opnorm
