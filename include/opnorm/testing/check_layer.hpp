#pragma once
// opnorm::testing::check_layer: checks a layer's derivatives numerically,
// for anyone writing a layer (as dlib's test_layer does for dlib's).
//
// It runs a layer instantiated with T = double at an input x and measures,
// against central finite differences of its own forward pass:
//   - vjp's input gradient J^T gy,
//   - vjp's gradient of every trainable parameter,
//   - jvp's J dx,
//   - that vjp and jvp are adjoint: <J dx, gy> = <dx, J^T gy>,
//   - jvp_parameter_vjp, where the layer has it: d<g, J(x; theta) dx>/dtheta
//     at fixed x, for every parameter (data-dependent SNR's Eq. 8 term),
//     against central differences in theta of <g, jvp(dx)>. It
//     differentiates the layer's own jvp, as sequential composes it (finite
//     differences of finite differences would be too noisy to check
//     against), so a wrong jvp fails this check as well as the jvp check.
// gy, dx and g are random (seeded), so every output contributes. The result
// lists each check with its measured relative error and the tolerance; the
// caller asserts on it with its test framework (nothing here needs one).
//
// It reads and writes tensors through to_vector and copy_from_host only, so
// it runs on every backend. The layer's parameters are perturbed and
// restored exactly; its parameter gradients are overwritten.
//
// Not part of the umbrella header opnorm.hpp: it is a tool for tests.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../nn/layers/layer_concept.hpp"

namespace opnorm::testing {

/// One check: what was compared, the relative error measured, the
/// tolerance, and whether error < tolerance (a NaN error fails).
struct layer_check {
  std::string name;
  double error = 0;
  double tolerance = 0;
  bool passed = false;
};

/// What check_layer found, check by check.
struct layer_check_report {
  std::vector<layer_check> checks;

  /// True when every check passed (and there was at least one).
  bool passed() const {
    return !checks.empty() && std::all_of(checks.begin(), checks.end(), [](const layer_check& c) { return c.passed; });
  }

  /// The check of that name, or null.
  const layer_check* find(const std::string& name) const {
    for (const auto& c : checks)
      if (c.name == name) return &c;
    return nullptr;
  }

  /// One line: "all 5 checks passed (largest error 3.1e-10 in jvp)", or the
  /// failed checks with their errors and tolerances.
  std::string describe() const {
    std::ostringstream s;
    s.precision(3);
    std::size_t failed = 0;
    for (const auto& c : checks) failed += c.passed ? 0 : 1;
    if (failed == 0) {
      const layer_check* worst = nullptr;
      for (const auto& c : checks)
        if (!worst || c.error / c.tolerance > worst->error / worst->tolerance) worst = &c;
      s << "check_layer: all " << checks.size() << " checks passed";
      if (worst) s << " (largest error " << worst->error << " in " << worst->name << ")";
      return s.str();
    }
    s << "check_layer: " << failed << " of " << checks.size() << " checks failed:";
    const char* separator = " ";
    for (const auto& c : checks) {
      if (c.passed) continue;
      s << separator << c.name << " (error " << c.error << ", tolerance " << c.tolerance << ")";
      separator = "; ";
    }
    return s.str();
  }
};

/// Check names, as check_layer reports them.
inline std::string vjp_input_check() { return "vjp with respect to the input"; }
inline std::string vjp_parameter_check(const std::string& parameter) {
  return "vjp with respect to parameter '" + parameter + "'";
}
inline std::string jvp_check() { return "jvp"; }
inline std::string adjoint_check() { return "vjp is the adjoint of jvp"; }
inline std::string jvp_parameter_vjp_check(const std::string& parameter) {
  return "jvp_parameter_vjp with respect to parameter '" + parameter + "'";
}

namespace detail {

inline double host_dot(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size())
    throw std::invalid_argument("opnorm::testing::check_layer: vectors of " + std::to_string(a.size()) + " and " +
                                std::to_string(b.size()) + " elements");
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

/// ||a - b|| / max(||a||, ||b||), 0 when both are 0.
inline double host_relative_error(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size())
    throw std::invalid_argument("opnorm::testing::check_layer: comparing " + std::to_string(a.size()) + " with " +
                                std::to_string(b.size()) + " elements");
  double diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff += (a[i] - b[i]) * (a[i] - b[i]);
  const double scale = std::max(std::sqrt(host_dot(a, a)), std::sqrt(host_dot(b, b)));
  return scale == 0 ? 0 : std::sqrt(diff) / scale;
}

/// |a - b| / max(|a|, |b|), 0 when both are 0.
inline double scalar_relative_error(double a, double b) {
  const double scale = std::max(std::abs(a), std::abs(b));
  return scale == 0 ? 0 : std::abs(a - b) / scale;
}

inline std::vector<double> random_values(std::size_t n, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  std::vector<double> v(n);
  for (auto& e : v) e = d(rng);
  return v;
}

/// Central differences of objective() with respect to every entry of t,
/// which is written through the host: (f(t + h e_i) - f(t - h e_i)) / 2h.
template <class B, class Objective>
std::vector<double> central_differences(tensor<double, B>& t, Objective&& objective, double h) {
  std::vector<double> values = t.to_vector();
  std::vector<double> fd(values.size());
  auto store = [&] { backend_ops<B>::copy_from_host(values.data(), t.size(), t.data()); };
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double keep = values[i];
    values[i] = keep + h;
    store();
    const double up = objective();
    values[i] = keep - h;
    store();
    const double down = objective();
    values[i] = keep;
    store();
    fd[i] = (up - down) / (2 * h);
  }
  return fd;
}

inline layer_check make_check(std::string name, double error, double tolerance) {
  return {std::move(name), error, tolerance, error < tolerance};
}

}  // namespace detail

/// Checks layer's derivatives at x in mode m against central finite
/// differences with step h (see the head of this file); each check passes
/// when its relative error is below tolerance. seed draws gy, dx and g.
template <class Layer>
layer_check_report check_layer(Layer& layer, const tensor<double, typename Layer::backend_type>& x, mode m,
                               double tolerance = 1e-6, double h = 1e-6, std::uint64_t seed = 7) {
  static_assert(check_layer_contract<Layer>(), "check_layer needs a layer (see the messages above)");
  static_assert(std::is_same_v<typename Layer::scalar, double>,
                "check_layer runs in double precision, where finite differences are accurate: instantiate the "
                "layer with T = double");
  using B = typename Layer::backend_type;
  using tensor_d = tensor<double, B>;
  layer_check_report report;
  std::mt19937_64 rng(seed);

  typename Layer::cache cache;
  tensor_d y;
  layer.forward(x, y, cache, m);
  const std::vector<double> gy_host = detail::random_values(static_cast<std::size_t>(y.size()), rng);
  const tensor_d gy = tensor_d::from_vector(y.shape(), gy_host);

  // <gy, f(input)>: every output contributes to the probed scalar.
  auto probe = [&](const tensor_d& input) {
    typename Layer::cache c;
    tensor_d out;
    layer.forward(input, out, c, m);
    return detail::host_dot(gy_host, out.to_vector());
  };

  // Parameter gradients accumulate; start from zero.
  state_list<double, B> state;
  layer.collect_state(state, "");
  for (auto& p : state.parameters) p.grad->set_zero();

  // Forward again so the cache belongs to x (the probes use their own).
  layer.forward(x, y, cache, m);
  tensor_d gx;
  layer.vjp(x, y, cache, gy, &gx, true);
  const std::vector<double> gx_host = gx.to_vector();

  {
    tensor_d xp = x;
    const std::vector<double> fd = detail::central_differences(xp, [&] { return probe(xp); }, h);
    report.checks.push_back(
        detail::make_check(vjp_input_check(), detail::host_relative_error(gx_host, fd), tolerance));
  }
  for (auto& p : state.parameters) {
    const std::vector<double> grad = p.grad->to_vector();
    const std::vector<double> fd = detail::central_differences(*p.value, [&] { return probe(x); }, h);
    report.checks.push_back(
        detail::make_check(vjp_parameter_check(p.name), detail::host_relative_error(grad, fd), tolerance));
  }

  const std::vector<double> dx_host = detail::random_values(static_cast<std::size_t>(x.size()), rng);
  const tensor_d dx = tensor_d::from_vector(x.shape(), dx_host);
  tensor_d jv;
  layer.forward(x, y, cache, m);
  layer.jvp(x, y, cache, dx, jv);
  const std::vector<double> jv_host = jv.to_vector();
  {
    const std::vector<double> x_host = x.to_vector();
    std::vector<double> xp = x_host, xm = x_host;
    for (std::size_t i = 0; i < x_host.size(); ++i) {
      xp[i] += h * dx_host[i];
      xm[i] -= h * dx_host[i];
    }
    typename Layer::cache cp, cm;
    tensor_d yp, ym;
    layer.forward(tensor_d::from_vector(x.shape(), xp), yp, cp, m);
    layer.forward(tensor_d::from_vector(x.shape(), xm), ym, cm, m);
    const std::vector<double> up = yp.to_vector(), down = ym.to_vector();
    std::vector<double> fd(up.size());
    for (std::size_t i = 0; i < fd.size(); ++i) fd[i] = (up[i] - down[i]) / (2 * h);
    report.checks.push_back(detail::make_check(jvp_check(), detail::host_relative_error(jv_host, fd), tolerance));
  }

  report.checks.push_back(detail::make_check(
      adjoint_check(),
      detail::scalar_relative_error(detail::host_dot(jv_host, gy_host), detail::host_dot(dx_host, gx_host)),
      tolerance));

  if constexpr (has_layer_jvp_parameter_vjp<Layer>::value) {
    // d<gy, J(x; theta) dx>/dtheta with x fixed: forward at x refreshes
    // whatever the layer caches from its parameters, then jvp.
    auto jvp_probe = [&] {
      typename Layer::cache c;
      tensor_d out, tangent;
      layer.forward(x, out, c, m);
      layer.jvp(x, out, c, dx, tangent);
      return detail::host_dot(gy_host, tangent.to_vector());
    };
    for (auto& p : state.parameters) p.grad->set_zero();
    layer.forward(x, y, cache, m);
    layer.jvp_parameter_vjp(x, y, cache, dx, gy);
    for (auto& p : state.parameters) {
      const std::vector<double> grad = p.grad->to_vector();
      const std::vector<double> fd = detail::central_differences(*p.value, jvp_probe, h);
      report.checks.push_back(
          detail::make_check(jvp_parameter_vjp_check(p.name), detail::host_relative_error(grad, fd), tolerance));
    }
  }
  return report;
}

}  // namespace opnorm::testing
