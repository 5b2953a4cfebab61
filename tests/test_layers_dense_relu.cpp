#include "gradient_check.hpp"

#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/relu.hpp>

using namespace opnorm;
using namespace opnorm::testing;

TEST_CASE_TEMPLATE("dense: vjp and jvp match finite differences", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(1);
  dense<double, B> layer(7, 5);
  layer.initialize(rng);
  check_layer_passes(layer, random_tensor<B>({4, 7}, rng), mode::train);
}

TEST_CASE_TEMPLATE("dense without bias: vjp and jvp match finite differences", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(2);
  dense<double, B> layer(6, 3, false);
  layer.initialize(rng);
  check_layer_passes(layer, random_tensor<B>({2, 6}, rng), mode::eval);
}

TEST_CASE_TEMPLATE("relu: vjp and jvp match finite differences away from the kink", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(3);
  relu<double, B> layer;
  tensor<double, B> x = random_tensor<B>({3, 10}, rng);
  for (index_t i = 0; i < x.size(); ++i)
    if (std::abs(x[i]) < 1e-3) x[i] = 0.5;  // keep h-steps on one side of 0
  check_layer_passes(layer, x, mode::train);
}

TEST_CASE("dense rejects an input of the wrong width") {
  dense<double> layer(4, 2);
  tensor_d x({3, 5}), y;
  dense<double>::cache c;
  CHECK_THROWS_WITH_AS(layer.forward(x, y, c, mode::eval),
                       doctest::Contains("dense: expects input (batch, 4), got (3, 5)"),
                       std::invalid_argument);
}
