#pragma once
// Finite-difference helpers for every layer and network, in double
// precision, and check_layer_passes: the library's own layer checker
// (opnorm/testing/check_layer.hpp) with each of its results asserted.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include <opnorm/nn/sequential.hpp>
#include <opnorm/testing/check_layer.hpp>

#include "test_backends.hpp"

namespace opnorm::testing {

// The helpers take tensors on any backend whose memory the host can read:
// the cpu backend and the Thrust host systems.
using tensor_d = tensor<double>;

template <class B = backend::cpu>
tensor<double, B> random_tensor(const shape_t& shape, std::mt19937_64& rng, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> d(lo, hi);
  tensor<double, B> t(shape);
  for (index_t i = 0; i < t.size(); ++i) t[i] = d(rng);
  return t;
}

template <class B>
double dot(const tensor<double, B>& a, const tensor<double, B>& b) {
  REQUIRE(a.size() == b.size());
  double s = 0;
  for (index_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

template <class B>
double norm(const tensor<double, B>& a) {
  return std::sqrt(dot(a, a));
}

/// ||a - b|| / max(||a||, ||b||), 0 when both are 0.
template <class B>
double relative_error(const tensor<double, B>& a, const tensor<double, B>& b) {
  REQUIRE(a.shape() == b.shape());
  double diff = 0;
  for (index_t i = 0; i < a.size(); ++i) diff += (a[i] - b[i]) * (a[i] - b[i]);
  const double scale = std::max(norm(a), norm(b));
  return scale == 0 ? 0 : std::sqrt(diff) / scale;
}

/// Central differences of objective() with respect to every entry of t.
template <class B, class Objective>
tensor<double, B> finite_difference_gradient(tensor<double, B>& t, Objective&& objective, double h = 1e-6) {
  tensor<double, B> fd(t.shape());
  for (index_t i = 0; i < t.size(); ++i) {
    const double keep = t[i];
    t[i] = keep + h;
    const double up = objective();
    t[i] = keep - h;
    const double down = objective();
    t[i] = keep;
    fd[i] = (up - down) / (2 * h);
  }
  return fd;
}

/// Runs the shipped opnorm::testing::check_layer (include/opnorm/testing/
/// check_layer.hpp) on layer at x and CHECKs each of its results: vjp with
/// respect to the input and to every trainable parameter, jvp, the adjointness
/// of vjp and jvp, and jvp_parameter_vjp where the layer has it, each against
/// central finite differences (step h) with relative error below tolerance.
template <class Layer>
void check_layer_passes(Layer& layer, const tensor<double, typename Layer::backend_type>& x, mode m,
                        double tolerance = 1e-6, double h = 1e-6, std::uint64_t seed = 7) {
  const layer_check_report report = check_layer(layer, x, m, tolerance, h, seed);
  INFO(report.describe());
  REQUIRE(!report.checks.empty());
  for (const layer_check& c : report.checks) {
    CAPTURE(c.name);
    CHECK(c.error < c.tolerance);
  }
}

}  // namespace opnorm::testing
