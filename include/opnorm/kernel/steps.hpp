#pragma once
// Step policies of the power-iteration kernel: how the probe point moves.
//
//   no_step          the point stays at x: a power method on J_f(x).
//   unbounded_step   x_k = x + eps v_k: PGA with alpha -> infinity, where the
//                    projection of x_{k-1} + alpha v_k onto the ball keeps only
//                    the direction v_k (Theorem 1).
//   projected_step   x_k = clip(x + Proj_eps(x_{k-1} + alpha v_k - x)): PGA.
//
// Every step optionally clips its iterates to a box (pixel range [0, 1] for
// attacks); the power method itself never clips.
#include <cstdint>
#include <type_traits>
#include <utility>

#include "norms.hpp"
#include "../core/per_example.hpp"

namespace opnorm {

template <class T>
struct iteration_options {
  int iterations = 10;
  T eps = T(0);          // ball radius (steps) or probe distance (finite_difference)
  T alpha = T(0);        // projected_step's step size
  bool random_start = true;  // projected_step: start uniformly inside the ball
  bool clip_to_box = false;  // clip iterates to [box_min, box_max]
  T box_min = T(0), box_max = T(1);
  bool targeted = false;  // loss_gradient: descend towards the labels instead of ascending
  std::uint64_t seed = 0;

  /// These options with alpha = 0 read as the paper's step 2 eps /
  /// iterations, the default of attacks and adversarial training: the one
  /// place that default is written.
  iteration_options with_default_step() const {
    iteration_options o = *this;
    if (o.alpha == T(0) && o.iterations > 0) o.alpha = T(2) * o.eps / static_cast<T>(o.iterations);
    return o;
  }
};

namespace detail {
template <class T, class B>
void clip(tensor<T, B>& p, const iteration_options<T>& o) {
  if (!o.clip_to_box) return;
  T* ps = p.data();
  const T lo = o.box_min, hi = o.box_max;
  backend_ops<B>::for_each_index(p.size(), [=] OPNORM_HD(index_t i) { ps[i] = ps[i] < lo ? lo : (ps[i] > hi ? hi : ps[i]); });
}
}  // namespace detail

struct no_step {
  template <class Norm>
  struct composition : std::true_type {};

  template <class Norm, class T, class B>
  static void start(const tensor<T, B>& x, const tensor<T, B>&, const iteration_options<T>&, tensor<T, B>& p) {
    assign(x, p);
  }
  template <class Norm, class T, class B>
  static void advance(const tensor<T, B>&, const tensor<T, B>&, const iteration_options<T>&, tensor<T, B>&) {}
};

struct unbounded_step {
  template <class Norm>
  struct composition : std::true_type {};

  template <class Norm, class T, class B>
  static void start(const tensor<T, B>& x, const tensor<T, B>& v0, const iteration_options<T>& o, tensor<T, B>& p) {
    advance<Norm>(x, v0, o, p);
  }
  template <class Norm, class T, class B>
  static void advance(const tensor<T, B>& x, const tensor<T, B>& v, const iteration_options<T>& o, tensor<T, B>& p) {
    p.resize(x.shape());
    const T* xs = x.data();
    const T* vs = v.data();
    T* ps = p.data();
    const T eps = o.eps;
    backend_ops<B>::for_each_index(x.size(), [=] OPNORM_HD(index_t i) { ps[i] = xs[i] + eps * vs[i]; });
    detail::clip(p, o);
  }
};

struct projected_step {
  template <class Norm>
  struct composition {
    static_assert(detail::has_project<Norm>::value,
                  "projected_step projects every iterate onto the eps-ball, so its Norm must provide "
                  "project(delta, eps)");
    static_assert(detail::has_random_in_ball<Norm>::value,
                  "projected_step starts uniformly inside the eps-ball, so its Norm must provide "
                  "random_in_ball(x, eps, seed, delta)");
    static constexpr bool value = true;
  };

  template <class Norm, class T, class B>
  static void start(const tensor<T, B>& x, const tensor<T, B>&, const iteration_options<T>& o, tensor<T, B>& p) {
    if (!o.random_start || o.eps == T(0)) {
      assign(x, p);
      return;
    }
    Norm::random_in_ball(x, o.eps, o.seed, p);
    add_into(x, p);
    detail::clip(p, o);
  }
  template <class Norm, class T, class B>
  static void advance(const tensor<T, B>& x, const tensor<T, B>& v, const iteration_options<T>& o, tensor<T, B>& p) {
    // delta = p + alpha v - x, projected onto the ball, then x + delta clipped.
    const T* xs = x.data();
    const T* vs = v.data();
    T* ps = p.data();
    const T alpha = o.alpha;
    backend_ops<B>::for_each_index(x.size(), [=] OPNORM_HD(index_t i) { ps[i] = ps[i] + alpha * vs[i] - xs[i]; });
    Norm::project(p, o.eps);
    add_into(x, p);
    detail::clip(p, o);
  }
};

// Structural check: a step policy is what it provides. Probed with the l2
// norm, double and the cpu backend.
namespace detail {
template <class S, class = void>
struct has_step_members : std::false_type {};
template <class S>
struct has_step_members<
    S, std::void_t<typename S::template composition<l2>,
                   decltype(S::template start<l2>(std::declval<const tensor<double>&>(),
                                                  std::declval<const tensor<double>&>(),
                                                  std::declval<const iteration_options<double>&>(),
                                                  std::declval<tensor<double>&>())),
                   decltype(S::template advance<l2>(std::declval<const tensor<double>&>(),
                                                    std::declval<const tensor<double>&>(),
                                                    std::declval<const iteration_options<double>&>(),
                                                    std::declval<tensor<double>&>()))>> : std::true_type {};
}  // namespace detail

/// A step policy: start<Norm>(x, v0, options, point), advance<Norm>(x, v,
/// options, point) and composition<Norm>, which static_asserts what the
/// step needs of its Norm.
template <class S>
struct is_step : detail::has_step_members<S> {};

}  // namespace opnorm
