#pragma once
// What every layer provides, and the small types layers share.
//
// A layer L<T, Backend> is a plain class with:
//
//   struct cache;                                  // what forward leaves for vjp/jvp
//   shape_t output_shape(const shape_t& in) const; // in and out include the batch
//   void forward(const tensor& x, tensor& y, cache& c, mode m);
//   void vjp(const tensor& x, const tensor& y, const cache& c, const tensor& gy,
//            tensor* gx, bool parameter_gradients);
//   void jvp(const tensor& x, const tensor& y, const cache& c, const tensor& dx,
//            tensor& dy) const;
//   void collect_state(state_list<T, Backend>& out, const std::string& prefix);
//   void initialize(std::mt19937_64& rng);
//
// forward resizes y; x is the layer input and y its output as left in the
// tape by the sequential container, so layers need not copy them. vjp
// writes dL/dx into *gx (skipped when gx is null: the first layer of a
// network does not need it) and, when parameter_gradients is true,
// *accumulates* dL/dtheta into the layer's own gradient tensors; power
// iterations pass false so they never compute parameter gradients only to
// throw them away. jvp computes J(x) dx at the point of the last forward
// (forward-mode with respect to the input; parameters held fixed).
//
// Layers with trainable parameters also declare
//   static constexpr bool has_parameters = true;
// and provide jvp_parameter_vjp (data-dependent SNR's Eq. 8) or opt out with
// supports_jvp_parameter_vjp = false; a layer whose parameters include
// weight matrices hands them to the global SNR through
// collect_weight_matrices. layer_concept.hpp states and checks all of it,
// member by member, and sequential<Layers...> runs that check on each layer;
// testing/check_layer.hpp checks a layer's derivatives numerically.
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../../detail/options.hpp"
#include "../../core/mode.hpp"
#include "../../core/per_example.hpp"
#include "../../core/state.hpp"
#include "../../core/tensor.hpp"

namespace opnorm {

/// Fills a tensor with U(-bound, bound) drawn on the host from rng, which
/// makes initialization identical on every backend for a given seed.
template <class T, class Backend>
void fill_uniform(tensor<T, Backend>& t, std::mt19937_64& rng, double bound) {
  std::uniform_real_distribution<double> dist(-bound, bound);
  std::vector<T> v(static_cast<std::size_t>(t.size()));
  for (auto& e : v) e = static_cast<T>(dist(rng));
  backend_ops<Backend>::copy_from_host(v.data(), t.size(), t.data());
}

/// L<T, B> as L<T, B2>: the same layer type on another backend. Every layer
/// is a template <class T, class Backend>, which is all this needs.
template <class Layer, class B2>
struct rebind_backend;
template <template <class, class> class L, class T, class B, class B2>
struct rebind_backend<L<T, B>, B2> {
  using type = L<T, B2>;
};


namespace detail {

/// The trainable weight and optional bias of dense, conv2d and batch_norm
/// (gamma and beta), with their gradients: the three keep the same four
/// tensors, copy them to another backend, list them in the state and
/// initialize them the same way, so they share them from here. A layer
/// derives from it publicly (the accessors, the scalar and backend_type
/// names and has_parameters are the layer's own interface) and names the
/// tensors in one using-declaration, since they sit in a dependent base.
template <class T, class Backend>
class weight_and_bias {
 public:
  using scalar = T;
  using backend_type = Backend;
  static constexpr bool has_parameters = true;

  tensor<T, Backend>& weight() { return weight_; }
  const tensor<T, Backend>& weight() const { return weight_; }
  tensor<T, Backend>& bias() { return bias_; }
  const tensor<T, Backend>& bias() const { return bias_; }
  tensor<T, Backend>& weight_grad() { return weight_grad_; }
  tensor<T, Backend>& bias_grad() { return bias_grad_; }
  bool has_bias() const { return has_bias_; }

 protected:
  /// With trainable: a weight of weight_shape filled with weight_value and,
  /// when bias_size is positive, a zero bias of that size; gradients zero.
  /// Without (batch_norm without affine) no tensors: the list stays empty.
  /// The layer checks its arguments before: a negative size cannot allocate.
  weight_and_bias(bool trainable, const shape_t& weight_shape, T weight_value, index_t bias_size)
      : has_weight_(trainable), has_bias_(trainable && bias_size > 0) {
    if (has_weight_) {
      weight_ = tensor<T, Backend>(weight_shape, weight_value);
      weight_grad_ = tensor<T, Backend>(weight_shape, T(0));
    }
    if (has_bias_) {
      bias_ = tensor<T, Backend>({bias_size}, T(0));
      bias_grad_ = tensor<T, Backend>({bias_size}, T(0));
    }
  }

  /// Values and gradients of other's parameters, copied through the host
  /// (the layers' converting constructors).
  template <class B2>
  void copy_parameters(const weight_and_bias<T, B2>& other) {
    if (has_weight_) {
      weight_ = copy_to_backend<Backend>(other.weight_);
      weight_grad_ = copy_to_backend<Backend>(other.weight_grad_);
    }
    if (has_bias_) {
      bias_ = copy_to_backend<Backend>(other.bias_);
      bias_grad_ = copy_to_backend<Backend>(other.bias_grad_);
    }
  }
  template <class, class>
  friend class weight_and_bias;  // copy_parameters reads the other backend's members

  /// "<prefix>weight" and "<prefix>bias", those the layer has, as PyTorch names them.
  void collect_parameters(state_list<T, Backend>& s, const std::string& prefix) {
    if (has_weight_) s.parameters.push_back({prefix + "weight", &weight_, &weight_grad_});
    if (has_bias_) s.parameters.push_back({prefix + "bias", &bias_, &bias_grad_});
  }

  /// PyTorch's default for dense and conv2d: weight and bias U(-bound, bound).
  void fill_uniform_parameters(std::mt19937_64& rng, double bound) {
    fill_uniform(weight_, rng, bound);
    if (has_bias_) fill_uniform(bias_, rng, bound);
  }

  tensor<T, Backend> weight_, weight_grad_, bias_, bias_grad_;

 private:
  bool has_weight_ = false, has_bias_ = false;
};

}  // namespace detail

/// Throws std::invalid_argument("opnorm::<layer>: <what>") unless ok; what
/// names the shapes or arguments at fault. The layers' name for
/// detail::require, which every option check in the library goes through.
inline void require_shape(bool ok, const char* layer, const std::string& what) { detail::require(ok, layer, what); }

}  // namespace opnorm
