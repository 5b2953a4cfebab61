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

#include "norms.hpp"
#include "per_example.hpp"

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
  template <class Norm, class T, class B>
  static void start(const tensor<T, B>& x, const tensor<T, B>&, const iteration_options<T>&, tensor<T, B>& p) {
    assign(x, p);
  }
  template <class Norm, class T, class B>
  static void advance(const tensor<T, B>&, const tensor<T, B>&, const iteration_options<T>&, tensor<T, B>&) {}
};

struct unbounded_step {
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

template <class S>
struct is_step : std::false_type {};
template <>
struct is_step<no_step> : std::true_type {};
template <>
struct is_step<unbounded_step> : std::true_type {};
template <>
struct is_step<projected_step> : std::true_type {};

}  // namespace opnorm
