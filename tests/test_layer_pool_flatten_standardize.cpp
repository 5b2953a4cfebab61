#include "gradient_check.hpp"

#include <algorithm>
#include <limits>
#include <numeric>

#include <opnorm/nn/layers/flatten.hpp>
#include <opnorm/nn/layers/max_pool2d.hpp>
#include <opnorm/nn/layers/standardize.hpp>

using namespace opnorm;
using namespace opnorm::testing;

namespace {

// Distinct values at least 0.01 apart in random order: the argmax of every
// window is unique and stays put under finite-difference steps of 1e-6.
template <class B>
tensor<double, B> distinct_values(const shape_t& shape, std::mt19937_64& rng) {
  tensor<double, B> x(shape);
  std::vector<index_t> order(static_cast<std::size_t>(x.size()));
  std::iota(order.begin(), order.end(), index_t{0});
  std::shuffle(order.begin(), order.end(), rng);
  for (index_t i = 0; i < x.size(); ++i) x[i] = 0.01 * static_cast<double>(order[static_cast<std::size_t>(i)]) - 1.0;
  return x;
}

// max over each window, written directly from the definition.
template <class B>
tensor<double, B> direct_max_pool(const tensor<double, B>& x, index_t k, index_t s) {
  const index_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const index_t Ho = (H - k) / s + 1, Wo = (W - k) / s + 1;
  tensor<double, B> y({N, C, Ho, Wo});
  for (index_t n = 0; n < N; ++n)
    for (index_t c = 0; c < C; ++c)
      for (index_t oh = 0; oh < Ho; ++oh)
        for (index_t ow = 0; ow < Wo; ++ow) {
          double m = -std::numeric_limits<double>::infinity();
          for (index_t i = 0; i < k; ++i)
            for (index_t j = 0; j < k; ++j) m = std::max(m, x(n, c, oh * s + i, ow * s + j));
          y(n, c, oh, ow) = m;
        }
  return y;
}

}  // namespace

// ---------------------------------------------------------------- max_pool2d

TEST_CASE_TEMPLATE("max_pool2d: forward matches the direct definition", B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  std::mt19937_64 rng(1);
  const index_t cases[][6] = {{2, 3, 6, 8, 2, 2}, {2, 2, 7, 5, 2, 2}, {1, 2, 7, 7, 3, 2}, {2, 1, 5, 6, 3, 1}};
  for (const auto& cc : cases) {
    const tensor_t x = random_tensor<B>({cc[0], cc[1], cc[2], cc[3]}, rng);
    max_pool2d<double, B> layer(cc[4], cc[5]);
    tensor_t y;
    typename max_pool2d<double, B>::cache c;
    layer.forward(x, y, c, mode::eval);
    const tensor_t expected = direct_max_pool(x, cc[4], cc[5]);
    REQUIRE(y.shape() == expected.shape());
    CHECK(relative_error(y, expected) == 0.0);
  }
}

TEST_CASE_TEMPLATE("max_pool2d 2x2 stride 2: vjp and jvp match finite differences", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(2);
  max_pool2d<double, B> layer(2);
  check_layer_passes(layer, distinct_values<B>({2, 3, 4, 6}, rng), mode::train);
}

TEST_CASE_TEMPLATE("max_pool2d 2x2 on odd sizes (floor mode drops the last row and column)", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(3);
  max_pool2d<double, B> layer(2);
  check_layer_passes(layer, distinct_values<B>({2, 2, 5, 7}, rng), mode::train);
}

TEST_CASE_TEMPLATE("max_pool2d 3x3 stride 2: overlapping windows add their gradients", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(4);
  max_pool2d<double, B> layer(3, 2);
  check_layer_passes(layer, distinct_values<B>({2, 2, 7, 7}, rng), mode::train);
}

TEST_CASE_TEMPLATE("max_pool2d: ties go to the first maximum, which receives the whole gradient",
                   B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  max_pool2d<double, B> layer(2);
  const tensor_t x = tensor_t::from_vector({1, 1, 2, 2}, {1.0, 3.0, 3.0, 3.0});
  tensor_t y, gx;
  typename max_pool2d<double, B>::cache c;
  layer.forward(x, y, c, mode::train);
  CHECK(y[0] == 3.0);
  layer.vjp(x, y, c, tensor_t::from_vector({1, 1, 1, 1}, {5.0}), &gx, false);
  CHECK(gx.to_vector() == std::vector<double>{0.0, 5.0, 0.0, 0.0});
}

TEST_CASE_TEMPLATE("max_pool2d: NaN propagates, as in PyTorch", B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  max_pool2d<double, B> layer(2);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const tensor_t x = tensor_t::from_vector({1, 1, 2, 2}, {1.0, nan, 7.0, 2.0});
  tensor_t y;
  typename max_pool2d<double, B>::cache c;
  layer.forward(x, y, c, mode::eval);
  CHECK(std::isnan(y[0]));
}

namespace {

// The 2 x 2, stride-2 pooling of every plane of x by its definition, as
// PyTorch's CPU kernel resolves it: the window's entries in row-major order,
// an entry taking over when it is larger or NaN (so the first of equal
// maxima stays and the last NaN wins). Fills the maxima and their offsets.
template <class T>
void direct_max_pool_2x2(const std::vector<T>& x, index_t planes, index_t H, index_t W, std::vector<T>& y,
                         std::vector<index_t>& at) {
  const index_t Ho = H / 2, Wo = W / 2;
  y.assign(static_cast<std::size_t>(planes * Ho * Wo), T(0));
  at.assign(y.size(), 0);
  for (index_t p = 0; p < planes; ++p)
    for (index_t oh = 0; oh < Ho; ++oh)
      for (index_t ow = 0; ow < Wo; ++ow) {
        index_t best = p * H * W + 2 * oh * W + 2 * ow;
        for (index_t i = 0; i < 2; ++i)
          for (index_t j = 0; j < 2; ++j) {
            const index_t here = p * H * W + (2 * oh + i) * W + 2 * ow + j;
            const T v = x[static_cast<std::size_t>(here)], b = x[static_cast<std::size_t>(best)];
            if (v > b || std::isnan(v)) best = here;
          }
        const auto o = static_cast<std::size_t>((p * Ho + oh) * Wo + ow);
        y[o] = x[static_cast<std::size_t>(best)];
        at[o] = best;
      }
}

// Every output width from 1 to 21 (shorter than a pack of 8 floats or 4
// doubles, exactly a pack, several, and a remainder that the last,
// overlapping block covers), odd and even input sizes, values drawn from
// {0, 1, 2} so that most windows tie, and a few NaNs: the maxima and the
// selected offsets equal the definition's, bit for bit.
template <class T, class B>
void check_2x2_pooling_on_every_width() {
  std::mt19937_64 rng(11);
  std::uniform_int_distribution<int> level(0, 2), rare(0, 40);
  for (index_t W = 2; W <= 43; ++W)
    for (const index_t H : {2, 3, 6}) {
      CAPTURE(W);
      CAPTURE(H);
      const index_t planes = 3;
      std::vector<T> values(static_cast<std::size_t>(planes * H * W));
      for (auto& v : values) v = rare(rng) == 0 ? std::numeric_limits<T>::quiet_NaN() : static_cast<T>(level(rng));
      const auto x = tensor<T, B>::from_vector({1, planes, H, W}, values);
      max_pool2d<T, B> layer(2);
      tensor<T, B> y;
      typename max_pool2d<T, B>::cache c;
      layer.forward(x, y, c, mode::eval);
      std::vector<T> expected;
      std::vector<index_t> expected_at;
      direct_max_pool_2x2(values, planes, H, W, expected, expected_at);
      const auto got = y.to_vector();
      REQUIRE(got.size() == expected.size());
      CHECK(c.argmax.to_vector() == expected_at);
      index_t differing = 0;
      for (std::size_t i = 0; i < got.size(); ++i)
        differing += std::isnan(expected[i]) ? !std::isnan(got[i]) : got[i] != expected[i];
      CHECK(differing == 0);
    }
}

}  // namespace

TEST_CASE_TEMPLATE("max_pool2d 2x2 stride 2: maxima and selected offsets equal the definition's on every row width, "
                   "with ties and NaNs, in float and double",
                   B, OPNORM_TEST_BACKENDS) {
  check_2x2_pooling_on_every_width<float, B>();
  check_2x2_pooling_on_every_width<double, B>();
}

TEST_CASE("max_pool2d: output shapes and errors") {
  CHECK(max_pool2d<double>(2).output_shape({128, 32, 28, 28}) == shape_t{128, 32, 14, 14});
  CHECK(max_pool2d<double>(2).output_shape({2, 1024, 2, 2}) == shape_t{2, 1024, 1, 1});
  CHECK(max_pool2d<double>(2).output_shape({1, 3, 7, 5}) == shape_t{1, 3, 3, 2});
  CHECK(max_pool2d<double>(3, 2).output_shape({1, 3, 7, 8}) == shape_t{1, 3, 3, 3});
  CHECK_THROWS_WITH_AS(max_pool2d<double>(2).output_shape({4, 10}),
                       "opnorm::max_pool2d: expects input (batch, channels, height, width), got (4, 10)",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(max_pool2d<double>(3).output_shape({4, 2, 2, 8}),
                       "opnorm::max_pool2d: input (4, 2, 2, 8) is smaller than the 3x3 window",
                       std::invalid_argument);
  CHECK_THROWS_AS(max_pool2d<double>(0), std::invalid_argument);
  CHECK_THROWS_AS(max_pool2d<double>(2, 0), std::invalid_argument);
}

// ------------------------------------------------------------------- flatten

TEST_CASE_TEMPLATE("flatten: vjp and jvp match finite differences", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(5);
  flatten<double, B> layer;
  check_layer_passes(layer, random_tensor<B>({3, 2, 3, 2}, rng), mode::train);
}

TEST_CASE_TEMPLATE("flatten: keeps the row-major order and the batch dimension", B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  flatten<double, B> layer;
  CHECK(layer.output_shape({128, 64, 7, 7}) == shape_t{128, 3136});
  CHECK(layer.output_shape({5, 3}) == shape_t{5, 3});
  std::mt19937_64 rng(6);
  const tensor_t x = random_tensor<B>({2, 3, 2, 2}, rng);
  tensor_t y;
  typename flatten<double, B>::cache c;
  layer.forward(x, y, c, mode::eval);
  REQUIRE(y.shape() == shape_t{2, 12});
  for (index_t n = 0; n < 2; ++n)
    for (index_t ch = 0; ch < 3; ++ch)
      for (index_t h = 0; h < 2; ++h)
        for (index_t w = 0; w < 2; ++w) CHECK(y(n, (ch * 2 + h) * 2 + w) == x(n, ch, h, w));
  CHECK_THROWS_WITH_AS(layer.output_shape({7}), "opnorm::flatten: expects input (batch, features...), got (7)",
                       std::invalid_argument);
}

// --------------------------------------------------------------- standardize

TEST_CASE_TEMPLATE("standardize per channel: vjp and jvp match finite differences", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(7);
  standardize<double, B> layer({0.5, -0.25, 0.125}, {0.3, 2.0, 0.7});
  check_layer_passes(layer, random_tensor<B>({2, 3, 3, 2}, rng), mode::train);
}

TEST_CASE_TEMPLATE("standardize with one shared value: vjp and jvp match finite differences", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(8);
  standardize<double, B> layer({0.2860}, {0.3530});
  check_layer_passes(layer, random_tensor<B>({2, 3, 2, 2}, rng, 0.0, 1.0), mode::eval);
}

TEST_CASE_TEMPLATE("standardize: (x - mean_c) / std_c, channel by channel", B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  std::mt19937_64 rng(9);
  const std::vector<double> mean{0.4914, 0.4822, 0.4465}, stddev{0.2470, 0.2435, 0.2616};
  standardize<double, B> layer(mean, stddev);
  const tensor_t x = random_tensor<B>({2, 3, 2, 3}, rng, 0.0, 1.0);
  tensor_t y;
  typename standardize<double, B>::cache c;
  layer.forward(x, y, c, mode::eval);
  for (index_t i = 0; i < x.size(); ++i) {
    const std::size_t ch = static_cast<std::size_t>((i / 6) % 3);
    CHECK(y[i] == (x[i] - mean[ch]) / stddev[ch]);  // the same operations PyTorch does
  }
  // Works on (N, C) input too.
  const tensor_t flat = random_tensor<B>({4, 3}, rng);
  layer.forward(flat, y, c, mode::eval);
  CHECK(y(3, 1) == (flat(3, 1) - mean[1]) / stddev[1]);
}

TEST_CASE_TEMPLATE("standardize: statistics are buffers named like PyTorch's, not parameters",
                   B, OPNORM_TEST_BACKENDS) {
  standardize<double, B> layer({0.1, 0.2}, {1.0, 2.0});
  state_list<double, B> s;
  layer.collect_state(s, "0.");
  CHECK(s.parameters.empty());
  REQUIRE(s.buffers.size() == 2);
  CHECK(s.buffers[0].name == "0.mean");
  CHECK(s.buffers[1].name == "0.std");
  CHECK(s.buffers[0].value->shape() == shape_t{2});
  CHECK(s.buffers[1].value->to_vector() == std::vector<double>{1.0, 2.0});
}

TEST_CASE("standardize: bad statistics and inputs are rejected with clear messages") {
  CHECK_THROWS_AS(standardize<double>({0.1, 0.2}, {1.0}), std::invalid_argument);
  CHECK_THROWS_AS(standardize<double>({}, {}), std::invalid_argument);
  CHECK_THROWS_WITH_AS(standardize<double>({0.1}, {0.0}),
                       "opnorm::standardize: standard deviations must be positive", std::invalid_argument);
  standardize<double> layer({0.1, 0.2, 0.3}, {1.0, 1.0, 1.0});
  CHECK_THROWS_WITH_AS(layer.output_shape({2, 1, 28, 28}),
                       "opnorm::standardize: expects input (batch, 3, ...), got (2, 1, 28, 28)",
                       std::invalid_argument);
  CHECK(standardize<double>({0.5}, {0.5}).output_shape({2, 3, 4, 4}) == shape_t{2, 3, 4, 4});
}
