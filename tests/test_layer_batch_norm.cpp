#include "gradient_check.hpp"

#include <opnorm/nn/layers/batch_norm.hpp>

using namespace opnorm;
using namespace opnorm::testing;

namespace {

// A batch_norm whose parameters and running statistics are all non-trivial,
// so that every one of them takes part in the checks.
template <class B>
batch_norm<double, B> make_layer(index_t features, bool affine, std::mt19937_64& rng) {
  batch_norm<double, B> layer(features, affine);
  if (affine) {
    layer.weight() = random_tensor<B>({features}, rng, 0.5, 2.0);
    layer.bias() = random_tensor<B>({features}, rng);
  }
  layer.running_mean() = random_tensor<B>({features}, rng);
  layer.running_var() = random_tensor<B>({features}, rng, 0.3, 3.0);
  return layer;
}

}  // namespace

TEST_CASE_TEMPLATE("batch_norm 2d, affine, train mode: vjp and jvp match finite differences", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(1);
  auto layer = make_layer<B>(3, true, rng);
  check_layer_passes(layer, random_tensor<B>({3, 3, 4, 5}, rng, -2.0, 3.0), mode::train);
}

TEST_CASE_TEMPLATE("batch_norm 2d, no affine, train mode: vjp and jvp match finite differences",
                   B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(2);
  auto layer = make_layer<B>(4, false, rng);
  check_layer_passes(layer, random_tensor<B>({2, 4, 3, 3}, rng), mode::train);
}

TEST_CASE_TEMPLATE("batch_norm 2d, affine, eval mode: vjp and jvp match finite differences", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(3);
  auto layer = make_layer<B>(3, true, rng);
  check_layer_passes(layer, random_tensor<B>({2, 3, 3, 4}, rng), mode::eval);
}

TEST_CASE_TEMPLATE("batch_norm 2d, no affine, eval mode: vjp and jvp match finite differences",
                   B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(4);
  auto layer = make_layer<B>(2, false, rng);
  check_layer_passes(layer, random_tensor<B>({2, 2, 3, 3}, rng), mode::eval);
}

TEST_CASE_TEMPLATE("batch_norm 1d, affine, train mode: vjp and jvp match finite differences", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(5);
  auto layer = make_layer<B>(5, true, rng);
  check_layer_passes(layer, random_tensor<B>({6, 5}, rng), mode::train);
}

TEST_CASE_TEMPLATE("batch_norm 1d, no affine, train mode: vjp and jvp match finite differences",
                   B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(6);
  auto layer = make_layer<B>(4, false, rng);
  check_layer_passes(layer, random_tensor<B>({3, 4}, rng), mode::train);
}

TEST_CASE_TEMPLATE("batch_norm 1d, affine, eval mode: vjp and jvp match finite differences", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(7);
  auto layer = make_layer<B>(5, true, rng);
  check_layer_passes(layer, random_tensor<B>({4, 5}, rng), mode::eval);
}

TEST_CASE_TEMPLATE("batch_norm train mode: output and running statistics follow PyTorch's rules",
                   B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  const double momentum = 0.3, eps = 1e-3;
  batch_norm<double, B> layer(2, true, momentum, eps);
  layer.weight() = tensor_t::from_vector({2}, {2.0, -0.5});
  layer.bias() = tensor_t::from_vector({2}, {0.25, 1.0});
  layer.running_mean() = tensor_t::from_vector({2}, {1.0, -2.0});
  layer.running_var() = tensor_t::from_vector({2}, {4.0, 0.5});
  // (N, C, H, W) = (2, 2, 1, 2): channel 0 sees {1, 2, 3, 6}, channel 1 sees {0, -1, 4, 1}.
  const tensor_t x = tensor_t::from_vector({2, 2, 1, 2}, {1, 2, 0, -1, 3, 6, 4, 1});
  const double mean[2] = {3.0, 1.0};
  const double sum_sq[2] = {4 + 1 + 0 + 9, 1 + 4 + 9 + 0};  // squared deviations
  tensor_t y;
  typename batch_norm<double, B>::cache c;
  layer.forward(x, y, c, mode::train);

  const double gamma[2] = {2.0, -0.5}, beta[2] = {0.25, 1.0};
  for (index_t n = 0; n < 2; ++n)
    for (index_t ch = 0; ch < 2; ++ch)
      for (index_t w = 0; w < 2; ++w) {
        const double biased_var = sum_sq[ch] / 4;
        const double expected = gamma[ch] * (x(n, ch, 0, w) - mean[ch]) / std::sqrt(biased_var + eps) + beta[ch];
        CHECK(y(n, ch, 0, w) == doctest::Approx(expected).epsilon(1e-14));
      }
  // Running statistics move towards the batch mean and the UNBIASED variance.
  CHECK(layer.running_mean()[0] == doctest::Approx(0.7 * 1.0 + 0.3 * 3.0).epsilon(1e-15));
  CHECK(layer.running_mean()[1] == doctest::Approx(0.7 * -2.0 + 0.3 * 1.0).epsilon(1e-15));
  CHECK(layer.running_var()[0] == doctest::Approx(0.7 * 4.0 + 0.3 * (14.0 / 3)).epsilon(1e-15));
  CHECK(layer.running_var()[1] == doctest::Approx(0.7 * 0.5 + 0.3 * (14.0 / 3)).epsilon(1e-15));
  CHECK(layer.num_batches_tracked() == 1);

  // A second batch moves them again from where they are.
  const double rm0 = layer.running_mean()[0], rv1 = layer.running_var()[1];
  layer.forward(x, y, c, mode::train);
  CHECK(layer.running_mean()[0] == doctest::Approx(0.7 * rm0 + 0.3 * 3.0).epsilon(1e-15));
  CHECK(layer.running_var()[1] == doctest::Approx(0.7 * rv1 + 0.3 * (14.0 / 3)).epsilon(1e-15));
  CHECK(layer.num_batches_tracked() == 2);
}

TEST_CASE_TEMPLATE("batch_norm train mode: each channel of the output has mean 0 and variance var/(var+eps)",
                   B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  std::mt19937_64 rng(8);
  batch_norm<double, B> layer(3, false);
  const tensor_t x = random_tensor<B>({5, 3, 4, 4}, rng, -3.0, 7.0);
  tensor_t y;
  typename batch_norm<double, B>::cache c;
  layer.forward(x, y, c, mode::train);
  for (index_t ch = 0; ch < 3; ++ch) {
    double sx = 0, sy = 0, sxx = 0, syy = 0;
    const double m = 5 * 16;
    for (index_t n = 0; n < 5; ++n)
      for (index_t i = 0; i < 16; ++i) {
        sx += x[(n * 3 + ch) * 16 + i];
        sy += y[(n * 3 + ch) * 16 + i];
      }
    for (index_t n = 0; n < 5; ++n)
      for (index_t i = 0; i < 16; ++i) {
        sxx += std::pow(x[(n * 3 + ch) * 16 + i] - sx / m, 2);
        syy += std::pow(y[(n * 3 + ch) * 16 + i] - sy / m, 2);
      }
    CHECK(std::abs(sy / m) < 1e-14);
    CHECK(syy / m == doctest::Approx((sxx / m) / (sxx / m + 1e-5)).epsilon(1e-13));
  }
}

TEST_CASE_TEMPLATE("batch_norm eval mode: normalizes with the running statistics and changes nothing",
                   B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  std::mt19937_64 rng(9);
  auto layer = make_layer<B>(3, true, rng);
  const tensor_t running_mean = layer.running_mean(), running_var = layer.running_var();
  const tensor_t gamma = layer.weight(), beta = layer.bias();
  const tensor_t x = random_tensor<B>({4, 3, 2, 3}, rng);
  tensor_t y, gx;
  typename batch_norm<double, B>::cache c;
  layer.forward(x, y, c, mode::eval);
  for (index_t n = 0; n < 4; ++n)
    for (index_t ch = 0; ch < 3; ++ch)
      for (index_t i = 0; i < 6; ++i) {
        const index_t at = (n * 3 + ch) * 6 + i;
        const double expected =
            gamma[ch] * (x[at] - running_mean[ch]) / std::sqrt(running_var[ch] + 1e-5) + beta[ch];
        CHECK(y[at] == doctest::Approx(expected).epsilon(1e-14));
      }
  layer.vjp(x, y, c, random_tensor<B>(y.shape(), rng), &gx, true);
  tensor_t dy;
  layer.jvp(x, y, c, random_tensor<B>(x.shape(), rng), dy);
  CHECK(relative_error(layer.running_mean(), running_mean) == 0.0);
  CHECK(relative_error(layer.running_var(), running_var) == 0.0);
  CHECK(relative_error(layer.weight(), gamma) == 0.0);
  CHECK(relative_error(layer.bias(), beta) == 0.0);
  CHECK(layer.num_batches_tracked() == 0);
}

TEST_CASE_TEMPLATE("batch_norm eval-mode derivatives are the per-channel scaling gamma / sqrt(var + eps)",
                   B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  std::mt19937_64 rng(10);
  auto layer = make_layer<B>(2, true, rng);
  const tensor_t x = random_tensor<B>({3, 2, 2, 2}, rng), v = random_tensor<B>(x.shape(), rng);
  tensor_t y, gx, dy;
  typename batch_norm<double, B>::cache c;
  layer.forward(x, y, c, mode::eval);
  layer.vjp(x, y, c, v, &gx, false);
  layer.jvp(x, y, c, v, dy);
  for (index_t i = 0; i < x.size(); ++i) {
    const index_t ch = (i / 4) % 2;
    const double scale = layer.weight()[ch] / std::sqrt(layer.running_var()[ch] + 1e-5);
    CHECK(gx[i] == doctest::Approx(scale * v[i]).epsilon(1e-14));
    CHECK(dy[i] == doctest::Approx(scale * v[i]).epsilon(1e-14));
  }
}

TEST_CASE_TEMPLATE("batch_norm state follows PyTorch's state_dict", B, OPNORM_TEST_BACKENDS) {
  batch_norm<double, B> affine(4);
  state_list<double, B> s;
  affine.collect_state(s, "2.");
  REQUIRE(s.parameters.size() == 2);
  CHECK(s.parameters[0].name == "2.weight");
  CHECK(s.parameters[1].name == "2.bias");
  REQUIRE(s.buffers.size() == 2);
  CHECK(s.buffers[0].name == "2.running_mean");
  CHECK(s.buffers[1].name == "2.running_var");
  CHECK(s.buffers[0].grad == nullptr);
  REQUIRE(s.counters.size() == 1);
  CHECK(s.counters[0].name == "2.num_batches_tracked");

  batch_norm<double, B> plain(4, false);
  state_list<double, B> t;
  plain.collect_state(t, "");
  CHECK(t.parameters.empty());
  CHECK(t.buffers.size() == 2);
  CHECK(t.counters.size() == 1);
}

TEST_CASE_TEMPLATE("batch_norm initialize restores PyTorch's fresh state", B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  std::mt19937_64 rng(11);
  auto layer = make_layer<B>(3, true, rng);
  tensor_t y;
  typename batch_norm<double, B>::cache c;
  layer.forward(random_tensor<B>({4, 3}, rng), y, c, mode::train);
  REQUIRE(layer.num_batches_tracked() == 1);
  layer.initialize(rng);
  for (index_t ch = 0; ch < 3; ++ch) {
    CHECK(layer.weight()[ch] == 1.0);
    CHECK(layer.bias()[ch] == 0.0);
    CHECK(layer.running_mean()[ch] == 0.0);
    CHECK(layer.running_var()[ch] == 1.0);
  }
  CHECK(layer.num_batches_tracked() == 0);
}

TEST_CASE("batch_norm rejects bad inputs with clear messages") {
  batch_norm<double> layer(3);
  CHECK_THROWS_WITH_AS(layer.output_shape({2, 4, 5, 5}),
                       "opnorm::batch_norm: expects input (batch, 3) or (batch, 3, height, width), "
                       "got (2, 4, 5, 5)",
                       std::invalid_argument);
  CHECK_THROWS_AS(layer.output_shape({6}), std::invalid_argument);
  // Batch statistics of a single value per channel are undefined (PyTorch refuses too).
  tensor_d x({1, 3}, 1.0), y;
  batch_norm<double>::cache c;
  CHECK_THROWS_WITH_AS(layer.forward(x, y, c, mode::train),
                       doctest::Contains("more than one value per channel"), std::invalid_argument);
  CHECK_NOTHROW(layer.forward(x, y, c, mode::eval));
  CHECK_THROWS_AS(batch_norm<double>(0), std::invalid_argument);
  CHECK_THROWS_AS(batch_norm<double>(3, true, 1.5), std::invalid_argument);
}
