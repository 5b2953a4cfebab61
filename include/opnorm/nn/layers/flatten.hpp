#pragma once
// flatten: (N, d1, d2, ...) -> (N, d1 * d2 * ...), torch.nn.Flatten().
// Row-major storage makes this a relabelling of the same elements, so every
// pass is a copy into the tape's own buffer.
#include "layer.hpp"

namespace opnorm {

template <class T = float, class Backend = backend::cpu>
class flatten {
 public:
  using scalar = T;
  using backend_type = Backend;
  struct cache {};

  // Declaring the converting constructor removes the implicit default one.
  flatten() = default;
  /// The same layer on another backend (it has no state).
  template <class B2>
  explicit flatten(const flatten<T, B2>&) {}

  shape_t output_shape(const shape_t& in) const {
    require_shape(in.size() >= 2, "flatten",
                  "expects input (batch, features...), got " + shape_string(in));
    return {in[0], shape_size(shape_t(in.begin() + 1, in.end()))};
  }

  void forward(const tensor<T, Backend>& x, tensor<T, Backend>& y, cache&, mode) {
    y.resize(output_shape(x.shape()));
    backend_ops<Backend>::copy(x.data(), x.size(), y.data());
  }

  void vjp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache&,
           const tensor<T, Backend>& gy, tensor<T, Backend>* gx, bool) {
    if (!gx) return;
    gx->resize(x.shape());
    backend_ops<Backend>::copy(gy.data(), gy.size(), gx->data());
  }

  void jvp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache&,
           const tensor<T, Backend>& dx, tensor<T, Backend>& dy) const {
    dy.resize(output_shape(x.shape()));
    backend_ops<Backend>::copy(dx.data(), dx.size(), dy.data());
  }

  void collect_state(state_list<T, Backend>&, const std::string&) {}
  void initialize(std::mt19937_64&) {}
};

}  // namespace opnorm
