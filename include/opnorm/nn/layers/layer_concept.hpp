#pragma once
// The layer contract of layer.hpp, checked at compile time.
//
// One detection trait per member (has_layer_jvp<L>, ...), is_layer_v<L>
// (true when L satisfies the whole contract, asserting nothing), and
// layer_contract<L>, whose instantiation static_asserts each requirement
// with a sentence naming the member and what it is for. sequential<Layers...>
// instantiates layer_contract for every layer before it uses any, so a layer
// that lacks jvp fails where the network is declared, with that sentence,
// instead of deep inside a template. (The same idea as Eigen's
// EIGEN_STATIC_ASSERT and ensmallen's static_checks.hpp.)
//
// Two declarations complete the contract for layers with trainable
// parameters:
//
//   static constexpr bool has_parameters = true;
//       The layer has trainable parameters (it pushes entries into
//       state_list::parameters). Layers that do not declare it are
//       parameter-free; sequential checks this at construction, because a
//       parameter the type does not announce is one data-dependent SNR's
//       Eq. 8 gradient would silently leave out.
//
//   void jvp_parameter_vjp(const tensor& x, const tensor& y, const cache& c,
//                          const tensor& dx, const tensor& g);
//       Accumulates d<g, J(x) dx>/d theta (x, and the point of the last
//       forward, held fixed) into the parameter gradients: the explicit
//       dependence of the layer's JVP on its parameters, which Eq. 8 needs.
//       A layer with parameters must provide it or opt out with
//
//   static constexpr bool supports_jvp_parameter_vjp = false;
//       The layer cannot differentiate its JVP with respect to its
//       parameters. A network containing it trains, attacks and runs every
//       power iteration as usual, and only sequential::jvp_parameter_vjp
//       (data-dependent SNR in its Jacobian form) refuses to compile.
//
// Optional members, used when present:
//
//   void collect_weight_matrices(std::vector<named_tensor<T, Backend>>& out,
//                                const std::string& prefix);
//       Appends the parameters that are weight matrices, under their
//       state() names (prefix + "weight"), with their gradients: what the
//       global spectral norm regularizer penalizes. A tensor of rank > 2 is
//       read as the matrix (dim 0, product of the other dims), as a conv
//       kernel (out, in, kh, kw) is (out, in * kh * kw). BatchNorm's scale
//       is a vector, and batch_norm provides no such member.
//
//   void forward_with_statistics_of(const tensor& x, tensor& y, cache& c,
//                                   cache& lender);
//       For layers that normalize with batch statistics (see sequential).
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "layer.hpp"

namespace opnorm {

/// tensor<L::scalar, L::backend_type>; a substitution failure where L lacks either.
template <class L>
using layer_tensor_t = tensor<typename L::scalar, typename L::backend_type>;

// Each trait is true when the member exists with the contract's signature
// (argument types as layer.hpp lists them; return types are not checked
// except where the caller uses the result).

template <class L, class = void>
struct has_layer_scalar : std::false_type {};
template <class L>
struct has_layer_scalar<L, std::void_t<typename L::scalar>> : std::is_floating_point<typename L::scalar> {};

template <class L, class = void>
struct has_layer_backend_type : std::false_type {};
template <class L>
struct has_layer_backend_type<L, std::void_t<typename L::backend_type>> : std::true_type {};

template <class L, class = void>
struct has_layer_cache : std::false_type {};
template <class L>
struct has_layer_cache<L, std::void_t<typename L::cache>>
    : std::is_default_constructible<typename L::cache> {};

template <class L, class = void>
struct has_layer_output_shape : std::false_type {};
template <class L>
struct has_layer_output_shape<L, std::void_t<decltype(std::declval<const L&>().output_shape(
                                     std::declval<const shape_t&>()))>>
    : std::is_convertible<decltype(std::declval<const L&>().output_shape(std::declval<const shape_t&>())),
                          shape_t> {};

template <class L, class = void>
struct has_layer_forward : std::false_type {};
template <class L>
struct has_layer_forward<L, std::void_t<decltype(std::declval<L&>().forward(
                                std::declval<const layer_tensor_t<L>&>(), std::declval<layer_tensor_t<L>&>(),
                                std::declval<typename L::cache&>(), std::declval<mode>()))>> : std::true_type {};

template <class L, class = void>
struct has_layer_vjp : std::false_type {};
template <class L>
struct has_layer_vjp<L, std::void_t<decltype(std::declval<L&>().vjp(
                            std::declval<const layer_tensor_t<L>&>(), std::declval<const layer_tensor_t<L>&>(),
                            std::declval<const typename L::cache&>(), std::declval<const layer_tensor_t<L>&>(),
                            std::declval<layer_tensor_t<L>*>(), std::declval<bool>()))>> : std::true_type {};

template <class L, class = void>
struct has_layer_jvp : std::false_type {};
template <class L>
struct has_layer_jvp<L, std::void_t<decltype(std::declval<const L&>().jvp(
                            std::declval<const layer_tensor_t<L>&>(), std::declval<const layer_tensor_t<L>&>(),
                            std::declval<const typename L::cache&>(), std::declval<const layer_tensor_t<L>&>(),
                            std::declval<layer_tensor_t<L>&>()))>> : std::true_type {};

template <class L, class = void>
struct has_layer_collect_state : std::false_type {};
template <class L>
struct has_layer_collect_state<L, std::void_t<decltype(std::declval<L&>().collect_state(
                                      std::declval<state_list<typename L::scalar, typename L::backend_type>&>(),
                                      std::declval<const std::string&>()))>> : std::true_type {};

template <class L, class = void>
struct has_layer_initialize : std::false_type {};
template <class L>
struct has_layer_initialize<L, std::void_t<decltype(std::declval<L&>().initialize(
                                   std::declval<std::mt19937_64&>()))>> : std::true_type {};

template <class L, class = void>
struct has_layer_jvp_parameter_vjp : std::false_type {};
template <class L>
struct has_layer_jvp_parameter_vjp<L, std::void_t<decltype(std::declval<L&>().jvp_parameter_vjp(
                                          std::declval<const layer_tensor_t<L>&>(),
                                          std::declval<const layer_tensor_t<L>&>(),
                                          std::declval<const typename L::cache&>(),
                                          std::declval<const layer_tensor_t<L>&>(),
                                          std::declval<const layer_tensor_t<L>&>()))>> : std::true_type {};

template <class L, class = void>
struct has_layer_weight_matrices : std::false_type {};
template <class L>
struct has_layer_weight_matrices<L, std::void_t<decltype(std::declval<L&>().collect_weight_matrices(
                                        std::declval<std::vector<named_tensor<typename L::scalar,
                                                                              typename L::backend_type>>&>(),
                                        std::declval<const std::string&>()))>> : std::true_type {};

template <class L, class = void>
struct has_layer_borrowed_statistics : std::false_type {};
template <class L>
struct has_layer_borrowed_statistics<L, std::void_t<decltype(std::declval<L&>().forward_with_statistics_of(
                                            std::declval<const layer_tensor_t<L>&>(),
                                            std::declval<layer_tensor_t<L>&>(), std::declval<typename L::cache&>(),
                                            std::declval<typename L::cache&>()))>> : std::true_type {};

/// L::has_parameters where L declares it, else false (a parameter-free layer).
template <class L, class = void>
struct layer_has_parameters : std::false_type {};
template <class L>
struct layer_has_parameters<L, std::void_t<decltype(L::has_parameters)>>
    : std::bool_constant<static_cast<bool>(L::has_parameters)> {};

/// False where L declares supports_jvp_parameter_vjp = false, else true.
template <class L, class = void>
struct layer_opts_out_of_jvp_parameter_vjp : std::false_type {};
template <class L>
struct layer_opts_out_of_jvp_parameter_vjp<L, std::void_t<decltype(L::supports_jvp_parameter_vjp)>>
    : std::bool_constant<!static_cast<bool>(L::supports_jvp_parameter_vjp)> {};

/// True when Eq. 8 (sequential::jvp_parameter_vjp) is exact through L: it
/// has no parameters, or it differentiates its JVP with respect to them.
template <class L>
inline constexpr bool layer_supports_jvp_parameter_vjp_v =
    !layer_has_parameters<L>::value || has_layer_jvp_parameter_vjp<L>::value;

/// The whole contract as one boolean, asserting nothing (for enable_if and
/// if constexpr); layer_contract<L> says which part fails.
template <class L>
inline constexpr bool is_layer_v =
    has_layer_scalar<L>::value && has_layer_backend_type<L>::value && has_layer_cache<L>::value &&
    has_layer_output_shape<L>::value && has_layer_forward<L>::value && has_layer_vjp<L>::value &&
    has_layer_jvp<L>::value && has_layer_collect_state<L>::value && has_layer_initialize<L>::value &&
    (!layer_has_parameters<L>::value || has_layer_jvp_parameter_vjp<L>::value ||
     layer_opts_out_of_jvp_parameter_vjp<L>::value) &&
    !(layer_opts_out_of_jvp_parameter_vjp<L>::value && has_layer_jvp_parameter_vjp<L>::value);

/// Instantiating layer_contract<L> checks L against the contract, one
/// static_assert per member; value is is_layer_v<L>. The member checks wait
/// for scalar, backend_type and cache, without which no signature can be
/// stated, so a layer missing those gets those messages alone.
template <class L>
struct layer_contract {
  static_assert(has_layer_scalar<L>::value,
                "a layer must define `using scalar = T;`, the floating-point element type of its tensors, which "
                "all layers of a network share");
  static_assert(has_layer_backend_type<L>::value,
                "a layer must define `using backend_type = Backend;`, the backend its tensors live on, which all "
                "layers of a network share");
  static_assert(has_layer_cache<L>::value,
                "a layer must define a default-constructible `struct cache`: what forward leaves for vjp and jvp, "
                "one per layer in every tape");

 private:
  static constexpr bool types = has_layer_scalar<L>::value && has_layer_backend_type<L>::value &&
                                has_layer_cache<L>::value;

 public:
  static_assert(!types || has_layer_output_shape<L>::value,
                "a layer must provide shape_t output_shape(const shape_t& in) const: the output shape for an "
                "input shape, batch included, which sequential::output_shape chains");
  static_assert(!types || has_layer_forward<L>::value,
                "a layer must provide forward(const tensor& x, tensor& y, cache& c, mode m): computes y = f(x), "
                "resizing y, and fills c for vjp and jvp");
  static_assert(!types || has_layer_vjp<L>::value,
                "a layer must provide vjp(x, y, const cache& c, gy, tensor* gx, bool parameter_gradients): "
                "writes J(x)^T gy into *gx unless gx is null and accumulates parameter gradients when asked, the "
                "backward pass of training, attacks and the power iteration");
  static_assert(!types || has_layer_jvp<L>::value,
                "a layer must provide jvp(x, y, const cache& c, dx, tensor& dy) const: the forward-mode product "
                "dy = J(x) dx that the power iteration's exact_jvp direction uses");
  static_assert(!types || has_layer_collect_state<L>::value,
                "a layer must provide collect_state(state_list<T, Backend>& out, const std::string& prefix): "
                "appends its parameters, buffers and counters under prefix + their PyTorch names (nothing for a "
                "stateless layer)");
  static_assert(!types || has_layer_initialize<L>::value,
                "a layer must provide initialize(std::mt19937_64& rng): re-draws its parameters from rng (an "
                "empty body for a layer without parameters)");
  static_assert(!types || !layer_has_parameters<L>::value || has_layer_jvp_parameter_vjp<L>::value ||
                    layer_opts_out_of_jvp_parameter_vjp<L>::value,
                "a layer with has_parameters = true must provide jvp_parameter_vjp(x, y, const cache& c, dx, g), "
                "accumulating d<g, J(x) dx>/dtheta into its parameter gradients for data-dependent SNR's Eq. 8, "
                "or opt out with `static constexpr bool supports_jvp_parameter_vjp = false;`");
  static_assert(!types || !(layer_opts_out_of_jvp_parameter_vjp<L>::value && has_layer_jvp_parameter_vjp<L>::value),
                "a layer that declares supports_jvp_parameter_vjp = false must not define jvp_parameter_vjp: the "
                "two declarations contradict each other");

  static constexpr bool value = is_layer_v<L>;
};

/// Checks L against the layer contract (the static_asserts of
/// layer_contract) and returns true; for a static_assert of one's own:
///   static_assert(opnorm::check_layer_contract<my_layer<double>>());
template <class L>
constexpr bool check_layer_contract() {
  return layer_contract<L>::value;
}

}  // namespace opnorm
