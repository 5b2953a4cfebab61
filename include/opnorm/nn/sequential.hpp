#pragma once
// sequential<Layers...>: a whole network as one flat type.
//
// The container owns its layers in a std::tuple and walks them with fold
// expressions; there is no nesting and no virtual dispatch. Activations and
// per-layer caches live in a separate tape, so several forward passes (clean
// and perturbed inputs, as data-dependent SNR needs) can be alive at once.
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/per_example.hpp"
#include "layers/layer.hpp"
#include "layers/layer_concept.hpp"

namespace opnorm {

template <class T, class Backend>
class batch_norm;
template <class T, class Backend>
class relu;

namespace detail {
/// True for batch_norm followed by relu: sequential's forward passes run
/// the pair in one pass over the activation, and its backward pass fuses
/// their VJPs where the batch_norm's is a per-channel scale.
template <class First, class Second>
struct batch_norm_then_relu : std::false_type {};
template <class T, class B>
struct batch_norm_then_relu<batch_norm<T, B>, relu<T, B>> : std::true_type {};

/// Whether layer L of Layers is a batch_norm with a relu right above it.
template <std::size_t L, class... Layers>
constexpr bool relu_follows_batch_norm() {
  if constexpr (L + 1 < sizeof...(Layers))
    return batch_norm_then_relu<std::tuple_element_t<L, std::tuple<Layers...>>,
                                std::tuple_element_t<L + 1, std::tuple<Layers...>>>::value;
  else
    return false;
}
}  // namespace detail

template <class... Layers>
class sequential {
  static_assert(sizeof...(Layers) > 0, "a sequential network needs at least one layer");
  // Checks every layer against the contract (layers/layer_concept.hpp)
  // before anything below names a layer's members, so a layer that breaks it
  // fails here with the sentence of the member it lacks.
  static_assert((layer_contract<Layers>::value && ...),
                "every layer of a sequential network must satisfy the layer contract (the messages above name "
                "what is missing)");
  using first_layer = std::tuple_element_t<0, std::tuple<Layers...>>;

 public:
  using scalar = typename first_layer::scalar;
  using backend_type = typename first_layer::backend_type;
  using tensor_type = tensor<scalar, backend_type>;
  static constexpr std::size_t depth = sizeof...(Layers);

  static_assert((std::is_same_v<typename Layers::scalar, scalar> && ...),
                "all layers of a sequential network must use the same scalar type");
  static_assert((std::is_same_v<typename Layers::backend_type, backend_type> && ...),
                "all layers of a sequential network must use the same backend");

  /// Activations a_0 = x, a_1, ..., a_L and what each layer cached, from one
  /// forward pass; reused across calls so steady-state passes do not allocate.
  struct tape {
    std::vector<tensor_type> activations = std::vector<tensor_type>(depth + 1);
    std::tuple<typename Layers::cache...> caches;
    std::vector<tensor_type> tangents;  // J_l ... J_1 dx per layer, for jvp_parameter_vjp
    mode forward_mode = mode::eval;
    // False after forward_output_only: the intermediate activations were
    // overwritten, so the tape describes no point to differentiate at.
    bool differentiable = true;
    std::size_t layers_run = depth;  // forward(..., until) ran layers [0, until) only
    const tensor_type& input() const { return activations.front(); }
    const tensor_type& output() const { return activations.back(); }
  };

  explicit sequential(Layers... layers) : layers_(std::move(layers)...) {
    initialize(0);
    first_trainable_ = find_first_trainable(std::index_sequence_for<Layers...>{});
  }

  /// True when jvp_parameter_vjp (data-dependent SNR's Eq. 8) is available:
  /// every layer with parameters differentiates its JVP with respect to them.
  static constexpr bool supports_jvp_parameter_vjp = (layer_supports_jvp_parameter_vjp_v<Layers> && ...);

  /// Re-draws every parameter from a generator seeded with seed (PyTorch's
  /// default schemes); the same seed gives the same weights on every backend.
  void initialize(std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::apply([&](auto&... l) { (l.initialize(rng), ...); }, layers_);
  }

  template <std::size_t I>
  auto& layer() {
    return std::get<I>(layers_);
  }
  template <std::size_t I>
  const auto& layer() const {
    return std::get<I>(layers_);
  }

  shape_t output_shape(shape_t in) const {
    std::apply([&](const auto&... l) { ((in = l.output_shape(in)), ...); }, layers_);
    return in;
  }

  /// Runs layers [0, until) on x, recording into t; returns a_until.
  const tensor_type& forward(const tensor_type& x, tape& t, mode m = mode::eval,
                             std::size_t until = depth) {
    t.forward_mode = m;
    t.differentiable = true;
    t.layers_run = until;
    t.activations[0].resize(x.shape());
    backend_ops<backend_type>::copy(x.data(), x.size(), t.activations[0].data());
    forward_layers(t, m, until, std::index_sequence_for<Layers...>{});
    return t.activations[until];
  }

  /// The network's output at x without keeping what a VJP or JVP would
  /// read: each layer's result overwrites the one before last, so the tape
  /// holds two intermediate activations instead of all of them (a power
  /// iteration's reference pass f(x) needs only f(x); on fmnist_cnn at batch
  /// 128 that is 26 MB instead of 143 MB). vjp and jvp refuse such a tape.
  const tensor_type& forward_output_only(const tensor_type& x, tape& t, mode m = mode::eval) {
    t.forward_mode = m;
    t.differentiable = false;
    forward_output_only_layers(x, t, m, nullptr, std::index_sequence_for<Layers...>{});
    return t.activations[depth];
  }

  /// forward_with_statistics_of keeping only the output, as forward_output_only.
  const tensor_type& forward_output_only_with_statistics_of(const tensor_type& x, tape& t, tape& lender) {
    if (lender.forward_mode != mode::train)
      throw std::invalid_argument("opnorm::sequential: statistics can only be borrowed from a train-mode pass");
    t.forward_mode = mode::train;
    t.differentiable = false;
    forward_output_only_layers(x, t, mode::train, &lender, std::index_sequence_for<Layers...>{});
    return t.activations[depth];
  }

  /// The train-mode map at another input with the batch statistics of an
  /// earlier train-mode pass: every layer that normalizes with batch
  /// statistics (it has forward_with_statistics_of) borrows them from
  /// `lender`, a tape recorded by forward(..., mode::train) on the clean
  /// batch; every other layer runs in mode::train. Nothing in the model
  /// changes (running statistics included), and example i's output depends
  /// on input i alone. Data-dependent SNR evaluates f(x + eps v) this way.
  ///
  /// The gradient is exact: backpropagating through this tape with
  /// parameter gradients hands the statistics' gradients to `lender`, whose
  /// own vjp must therefore run afterwards. `lender` must outlive this tape.
  const tensor_type& forward_with_statistics_of(const tensor_type& x, tape& t, tape& lender) {
    if (lender.forward_mode != mode::train)
      throw std::invalid_argument("opnorm::sequential: statistics can only be borrowed from a train-mode pass");
    t.forward_mode = mode::train;
    t.differentiable = true;
    t.layers_run = depth;
    t.activations[0].resize(x.shape());
    backend_ops<backend_type>::copy(x.data(), x.size(), t.activations[0].data());
    forward_layers_borrowing(t, lender, std::index_sequence_for<Layers...>{});
    return t.activations[depth];
  }

  /// Eval-mode logits without keeping a tape.
  tensor_type predict(const tensor_type& x) {
    tape t;
    forward(x, t, mode::eval);
    return std::move(t.activations.back());
  }

  /// Backpropagates gy = dL/da_L through the tape. Writes dL/dx into *gx when
  /// gx is not null and accumulates parameter gradients when asked.
  void vjp(tape& t, const tensor_type& gy, tensor_type* gx, bool parameter_gradients) {
    require_differentiable(t);
    vjp_layers(t, gy, gx, parameter_gradients, std::make_index_sequence<depth>{});
  }

  /// dy = J(x) dx for the map x -> a_until at the taped point.
  void jvp(tape& t, const tensor_type& dx, tensor_type& dy, std::size_t until = depth) {
    require_differentiable(t);
    jvp_layers(t, dx, dy, until, std::index_sequence_for<Layers...>{});
  }

  /// Accumulates d<g, J(x) dx>/d theta into the parameter gradients, with
  /// the taped point and its activation pattern held fixed: the gradient of a
  /// function of the JVP (data-dependent SNR's Jacobian form, Eq. 8). It
  /// pushes dx forward through the layers' JVPs, then pulls g back through
  /// their VJPs, letting each layer with parameters add its explicit term.
  void jvp_parameter_vjp(tape& t, const tensor_type& dx, const tensor_type& g) {
    // A layer skipped here would leave its parameters' share of the gradient
    // out, and the result would be a wrong gradient rather than an error.
    static_assert(supports_jvp_parameter_vjp,
                  "jvp_parameter_vjp (data-dependent SNR's Jacobian-form gradient, Eq. 8) needs every layer with "
                  "parameters to provide jvp_parameter_vjp(x, y, cache, dx, g); a layer of this network declares "
                  "supports_jvp_parameter_vjp = false");
    require_differentiable(t);
    t.tangents.resize(depth + 1);
    assign(dx, t.tangents[0]);
    jvp_layers_keep(t, std::index_sequence_for<Layers...>{});
    jvp_parameter_vjp_layers(t, g, std::make_index_sequence<depth>{});
  }

  /// Every tensor of the model's state under PyTorch nn.Sequential names.
  state_list<scalar, backend_type> state() {
    state_list<scalar, backend_type> s;
    collect(s, std::index_sequence_for<Layers...>{});
    return s;
  }

  /// The parameters that are weight matrices, as each layer's
  /// collect_weight_matrices hook names them (layers/layer_concept.hpp): the
  /// tensors the global spectral norm regularizer penalizes, under their
  /// state() names ("3.weight") and with their gradients, in layer order. A
  /// tensor of rank > 2 stands for the matrix (dim 0, the other dims
  /// together), as a conv kernel (out, in, kh, kw) is (out, in * kh * kw).
  std::vector<named_tensor<scalar, backend_type>> weight_matrices() {
    std::vector<named_tensor<scalar, backend_type>> out;
    collect_weights(out, std::index_sequence_for<Layers...>{});
    return out;
  }

  /// A copy of this network on backend B2: each layer L<T, B> becomes
  /// L<T, B2> with the same configuration, and every parameter (with its
  /// gradient), buffer and counter is copied through the host. The usual way
  /// to call it is opnorm::to<B2>(model) (transfer.hpp); inside a template,
  /// model.template to<B2>().
  template <class B2>
  sequential<typename rebind_backend<Layers, B2>::type...> to() const {
    using result_type = sequential<typename rebind_backend<Layers, B2>::type...>;
    result_type result = std::apply(
        [](const Layers&... l) { return result_type(typename rebind_backend<Layers, B2>::type(l)...); }, layers_);
    // The constructor of sequential re-initializes every parameter (and
    // resets BatchNorm), overwriting what the layers' converting
    // constructors copied, so the state is copied again, by name. state() is
    // not const only because it hands out mutable pointers; nothing is
    // written through this side's.
    copy_state(const_cast<sequential&>(*this).state(), result.state());
    return result;
  }

  void zero_grad() {
    for (auto& p : state().parameters) p.grad->set_zero();
  }

 private:
  // A batch_norm with a relu above it runs both in one pass (forward_then_relu),
  // writing both activations; the relu's own step is then skipped.
  template <std::size_t... I>
  void forward_layers(tape& t, mode m, std::size_t until, std::index_sequence<I...>) {
    bool fused_above = false;  // this layer already ran, fused into the one below
    auto step = [&](auto index) {
      constexpr std::size_t L = decltype(index)::value;
      if (L >= until || std::exchange(fused_above, false)) return;
      auto& layer = std::get<L>(layers_);
      if constexpr (detail::relu_follows_batch_norm<L, Layers...>()) {
        if (L + 1 < until) {
          layer.forward_then_relu(t.activations[L], &t.activations[L + 1], t.activations[L + 2],
                                  std::get<L>(t.caches), m);
          fused_above = true;
          return;
        }
      }
      layer.forward(t.activations[L], t.activations[L + 1], std::get<L>(t.caches), m);
    };
    (step(std::integral_constant<std::size_t, I>{}), ...);
  }

  // Each layer reads the input (the first layer) or the buffer the layer
  // before it wrote, and writes the other of activations[1] and [2], or the
  // output slot (the last layer). With a lender, normalizing layers borrow
  // its statistics, as in forward_layers_borrowing. A batch_norm with a relu
  // above it is one step, which writes only the relu's result.
  template <std::size_t... I>
  void forward_output_only_layers(const tensor_type& x, tape& t, mode m, tape* lender, std::index_sequence<I...>) {
    bool fused_above = false;
    const tensor_type* in = &x;
    std::size_t next = 1;  // the intermediate buffer the next layer writes
    auto step = [&](auto index) {
      constexpr std::size_t L = decltype(index)::value;
      if (std::exchange(fused_above, false)) return;
      auto& layer = std::get<L>(layers_);
      constexpr bool fused = detail::relu_follows_batch_norm<L, Layers...>();
      constexpr std::size_t last_written = fused ? L + 1 : L;  // the layer whose result this step writes
      tensor_type& out = last_written + 1 == depth ? t.activations[depth] : t.activations[next];
      if constexpr (fused) {
        if (lender)
          layer.forward_with_statistics_of_then_relu(*in, nullptr, out, std::get<L>(t.caches),
                                                     std::get<L>(lender->caches));
        else
          layer.forward_then_relu(*in, nullptr, out, std::get<L>(t.caches), m);
        fused_above = true;
      } else if constexpr (has_layer_borrowed_statistics<std::decay_t<decltype(layer)>>::value) {
        if (lender)
          layer.forward_with_statistics_of(*in, out, std::get<L>(t.caches), std::get<L>(lender->caches));
        else
          layer.forward(*in, out, std::get<L>(t.caches), m);
      } else {
        layer.forward(*in, out, std::get<L>(t.caches), m);
      }
      in = &out;
      next = 3 - next;
    };
    (step(std::integral_constant<std::size_t, I>{}), ...);
  }

  static void require_differentiable(const tape& t) {
    if (!t.differentiable)
      throw std::logic_error(
          "opnorm::sequential: this tape was recorded by forward_output_only, which keeps no activations to "
          "differentiate at; record it with forward");
  }

  template <std::size_t... I>
  void forward_layers_borrowing(tape& t, tape& lender, std::index_sequence<I...>) {
    bool fused_above = false;
    auto step = [&](auto index) {
      constexpr std::size_t L = decltype(index)::value;
      if (std::exchange(fused_above, false)) return;
      auto& layer = std::get<L>(layers_);
      if constexpr (detail::relu_follows_batch_norm<L, Layers...>()) {
        layer.forward_with_statistics_of_then_relu(t.activations[L], &t.activations[L + 1], t.activations[L + 2],
                                                   std::get<L>(t.caches), std::get<L>(lender.caches));
        fused_above = true;
        return;
      }
      if constexpr (has_layer_borrowed_statistics<std::decay_t<decltype(layer)>>::value)
        layer.forward_with_statistics_of(t.activations[L], t.activations[L + 1], std::get<L>(t.caches),
                                         std::get<L>(lender.caches));
      else
        layer.forward(t.activations[L], t.activations[L + 1], std::get<L>(t.caches), mode::train);
    };
    (step(std::integral_constant<std::size_t, I>{}), ...);
  }

  // Walks the layers backwards: I runs over 0..L-1 and the layer visited is L-1-I.
  template <std::size_t... I>
  void vjp_layers(tape& t, const tensor_type& gy, tensor_type* gx, bool pg, std::index_sequence<I...>) {
    const tensor_type* incoming = &gy;
    int slot = 0;
    bool fused_below = false;  // the layer below this one already ran, fused into it
    auto step = [&](auto index) {
      constexpr std::size_t L = depth - 1 - decltype(index)::value;
      if (fused_below) {
        fused_below = false;
        return;
      }
      // Below the first layer with parameters, nothing needs a gradient
      // unless the caller asked for dL/dx.
      if (!gx && L < first_trainable_) return;
      const bool input_gradient_needed = gx || L > first_trainable_;
      // A relu over a batch_norm whose VJP is a per-channel scale (an
      // attack's or a power iteration's backward pass): both VJPs in one
      // pass over the activation (batch_norm::vjp_through_relu).
      if constexpr (L > 0) {
        using below = std::tuple_element_t<L - 1, std::tuple<Layers...>>;
        using here = std::tuple_element_t<L, std::tuple<Layers...>>;
        if constexpr (detail::batch_norm_then_relu<below, here>::value) {
          const auto& norm = std::get<L - 1>(layers_);
          const auto& norm_cache = std::get<L - 1>(t.caches);
          if ((gx || L - 1 > first_trainable_) && norm.vjp_is_channel_scale(norm_cache, pg)) {
            tensor_type* out = L - 1 == 0 ? gx : &scratch_[static_cast<std::size_t>(slot)];
            norm.vjp_through_relu(t.activations[L], norm_cache, *incoming, *out);
            incoming = out;
            slot ^= 1;
            fused_below = true;
            return;
          }
        }
      }
      tensor_type* out = !input_gradient_needed ? nullptr : L == 0 ? gx : &scratch_[static_cast<std::size_t>(slot)];
      std::get<L>(layers_).vjp(t.activations[L], t.activations[L + 1], std::get<L>(t.caches), *incoming,
                               out, pg);
      incoming = out;
      slot ^= 1;
    };
    (step(std::integral_constant<std::size_t, I>{}), ...);
  }

  template <std::size_t... I>
  void jvp_layers(tape& t, const tensor_type& dx, tensor_type& dy, std::size_t until,
                  std::index_sequence<I...>) {
    if (until == 0) {
      dy.resize(dx.shape());
      backend_ops<backend_type>::copy(dx.data(), dx.size(), dy.data());
      return;
    }
    const tensor_type* incoming = &dx;
    int slot = 0;
    auto step = [&](auto index) {
      constexpr std::size_t L = decltype(index)::value;
      if (L >= until) return;
      tensor_type* out = L + 1 == until ? &dy : &scratch_[static_cast<std::size_t>(slot)];
      std::get<L>(layers_).jvp(t.activations[L], t.activations[L + 1], std::get<L>(t.caches), *incoming, *out);
      incoming = out;
      slot ^= 1;
    };
    (step(std::integral_constant<std::size_t, I>{}), ...);
  }

  template <std::size_t... I>
  void jvp_layers_keep(tape& t, std::index_sequence<I...>) {
    (std::get<I>(layers_).jvp(t.activations[I], t.activations[I + 1], std::get<I>(t.caches), t.tangents[I],
                              t.tangents[I + 1]),
     ...);
  }

  // Walks the layers backwards like vjp_layers; layers without parameters
  // only pass the gradient on (the static_assert in jvp_parameter_vjp and the
  // check in the constructor make sure those are the only ones without
  // jvp_parameter_vjp).
  template <std::size_t... I>
  void jvp_parameter_vjp_layers(tape& t, const tensor_type& g, std::index_sequence<I...>) {
    const tensor_type* incoming = &g;
    int slot = 0;
    auto step = [&](auto index) {
      constexpr std::size_t L = depth - 1 - decltype(index)::value;
      auto& layer = std::get<L>(layers_);
      using layer_type = std::decay_t<decltype(layer)>;
      if constexpr (has_layer_jvp_parameter_vjp<layer_type>::value)
        layer.jvp_parameter_vjp(t.activations[L], t.activations[L + 1], std::get<L>(t.caches), t.tangents[L], *incoming);
      if (L == 0) return;
      tensor_type* out = &scratch_[static_cast<std::size_t>(slot)];
      layer.vjp(t.activations[L], t.activations[L + 1], std::get<L>(t.caches), *incoming, out, false);
      incoming = out;
      slot ^= 1;
    };
    (step(std::integral_constant<std::size_t, I>{}), ...);
  }

  template <std::size_t... I>
  void collect(state_list<scalar, backend_type>& s, std::index_sequence<I...>) {
    (std::get<I>(layers_).collect_state(s, std::to_string(I) + "."), ...);
  }

  template <std::size_t... I>
  void collect_weights(std::vector<named_tensor<scalar, backend_type>>& out, std::index_sequence<I...>) {
    auto visit = [&](auto index) {
      constexpr std::size_t L = decltype(index)::value;
      using layer_type = std::tuple_element_t<L, std::tuple<Layers...>>;
      if constexpr (has_layer_weight_matrices<layer_type>::value)
        std::get<L>(layers_).collect_weight_matrices(out, std::to_string(L) + ".");
    };
    (visit(std::integral_constant<std::size_t, I>{}), ...);
  }

  // Also enforces has_parameters: a layer whose collect_state reports
  // trainable parameters must declare them, since the compile-time checks of
  // Eq. 8 (jvp_parameter_vjp) can only see what the type declares.
  template <std::size_t... I>
  std::size_t find_first_trainable(std::index_sequence<I...>) {
    std::size_t first = depth;
    auto visit = [&](auto index) {
      constexpr std::size_t L = decltype(index)::value;
      using layer_type = std::tuple_element_t<L, std::tuple<Layers...>>;
      state_list<scalar, backend_type> s;
      std::get<L>(layers_).collect_state(s, "");
      if (!s.parameters.empty() && !layer_has_parameters<layer_type>::value)
        throw std::logic_error("opnorm::sequential: layer " + std::to_string(L) + " reports trainable parameter '" +
                               s.parameters.front().name +
                               "' from collect_state but its type does not declare `static constexpr bool "
                               "has_parameters = true;` (layers/layer_concept.hpp), without which data-dependent "
                               "SNR's Eq. 8 gradient (jvp_parameter_vjp) would silently leave it out");
      if (!s.parameters.empty() && first == depth) first = L;
    };
    (visit(std::integral_constant<std::size_t, I>{}), ...);
    return first;
  }

  std::tuple<Layers...> layers_;
  std::size_t first_trainable_ = 0;  // index of the first layer with trainable parameters
  // The gradients and tangents between layers during vjp, jvp and
  // jvp_parameter_vjp, alternating between two tensors. They belong to the
  // network, not to a tape: passes never overlap, and a method that keeps
  // several tapes alive (data-dependent SNR keeps four) would otherwise hold
  // two activation-sized buffers in each.
  std::vector<tensor_type> scratch_ = std::vector<tensor_type>(2);
};

/// A model seen as its train-mode map with the batch statistics of one
/// recorded train-mode pass held fixed: forward(x, t, m) is
/// model.forward_with_statistics_of(x, t, lender) whatever m says, and vjp
/// and jvp are the model's. The power-iteration kernel runs on it as it is,
/// so data-dependent SNR's v maximizes the very residual its penalty
/// measures (methods/data_dependent_snr.hpp).
template <class Model>
class with_batch_statistics_of {
 public:
  using scalar = typename Model::scalar;
  using backend_type = typename Model::backend_type;
  using tensor_type = typename Model::tensor_type;
  using tape = typename Model::tape;

  /// lender: a tape holding model.forward(x, lender, mode::train).
  with_batch_statistics_of(Model& model, tape& lender) : model_(model), lender_(lender) {}

  const tensor_type& forward(const tensor_type& x, tape& t, mode = mode::train) {
    return model_.forward_with_statistics_of(x, t, lender_);
  }
  /// At the lender's own input this map is exactly the pass the lender
  /// recorded (the same layers, the same statistics, the same arithmetic),
  /// so its output is returned without a second pass: data-dependent SNR's
  /// reference f(x) costs a comparison instead of a forward pass. Anywhere
  /// else, a forward pass that keeps only the output.
  const tensor_type& forward_output_only(const tensor_type& x, tape& t, mode = mode::train) {
    const bool complete_pass = lender_.differentiable && lender_.layers_run == Model::depth;
    if (complete_pass && equal_values(x, lender_.input())) return lender_.output();
    return model_.forward_output_only_with_statistics_of(x, t, lender_);
  }
  void vjp(tape& t, const tensor_type& gy, tensor_type* gx, bool parameter_gradients) {
    model_.vjp(t, gy, gx, parameter_gradients);
  }
  void jvp(tape& t, const tensor_type& dx, tensor_type& dy) { model_.jvp(t, dx, dy); }

 private:
  Model& model_;
  tape& lender_;
};

}  // namespace opnorm
