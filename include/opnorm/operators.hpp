#pragma once
// Operators of the power-iteration kernel: *what* is being iterated on.
//
//   weight_operator                 one weight matrix W (global SNR; a conv
//                                   kernel is viewed as (out, in*kh*kw)).
//   jacobian_operator<Direction>    the network's input Jacobian J_f at the
//                                   current point, where Direction says how
//                                   the forward half u_k is formed:
//     exact_jvp                     u_k = J_f(x) v_{k-1}              (Eq. 7)
//     finite_difference             u_k = f(x + eps v_{k-1}) - f(x)   (Eq. 9)
//     loss_gradient<Loss>           u_k = grad_z l_adv(y, z) at z = f(x_{k-1})
//                                   (Eq. 12: the PGA attack's forward pass)
//
// The backward half is the same for every Direction: v_k = J_f(x_{k-1})^T u_k,
// one VJP at the point of the forward, with no parameter gradients.
#include <type_traits>

#include "losses.hpp"

namespace opnorm {

struct exact_jvp {
  static constexpr const char* name = "exact_jvp";
};
struct finite_difference {
  static constexpr const char* name = "finite_difference";
};
template <class Loss = softmax_cross_entropy>
struct loss_gradient {
  static_assert(is_loss<Loss>::value, "loss_gradient<Loss> needs a loss policy such as softmax_cross_entropy or sum_of_squares");
  using loss = Loss;
  static constexpr const char* name = "loss_gradient";
};

template <class Direction>
struct jacobian_operator {
  using direction = Direction;
};

struct weight_operator {};

template <class D>
struct is_loss_gradient : std::false_type {};
template <class L>
struct is_loss_gradient<loss_gradient<L>> : std::true_type {};

template <class Op>
struct is_jacobian_operator : std::false_type {};
template <class D>
struct is_jacobian_operator<jacobian_operator<D>> : std::true_type {};

}  // namespace opnorm
