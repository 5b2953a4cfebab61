#include "gradient_check.hpp"

#include <opnorm/nn/layers/conv2d.hpp>

#include <limits>

using namespace opnorm;
using namespace opnorm::testing;

namespace {

// The definition of PyTorch's Conv2d, written as plainly as possible.
template <class B>
tensor<double, B> direct_convolution(const conv2d<double, B>& layer, const tensor<double, B>& x) {
  const index_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const index_t k = layer.kernel_size(), s = layer.stride(), p = layer.padding();
  const index_t O = layer.out_channels(), Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
  tensor<double, B> y({N, O, Ho, Wo}, 0.0);
  for (index_t n = 0; n < N; ++n)
    for (index_t o = 0; o < O; ++o)
      for (index_t oh = 0; oh < Ho; ++oh)
        for (index_t ow = 0; ow < Wo; ++ow) {
          double sum = layer.has_bias() ? layer.bias()[o] : 0.0;
          for (index_t c = 0; c < C; ++c)
            for (index_t kh = 0; kh < k; ++kh)
              for (index_t kw = 0; kw < k; ++kw) {
                const index_t ih = oh * s - p + kh, iw = ow * s - p + kw;
                if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                  sum += layer.weight()(o, c, kh, kw) * x(n, c, ih, iw);
              }
          y(n, o, oh, ow) = sum;
        }
  return y;
}

struct conv_case {
  index_t in, out, kernel, stride, padding;
  bool bias;
  shape_t input;
};

}  // namespace

// Each case's forward pass, with the given lowering, against direct_convolution.
template <class B, std::size_t N>
void check_forward_matches_direct(const conv_case (&cases)[N], conv_algorithm algorithm, std::uint64_t seed) {
  using tensor_t = tensor<double, B>;
  std::mt19937_64 rng(seed);
  for (const auto& cc : cases) {
    CAPTURE(shape_string(cc.input));
    CAPTURE(cc.kernel);
    CAPTURE(cc.stride);
    CAPTURE(cc.padding);
    conv2d<double, B> layer(cc.in, cc.out, cc.kernel, cc.stride, cc.padding, cc.bias);
    layer.set_algorithm(algorithm);
    if (algorithm == conv_algorithm::winograd) REQUIRE(layer.uses_winograd());
    layer.initialize(rng);
    const tensor_t x = random_tensor<B>(cc.input, rng);
    tensor_t y;
    typename conv2d<double, B>::cache c;
    layer.forward(x, y, c, mode::eval);
    const tensor_t expected = direct_convolution(layer, x);
    REQUIRE(y.shape() == expected.shape());
    CHECK(relative_error(y, expected) < 1e-14);
  }
}

TEST_CASE_TEMPLATE("conv2d: forward matches the direct definition", B, OPNORM_TEST_BACKENDS) {
  const conv_case cases[] = {
      {3, 4, 3, 1, 0, true, {2, 3, 5, 6}},   {3, 4, 3, 1, 1, true, {2, 3, 5, 7}},
      {2, 5, 3, 2, 1, false, {3, 2, 7, 6}},  {2, 3, 2, 2, 0, true, {2, 2, 6, 5}},
      {1, 2, 3, 3, 2, true, {1, 1, 8, 7}},   {4, 2, 1, 1, 0, true, {2, 4, 3, 4}},
      {2, 2, 5, 1, 2, false, {1, 2, 4, 3}},
  };
  check_forward_matches_direct<B>(cases, conv_algorithm::automatic, 11);
}

// One test case per configuration, so that a failure names it.
template <class B>
void check_conv(const conv_case& cc, std::uint64_t seed, conv_algorithm algorithm = conv_algorithm::automatic) {
  std::mt19937_64 rng(seed);
  conv2d<double, B> layer(cc.in, cc.out, cc.kernel, cc.stride, cc.padding, cc.bias);
  layer.set_algorithm(algorithm);
  layer.initialize(rng);
  check_layer_passes(layer, random_tensor<B>(cc.input, rng), mode::train);
}

TEST_CASE_TEMPLATE("conv2d derivatives: stride 1, no padding, non-square input", B, OPNORM_TEST_BACKENDS) {
  check_conv<B>({3, 4, 3, 1, 0, true, {2, 3, 5, 6}}, 21);
}
TEST_CASE_TEMPLATE("conv2d derivatives: 3x3 with padding 1 (the reference networks' case)", B,
                   OPNORM_TEST_BACKENDS) {
  check_conv<B>({3, 4, 3, 1, 1, true, {2, 3, 5, 5}}, 22);
}
TEST_CASE_TEMPLATE("conv2d derivatives: stride 2, padding 1, no bias", B, OPNORM_TEST_BACKENDS) {
  check_conv<B>({2, 5, 3, 2, 1, false, {2, 2, 7, 6}}, 23);
}
TEST_CASE_TEMPLATE("conv2d derivatives: stride 2, no padding, last column unused", B, OPNORM_TEST_BACKENDS) {
  check_conv<B>({2, 3, 3, 2, 0, true, {2, 2, 6, 7}}, 24);
}
TEST_CASE_TEMPLATE("conv2d derivatives: stride 3, padding 2, windows mostly padding", B, OPNORM_TEST_BACKENDS) {
  check_conv<B>({1, 2, 3, 3, 2, false, {1, 1, 8, 7}}, 25);
}
TEST_CASE_TEMPLATE("conv2d derivatives: 1x1 kernel", B, OPNORM_TEST_BACKENDS) {
  check_conv<B>({4, 3, 1, 1, 0, true, {2, 4, 3, 4}}, 26);
}

// The batch is cut into chunks of examples_per_chunk examples (im2col
// columns or Winograd tiles within a fixed budget); results must not depend
// on where the cuts fall.
template <class B>
void check_chunks_equal_examples_alone(conv_algorithm algorithm) {
  using tensor_t = tensor<double, B>;
  using layer_t = conv2d<double, B>;
  std::mt19937_64 rng(13);
  layer_t layer(16, 3, 3, 1, 1);
  layer.set_algorithm(algorithm);
  layer.initialize(rng);
  const index_t batch = layer.examples_per_chunk({1000, 16, 32, 32}) + 2;
  REQUIRE(layer.examples_per_chunk({batch, 16, 32, 32}) < batch - 1);  // at least two chunks
  const tensor_t x = random_tensor<B>({batch, 16, 32, 32}, rng);

  typename layer_t::cache c;
  tensor_t y, gx;
  layer.forward(x, y, c, mode::train);
  const tensor_t gy = random_tensor<B>(y.shape(), rng);
  layer.weight_grad().set_zero();
  layer.vjp(x, y, c, gy, &gx, true);
  const tensor_t weight_grad = layer.weight_grad();

  const index_t in_size = x.example_size(), out_size = y.example_size();
  tensor_t summed_grad(weight_grad.shape(), 0.0);
  for (index_t n = 0; n < batch; ++n) {
    CAPTURE(n);
    tensor_t xn({1, 16, 32, 32}), gyn({1, 3, 32, 32}), yn, gxn;
    for (index_t i = 0; i < in_size; ++i) xn[i] = x[n * in_size + i];
    for (index_t i = 0; i < out_size; ++i) gyn[i] = gy[n * out_size + i];
    typename layer_t::cache cn;
    layer.forward(xn, yn, cn, mode::train);
    layer.weight_grad().set_zero();
    layer.vjp(xn, yn, cn, gyn, &gxn, true);
    for (index_t i = 0; i < layer.weight_grad().size(); ++i) summed_grad[i] += layer.weight_grad()[i];
    double y_err = 0, gx_err = 0;
    for (index_t i = 0; i < out_size; ++i) y_err = std::max(y_err, std::abs(yn[i] - y[n * out_size + i]));
    for (index_t i = 0; i < in_size; ++i) gx_err = std::max(gx_err, std::abs(gxn[i] - gx[n * in_size + i]));
    // The same GEMM kernel on the same columns (or tiles), and neither
    // col2im nor the inverse tile transform mixes examples.
    CHECK(y_err == 0.0);
    CHECK(gx_err == 0.0);
  }
  CHECK(relative_error(weight_grad, summed_grad) < 1e-13);
}

TEST_CASE_TEMPLATE("conv2d: a batch split into several scratch chunks equals examples run alone (im2col)", B,
                   OPNORM_TEST_BACKENDS) {
  check_chunks_equal_examples_alone<B>(conv_algorithm::im2col);
}
TEST_CASE_TEMPLATE("conv2d: a batch split into several scratch chunks equals examples run alone (winograd)", B,
                   OPNORM_TEST_BACKENDS) {
  check_chunks_equal_examples_alone<B>(conv_algorithm::winograd);
}

// ---- Winograd F(2x2, 3x3) ----

TEST_CASE_TEMPLATE("conv2d winograd: forward matches the direct definition", B, OPNORM_TEST_BACKENDS) {
  // Even and odd output sizes (a partial last tile), padding 0, 1 and 2,
  // with and without bias, down to a single output pixel.
  const conv_case cases[] = {
      {3, 4, 3, 1, 1, true, {2, 3, 6, 6}},  {3, 4, 3, 1, 1, true, {2, 3, 5, 7}},
      {2, 5, 3, 1, 0, false, {3, 2, 7, 6}}, {4, 2, 3, 1, 2, true, {1, 4, 4, 5}},
      {1, 3, 3, 1, 0, true, {2, 1, 3, 3}},  {9, 7, 3, 1, 1, true, {2, 9, 9, 8}},
      // More than one block of 32 tiles per tile row (nn/layers/winograd.hpp).
      {2, 3, 3, 1, 1, true, {2, 2, 5, 70}}, {2, 3, 3, 1, 0, false, {1, 2, 4, 131}},
  };
  check_forward_matches_direct<B>(cases, conv_algorithm::winograd, 31);
}

TEST_CASE_TEMPLATE("conv2d winograd derivatives: padding 1, odd output width", B, OPNORM_TEST_BACKENDS) {
  check_conv<B>({3, 4, 3, 1, 1, true, {2, 3, 5, 7}}, 41, conv_algorithm::winograd);
}
TEST_CASE_TEMPLATE("conv2d winograd derivatives: no padding, no bias", B, OPNORM_TEST_BACKENDS) {
  check_conv<B>({2, 3, 3, 1, 0, false, {2, 2, 6, 7}}, 42, conv_algorithm::winograd);
}
TEST_CASE_TEMPLATE("conv2d winograd derivatives: padding 2, tiles mostly padding", B, OPNORM_TEST_BACKENDS) {
  check_conv<B>({2, 2, 3, 1, 2, true, {1, 2, 3, 4}}, 43, conv_algorithm::winograd);
}

template <class B>
void check_winograd_against_im2col(conv2d<double, B>& layer, const shape_t& shape, std::mt19937_64& rng) {
  using tensor_t = tensor<double, B>;
  using layer_t = conv2d<double, B>;
  const tensor_t x = random_tensor<B>(shape, rng), dx = random_tensor<B>(x.shape(), rng);
  const shape_t out_shape = layer.output_shape(x.shape());
  const tensor_t gy = random_tensor<B>(out_shape, rng), g = random_tensor<B>(out_shape, rng);

  struct passes {
    tensor_t y, jv, gx, weight_grad, bias_grad, parameter_term;
  };
  auto run = [&](conv_algorithm a) {
    layer.set_algorithm(a);
    passes p;
    typename layer_t::cache c;
    layer.forward(x, p.y, c, mode::train);
    layer.jvp(x, p.y, c, dx, p.jv);
    layer.weight_grad().set_zero();
    layer.bias_grad().set_zero();
    layer.vjp(x, p.y, c, gy, &p.gx, true);
    p.weight_grad = layer.weight_grad();
    p.bias_grad = layer.bias_grad();
    layer.weight_grad().set_zero();
    layer.jvp_parameter_vjp(x, p.y, c, dx, g);
    p.parameter_term = layer.weight_grad();
    return p;
  };
  const passes wino = run(conv_algorithm::winograd), im2col = run(conv_algorithm::im2col);
  CHECK(relative_error(wino.y, im2col.y) < 1e-14);
  CHECK(relative_error(wino.jv, im2col.jv) < 1e-14);
  CHECK(relative_error(wino.gx, im2col.gx) < 1e-14);
  CHECK(relative_error(wino.weight_grad, im2col.weight_grad) < 1e-14);
  CHECK(relative_error(wino.bias_grad, im2col.bias_grad) < 1e-14);
  CHECK(relative_error(wino.parameter_term, im2col.parameter_term) < 1e-14);
  // Adjointness of the Winograd passes on one pair (dx, gy).
  const double forward_side = dot(wino.jv, gy), adjoint_side = dot(dx, wino.gx);
  CHECK(std::abs(forward_side - adjoint_side) <= 1e-13 * std::max(std::abs(forward_side), 1.0));
}

// Every pass of the Winograd lowering against the im2col lowering of the
// same layer, in double: forward, JVP, input and parameter gradients of the
// VJP, and jvp_parameter_vjp (data-dependent SNR's Eq. 8 term). And the
// Winograd JVP and VJP are adjoint: <J dx, g> = <dx, J^T g>.
TEST_CASE_TEMPLATE("conv2d winograd: every pass agrees with im2col, and the JVP and VJP are adjoint", B,
                   OPNORM_TEST_BACKENDS) {
  using layer_t = conv2d<double, B>;
  std::mt19937_64 rng(44);
  layer_t layer(10, 6, 3, 1, 1);
  layer.initialize(rng);
  // Odd height; a width of 35 tiles, several blocks of tiles per tile row;
  // and 17 x 70 tiles with odd sides, which the transforms cut into two
  // bands of tile rows by two of tile columns (winograd.hpp, "Windows").
  for (const shape_t& shape : {shape_t{3, 10, 9, 8}, shape_t{2, 10, 5, 69}, shape_t{1, 10, 33, 139}}) {
    CAPTURE(shape_string(shape));
    check_winograd_against_im2col(layer, shape, rng);
  }
  // 3 x 5 = 15 filters, not a whole number of packs (4 doubles): the filter
  // transform's last pack is partial.
  layer_t few_filters(3, 5, 3, 1, 1);
  few_filters.initialize(rng);
  check_winograd_against_im2col(few_filters, shape_t{2, 3, 6, 7}, rng);
}

// In float the transforms' +-1/2 coefficients and reordered sums cost some
// rounding; both lowerings must stay within float's reach of the exact
// (double) result, scaled by the size of the terms summed.
TEST_CASE("conv2d winograd: float results stay within float rounding of the exact convolution") {
  std::mt19937_64 rng(45);
  conv2d<double> exact(32, 32, 3, 1, 1);
  exact.initialize(rng);
  const tensor_d x = random_tensor(shape_t{4, 32, 14, 14}, rng);
  tensor_d y_exact;
  conv2d<double>::cache ce;
  exact.set_algorithm(conv_algorithm::im2col);
  exact.forward(x, y_exact, ce, mode::eval);
  // The scale of the terms: sum |w| |x| over each output's window.
  conv2d<double> magnitude(32, 32, 3, 1, 1);
  for (index_t i = 0; i < magnitude.weight().size(); ++i) magnitude.weight()[i] = std::abs(exact.weight()[i]);
  for (index_t i = 0; i < magnitude.bias().size(); ++i) magnitude.bias()[i] = std::abs(exact.bias()[i]);
  tensor_d abs_x = x, scale;
  for (index_t i = 0; i < abs_x.size(); ++i) abs_x[i] = std::abs(abs_x[i]);
  conv2d<double>::cache cm;
  magnitude.forward(abs_x, scale, cm, mode::eval);

  conv2d<float> layer(32, 32, 3, 1, 1);
  for (index_t i = 0; i < layer.weight().size(); ++i) layer.weight()[i] = static_cast<float>(exact.weight()[i]);
  for (index_t i = 0; i < layer.bias().size(); ++i) layer.bias()[i] = static_cast<float>(exact.bias()[i]);
  tensor<float> xf(x.shape());
  for (index_t i = 0; i < x.size(); ++i) xf[i] = static_cast<float>(x[i]);
  for (const conv_algorithm a : {conv_algorithm::im2col, conv_algorithm::winograd}) {
    CAPTURE(static_cast<int>(a));
    conv2d<float> copy = layer;
    copy.set_algorithm(a);
    tensor<float> y;
    conv2d<float>::cache c;
    copy.forward(xf, y, c, mode::eval);
    double worst = 0;  // error in units of float epsilon times the terms' size
    for (index_t i = 0; i < y.size(); ++i)
      worst = std::max(worst, std::abs(static_cast<double>(y[i]) - y_exact[i]) /
                                  (scale[i] * std::numeric_limits<float>::epsilon()));
    MESSAGE("worst error in eps x sum |w x|: " << worst);
    // A sum of 288 products: the worst-case bound is about 288 eps, typical
    // errors are an eps or two (measured: im2col 1.4, winograd 0.8).
    CHECK(worst < 4.0);
  }
}

TEST_CASE("conv2d: the winograd algorithm is refused where it does not apply, and automatic picks it where it pays") {
  conv2d<double> strided(8, 4, 3, 2, 1), five(8, 4, 5, 1, 2), thin(1, 32, 3, 1, 1), wide(32, 32, 3, 1, 1);
  CHECK_THROWS_WITH_AS(strided.set_algorithm(conv_algorithm::winograd),
                       "opnorm::conv2d: the winograd algorithm needs a 3x3 kernel with stride 1, got 3x3 with stride 2",
                       std::invalid_argument);
  CHECK_THROWS_AS(five.set_algorithm(conv_algorithm::winograd), std::invalid_argument);
  CHECK_FALSE(strided.uses_winograd());
  CHECK_FALSE(five.uses_winograd());
  CHECK_FALSE(thin.uses_winograd());  // one input channel: im2col
  CHECK(wide.uses_winograd());
  thin.set_algorithm(conv_algorithm::winograd);
  CHECK(thin.uses_winograd());
  wide.set_algorithm(conv_algorithm::im2col);
  CHECK_FALSE(wide.uses_winograd());
}

TEST_CASE_TEMPLATE("conv2d: vjp with neither input nor parameter gradients leaves everything alone", B,
                   OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  std::mt19937_64 rng(14);
  conv2d<double, B> layer(2, 3, 3, 1, 1);
  layer.initialize(rng);
  const tensor_t x = random_tensor<B>({2, 2, 4, 4}, rng);
  tensor_t y;
  typename conv2d<double, B>::cache c;
  layer.forward(x, y, c, mode::train);
  layer.weight_grad().fill(0.5);
  layer.vjp(x, y, c, random_tensor<B>(y.shape(), rng), nullptr, false);
  for (index_t i = 0; i < layer.weight_grad().size(); ++i) CHECK(layer.weight_grad()[i] == 0.5);
}

// Shape rules and argument validation do not touch a kernel: cpu only.
TEST_CASE("conv2d: output shape rules") {
  CHECK(conv2d<double>(1, 32, 3, 1, 1).output_shape({128, 1, 28, 28}) == shape_t{128, 32, 28, 28});
  CHECK(conv2d<double>(512, 1024, 3).output_shape({2, 512, 4, 4}) == shape_t{2, 1024, 2, 2});
  // floor((H + 2p - k) / s) + 1, separately for height and width
  CHECK(conv2d<double>(3, 8, 3, 2, 1).output_shape({4, 3, 7, 10}) == shape_t{4, 8, 4, 5});
  CHECK(conv2d<double>(3, 8, 5, 3, 0).output_shape({1, 3, 5, 11}) == shape_t{1, 8, 1, 3});
  CHECK(conv2d<double>(3, 8, 5, 1, 2).output_shape({1, 3, 1, 1}) == shape_t{1, 8, 1, 1});
}

TEST_CASE("conv2d: bad input shapes and arguments are rejected with clear messages") {
  conv2d<double> layer(3, 8, 3, 1, 1);
  CHECK_THROWS_WITH_AS(layer.output_shape({2, 4, 8, 8}),
                       "opnorm::conv2d: expects input (batch, 3, height, width), got (2, 4, 8, 8)",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(layer.output_shape({2, 3, 64}),
                       "opnorm::conv2d: expects input (batch, 3, height, width), got (2, 3, 64)",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(conv2d<double>(3, 8, 5).output_shape({2, 3, 4, 9}),
                       "opnorm::conv2d: input (2, 3, 4, 9) is smaller than the 5x5 kernel with "
                       "padding 0",
                       std::invalid_argument);
  tensor_d x({2, 1, 8, 8}), y;
  conv2d<double>::cache c;
  CHECK_THROWS_AS(layer.forward(x, y, c, mode::eval), std::invalid_argument);
  CHECK_THROWS_AS(conv2d<double>(0, 8, 3), std::invalid_argument);
  CHECK_THROWS_AS(conv2d<double>(3, 8, 3, 0), std::invalid_argument);
  CHECK_THROWS_AS(conv2d<double>(3, 8, 3, 1, -1), std::invalid_argument);
}

// The initialization draws on the host and is copied to the backend, so the
// same bounds hold everywhere.
TEST_CASE_TEMPLATE("conv2d: PyTorch state names, shapes and default initialization bounds", B,
                   OPNORM_TEST_BACKENDS) {
  conv2d<double, B> layer(4, 6, 3);
  std::mt19937_64 rng(15);
  layer.initialize(rng);
  state_list<double, B> s;
  layer.collect_state(s, "1.");
  REQUIRE(s.parameters.size() == 2);
  CHECK(s.parameters[0].name == "1.weight");
  CHECK(s.parameters[0].value->shape() == shape_t{6, 4, 3, 3});
  CHECK(s.parameters[1].name == "1.bias");
  CHECK(s.parameters[1].value->shape() == shape_t{6});
  const double bound = 1.0 / std::sqrt(4.0 * 9.0);
  double largest = 0;
  for (auto& p : s.parameters)
    for (index_t i = 0; i < p.value->size(); ++i) largest = std::max(largest, std::abs((*p.value)[i]));
  CHECK(largest <= bound);
  CHECK(largest > 0.8 * bound);  // 222 uniform draws do fill the interval

  conv2d<double, B> no_bias(4, 6, 3, 1, 0, false);
  state_list<double, B> t;
  no_bias.collect_state(t, "");
  REQUIRE(t.parameters.size() == 1);
  CHECK(t.parameters[0].name == "weight");
}
