#pragma once
// One generic finite-difference checker for every layer and network, in
// double precision: central differences of the forward pass against the
// layer's VJP (input and parameters) and JVP.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include <opnorm/sequential.hpp>

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

/// Checks vjp (input and every trainable parameter) and jvp of a layer at x
/// against central finite differences with step h. The scalar probed is
/// <gy, f(x)> for a random gy, so every output contributes.
template <class Layer>
void check_layer(Layer& layer, const tensor<double, typename Layer::backend_type>& x, mode m, double tolerance = 1e-6,
                 double h = 1e-6, std::uint64_t seed = 7) {
  using B = typename Layer::backend_type;
  using tensor_d = tensor<double, B>;
  std::mt19937_64 rng(seed);
  typename Layer::cache cache;
  tensor_d y;
  layer.forward(x, y, cache, m);
  const tensor_d gy = random_tensor<B>(y.shape(), rng);

  auto probe = [&](const tensor_d& input) {
    typename Layer::cache c;
    tensor_d out;
    layer.forward(input, out, c, m);
    return dot(gy, out);
  };

  // Parameter gradients accumulate; start from zero.
  state_list<double, B> state;
  layer.collect_state(state, "");
  for (auto& p : state.parameters) p.grad->set_zero();

  // Forward again so the cache belongs to x (probes above used their own).
  layer.forward(x, y, cache, m);
  tensor_d gx;
  layer.vjp(x, y, cache, gy, &gx, true);

  SUBCASE("vjp with respect to the input") {
    tensor_d xp = x;
    CHECK(relative_error(gx, finite_difference_gradient(xp, [&] { return probe(xp); }, h)) < tolerance);
  }
  SUBCASE("vjp with respect to the parameters") {
    for (auto& p : state.parameters) {
      CAPTURE(p.name);
      CHECK(relative_error(*p.grad, finite_difference_gradient(*p.value, [&] { return probe(x); }, h)) < tolerance);
    }
  }
  SUBCASE("jvp") {
    const tensor_d dx = random_tensor<B>(x.shape(), rng);
    tensor_d jv;
    layer.forward(x, y, cache, m);
    layer.jvp(x, y, cache, dx, jv);
    tensor_d xp = x, xm = x;
    for (index_t i = 0; i < x.size(); ++i) {
      xp[i] += h * dx[i];
      xm[i] -= h * dx[i];
    }
    typename Layer::cache cp, cm;
    tensor_d yp, ym;
    layer.forward(xp, yp, cp, m);
    layer.forward(xm, ym, cm, m);
    tensor_d fd(y.shape());
    for (index_t i = 0; i < fd.size(); ++i) fd[i] = (yp[i] - ym[i]) / (2 * h);
    CHECK(relative_error(jv, fd) < tolerance);
  }
}

}  // namespace opnorm::testing
