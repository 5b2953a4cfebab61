#include "gradient_check.hpp"

#include <opnorm/layers/conv2d.hpp>

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

TEST_CASE_TEMPLATE("conv2d: forward matches the direct definition", B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  const conv_case cases[] = {
      {3, 4, 3, 1, 0, true, {2, 3, 5, 6}},   {3, 4, 3, 1, 1, true, {2, 3, 5, 7}},
      {2, 5, 3, 2, 1, false, {3, 2, 7, 6}},  {2, 3, 2, 2, 0, true, {2, 2, 6, 5}},
      {1, 2, 3, 3, 2, true, {1, 1, 8, 7}},   {4, 2, 1, 1, 0, true, {2, 4, 3, 4}},
      {2, 2, 5, 1, 2, false, {1, 2, 4, 3}},
  };
  std::mt19937_64 rng(11);
  for (const auto& cc : cases) {
    CAPTURE(shape_string(cc.input));
    CAPTURE(cc.kernel);
    CAPTURE(cc.stride);
    CAPTURE(cc.padding);
    conv2d<double, B> layer(cc.in, cc.out, cc.kernel, cc.stride, cc.padding, cc.bias);
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

// check_layer opens doctest subcases, which must not run inside a loop: one
// test case per configuration.
template <class B>
void check_conv(const conv_case& cc, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  conv2d<double, B> layer(cc.in, cc.out, cc.kernel, cc.stride, cc.padding, cc.bias);
  layer.initialize(rng);
  check_layer(layer, random_tensor<B>(cc.input, rng), mode::train);
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

TEST_CASE_TEMPLATE("conv2d: a batch split into several scratch chunks equals examples run alone", B,
                   OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  using layer_t = conv2d<double, B>;
  std::mt19937_64 rng(13);
  layer_t layer(16, 3, 3, 1, 1);
  layer.initialize(rng);
  const index_t per_example = 16 * 3 * 3 * 32 * 32;  // im2col elements of one example
  const index_t batch = layer_t::column_budget / per_example + 2;
  REQUIRE(layer_t::column_budget / per_example < batch - 1);  // at least two chunks
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
    CHECK(y_err == 0.0);   // the same GEMM on the same columns
    CHECK(gx_err == 0.0);  // col2im does not mix examples
  }
  CHECK(relative_error(weight_grad, summed_grad) < 1e-13);
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
