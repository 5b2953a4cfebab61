#include "gradient_check.hpp"

#include <algorithm>
#include <cstring>

#include <opnorm/nn/networks.hpp>

using namespace opnorm;
using namespace opnorm::testing;

namespace {

// Images in [0, 1], the unit every model input uses.
template <class B>
tensor<double, B> random_images(const shape_t& shape, std::mt19937_64& rng) {
  return random_tensor<B>(shape, rng, 0.0, 1.0);
}

// |<J v, u> - <v, J^T u>| / max(|<J v, u>|, |<v, J^T u>|) for the network
// at x, with J from sequential::jvp and J^T from sequential::vjp.
template <class Net>
double adjointness_error(Net& net, const typename Net::tensor_type& x, mode m, std::mt19937_64& rng) {
  using B = typename Net::backend_type;
  using tensor_t = typename Net::tensor_type;
  typename Net::tape tape;
  const tensor_t& y = net.forward(x, tape, m);
  const tensor_t v = random_tensor<B>(x.shape(), rng), u = random_tensor<B>(y.shape(), rng);
  tensor_t jv, jtu;
  net.jvp(tape, v, jv);
  net.vjp(tape, u, &jtu, false);
  const double forward_side = dot(jv, u), backward_side = dot(v, jtu);
  return std::abs(forward_side - backward_side) / std::max(std::abs(forward_side), std::abs(backward_side));
}

template <class B>
tensor<float, B> as_float(const tensor<double, B>& d) {
  const auto v = d.to_vector();
  return tensor<float, B>::from_vector(d.shape(), std::vector<float>(v.begin(), v.end()));
}

// Entries whose bits differ between a and b (so -0 is not 0), or -1 when
// their shapes do.
template <class T, class B>
index_t differing_entries(const tensor<T, B>& a, const tensor<T, B>& b) {
  if (a.shape() != b.shape()) return -1;
  const auto u = a.to_vector(), v = b.to_vector();
  index_t differing = 0;
  for (std::size_t i = 0; i < u.size(); ++i) differing += std::memcmp(&u[i], &v[i], sizeof(T)) != 0;
  return differing;
}

}  // namespace

TEST_CASE_TEMPLATE("fmnist_cnn maps (N, 1, 28, 28) images to (N, 10) logits", B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  auto net = make_fmnist_cnn<double, B>(1);
  CHECK(net.output_shape({128, 1, 28, 28}) == shape_t{128, 10});
  std::mt19937_64 rng(1);
  const tensor_t logits = net.predict(random_images<B>({3, 1, 28, 28}, rng));
  CHECK(logits.shape() == shape_t{3, 10});
  for (index_t i = 0; i < logits.size(); ++i) CHECK(std::isfinite(logits[i]));
  CHECK_THROWS_WITH_AS(net.output_shape({2, 3, 28, 28}),
                       doctest::Contains("conv2d: expects input (batch, 1, height, width)"),
                       std::invalid_argument);
}

TEST_CASE_TEMPLATE("fmnist_cnn state has PyTorch nn.Sequential names and shapes", B, OPNORM_TEST_BACKENDS) {
  auto net = make_fmnist_cnn<float, B>(0);
  auto s = net.state();
  std::vector<std::string> names;
  for (auto& p : s.parameters) names.push_back(p.name);
  CHECK(names == std::vector<std::string>{"1.weight", "1.bias", "2.weight", "2.bias", "4.weight", "4.bias",
                                          "5.weight", "5.bias", "8.weight", "8.bias", "9.weight", "9.bias",
                                          "11.weight", "11.bias", "12.weight", "12.bias", "16.weight",
                                          "16.bias", "18.weight", "18.bias"});
  CHECK(s.parameters[0].value->shape() == shape_t{32, 1, 3, 3});
  CHECK(s.parameters[12].value->shape() == shape_t{64, 64, 3, 3});
  CHECK(s.parameters[16].value->shape() == shape_t{256, 3136});
  CHECK(s.parameters[18].value->shape() == shape_t{10, 256});
  REQUIRE(s.buffers.size() == 2 + 4 * 2);
  CHECK(s.buffers[0].name == "0.mean");
  CHECK((*s.buffers[0].value)[0] == 0.2860f);
  CHECK(s.buffers[1].name == "0.std");
  CHECK(s.buffers[2].name == "2.running_mean");
  REQUIRE(s.counters.size() == 4);
  CHECK(s.counters[3].name == "12.num_batches_tracked");
  index_t count = 0;
  for (auto& p : s.parameters) count += p.value->size();
  // 320 + 64 + 9248 + 64 + 18496 + 128 + 36928 + 128 + 803072 + 2570
  CHECK(count == 871018);
}

TEST_CASE_TEMPLATE("make_fmnist_cnn: the seed decides the weights", B, OPNORM_TEST_BACKENDS) {
  auto a = make_fmnist_cnn<float, B>(3), b = make_fmnist_cnn<float, B>(3), c = make_fmnist_cnn<float, B>(4);
  CHECK(a.template layer<1>().weight().to_vector() == b.template layer<1>().weight().to_vector());
  CHECK(a.template layer<18>().bias().to_vector() == b.template layer<18>().bias().to_vector());
  CHECK(a.template layer<1>().weight().to_vector() != c.template layer<1>().weight().to_vector());
}

TEST_CASE_TEMPLATE("fmnist_cnn in eval mode: <J v, u> = <v, J^T u>", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(2);
  auto net = make_fmnist_cnn<double, B>(2);
  // Move the running statistics away from their initial values.
  typename fmnist_cnn<double, B>::tape tape;
  net.forward(random_images<B>({4, 1, 28, 28}, rng), tape, mode::train);
  CHECK(adjointness_error(net, random_images<B>({2, 1, 28, 28}, rng), mode::eval, rng) < 1e-12);
}

namespace {
// dL/dx by calling every layer's own vjp, from the top: what sequential's
// backward pass computes when it fuses nothing.
template <class Net, std::size_t... I>
void layer_by_layer_vjp(Net& net, typename Net::tape& t, const typename Net::tensor_type& gy,
                        typename Net::tensor_type& gx, std::index_sequence<I...>) {
  typename Net::tensor_type incoming = gy, out;
  auto step = [&](auto index) {
    constexpr std::size_t L = Net::depth - 1 - decltype(index)::value;
    net.template layer<L>().vjp(t.activations[L], t.activations[L + 1], std::get<L>(t.caches), incoming, &out,
                                false);
    incoming = out;
  };
  (step(std::integral_constant<std::size_t, I>{}), ...);
  gx = incoming;
}
}  // namespace

TEST_CASE_TEMPLATE("fmnist_cnn: the backward pass that fuses batch_norm and relu gives the layers' own VJPs bit for "
                   "bit, in eval mode and with borrowed statistics",
                   B, OPNORM_TEST_BACKENDS) {
  using net_t = fmnist_cnn<float, B>;
  std::mt19937_64 rng(6);
  auto net = make_fmnist_cnn<float, B>(6);
  typename net_t::tape lender, tape;
  const auto x = as_float(random_images<B>({4, 1, 28, 28}, rng));
  const auto gy = as_float(random_tensor<B>({4, 10}, rng));
  net.forward(x, lender, mode::train);  // running statistics away from their start, and a lender
  for (const bool borrowed : {false, true}) {
    CAPTURE(borrowed);
    if (borrowed)
      net.forward_with_statistics_of(as_float(random_images<B>({4, 1, 28, 28}, rng)), tape, lender);
    else
      net.forward(x, tape, mode::eval);
    typename net_t::tensor_type fused, separate;
    net.vjp(tape, gy, &fused, false);
    layer_by_layer_vjp(net, tape, gy, separate, std::make_index_sequence<net_t::depth>{});
    CHECK(differing_entries(fused, separate) == 0);
    const auto f = fused.to_vector();
    CHECK(std::count(f.begin(), f.end(), 0.0f) < static_cast<long>(f.size()));
  }
}

namespace {
// Every activation of a forward pass, by calling every layer's own forward
// (forward_with_statistics_of where a lender is given): what sequential's
// forward passes compute when they fuse nothing.
template <class Net, std::size_t... I>
void layer_by_layer_forward(Net& net, const typename Net::tensor_type& x, mode m, typename Net::tape* lender,
                            typename Net::tape& t, std::index_sequence<I...>) {
  t.activations[0] = x;
  auto step = [&](auto index) {
    constexpr std::size_t L = decltype(index)::value;
    auto& layer = net.template layer<L>();
    if constexpr (has_layer_borrowed_statistics<std::decay_t<decltype(layer)>>::value) {
      if (lender) {
        layer.forward_with_statistics_of(t.activations[L], t.activations[L + 1], std::get<L>(t.caches),
                                         std::get<L>(lender->caches));
        return;
      }
    }
    layer.forward(t.activations[L], t.activations[L + 1], std::get<L>(t.caches), lender ? mode::train : m);
  };
  (step(std::integral_constant<std::size_t, I>{}), ...);
}

}  // namespace

TEST_CASE_TEMPLATE("fmnist_cnn: forward passes that fuse batch_norm and relu give the layers' own forwards bit for "
                   "bit: every activation, the running statistics, borrowed statistics and output-only passes",
                   B, OPNORM_TEST_BACKENDS) {
  using net_t = fmnist_cnn<float, B>;
  constexpr auto layers = std::make_index_sequence<net_t::depth>{};
  std::mt19937_64 rng(7);
  auto net = make_fmnist_cnn<float, B>(7), reference_net = make_fmnist_cnn<float, B>(7);
  const auto x = as_float(random_images<B>({4, 1, 28, 28}, rng));
  const auto x2 = as_float(random_images<B>({4, 1, 28, 28}, rng));
  typename net_t::tape fused, separate, lender, lean;
  // Train mode first: both nets update their running statistics, which the
  // eval-mode pass then uses.
  for (const mode m : {mode::train, mode::eval}) {
    CAPTURE(static_cast<int>(m));
    net.forward(x, fused, m);
    layer_by_layer_forward(reference_net, x, m, nullptr, separate, layers);
    for (std::size_t l = 0; l <= net_t::depth; ++l) {
      CAPTURE(l);
      CHECK(differing_entries(fused.activations[l], separate.activations[l]) == 0);
    }
  }
  const auto state = net.state(), reference_state = reference_net.state();
  for (std::size_t b = 0; b < state.buffers.size(); ++b)
    CHECK(differing_entries(*state.buffers[b].value, *reference_state.buffers[b].value) == 0);
  // The relus passed some values and stopped others.
  const auto relu_output = fused.activations[4].to_vector();
  CHECK(std::count(relu_output.begin(), relu_output.end(), 0.0f) > 0);
  CHECK(std::count(relu_output.begin(), relu_output.end(), 0.0f) < static_cast<long>(relu_output.size()));

  CHECK(differing_entries(net.forward_output_only(x, lean, mode::eval), separate.output()) == 0);

  // Borrowed statistics (data-dependent SNR's passes at x + eps v); the
  // lender's pass moves only net's running statistics, which these passes
  // do not read.
  net.forward(x, lender, mode::train);
  net.forward_with_statistics_of(x2, fused, lender);
  layer_by_layer_forward(reference_net, x2, mode::train, &lender, separate, layers);
  for (std::size_t l = 0; l <= net_t::depth; ++l) {
    CAPTURE(l);
    CHECK(differing_entries(fused.activations[l], separate.activations[l]) == 0);
  }
  CHECK(differing_entries(net.forward_output_only_with_statistics_of(x2, lean, lender), separate.output()) == 0);
}

TEST_CASE_TEMPLATE("fmnist_cnn: forward_output_only gives forward's output bit for bit, and its tape is not "
                   "differentiated",
                   B, OPNORM_TEST_BACKENDS) {
  using net_t = fmnist_cnn<double, B>;
  std::mt19937_64 rng(4);
  auto net = make_fmnist_cnn<double, B>(4);
  const auto x = random_images<B>({3, 1, 28, 28}, rng), x2 = random_images<B>({3, 1, 28, 28}, rng);
  typename net_t::tape full, lean, lender;
  const auto expected = net.forward(x, full, mode::eval);
  const auto& output = net.forward_output_only(x, lean, mode::eval);
  REQUIRE(output.shape() == expected.shape());
  for (index_t i = 0; i < output.size(); ++i) CHECK(output[i] == expected[i]);
  // Only two intermediate activations were written.
  for (std::size_t l = 3; l < net_t::depth; ++l) CHECK(lean.activations[l].shape().empty());

  // The borrowing pass (data-dependent SNR's power iteration at x).
  net.forward(x, lender, mode::train);
  const auto borrowed = net.forward_with_statistics_of(x2, full, lender);
  const auto& borrowed_lean = net.forward_output_only_with_statistics_of(x2, lean, lender);
  for (index_t i = 0; i < borrowed.size(); ++i) CHECK(borrowed_lean[i] == borrowed[i]);

  typename net_t::tensor_type g;
  const auto gy = random_tensor<B>(output.shape(), rng);
  CHECK_THROWS_AS(net.vjp(lean, gy, &g, false), std::logic_error);
  CHECK_THROWS_AS(net.jvp(lean, x, g), std::logic_error);
  // A full forward on the same tape makes it differentiable again.
  net.forward(x, lean, mode::eval);
  CHECK_NOTHROW(net.vjp(lean, gy, &g, false));
}

TEST_CASE_TEMPLATE("with_batch_statistics_of: at the lender's own input forward_output_only is the lender's output "
                   "bit for bit, elsewhere a pass with the lender's statistics",
                   B, OPNORM_TEST_BACKENDS) {
  using net_t = fmnist_cnn<double, B>;
  std::mt19937_64 rng(5);
  auto net = make_fmnist_cnn<double, B>(5);
  const auto x = random_images<B>({4, 1, 28, 28}, rng), x2 = random_images<B>({4, 1, 28, 28}, rng);
  typename net_t::tape lender, lean, reference;
  const auto clean = net.forward(x, lender, mode::train);
  with_batch_statistics_of<net_t> view(net, lender);

  // A fresh copy of x, not the lender's own buffer: equal values are what count.
  const typename net_t::tensor_type x_copy = x;
  const auto at_input = view.forward_output_only(x_copy, lean);
  const auto computed = net.forward_output_only_with_statistics_of(x, reference, lender);
  REQUIRE(at_input.shape() == clean.shape());
  for (index_t i = 0; i < clean.size(); ++i) {
    CHECK(at_input[i] == clean[i]);
    CHECK(computed[i] == clean[i]);  // the shortcut changes no bit
  }

  const auto elsewhere = view.forward_output_only(x2, lean);
  const auto expected = net.forward_output_only_with_statistics_of(x2, reference, lender);
  bool differs_from_clean = false;
  for (index_t i = 0; i < expected.size(); ++i) {
    CHECK(elsewhere[i] == expected[i]);
    differs_from_clean = differs_from_clean || elsewhere[i] != clean[i];
  }
  CHECK(differs_from_clean);

  // One changed pixel takes the full pass, and so does a lender that did not
  // run every layer: its output is not f(x), and the pass refuses the
  // statistics it lacks.
  auto nudged = x;
  nudged[7] += 0.25;
  const auto at_nudged = view.forward_output_only(nudged, lean);
  const auto nudged_expected = net.forward_output_only_with_statistics_of(nudged, reference, lender);
  for (index_t i = 0; i < nudged_expected.size(); ++i) CHECK(at_nudged[i] == nudged_expected[i]);
  typename net_t::tape partial;
  net.forward(x, partial, mode::train, 4);
  with_batch_statistics_of<net_t> partial_view(net, partial);
  CHECK_THROWS_AS(partial_view.forward_output_only(x, lean), std::invalid_argument);
}

TEST_CASE_TEMPLATE("fmnist_cnn in train mode (batch statistics): <J v, u> = <v, J^T u>", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(3);
  auto net = make_fmnist_cnn<double, B>(3);
  CHECK(adjointness_error(net, random_images<B>({3, 1, 28, 28}, rng), mode::train, rng) < 1e-12);
}

// ||J v - (f(x + h v) - f(x - h v)) / 2h|| / ||J v|| for the network at x.
template <class Net>
double jvp_finite_difference_error(Net& net, const typename Net::tensor_type& x, mode m, std::mt19937_64& rng) {
  using B = typename Net::backend_type;
  using tensor_t = typename Net::tensor_type;
  const tensor_t v = random_tensor<B>(x.shape(), rng);
  typename Net::tape tape;
  net.forward(x, tape, m);
  tensor_t jv;
  net.jvp(tape, v, jv);
  const double h = 1e-6;
  tensor_t xp = x, xm = x;
  for (index_t i = 0; i < x.size(); ++i) {
    xp[i] += h * v[i];
    xm[i] -= h * v[i];
  }
  typename Net::tape tp, tm;
  const tensor_t& yp = net.forward(xp, tp, m);
  const tensor_t& ym = net.forward(xm, tm, m);
  tensor_t fd(yp.shape());
  for (index_t i = 0; i < fd.size(); ++i) fd[i] = (yp[i] - ym[i]) / (2 * h);
  return relative_error(jv, fd);
}

TEST_CASE_TEMPLATE("fmnist_cnn in eval mode: the JVP matches central finite differences", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(4);
  auto net = make_fmnist_cnn<double, B>(4);
  typename fmnist_cnn<double, B>::tape tape;
  net.forward(random_images<B>({4, 1, 28, 28}, rng), tape, mode::train);
  // The network is piecewise linear in eval mode, so central differences
  // are exact up to rounding while no ReLU or max-pool choice flips.
  CHECK(jvp_finite_difference_error(net, random_images<B>({2, 1, 28, 28}, rng), mode::eval, rng) < 1e-6);
}

TEST_CASE_TEMPLATE("fmnist_cnn in train mode: the JVP (through batch statistics) matches finite differences",
                   B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(5);
  auto net = make_fmnist_cnn<double, B>(5);
  CHECK(jvp_finite_difference_error(net, random_images<B>({3, 1, 28, 28}, rng), mode::train, rng) < 1e-6);
}

TEST_CASE_TEMPLATE("fmnist_cnn: eval-mode passes leave the model's state untouched", B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  std::mt19937_64 rng(6);
  auto net = make_fmnist_cnn<double, B>(6);
  typename fmnist_cnn<double, B>::tape tape;
  net.forward(random_images<B>({4, 1, 28, 28}, rng), tape, mode::train);
  const std::vector<double> running_var = net.template layer<9>().running_var().to_vector();
  const auto tracked = net.template layer<9>().num_batches_tracked();
  const tensor_t x = random_images<B>({2, 1, 28, 28}, rng);
  net.forward(x, tape, mode::eval);
  tensor_t gx;
  net.vjp(tape, random_tensor<B>({2, 10}, rng), &gx, false);
  CHECK(net.template layer<9>().running_var().to_vector() == running_var);
  CHECK(net.template layer<9>().num_batches_tracked() == tracked);
}

TEST_CASE_TEMPLATE("cnn7 maps (N, 3, 32, 32) images to (N, 10) logits", B, OPNORM_TEST_BACKENDS) {
  auto net = make_cnn7<float, B>(0);
  CHECK(net.output_shape({128, 3, 32, 32}) == shape_t{128, 10});
  CHECK(net.template layer<24>().output_shape({2, 1024, 2, 2}) == shape_t{2, 1024, 2, 2});
  auto s = net.state();
  // Seven convolutions with weight and bias, BatchNorm without affine
  // parameters, one dense layer.
  REQUIRE(s.parameters.size() == 7 * 2 + 2);
  CHECK(s.parameters[0].name == "1.weight");
  CHECK(s.parameters[12].name == "22.weight");
  CHECK(s.parameters[12].value->shape() == shape_t{1024, 512, 3, 3});
  CHECK(s.parameters[14].name == "27.weight");
  CHECK(s.parameters[14].value->shape() == shape_t{10, 1024});
  CHECK(s.buffers[0].value->to_vector() == std::vector<float>{0.4914f, 0.4822f, 0.4465f});

  std::mt19937_64 rng(7);
  tensor<float, B> x({2, 3, 32, 32});
  std::uniform_real_distribution<float> pixel(0.0f, 1.0f);
  for (index_t i = 0; i < x.size(); ++i) x[i] = pixel(rng);
  typename cnn7<float, B>::tape tape;
  const tensor<float, B>& logits = net.forward(x, tape, mode::train);
  REQUIRE(logits.shape() == shape_t{2, 10});
  for (index_t i = 0; i < logits.size(); ++i) CHECK(std::isfinite(logits[i]));
  CHECK(tape.activations[25].shape() == shape_t{2, 1024, 2, 2});
  CHECK(tape.activations[26].shape() == shape_t{2, 1024, 1, 1});
}

// Run to run, not backend to backend (test_backend_agreement compares
// backends): every backend is meant to be bit-reproducible for a given
// thread count, thrust<omp>'s threaded reductions and kernels included, and
// ctest runs this program with two OpenMP threads.
TEST_CASE_TEMPLATE("fmnist_cnn: a train-mode forward and backward pass gives the same bits every time",
                   B, OPNORM_TEST_BACKENDS) {
  auto gradients_of_one_step = [] {
    auto net = make_fmnist_cnn<float, B>(8);
    std::mt19937_64 rng(8);
    std::uniform_real_distribution<float> pixel(0.0f, 1.0f), unit(-1.0f, 1.0f);
    tensor<float, B> x({8, 1, 28, 28}), gy({8, 10});
    for (index_t i = 0; i < x.size(); ++i) x[i] = pixel(rng);
    for (index_t i = 0; i < gy.size(); ++i) gy[i] = unit(rng);
    typename fmnist_cnn<float, B>::tape tape;
    net.forward(x, tape, mode::train);
    tensor<float, B> gx;
    net.vjp(tape, gy, &gx, true);
    std::vector<float> all = gx.to_vector();
    auto s = net.state();
    for (auto& p : s.parameters) {
      const auto g = p.grad->to_vector();
      all.insert(all.end(), g.begin(), g.end());
    }
    for (auto& b : s.buffers) {
      const auto v = b.value->to_vector();
      all.insert(all.end(), v.begin(), v.end());
    }
    return all;
  };
  const std::vector<float> first = gradients_of_one_step();
  CHECK(gradients_of_one_step() == first);
}
