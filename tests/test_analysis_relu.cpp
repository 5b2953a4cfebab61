// The analysis API on a small ReLU network (dense-relu-dense). Inside the
// linear region of x (every ReLU decision the same as at x) the network is
// exactly affine, so the regression extraction must agree with the exact one
// there; this is checked at every sampled point, not assumed. Outside it the
// fit breaks down and the deviation from linearity grows. Double precision.
#include "analysis_test_helpers.hpp"

#include <opnorm/analysis/analysis.hpp>
#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/relu.hpp>

using namespace opnorm;
using namespace opnorm::testing;
using analysis::matrix;

namespace {



using mlp = sequential<dense<double>, relu<double>, dense<double>>;
mlp make_mlp() {
  mlp net(dense<double>(10, 32), relu<double>{}, dense<double>(32, 5));
  net.initialize(31);
  return net;
}

}  // namespace

TEST_CASE("dense-relu-dense: regression equals the exact Jacobian inside the linear region, not outside") {
  mlp net = make_mlp();
  std::mt19937_64 rng(1);
  const tensor_d x = random_tensor({3, 10}, rng, 0.0, 1.0);
  const auto exact = analysis::jacobian_by_vjp(net, x);
  mlp::tape at_x, at_points;
  net.forward(x, at_x, mode::eval);

  SUBCASE("a small ball stays in the linear region, and the two extractions agree") {
    const analysis::regression_options<double> o;  // the default radius, 1.2e-4
    const auto fits = analysis::fit_affine_maps(net, x, o);
    for (index_t i = 0; i < x.dim(0); ++i) {
      CAPTURE(i);
      net.forward(analysis::regression_points(x, i, o), at_points, mode::eval);
      REQUIRE(pattern_changes(at_x.activations[1], i, at_points.activations[1]) == 0);
      // In the region the fit is exact up to rounding: epsilon |y| over the
      // signal r |J| is ~1e-12 here; 1e-8 leaves room for the conditioning
      // of the samples (about 6, see regression_jacobian.hpp).
      const auto& fit = fits[static_cast<std::size_t>(i)];
      CHECK(relative_difference(fit.weight, exact[static_cast<std::size_t>(i)]) < 1e-8);
      CHECK(fit.relative_residual < 1e-8);
    }
  }

  SUBCASE("a large ball crosses activation boundaries, and the fit is no Jacobian") {
    analysis::regression_options<double> o;
    o.radius = 3.0;
    const auto fits = analysis::fit_affine_maps(net, x, o);
    for (index_t i = 0; i < x.dim(0); ++i) {
      CAPTURE(i);
      net.forward(analysis::regression_points(x, i, o), at_points, mode::eval);
      REQUIRE(pattern_changes(at_x.activations[1], i, at_points.activations[1]) > 0);
      const auto& fit = fits[static_cast<std::size_t>(i)];
      CHECK(relative_difference(fit.weight, exact[static_cast<std::size_t>(i)]) > 1e-3);
      CHECK(fit.relative_residual > 1e-3);
    }
  }
}

TEST_CASE("dense-relu-dense: the one-JVP deviation equals the explicit one and grows with the radius") {
  mlp net = make_mlp();
  std::mt19937_64 rng(2);
  const tensor_d x = random_tensor({4, 10}, rng, 0.0, 1.0);

  // Against phi(x + z) - phi(x) - J_phi z with J_phi extracted as a matrix.
  const auto jacobians = analysis::jacobian_by_jvp(net, x, analysis::penultimate_output);
  const tensor_d z = random_tensor(x.shape(), rng, -1.0, 1.0);
  const auto deviation = analysis::deviation_from_linearity(net, x, z);
  mlp::tape t;
  const tensor_d phi_x = net.forward(x, t, mode::eval, 2);
  tensor_d shifted = x;
  for (index_t k = 0; k < x.size(); ++k) shifted[k] += z[k];
  const tensor_d phi_shifted = net.forward(shifted, t, mode::eval, 2);
  for (index_t i = 0; i < x.dim(0); ++i) {
    Eigen::VectorXd zi(10), change(32);
    for (index_t k = 0; k < 10; ++k) zi(k) = shifted(i, k) - x(i, k);
    for (index_t k = 0; k < 32; ++k) change(k) = phi_shifted(i, k) - phi_x(i, k);
    const double expected = (change - jacobians[static_cast<std::size_t>(i)] * zi).norm();
    REQUIRE(expected > 1e-3);  // this z leaves the region: there is something to measure
    CHECK(std::abs(deviation[static_cast<std::size_t>(i)] - expected) < 1e-12 * expected);
  }

  // With one ReLU layer, each unit's deviation along a ray z = r d,
  // |relu(a + r b) - relu(a) - r b [a > 0]|, is zero until the unit's
  // boundary is crossed and grows linearly after it, so the norm is
  // non-decreasing in r: exactly, not only on average.
  analysis::distance_profile_options<double> o;
  o.radii = {0.0, 1e-4, 0.1, 0.3, 1.0, 3.0, 10.0};
  o.power_iterations = 0;
  label_tensor<> y({4});
  for (index_t i = 0; i < 4; ++i) y[i] = static_cast<std::int32_t>(i);
  attack_options<double> attack;
  attack.clip_to_box = false;  // keep the adversarial direction's length at every radius
  const auto random = analysis::profile_along_random_directions(net, x, o);
  const auto adversarial = analysis::profile_along_adversarial_directions(net, x, y, attack, o,
                                                                          analysis::adversarial_direction::attack_at_largest_radius);
  for (const auto* profile : {&random, &adversarial}) {
    CHECK(profile->sigma_max.empty());
    for (std::size_t i = 0; i < 4; ++i) {
      CAPTURE(i);
      CHECK(profile->deviation[0][i] == 0.0);
      CHECK(profile->deviation[1][i] < 1e-15);  // inside the region: rounding only
      for (std::size_t r = 1; r < o.radii.size(); ++r) CHECK(profile->deviation[r][i] >= profile->deviation[r - 1][i] - 1e-14);
      CHECK(profile->deviation.back()[i] > 1e-2);
    }
  }
}


TEST_CASE("dense-relu-dense: sigma_max(J_f(x + z)) over the distance is the SVD's at every probe point") {
  mlp net = make_mlp();
  std::mt19937_64 rng(5);
  const tensor_d x = random_tensor({3, 10}, rng, 0.0, 1.0);
  label_tensor<> y({3});
  for (index_t i = 0; i < 3; ++i) y[i] = static_cast<std::int32_t>(i);

  analysis::distance_profile_options<double> o;
  o.radii = {0.0, 0.1, 0.5, 2.0};
  o.power_iterations = 4000;  // a 5 x 10 Jacobian: cheap, and converged for any gap below 0.99
  const auto random = analysis::profile_along_random_directions(net, x, o);
  const auto adversarial = analysis::profile_along_adversarial_directions(net, x, y, attack_options<double>{}, o);
  bool sigma_changes = false;
  for (const auto* profile : {&random, &adversarial}) {
    REQUIRE(profile->directions.size() == o.radii.size());
    for (std::size_t r = 0; r < o.radii.size(); ++r) {
      CAPTURE(r);
      tensor_d point = x;
      for (index_t k = 0; k < x.size(); ++k) point[k] += o.radii[r] * profile->directions[r][k];
      const auto jacobians = analysis::jacobian_by_vjp(net, point);
      for (std::size_t i = 0; i < 3; ++i) {
        const auto s = analysis::singular_values(jacobians[i]);
        REQUIRE(s[1] < 0.99 * s[0]);  // sigma's error < 0.99^8000: none
        CHECK(std::abs(profile->sigma_max[r][i] - s[0]) < 1e-12 * s[0]);
        sigma_changes = sigma_changes || std::abs(profile->sigma_max[r][i] - profile->sigma_max[0][i]) > 1e-3 * s[0];
      }
    }
  }
  CHECK(sigma_changes);  // the radii reach other linear regions, with other Jacobians
}
