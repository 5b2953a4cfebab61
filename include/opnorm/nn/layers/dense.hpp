#pragma once
// dense: y = x W^T + b, with W of shape (out, in) as in torch.nn.Linear.
#include <cmath>

#include "layer.hpp"

namespace opnorm {

template <class T = float, class Backend = backend::cpu>
class dense : public detail::weight_and_bias<T, Backend> {
  using base = detail::weight_and_bias<T, Backend>;
  using base::weight_, base::weight_grad_, base::bias_, base::bias_grad_;

 public:
  // scalar, backend_type, has_parameters (trainable weight and bias;
  // jvp_parameter_vjp below serves Eq. 8) and the accessors come from the base.
  struct cache {};

  dense(index_t in_features, index_t out_features, bool bias = true)
      : base(true, checked_weight_shape(in_features, out_features), T(0), bias ? out_features : 0),
        in_(in_features), out_(out_features) {}

  /// The same layer on another backend: configuration, parameters and
  /// gradients copied through the host (opnorm::to in transfer.hpp moves a
  /// whole network this way).
  template <class B2>
  explicit dense(const dense<T, B2>& other) : dense(other.in_features(), other.out_features(), other.has_bias()) {
    this->copy_parameters(other);
  }

  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }

  shape_t output_shape(const shape_t& in) const {
    require_shape(in.size() == 2 && in[1] == in_, "dense",
                  "expects input (batch, " + std::to_string(in_) + "), got " + shape_string(in));
    return {in[0], out_};
  }

  void forward(const tensor<T, Backend>& x, tensor<T, Backend>& y, cache&, mode) {
    const index_t n = x.dim(0);
    y.resize(output_shape(x.shape()));
    linear_map(x, y);
    if (this->has_bias()) {
      const T* b = bias_.data();
      T* ys = y.data();
      const index_t out = out_;
      backend_ops<Backend>::for_each_index(n * out, [=] OPNORM_HD(index_t i) { ys[i] += b[i % out]; });
    }
  }

  void vjp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache&,
           const tensor<T, Backend>& gy, tensor<T, Backend>* gx, bool parameter_gradients) {
    const index_t n = x.dim(0);
    if (gx) {
      gx->resize(x.shape());
      // gx (n x in) = gy (n x out) W (out x in)
      backend_ops<Backend>::gemm(false, false, n, in_, out_, T(1), gy.data(), out_, weight_.data(), in_,
                    T(0), gx->data(), in_);
    }
    if (parameter_gradients) {
      // dW (out x in) += gy^T (out x n) x (n x in)
      backend_ops<Backend>::gemm(true, false, out_, in_, n, T(1), gy.data(), out_, x.data(), in_, T(1),
                    weight_grad_.data(), in_);
      if (this->has_bias()) {
        const T* g = gy.data();
        T* bg = bias_grad_.data();
        const index_t out = out_;
        // One task per output feature sums over the batch in a fixed order.
        backend_ops<Backend>::for_each_index(out, [=] OPNORM_HD(index_t j) {
          T s = T(0);
          for (index_t i = 0; i < n; ++i) s += g[i * out + j];
          bg[j] += s;
        });
      }
    }
  }

  void jvp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache&,
           const tensor<T, Backend>& dx, tensor<T, Backend>& dy) const {
    dy.resize(output_shape(x.shape()));
    linear_map(dx, dy);  // the bias does not depend on x
  }

  /// Accumulates d<g, J dx>/dW = g^T dx into the weight gradient: the
  /// parameter gradient of a JVP (data-dependent SNR in its Jacobian form).
  /// The bias does not enter J dx.
  void jvp_parameter_vjp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache&,
                         const tensor<T, Backend>& dx, const tensor<T, Backend>& g) {
    backend_ops<Backend>::gemm(true, false, out_, in_, x.dim(0), T(1), g.data(), out_, dx.data(), in_, T(1),
                  weight_grad_.data(), in_);
  }

  void collect_state(state_list<T, Backend>& s, const std::string& prefix) { this->collect_parameters(s, prefix); }

  /// The weight is the layer's one weight matrix, (out, in), for the global
  /// spectral norm regularizer (sequential::weight_matrices).
  void collect_weight_matrices(std::vector<named_tensor<T, Backend>>& out, const std::string& prefix) {
    out.push_back({prefix + "weight", &weight_, &weight_grad_});
  }

  /// PyTorch's default: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
  void initialize(std::mt19937_64& rng) {
    this->fill_uniform_parameters(rng, 1.0 / std::sqrt(static_cast<double>(in_)));
  }

 private:
  // y (n x out) = x (n x in) W^T
  void linear_map(const tensor<T, Backend>& x, tensor<T, Backend>& y) const {
    backend_ops<Backend>::gemm(false, true, x.dim(0), out_, in_, T(1), x.data(), in_, weight_.data(), in_,
                  T(0), y.data(), out_);
  }

  // The shape of W, after the checks that must precede its allocation.
  static shape_t checked_weight_shape(index_t in_features, index_t out_features) {
    require_shape(in_features > 0 && out_features > 0, "dense", "features must be positive");
    return {out_features, in_features};
  }

  index_t in_, out_;
};

}  // namespace opnorm
