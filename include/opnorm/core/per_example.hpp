#pragma once
// Per-example reductions and scalings. Every norm, normalization and radius in
// opnorm is per example: row i of a (n, ...) tensor is one example.
#include <cmath>

#include "tensor.hpp"

namespace opnorm {

/// out[i] = ||row i||_2.
template <class T, class B>
void l2_norms(const tensor<T, B>& x, tensor<T, B>& out) {
  const index_t n = x.dim(0), d = x.example_size();
  out.resize({n});
  const T* xs = x.data();
  T* o = out.data();
  backend_ops<B>::for_each_segment(n, d, [=] OPNORM_HD(index_t i) {
    T s = T(0);
    for (index_t j = 0; j < d; ++j) s += xs[i * d + j] * xs[i * d + j];
    o[i] = std::sqrt(s);
  });
}

/// out[i] = <row i of a, row i of b>.
template <class T, class B>
void row_dots(const tensor<T, B>& a, const tensor<T, B>& b, tensor<T, B>& out) {
  const index_t n = a.dim(0), d = a.example_size();
  out.resize({n});
  const T* as = a.data();
  const T* bs = b.data();
  T* o = out.data();
  backend_ops<B>::for_each_segment(n, d, [=] OPNORM_HD(index_t i) {
    T s = T(0);
    for (index_t j = 0; j < d; ++j) s += as[i * d + j] * bs[i * d + j];
    o[i] = s;
  });
}

/// y = a * x + b * y elementwise (y resized to x when b == 0).
template <class T, class B>
void axpby(T a, const tensor<T, B>& x, T b, tensor<T, B>& y) {
  if (b == T(0)) y.resize(x.shape());
  const T* xs = x.data();
  T* ys = y.data();
  backend_ops<B>::for_each_index(x.size(), [=] OPNORM_HD(index_t i) {
    ys[i] = b == T(0) ? a * xs[i] : a * xs[i] + b * ys[i];
  });
}

/// out = a - b elementwise.
template <class T, class B>
void subtract(const tensor<T, B>& a, const tensor<T, B>& b, tensor<T, B>& out) {
  out.resize(a.shape());
  const T* as = a.data();
  const T* bs = b.data();
  T* o = out.data();
  backend_ops<B>::for_each_index(a.size(), [=] OPNORM_HD(index_t i) { o[i] = as[i] - bs[i]; });
}

/// y += x elementwise.
template <class T, class B>
void add_into(const tensor<T, B>& x, tensor<T, B>& y) {
  const T* xs = x.data();
  T* ys = y.data();
  backend_ops<B>::for_each_index(x.size(), [=] OPNORM_HD(index_t i) { ys[i] += xs[i]; });
}

/// Copies src into dst, resizing dst.
template <class T, class B>
void assign(const tensor<T, B>& src, tensor<T, B>& dst) {
  dst.resize(src.shape());
  backend_ops<B>::copy(src.data(), src.size(), dst.data());
}

/// True when a and b have the same shape and equal entries (a NaN equals
/// nothing, so a tensor holding one is never equal to anything).
template <class T, class B>
bool equal_values(const tensor<T, B>& a, const tensor<T, B>& b) {
  if (a.shape() != b.shape()) return false;
  const T* as = a.data();
  const T* bs = b.data();
  const double differing = backend_ops<B>::template sum<double>(
      a.size(), [=] OPNORM_HD(index_t i) { return as[i] == bs[i] ? 0.0 : 1.0; });
  return differing == 0;
}

/// Rows [begin, end) of x (examples begin..end-1) as a new tensor.
template <class T, class B>
tensor<T, B> slice_rows(const tensor<T, B>& x, index_t begin, index_t end) {
  if (begin < 0 || end > x.dim(0) || begin > end)
    throw std::out_of_range("opnorm::slice_rows: rows [" + std::to_string(begin) + ", " + std::to_string(end) +
                            ") of a tensor with " + std::to_string(x.dim(0)) + " rows");
  shape_t shape = x.shape();
  shape[0] = end - begin;
  tensor<T, B> out(shape);
  backend_ops<B>::copy(x.data() + begin * x.example_size(), out.size(), out.data());
  return out;
}

namespace detail {
/// The class one row of k logits predicts: its first largest entry (ties go
/// to the smaller index, as torch.argmax), or -1 when the row holds a NaN.
/// A NaN row predicts no class: every comparison with NaN is false, so a
/// plain scan would silently pick whichever class it started from, and the
/// example would count as correct (or as reaching an attack's target) by
/// accident. -1 matches no label; count_correct's rule is the same.
template <class T>
OPNORM_HD inline index_t argmax_row(const T* row, index_t k) {
  index_t best = 0;
  for (index_t j = 0; j < k; ++j) {
    if (row[j] != row[j]) return -1;
    if (row[j] > row[best]) best = j;
  }
  return best;
}
}  // namespace detail

/// The predicted class of each row of logits (detail::argmax_row: the first
/// largest entry, -1 for a row holding a NaN).
template <class T, class B>
std::vector<index_t> argmax_rows(const tensor<T, B>& logits) {
  const std::vector<T> h = logits.to_vector();
  const index_t n = logits.dim(0), k = logits.example_size();
  std::vector<index_t> out(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) out[i] = detail::argmax_row(h.data() + i * k, k);
  return out;
}

}  // namespace opnorm
