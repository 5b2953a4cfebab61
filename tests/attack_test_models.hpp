#pragma once
// The models and data the attack tests (test_attacks.cpp, test_apgd.cpp)
// attack: a small MLP with BatchNorm, a linear model, Gaussian blobs in
// [0,1]^d, full-batch training to make the MLP worth attacking, its clean
// accuracy, and per-example distances under a norm. Double precision.
#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include <opnorm/nn/layers/batch_norm.hpp>
#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/relu.hpp>
#include <opnorm/nn/losses.hpp>
#include <opnorm/core/mode.hpp>
#include <opnorm/core/per_example.hpp>
#include <opnorm/nn/sequential.hpp>

namespace opnorm::testing {

template <class B>
using mlp = sequential<dense<double, B>, batch_norm<double, B>, relu<double, B>, dense<double, B>>;
template <class B>
using linear_model = sequential<dense<double, B>>;

/// d inputs -> 16 (BatchNorm, ReLU) -> classes.
template <class B>
mlp<B> make_mlp(std::uint64_t seed, index_t d, index_t classes) {
  mlp<B> net(dense<double, B>(d, 16), batch_norm<double, B>(16), relu<double, B>(), dense<double, B>(16, classes));
  net.initialize(seed);
  return net;
}

// One Gaussian blob (standard deviation `noise`) per class around a centre
// drawn uniformly in [0.2, 0.8]^d, clipped to [0,1]^d; labels are the blobs.
template <class B>
void make_blobs(index_t n, index_t d, index_t classes, double noise_sd, std::uint64_t seed, tensor<double, B>& x,
                label_tensor<B>& y) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> noise(0.0, noise_sd);
  std::uniform_int_distribution<int> pick(0, static_cast<int>(classes) - 1);
  std::vector<std::vector<double>> centres(static_cast<std::size_t>(classes), std::vector<double>(static_cast<std::size_t>(d)));
  std::uniform_real_distribution<double> u(0.2, 0.8);
  for (auto& c : centres)
    for (auto& e : c) e = u(rng);
  x = tensor<double, B>({n, d});
  y = label_tensor<B>({n});
  for (index_t i = 0; i < n; ++i) {
    const int c = pick(rng);
    y[i] = c;
    for (index_t j = 0; j < d; ++j)
      x(i, j) = std::clamp(centres[static_cast<std::size_t>(c)][static_cast<std::size_t>(j)] + noise(rng), 0.0, 1.0);
  }
}

// Plain full-batch gradient descent, enough to make a model worth attacking.
template <class B>
void train(mlp<B>& net, const tensor<double, B>& x, const label_tensor<B>& y, int steps) {
  typename mlp<B>::tape t;
  tensor<double, B> g;
  for (int s = 0; s < steps; ++s) {
    net.zero_grad();
    softmax_cross_entropy::evaluate(net.forward(x, t, mode::train), y, &g);
    net.vjp(t, g, nullptr, true);
    for (auto& p : net.state().parameters)
      for (index_t i = 0; i < p.value->size(); ++i) (*p.value)[i] -= 0.5 * (*p.grad)[i];
  }
}

template <class B>
double accuracy(mlp<B>& net, const tensor<double, B>& x, const label_tensor<B>& y) {
  const auto predicted = argmax_rows(net.predict(x));
  index_t c = 0;
  for (index_t i = 0; i < y.size(); ++i) c += predicted[static_cast<std::size_t>(i)] == y[i];
  return static_cast<double>(c) / static_cast<double>(y.size());
}

/// ||a_i - b_i|| under Norm, per example.
template <class Norm, class B>
std::vector<double> distances(const tensor<double, B>& a, const tensor<double, B>& b) {
  tensor<double, B> diff, out;
  subtract(a, b, diff);
  Norm::norms(diff, out);
  return out.to_vector();
}

}  // namespace opnorm::testing
