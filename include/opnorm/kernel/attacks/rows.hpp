#pragma once
// Selecting examples: the rows of a batch that an attack still has to work
// on. APGD's restarts and an ensemble of attacks run each attack only on the
// examples that are still robust (AutoAttack's saving), so they gather those
// rows into a smaller batch and scatter the results back. Every per-example
// computation in opnorm depends on its own row only, so an example's result
// does not depend on which other rows were gathered with it.
//
//   row_list<B>(indices)                      the indices, on the backend
//   gather_rows(x, rows, out)                 out_j = x_{rows[j]}
//   scatter_rows(values, rows, x)             x_{rows[j]} = values_j
//   scatter_rows_where(values, rows, flags, x)   x_{rows[j]} = values_j where flags[j]
//   copy_rows_where(flags, from, to)          to_i = from_i where flags[i]
//   keep_rows(rows, x, y, ...)                x = x_{rows}, y = y_{rows}, ... in place
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../core/tensor.hpp"

namespace opnorm {

/// Example indices on the backend B.
template <class B>
tensor<index_t, B> row_list(const std::vector<index_t>& indices) {
  return tensor<index_t, B>::from_vector({static_cast<index_t>(indices.size())}, indices);
}

/// out = the rows of x listed in rows, in that order (out has rows.size() rows).
template <class T, class B>
void gather_rows(const tensor<T, B>& x, const tensor<index_t, B>& rows, tensor<T, B>& out) {
  shape_t shape = x.shape();
  if (shape.empty()) throw std::invalid_argument("opnorm::gather_rows: a scalar has no rows");
  shape[0] = rows.size();
  out.resize(shape);
  const index_t d = x.example_size();
  const T* xs = x.data();
  const index_t* r = rows.data();
  T* o = out.data();
  backend_ops<B>::for_each_index(out.size(), [=] OPNORM_HD(index_t k) { o[k] = xs[r[k / d] * d + k % d]; });
}

/// x_{rows[j]} = values_j for every j with flags[j] != 0; the other rows of x
/// are left alone.
template <class T, class B>
void scatter_rows_where(const tensor<T, B>& values, const tensor<index_t, B>& rows,
                        const tensor<std::int32_t, B>& flags, tensor<T, B>& x) {
  if (values.dim(0) != rows.size() || flags.size() != rows.size() || values.example_size() != x.example_size())
    throw std::invalid_argument("opnorm::scatter_rows_where: " + shape_string(values.shape()) + " rows for " +
                                std::to_string(rows.size()) + " indices and " + std::to_string(flags.size()) +
                                " flags into " + shape_string(x.shape()));
  const index_t d = x.example_size();
  const T* v = values.data();
  const index_t* r = rows.data();
  const std::int32_t* f = flags.data();
  T* xs = x.data();
  backend_ops<B>::for_each_index(values.size(), [=] OPNORM_HD(index_t k) {
    const index_t j = k / d;
    if (f[j]) xs[r[j] * d + k % d] = v[k];
  });
}

/// to_i = from_i for every row i with flags[i] != 0.
template <class T, class B>
void copy_rows_where(const tensor<std::int32_t, B>& flags, const tensor<T, B>& from, tensor<T, B>& to) {
  const index_t d = from.example_size();
  const std::int32_t* f = flags.data();
  const T* s = from.data();
  T* t = to.data();
  backend_ops<B>::for_each_index(from.size(), [=] OPNORM_HD(index_t k) {
    if (f[k / d]) t[k] = s[k];
  });
}

/// x_{rows[j]} = values_j for every j.
template <class T, class B>
void scatter_rows(const tensor<T, B>& values, const tensor<index_t, B>& rows, tensor<T, B>& x) {
  if (values.dim(0) != rows.size() || values.example_size() != x.example_size())
    throw std::invalid_argument("opnorm::scatter_rows: " + shape_string(values.shape()) + " rows for " +
                                std::to_string(rows.size()) + " indices into " + shape_string(x.shape()));
  const index_t d = x.example_size();
  const T* v = values.data();
  const index_t* r = rows.data();
  T* xs = x.data();
  backend_ops<B>::for_each_index(values.size(), [=] OPNORM_HD(index_t k) { xs[r[k / d] * d + k % d] = v[k]; });
}

/// x = the rows of x listed in rows, for each x: shrinks several per-example
/// tensors of one batch to the same selection of rows (APGD drops the
/// examples it has broken this way). Each x gets new storage.
template <class B, class... Tensors>
void keep_rows(const tensor<index_t, B>& rows, Tensors&... xs) {
  const auto keep = [&rows](auto& x) {
    std::decay_t<decltype(x)> kept;
    gather_rows(x, rows, kept);
    x = std::move(kept);
  };
  (keep(xs), ...);
}

}  // namespace opnorm
