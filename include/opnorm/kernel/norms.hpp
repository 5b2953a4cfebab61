#pragma once
// Norm policies: where the choice of l_p geometry lives. A power iteration
// or attack never writes "divide by the l2 norm"; it asks its Norm for the
// steepest-ascent direction, the projection onto the eps-ball and a random
// start. All of it is per example: row i of a (n, ...) tensor is example i.
//
//   steepest_ascent(g, v)        v_i = argmax_{||v||<=1} <g_i, v>   (0 for g_i = 0)
//   project(delta, eps)          delta_i <- nearest point of the eps-ball
//   norms(delta, out)            out_i = ||delta_i||
//   dual_norms(g, out)           out_i = ||g_i||_*   (so <g, eps v*> = eps ||g||_*)
//   random_in_ball(x, eps, seed, delta)   delta_i ~ U(B_eps), keyed by x_i's content
//   random_direction(x, seed, v)          a random unit vector per example
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include "../core/per_example.hpp"
#include "../core/random.hpp"
#include "../core/tensor.hpp"

namespace opnorm {

namespace detail {
// Random streams: distinct so a ball sample and a direction never share draws.
inline constexpr std::uint64_t stream_ball = 0xba11;
inline constexpr std::uint64_t stream_direction = 0xd12ec;
}  // namespace detail

struct l2 {
  static constexpr const char* name = "l2";

  template <class T, class B>
  static void steepest_ascent(const tensor<T, B>& g, tensor<T, B>& v) {
    v.resize(g.shape());
    const index_t n = g.dim(0), d = g.example_size();
    const T* gs = g.data();
    T* vs = v.data();
    backend_ops<B>::for_each_segment(n, d, [=] OPNORM_HD(index_t i) {
      // Scaled by the largest magnitude before squaring, as BLAS nrm2 does:
      // squares of float gradients around 1e-23 underflow to 0, and those
      // around 1e+20 overflow, and either would lose the direction.
      T largest = T(0);
      bool finite = true;
      for (index_t j = 0; j < d; ++j) {
        const T a = std::abs(gs[i * d + j]);
        finite = finite && a <= std::numeric_limits<T>::max();  // false for NaN and inf
        largest = a > largest ? a : largest;
      }
      if (!finite) {  // a NaN or infinite gradient has no direction: say so with NaN, never a quiet 0
        for (index_t j = 0; j < d; ++j) vs[i * d + j] = std::numeric_limits<T>::quiet_NaN();
        return;
      }
      // A zero gradient has no ascent direction: return 0, never 0/0.
      if (largest == T(0)) {
        for (index_t j = 0; j < d; ++j) vs[i * d + j] = T(0);
        return;
      }
      T s = T(0);
      for (index_t j = 0; j < d; ++j) {
        const T r = gs[i * d + j] / largest;
        s += r * r;
      }
      const T root = std::sqrt(s);  // in [1, sqrt(d)]: no underflow, no overflow
      for (index_t j = 0; j < d; ++j) vs[i * d + j] = (gs[i * d + j] / largest) / root;
    });
  }

  template <class T, class B>
  static void project(tensor<T, B>& delta, T eps) {
    const index_t n = delta.dim(0), d = delta.example_size();
    T* ds = delta.data();
    backend_ops<B>::for_each_segment(n, d, [=] OPNORM_HD(index_t i) {
      T s = T(0);
      for (index_t j = 0; j < d; ++j) s += ds[i * d + j] * ds[i * d + j];
      const T r = std::sqrt(s);
      if (r > eps) {
        const T scale = eps / r;
        for (index_t j = 0; j < d; ++j) ds[i * d + j] *= scale;
      }
    });
  }

  template <class T, class B>
  static void norms(const tensor<T, B>& x, tensor<T, B>& out) {
    l2_norms(x, out);
  }
  /// l2 is its own dual.
  template <class T, class B>
  static void dual_norms(const tensor<T, B>& g, tensor<T, B>& out) {
    l2_norms(g, out);
  }

  /// Uniform in the l2 ball: a Gaussian direction, radius eps * U^(1/d).
  template <class T, class B>
  static void random_in_ball(const tensor<T, B>& x, T eps, std::uint64_t seed, tensor<T, B>& delta) {
    sample(x, eps, seed, delta, true);
  }
  template <class T, class B>
  static void random_direction(const tensor<T, B>& x, std::uint64_t seed, tensor<T, B>& v) {
    sample(x, T(1), seed, v, false);
  }

  // The helpers below launch OPNORM_HD kernels, and nvcc rejects an extended
  // lambda inside a private or protected member function, so they are
  // public; they are not part of the interface.
 public:
  template <class T, class B>
  static void sample(const tensor<T, B>& x, T radius, std::uint64_t seed, tensor<T, B>& out, bool fill_ball) {
    out.resize(x.shape());
    const index_t n = x.dim(0), d = x.example_size();
    const T* xs = x.data();
    T* os = out.data();
    backend_ops<B>::for_each_segment(n, d, [=] OPNORM_HD(index_t i) {
      const std::uint64_t key = random::fingerprint(xs + i * d, d);
      const std::uint64_t stream = random::mix(key ^ (fill_ball ? detail::stream_ball : detail::stream_direction));
      double s = 0;
      for (index_t j = 0; j < d; ++j) {
        const double z = random::normal(seed, stream, static_cast<std::uint64_t>(j));
        os[i * d + j] = static_cast<T>(z);
        s += z * z;
      }
      double r = static_cast<double>(radius);
      if (fill_ball) r *= std::pow(random::uniform(seed, stream, static_cast<std::uint64_t>(2 * d + 1)), 1.0 / static_cast<double>(d));
      const double scale = s > 0 ? r / std::sqrt(s) : 0.0;
      for (index_t j = 0; j < d; ++j) os[i * d + j] = static_cast<T>(static_cast<double>(os[i * d + j]) * scale);
    });
  }
};

struct linf {
  static constexpr const char* name = "linf";

  /// The linf steepest-ascent direction is the sign of the gradient.
  template <class T, class B>
  static void steepest_ascent(const tensor<T, B>& g, tensor<T, B>& v) {
    v.resize(g.shape());
    const T* gs = g.data();
    T* vs = v.data();
    backend_ops<B>::for_each_index(g.size(), [=] OPNORM_HD(index_t i) {
      // sign(g), with NaN kept: a NaN gradient must not become a quiet 0.
      vs[i] = gs[i] > T(0) ? T(1) : (gs[i] < T(0) ? T(-1) : (gs[i] == gs[i] ? T(0) : gs[i]));
    });
  }

  template <class T, class B>
  static void project(tensor<T, B>& delta, T eps) {
    T* ds = delta.data();
    backend_ops<B>::for_each_index(delta.size(), [=] OPNORM_HD(index_t i) {
      ds[i] = ds[i] > eps ? eps : (ds[i] < -eps ? -eps : ds[i]);
    });
  }

  template <class T, class B>
  static void norms(const tensor<T, B>& x, tensor<T, B>& out) {
    const index_t n = x.dim(0), d = x.example_size();
    out.resize({n});
    const T* xs = x.data();
    T* o = out.data();
    backend_ops<B>::for_each_segment(n, d, [=] OPNORM_HD(index_t i) {
      T m = T(0);
      for (index_t j = 0; j < d; ++j) m = std::abs(xs[i * d + j]) > m ? std::abs(xs[i * d + j]) : m;
      o[i] = m;
    });
  }

  /// The dual of linf is l1.
  template <class T, class B>
  static void dual_norms(const tensor<T, B>& g, tensor<T, B>& out) {
    const index_t n = g.dim(0), d = g.example_size();
    out.resize({n});
    const T* gs = g.data();
    T* o = out.data();
    backend_ops<B>::for_each_segment(n, d, [=] OPNORM_HD(index_t i) {
      T s = T(0);
      for (index_t j = 0; j < d; ++j) s += std::abs(gs[i * d + j]);
      o[i] = s;
    });
  }

  /// Uniform in the linf ball: independent U(-eps, eps) per coordinate.
  template <class T, class B>
  static void random_in_ball(const tensor<T, B>& x, T eps, std::uint64_t seed, tensor<T, B>& delta) {
    sample(x, eps, seed, delta, detail::stream_ball, false);
  }
  /// A random vertex of the unit linf ball (random signs).
  template <class T, class B>
  static void random_direction(const tensor<T, B>& x, std::uint64_t seed, tensor<T, B>& v) {
    sample(x, T(1), seed, v, detail::stream_direction, true);
  }

  // The helpers below launch OPNORM_HD kernels, and nvcc rejects an extended
  // lambda inside a private or protected member function, so they are
  // public; they are not part of the interface.
 public:
  template <class T, class B>
  static void sample(const tensor<T, B>& x, T eps, std::uint64_t seed, tensor<T, B>& out, std::uint64_t kind,
                     bool signs) {
    out.resize(x.shape());
    const index_t n = x.dim(0), d = x.example_size();
    const T* xs = x.data();
    T* os = out.data();
    backend_ops<B>::for_each_segment(n, d, [=] OPNORM_HD(index_t i) {
      const std::uint64_t stream = random::mix(random::fingerprint(xs + i * d, d) ^ kind);
      for (index_t j = 0; j < d; ++j) {
        const double u = random::uniform(seed, stream, static_cast<std::uint64_t>(j));
        os[i * d + j] = signs ? (u < 0.5 ? -eps : eps) : static_cast<T>((2.0 * u - 1.0) * static_cast<double>(eps));
      }
    });
  }
};

// Structural checks: a norm policy is what it provides, so a user's norm
// (l1, say) works wherever l2 and linf do. Probed with double on the cpu
// backend, the combination every policy supports.
namespace detail {
template <class N, class = void>
struct has_steepest_ascent : std::false_type {};
template <class N>
struct has_steepest_ascent<N, std::void_t<decltype(N::steepest_ascent(std::declval<const tensor<double>&>(),
                                                                      std::declval<tensor<double>&>()))>>
    : std::true_type {};

template <class N, class = void>
struct has_dual_norms : std::false_type {};
template <class N>
struct has_dual_norms<N, std::void_t<decltype(N::dual_norms(std::declval<const tensor<double>&>(),
                                                            std::declval<tensor<double>&>()))>> : std::true_type {};

template <class N, class = void>
struct has_random_direction : std::false_type {};
template <class N>
struct has_random_direction<N, std::void_t<decltype(N::random_direction(std::declval<const tensor<double>&>(),
                                                                        std::uint64_t{},
                                                                        std::declval<tensor<double>&>()))>>
    : std::true_type {};

template <class N, class = void>
struct has_project : std::false_type {};
template <class N>
struct has_project<N, std::void_t<decltype(N::project(std::declval<tensor<double>&>(), double{}))>>
    : std::true_type {};

template <class N, class = void>
struct has_random_in_ball : std::false_type {};
template <class N>
struct has_random_in_ball<N, std::void_t<decltype(N::random_in_ball(std::declval<const tensor<double>&>(), double{},
                                                                    std::uint64_t{},
                                                                    std::declval<tensor<double>&>()))>>
    : std::true_type {};
}  // namespace detail

/// What the power iteration asks of every norm: the steepest-ascent
/// direction, the dual norm (for sigma) and a random starting direction.
template <class N>
struct is_norm : std::bool_constant<detail::has_steepest_ascent<N>::value && detail::has_dual_norms<N>::value &&
                                    detail::has_random_direction<N>::value> {};

/// What projected steps and attacks ask in addition: the projection onto
/// the eps-ball and a uniform sample inside it (the random start).
template <class N>
struct has_projection : std::bool_constant<detail::has_project<N>::value && detail::has_random_in_ball<N>::value> {};

}  // namespace opnorm
