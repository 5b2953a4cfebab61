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
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "tensor.hpp"

namespace opnorm {

enum class reduction { mean, sum };

/// Class labels, one per example, on the same backend as the logits.
template <class Backend = backend::cpu>
using label_tensor = tensor<std::int32_t, Backend>;

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
}  // namespace detail

/// -log softmax(z)_y, with a max-shifted log-sum-exp so large logits neither
/// overflow nor lose the small terms.
struct softmax_cross_entropy {
  template <class T, class B>
  using target_type = label_tensor<B>;

  template <class T, class B>
  static T evaluate(const tensor<T, B>& logits, const label_tensor<B>& labels, tensor<T, B>* gradient,
                    reduction r = reduction::mean, tensor<T, B>* per_example = nullptr) {
    const index_t n = logits.dim(0), k = logits.example_size();
    require(labels.size() == n, "softmax_cross_entropy: " + std::to_string(labels.size()) +
                                    " labels for " + std::to_string(n) + " examples");
    check_labels(labels, k);
    tensor<T, B> values({n});
    if (gradient) gradient->resize(logits.shape());
    const T* z = logits.data();
    const std::int32_t* y = labels.data();
    T* val = values.data();
    T* g = gradient ? gradient->data() : nullptr;
    const T scale = r == reduction::mean ? T(1) / static_cast<T>(n) : T(1);
    backend_ops<B>::for_each_index(n, [=] OPNORM_HD(index_t i) {
      const T* zi = z + i * k;
      T m = zi[0];
      for (index_t j = 1; j < k; ++j) m = zi[j] > m ? zi[j] : m;
      T s = T(0);
      for (index_t j = 0; j < k; ++j) s += std::exp(zi[j] - m);
      const index_t label = y[i] < 0 || y[i] >= k ? 0 : y[i];
      // (m - z_label) + log(s) rather than (m + log(s)) - z_label: for large
      // logits m + log(s) would round log(s) to the spacing of m (0.001 at
      // 1e4 in float), while m - z_label is exact when the two are close.
      val[i] = (m - zi[label]) + std::log(s);
      if (g) {
        for (index_t j = 0; j < k; ++j) g[i * k + j] = scale * (std::exp(zi[j] - m) / s - (j == label ? T(1) : T(0)));
      }
    });
    if (per_example) *per_example = values;
    return detail::reduce_per_example(values, r);
  }

 private:
  static void require(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("opnorm::" + what);
  }
 public:  // nvcc rejects extended lambdas in private member functions
  // Counts the labels outside [0, classes) on the backend; only when there
  // is one is the label tensor copied to the host, to name it.
  template <class B>
  static void check_labels(const label_tensor<B>& labels, index_t classes) {
    const std::int32_t* y = labels.data();
    const index_t bad = backend_ops<B>::template sum<index_t>(
        labels.size(), [=] OPNORM_HD(index_t i) { return index_t(y[i] < 0 || y[i] >= classes); });
    if (bad == 0) return;
    for (std::int32_t v : labels.to_vector())
      require(v >= 0 && v < classes, "softmax_cross_entropy: label " + std::to_string(v) + " outside [0, " +
                                         std::to_string(classes) + ")");
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
    const index_t n = logits.dim(0), k = logits.example_size();
    tensor<T, B> values({n});
    if (gradient) gradient->resize(logits.shape());
    const T* z = logits.data();
    const T* t = target.data();
    T* val = values.data();
    T* g = gradient ? gradient->data() : nullptr;
    const T scale = r == reduction::mean ? T(1) / static_cast<T>(n) : T(1);
    backend_ops<B>::for_each_index(n, [=] OPNORM_HD(index_t i) {
      T s = T(0);
      for (index_t j = 0; j < k; ++j) {
        const T d = z[i * k + j] - t[i * k + j];
        s += d * d;
        if (g) g[i * k + j] = scale * d;
      }
      val[i] = s / T(2);
    });
    if (per_example) *per_example = values;
    return detail::reduce_per_example(values, r);
  }
};

template <class L>
struct is_loss : std::false_type {};
template <>
struct is_loss<softmax_cross_entropy> : std::true_type {};
template <>
struct is_loss<sum_of_squares> : std::true_type {};

}  // namespace opnorm
