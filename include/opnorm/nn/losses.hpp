#pragma once
// Losses: stateless policies that give the value and the gradient with
// respect to the logits, per example.
//
//   static T evaluate(const tensor& logits, const Target& target,
//                     tensor* gradient, reduction r, tensor* per_example);
//
// returns the reduced loss; when gradient is not null it receives d(loss)/d
// logits for the same reduction. per_example, when not null, receives the n
// unreduced values. Attacks use reduction::sum so each example's gradient is
// its own loss gradient, independent of the batch it sits in.
//
//   softmax_cross_entropy   -log softmax(z)_y                      (training, PGA, APGD-CE)
//   sum_of_squares          1/2 ||z - target||^2                   (Theorem 1, data-dependent SNR)
//   dlr                     difference of logits ratio             (APGD-DLR)
//   targeted_dlr            DLR towards a target class             (APGD-T)
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/labels.hpp"
#include "../core/tensor.hpp"

namespace opnorm {

enum class reduction { mean, sum };

namespace detail {
// The reduced loss, summed in double on the backend: one scalar reaches the host.
template <class T, class B>
T reduce_per_example(const tensor<T, B>& values, reduction r) {
  const T* v = values.data();
  const index_t n = values.size();
  double s = backend_ops<B>::template sum<double>(n, [=] OPNORM_HD(index_t i) { return static_cast<double>(v[i]); });
  if (r == reduction::mean && n > 0) s /= static_cast<double>(n);
  return static_cast<T>(s);
}

// Counts the labels outside [0, classes) on the backend; only when there
// is one is the label tensor copied to the host, to name it.
template <class B>
void check_labels(const char* loss, const label_tensor<B>& labels, index_t classes) {
  const std::int32_t* y = labels.data();
  const index_t bad = backend_ops<B>::template sum<index_t>(
      labels.size(), [=] OPNORM_HD(index_t i) { return index_t(y[i] < 0 || y[i] >= classes); });
  if (bad == 0) return;
  for (std::int32_t v : labels.to_vector())
    if (v < 0 || v >= classes)
      throw std::invalid_argument(std::string("opnorm::") + loss + ": label " + std::to_string(v) + " outside [0, " +
                                  std::to_string(classes) + ")");
}

// The same after checking that there is one label per example.
template <class B>
void check_labels(const char* loss, const label_tensor<B>& labels, index_t examples, index_t classes) {
  if (labels.size() != examples)
    throw std::invalid_argument(std::string("opnorm::") + loss + ": " + std::to_string(labels.size()) +
                                " labels for " + std::to_string(examples) + " examples");
  check_labels(loss, labels, classes);
}

// The indices of the four largest entries of z[0..k), largest first, ties
// broken by the smaller index (top[p] = -1 when k <= p): pi_1..pi_4 of the
// DLR losses. One pass, no sort: k is the number of classes.
template <class T>
OPNORM_HD inline void top_four(const T* z, index_t k, index_t (&top)[4]) {
  for (int p = 0; p < 4; ++p) top[p] = -1;
  for (index_t j = 0; j < k; ++j) {
    int p = 0;
    // Strictly greater: an equal value found later ranks after the earlier one.
    while (p < 4 && top[p] >= 0 && !(z[j] > z[top[p]])) ++p;
    if (p == 4) continue;
    for (int q = 3; q > p; --q) top[q] = top[q - 1];
    top[p] = j;
  }
}

// DLR's denominators are logit differences plus this constant (Croce & Hein
// use 1e-12): it keeps 0/0 away when the top logits tie.
template <class T>
OPNORM_HD inline T dlr_floor() {
  return static_cast<T>(1e-12);
}

// What every loss here shares: one task per example computes its value
// and, when a gradient is wanted, its row of d(loss)/d(logits) scaled for
// the reduction; the values are kept for per_example and reduced. Row
// supplies the example as an OPNORM_HD static member
//   T example(zi, k, target, i, gi, scale)
// with zi and gi (null without a gradient) example i's k logits and
// gradient row, and target the target tensor's data. A free function with
// the row as a type: nvcc rejects extended lambdas in private member
// functions, and a type keeps the losses' kernels free of nested lambdas.
template <class Row, class T, class B, class Target>
T per_example_loss(const tensor<T, B>& logits, const Target* target, tensor<T, B>* gradient, reduction r,
                   tensor<T, B>* per_example) {
  const index_t n = logits.dim(0), k = logits.example_size();
  tensor<T, B> values({n});
  if (gradient) gradient->resize(logits.shape());
  const T* z = logits.data();
  T* val = values.data();
  T* g = gradient ? gradient->data() : nullptr;
  const T scale = r == reduction::mean ? T(1) / static_cast<T>(n) : T(1);
  backend_ops<B>::for_each_index(n, [=] OPNORM_HD(index_t i) {
    val[i] = Row::example(z + i * k, k, target, i, g ? g + i * k : nullptr, scale);
  });
  if (per_example) *per_example = values;
  return reduce_per_example(values, r);
}

// dlr and targeted_dlr are both -(z_y - z_rival) / den, with den built from
// the top logits, and differ only in which class is the rival and in how den
// is formed. This row holds what they share (the top logits, the ratio and
// its gradient) so that the two cannot drift apart; each loss passes itself
// as Terms, supplying as OPNORM_HD static members
//   true_class(classes, i), rival(classes, i, label, top),
//   denominator(zi, top), add_denominator_gradient(gi, top, b),
// where b = d(loss)/d(den) and the last adds b * d(den)/dz to gi.
template <class Terms>
struct dlr_ratio {
  template <class T>
  OPNORM_HD static T example(const T* zi, index_t k, const std::int32_t* c, index_t i, T* gi, T scale) {
    index_t top[4];
    top_four(zi, k, top);
    const index_t label = Terms::true_class(c, i);
    const index_t rival = Terms::rival(c, i, label, top);
    // Both written as differences of logits, never as differences of
    // sums: large logits cancel exactly where the ratio is decided.
    const T margin = zi[label] - zi[rival];
    const T den = Terms::denominator(zi, top);
    if (gi) {
      for (index_t j = 0; j < k; ++j) gi[j] = T(0);
      // d/dmargin = -1/den; d/dden = margin/den^2, formed as (margin/den)/den
      // so a tiny den cannot overflow den^2 before the division.
      const T a = scale / den;
      const T b = scale * ((margin / den) / den);
      gi[label] -= a;
      gi[rival] += a;
      Terms::add_denominator_gradient(gi, top, b);
    }
    return -margin / den;
  }
};
// The target of the losses that compare logits with class labels.
struct label_target {
  template <class T, class B>
  using target_type = label_tensor<B>;
};
}  // namespace detail

/// -log softmax(z)_y, with a max-shifted log-sum-exp so large logits neither
/// overflow nor lose the small terms.
struct softmax_cross_entropy : detail::label_target {
  template <class T, class B>
  static T evaluate(const tensor<T, B>& logits, const label_tensor<B>& labels, tensor<T, B>* gradient,
                    reduction r = reduction::mean, tensor<T, B>* per_example = nullptr) {
    detail::check_labels("softmax_cross_entropy", labels, logits.dim(0), logits.example_size());
    return detail::per_example_loss<softmax_cross_entropy>(logits, labels.data(), gradient, r, per_example);
  }

  // Example i's loss and gradient row, for detail::per_example_loss; public
  // because the kernel there calls it.
  template <class T>
  OPNORM_HD static T example(const T* zi, index_t k, const std::int32_t* y, index_t i, T* gi, T scale) {
    T m = zi[0];
    for (index_t j = 1; j < k; ++j) m = zi[j] > m ? zi[j] : m;
    T s = T(0);
    for (index_t j = 0; j < k; ++j) s += std::exp(zi[j] - m);
    const index_t label = y[i] < 0 || y[i] >= k ? 0 : y[i];
    // (m - z_label) + log(s) rather than (m + log(s)) - z_label: for large
    // logits m + log(s) would round log(s) to the spacing of m (0.001 at
    // 1e4 in float), while m - z_label is exact when the two are close.
    const T value = (m - zi[label]) + std::log(s);
    if (gi) {
      // p_j for j != label. The label's own component p_label - 1 is
      // computed as -sum_{j != label} p_j: written as a difference it
      // rounds to exactly 0 in float once the margin exceeds about 16.6,
      // and a confident example would then give its attack no gradient.
      T others = T(0);
      for (index_t j = 0; j < k; ++j) {
        if (j == label) continue;
        const T e = std::exp(zi[j] - m);
        others += e;
        gi[j] = scale * (e / s);
      }
      gi[label] = -scale * (others / s);
    }
    return value;
  }
};

/// 1/2 ||z - target||^2 per example: the adversarial loss of Theorem 1 and
/// the data-dependent SNR penalty, with target = f(x) (held constant).
struct sum_of_squares {
  template <class T, class B>
  using target_type = tensor<T, B>;

  template <class T, class B>
  static T evaluate(const tensor<T, B>& logits, const tensor<T, B>& target, tensor<T, B>* gradient,
                    reduction r = reduction::mean, tensor<T, B>* per_example = nullptr) {
    if (logits.shape() != target.shape())
      throw std::invalid_argument("opnorm::sum_of_squares: logits " + shape_string(logits.shape()) +
                                  " and target " + shape_string(target.shape()) + " differ in shape");
    return detail::per_example_loss<sum_of_squares>(logits, target.data(), gradient, r, per_example);
  }

  // Example i's loss and gradient row, for detail::per_example_loss; public
  // because the kernel there calls it.
  template <class T>
  OPNORM_HD static T example(const T* zi, index_t k, const T* target, index_t i, T* gi, T scale) {
    const T* ti = target + i * k;
    T s = T(0);
    for (index_t j = 0; j < k; ++j) {
      const T d = zi[j] - ti[j];
      s += d * d;
      if (gi) gi[j] = scale * d;
    }
    return s / T(2);
  }
};

/// Difference of logits ratio (Croce & Hein 2020, Eq. 6): with pi the
/// classes sorted by decreasing logit,
///
///   DLR(z, y) = -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12).
///
/// Invariant to shifting and to positive scaling of z (up to the 1e-12), so
/// an attack on it cannot be stalled by a model that inflates its logits, as
/// cross-entropy can (its gradient vanishes where softmax saturates). Needs
/// at least 3 classes. Positive when y is misclassified.
struct dlr : detail::label_target {
  template <class T, class B>
  static T evaluate(const tensor<T, B>& logits, const label_tensor<B>& labels, tensor<T, B>* gradient,
                    reduction r = reduction::mean, tensor<T, B>* per_example = nullptr) {
    const index_t k = logits.example_size();
    if (k < 3) throw std::invalid_argument("opnorm::dlr: needs at least 3 classes (z_pi3), got " + std::to_string(k));
    detail::check_labels("dlr", labels, logits.dim(0), k);
    return detail::per_example_loss<detail::dlr_ratio<dlr>>(logits, labels.data(), gradient, r, per_example);
  }

  // What sets dlr apart within detail::dlr_ratio; public because the kernel
  // there calls them.
  OPNORM_HD static index_t true_class(const std::int32_t* labels, index_t i) { return labels[i]; }
  // argmax_{j != y} z_j
  OPNORM_HD static index_t rival(const std::int32_t*, index_t, index_t label, const index_t (&top)[4]) {
    return top[0] != label ? top[0] : top[1];
  }
  template <class T>
  OPNORM_HD static T denominator(const T* zi, const index_t (&top)[4]) {
    return (zi[top[0]] - zi[top[2]]) + detail::dlr_floor<T>();
  }
  template <class T>
  OPNORM_HD static void add_denominator_gradient(T* gi, const index_t (&top)[4], T b) {
    gi[top[0]] += b;
    gi[top[2]] -= b;
  }
};

/// Per example a (true class, target class) pair: the target of targeted_dlr,
/// a label tensor of shape (n, 2) so that row i is example i like every other
/// per-example tensor (slicing and gathering rows keep the pairs together).
template <class B>
label_tensor<B> label_pairs(const label_tensor<B>& labels, const label_tensor<B>& targets) {
  const index_t n = labels.size();
  if (targets.size() != n)
    throw std::invalid_argument("opnorm::label_pairs: " + std::to_string(targets.size()) + " targets for " +
                                std::to_string(n) + " labels");
  label_tensor<B> pairs({n, 2});
  const std::int32_t* y = labels.data();
  const std::int32_t* t = targets.data();
  std::int32_t* p = pairs.data();
  backend_ops<B>::for_each_index(n, [=] OPNORM_HD(index_t i) {
    p[2 * i] = y[i];
    p[2 * i + 1] = t[i];
  });
  return pairs;
}

/// Targeted DLR (APGD-T, Croce & Hein 2020, Eq. 7) for a true class y and a
/// target t:
///
///   -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12),
///
/// with the same shift and scale invariance as dlr. The target is a label
/// tensor of shape (n, 2), rows (y_i, t_i) (label_pairs). Needs at least 4
/// classes.
struct targeted_dlr : detail::label_target {
  template <class T, class B>
  static T evaluate(const tensor<T, B>& logits, const label_tensor<B>& pairs, tensor<T, B>* gradient,
                    reduction r = reduction::mean, tensor<T, B>* per_example = nullptr) {
    const index_t n = logits.dim(0), k = logits.example_size();
    if (k < 4)
      throw std::invalid_argument("opnorm::targeted_dlr: needs at least 4 classes (z_pi4), got " + std::to_string(k));
    if (pairs.rank() != 2 || pairs.dim(0) != n || pairs.dim(1) != 2)
      throw std::invalid_argument("opnorm::targeted_dlr: the target must be (true class, target class) pairs of shape (" +
                                  std::to_string(n) + ", 2) (see label_pairs), got " + shape_string(pairs.shape()));
    detail::check_labels("targeted_dlr", pairs, k);
    return detail::per_example_loss<detail::dlr_ratio<targeted_dlr>>(logits, pairs.data(), gradient, r,
                                                                          per_example);
  }

  // What sets targeted_dlr apart within detail::dlr_ratio; public because
  // the kernel there calls them. Row i of the pairs is (y_i, t_i).
  OPNORM_HD static index_t true_class(const std::int32_t* pairs, index_t i) { return pairs[2 * i]; }
  OPNORM_HD static index_t rival(const std::int32_t* pairs, index_t i, index_t, const index_t (&)[4]) {
    return pairs[2 * i + 1];
  }
  // z_pi1 - (z_pi3 + z_pi4)/2 as the mean of two logit differences.
  template <class T>
  OPNORM_HD static T denominator(const T* zi, const index_t (&top)[4]) {
    const T half = T(1) / T(2);
    return half * (zi[top[0]] - zi[top[2]]) + half * (zi[top[0]] - zi[top[3]]) + detail::dlr_floor<T>();
  }
  template <class T>
  OPNORM_HD static void add_denominator_gradient(T* gi, const index_t (&top)[4], T b) {
    const T half = T(1) / T(2);
    gi[top[0]] += b;
    gi[top[2]] -= half * b;
    gi[top[3]] -= half * b;
  }
};

// Structural checks: a loss policy is what it provides, not a list of
// known types, so a user's loss works wherever a shipped one does. Probed
// with double on the cpu backend, the combination every policy supports.
namespace detail {
template <class L>
using probe_target = typename L::template target_type<double, backend::cpu>;

template <class L, class = void>
struct has_loss_target : std::false_type {};
template <class L>
struct has_loss_target<L, std::void_t<probe_target<L>>> : std::true_type {};

template <class L, class = void>
struct has_loss_value_only : std::false_type {};
template <class L>
struct has_loss_value_only<L, std::void_t<decltype(L::evaluate(std::declval<const tensor<double>&>(),
                                                               std::declval<const probe_target<L>&>(),
                                                               reduction::sum))>> : std::true_type {};
}  // namespace detail

/// Loss::evaluate(logits, target, gradient*, reduction): the value and the
/// gradient with respect to the logits.
template <class L, class = void>
struct has_loss_gradient : std::false_type {};
template <class L>
struct has_loss_gradient<L, std::void_t<decltype(L::evaluate(std::declval<const tensor<double>&>(),
                                                             std::declval<const detail::probe_target<L>&>(),
                                                             std::declval<tensor<double>*>(), reduction::sum))>>
    : std::true_type {};

/// A loss policy: target_type<T, B> (label_tensor<B> or tensor<T, B>) and
/// a static evaluate(logits, target, ...) giving the loss, with a gradient
/// (has_loss_gradient) or as a value only (evaluate(logits, target, reduction)).
template <class L>
struct is_loss
    : std::bool_constant<detail::has_loss_target<L>::value &&
                         (has_loss_gradient<L>::value || detail::has_loss_value_only<L>::value)> {};

}  // namespace opnorm
