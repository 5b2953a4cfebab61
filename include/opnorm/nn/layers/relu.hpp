#pragma once
// relu: y = max(x, 0). Its Jacobian is the 0/1 mask of the input's sign,
// so vjp and jvp are the same masking of the incoming vector.
#include "layer.hpp"

namespace opnorm {

template <class T = float, class Backend = backend::cpu>
class relu {
 public:
  using scalar = T;
  using backend_type = Backend;
  struct cache {};

  // Declaring the converting constructor removes the implicit default one.
  relu() = default;
  /// The same layer on another backend (it has no state).
  template <class B2>
  explicit relu(const relu<T, B2>&) {}

  shape_t output_shape(const shape_t& in) const { return in; }

  void forward(const tensor<T, Backend>& x, tensor<T, Backend>& y, cache&, mode) {
    y.resize(x.shape());
    const T* xs = x.data();
    T* ys = y.data();
    // NaN passes through, as in torch.relu: a NaN input or weight must reach
    // the loss (and the attack's or trainer's finiteness checks), never be
    // silently replaced by 0.
    backend_ops<Backend>::for_each_index(x.size(), [=] OPNORM_HD(index_t i) {
      ys[i] = (xs[i] > T(0) || xs[i] != xs[i]) ? xs[i] : T(0);
    });
  }

  void vjp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache&,
           const tensor<T, Backend>& gy, tensor<T, Backend>* gx, bool) {
    if (gx) mask(x, gy, *gx);
  }

  void jvp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache&,
           const tensor<T, Backend>& dx, tensor<T, Backend>& dy) const {
    mask(x, dx, dy);
  }

  void collect_state(state_list<T, Backend>&, const std::string&) {}
  void initialize(std::mt19937_64&) {}

  // The helpers below launch OPNORM_HD kernels, and nvcc rejects an extended
  // lambda inside a private or protected member function, so they are
  // public; they are not part of the interface.
 public:
  // out = in where x > 0, else 0 (the derivative at exactly 0 is taken as 0,
  // as PyTorch does).
  static void mask(const tensor<T, Backend>& x, const tensor<T, Backend>& in,
                   tensor<T, Backend>& out) {
    out.resize(x.shape());
    const T* xs = x.data();
    const T* is = in.data();
    T* os = out.data();
    backend_ops<Backend>::for_each_index(x.size(),
                            [=] OPNORM_HD(index_t i) {
                              // Load unconditionally: a load under the condition
                              // keeps the compiler from vectorizing, and the
                              // sign-dependent branch mispredicts (30x slower).
                              const T v = is[i];
                              os[i] = xs[i] > T(0) ? v : T(0);
                            });
  }
};

}  // namespace opnorm
