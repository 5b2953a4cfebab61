// The analysis API on linear networks, where every answer is known exactly:
// the input Jacobian is the product of the weight matrices (biases and the
// standardization offset drop out), the network equals its linearization
// everywhere, and J_f(x + z) does not depend on z. Double precision.
#include "analysis_test_helpers.hpp"

#include <Eigen/SVD>

#include <opnorm/analysis/analysis.hpp>
#include <opnorm/nn/layers/conv2d.hpp>
#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/flatten.hpp>
#include <opnorm/nn/layers/standardize.hpp>

using namespace opnorm;
using namespace opnorm::testing;
using analysis::matrix;

namespace {

using row_major = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

matrix<double> dense_matrix(const dense<double>& layer) {
  return Eigen::Map<const row_major>(layer.weight().data(), layer.out_features(), layer.in_features());
}

// The convolution as a matrix from (c, y, x) to (o, y', x'), built from its
// definition (cross-correlation with zero padding), independently of the
// layer's im2col lowering.
matrix<double> conv_matrix(const conv2d<double>& conv, index_t height, index_t width) {
  const index_t c_in = conv.in_channels(), c_out = conv.out_channels(), k = conv.kernel_size();
  const index_t s = conv.stride(), p = conv.padding();
  const index_t h_out = (height + 2 * p - k) / s + 1, w_out = (width + 2 * p - k) / s + 1;
  matrix<double> m = matrix<double>::Zero(c_out * h_out * w_out, c_in * height * width);
  const tensor_d& w = conv.weight();
  for (index_t o = 0; o < c_out; ++o)
    for (index_t oy = 0; oy < h_out; ++oy)
      for (index_t ox = 0; ox < w_out; ++ox)
        for (index_t c = 0; c < c_in; ++c)
          for (index_t ky = 0; ky < k; ++ky)
            for (index_t kx = 0; kx < k; ++kx) {
              const index_t iy = oy * s - p + ky, ix = ox * s - p + kx;
              if (iy < 0 || iy >= height || ix < 0 || ix >= width) continue;
              m((o * h_out + oy) * w_out + ox, (c * height + iy) * width + ix) += w(o, c, ky, kx);
            }
  return m;
}


using two_dense = sequential<dense<double>, dense<double>>;
two_dense make_two_dense() {
  two_dense net(dense<double>(12, 7), dense<double>(7, 5));
  net.initialize(21);
  // Biases that are far from zero: the Jacobian must not see them.
  for (auto* b : {&net.layer<0>().bias(), &net.layer<1>().bias()})
    for (index_t i = 0; i < b->size(); ++i) (*b)[i] += 3.0;
  return net;
}

// standardize -> conv(2->3, pad 1) -> conv(3->2, stride 2, pad 1) -> flatten -> dense(18->4):
// a linear (affine) network on 2 x 6 x 6 images.
using linear_cnn = sequential<standardize<double>, conv2d<double>, conv2d<double>, flatten<double>, dense<double>>;
linear_cnn make_linear_cnn() {
  linear_cnn net(standardize<double>({0.3, 0.5}, {0.2, 0.4}), conv2d<double>(2, 3, 3, 1, 1),
                 conv2d<double>(3, 2, 3, 2, 1), flatten<double>{}, dense<double>(18, 4));
  net.initialize(22);
  return net;
}

// a_{L-1} of the linear CNN: the flattened output of the second convolution.
matrix<double> linear_cnn_penultimate_matrix(const linear_cnn& net) {
  matrix<double> standardization = matrix<double>::Zero(72, 72);
  for (index_t i = 0; i < 72; ++i) standardization(i, i) = 1.0 / (i < 36 ? 0.2 : 0.4);
  return conv_matrix(net.layer<2>(), 6, 6) * conv_matrix(net.layer<1>(), 6, 6) * standardization;
}

// Every exact answer the analysis API must reproduce on a linear network
// whose Jacobian (logits) is `expected` and whose a_{L-1} Jacobian is
// `expected_penultimate`.
template <class Model>
void check_linear_network(Model& net, const tensor_d& x, const matrix<double>& expected,
                          const matrix<double>& expected_penultimate) {
  const auto n = static_cast<std::size_t>(x.dim(0));
  const index_t classes = expected.rows();

  SUBCASE("exact extraction, both ways, is the weight product") {
    const auto by_vjp = analysis::jacobian_by_vjp(net, x);
    const auto by_jvp = analysis::jacobian_by_jvp(net, x);
    const auto penultimate = analysis::jacobian_by_jvp(net, x, analysis::penultimate_output);
    REQUIRE(by_vjp.size() == n);
    for (std::size_t i = 0; i < n; ++i) {
      CHECK(relative_difference(by_vjp[i], expected) < 1e-12);
      CHECK(relative_difference(by_jvp[i], expected) < 1e-12);
      CHECK(relative_difference(penultimate[i], expected_penultimate) < 1e-12);
    }
  }

  SUBCASE("regression extraction is the weight product, and its offset is f(x)") {
    const tensor_d logits = net.predict(x);
    for (double radius : {analysis::default_regression_radius<double>(), 1.0}) {
      CAPTURE(radius);
      analysis::regression_options<double> o;
      o.radius = radius;
      o.batch_size = 17;  // forward passes in uneven chunks must not matter
      const auto fits = analysis::fit_affine_maps(net, x, o);
      for (std::size_t i = 0; i < n; ++i) {
        CHECK(relative_difference(fits[i].weight, expected) < 1e-9);
        // An affine map leaves only the rounding of y, epsilon |y|, against
        // the spread r |J| of the samples: ~1e-11 at r = 1e-4 here.
        CHECK(fits[i].relative_residual < 1e-13 / radius);
        for (index_t j = 0; j < classes; ++j)
          CHECK(std::abs(fits[i].offset(j) - logits(static_cast<index_t>(i), j)) < 1e-10 * (1 + std::abs(logits(static_cast<index_t>(i), j))));
      }
      o.until = analysis::penultimate_output;
      const auto penultimate = analysis::jacobian_by_regression(net, x, o);
      for (std::size_t i = 0; i < n; ++i) CHECK(relative_difference(penultimate[i], expected_penultimate) < 1e-9);
    }
  }

  SUBCASE("the spectrum is the SVD of the weight product") {
    const Eigen::JacobiSVD<matrix<double>> reference(expected, Eigen::ComputeThinV);
    const auto jacobians = analysis::jacobian_by_vjp(net, x);
    const analysis::curve_samples by_rank = analysis::singular_values(jacobians);
    REQUIRE(by_rank.size() == static_cast<std::size_t>(reference.singularValues().size()));
    for (std::size_t r = 0; r < by_rank.size(); ++r) {
      REQUIRE(by_rank[r].size() == n);
      for (double s : by_rank[r])
        CHECK(std::abs(s - reference.singularValues()(static_cast<Eigen::Index>(r))) < 1e-12 * reference.singularValues()(0));
    }
    const auto s = analysis::spectrum(jacobians.front());
    for (std::size_t r = 0; r + 1 < s.singular_values.size(); ++r) CHECK(s.singular_values[r] >= s.singular_values[r + 1]);
    // J = U diag(sigma) V^T, with orthonormal columns.
    const matrix<double> rebuilt = s.left_singular_vectors *
                                   Eigen::Map<const Eigen::VectorXd>(s.singular_values.data(), static_cast<Eigen::Index>(s.singular_values.size())).asDiagonal() *
                                   s.right_singular_vectors.transpose();
    CHECK(relative_difference(rebuilt, expected) < 1e-12);
    const auto k = s.right_singular_vectors.cols();
    CHECK((s.right_singular_vectors.transpose() * s.right_singular_vectors - matrix<double>::Identity(k, k)).norm() < 1e-12);
  }

  SUBCASE("no deviation from linearity and a constant sigma_max, along random and adversarial directions") {
    const Eigen::JacobiSVD<matrix<double>> reference(expected);
    const auto& sv = reference.singularValues();
    // A gap the power method resolves in 300 iterations: sigma's error
    // shrinks like (sigma_2 / sigma_1)^(2k) < 0.95^600 = 4e-14.
    REQUIRE(sv(1) < 0.95 * sv(0));
    const double penultimate_norm = Eigen::JacobiSVD<matrix<double>>(expected_penultimate).singularValues()(0);
    typename Model::tape t;
    const tensor_d phi_x = net.forward(x, t, mode::eval, Model::depth - 1);

    analysis::distance_profile_options<double> o;
    o.radii = {0.0, 0.01, 0.3, 1.0, 5.0};
    o.power_iterations = 300;
    label_tensor<> y({x.dim(0)});
    for (index_t i = 0; i < x.dim(0); ++i) y[i] = static_cast<std::int32_t>(i % classes);
    attack_options<double> attack;
    attack.iterations = 5;

    std::vector<analysis::distance_profile<double>> profiles = {
        analysis::profile_along_random_directions(net, x, o),
        analysis::profile_along_random_directions<linf>(net, x, o),
        analysis::profile_along_adversarial_directions(net, x, y, attack, o),
        analysis::profile_along_adversarial_directions(net, x, y, attack, o,
                                                       analysis::adversarial_direction::attack_at_largest_radius)};
    for (std::size_t p = 0; p < profiles.size(); ++p) {
      CAPTURE(p);
      const auto& profile = profiles[p];
      REQUIRE(profile.deviation.size() == o.radii.size());
      REQUIRE(profile.sigma_max.size() == o.radii.size());
      for (std::size_t r = 0; r < o.radii.size(); ++r) {
        CAPTURE(r);
        // The only error left is the rounding of phi itself: relative to
        // ||phi(x)|| + ||J_phi z|| (with ||z||_2 <= sqrt(inputs) r for linf).
        const double z_bound = o.radii[r] * std::sqrt(static_cast<double>(x.example_size()));
        for (std::size_t i = 0; i < n; ++i) {
          double phi_norm = 0;
          for (index_t j = 0; j < phi_x.example_size(); ++j)
            phi_norm += phi_x[static_cast<index_t>(i) * phi_x.example_size() + j] * phi_x[static_cast<index_t>(i) * phi_x.example_size() + j];
          CHECK(profile.deviation[r][i] <= 1e-12 * (std::sqrt(phi_norm) + penultimate_norm * z_bound));
          // Same start and same operator at every radius: the same sigma.
          CHECK(std::abs(profile.sigma_max[r][i] - profile.sigma_max[0][i]) <= 1e-14 * sv(0));
          CHECK(std::abs(profile.sigma_max[r][i] - sv(0)) <= 1e-10 * sv(0));
        }
      }
    }
  }
}

}  // namespace

TEST_CASE("analysis on dense -> dense (no nonlinearity)") {
  two_dense net = make_two_dense();
  std::mt19937_64 rng(1);
  const tensor_d x = random_tensor({3, 12}, rng, 0.0, 1.0);
  const matrix<double> w1 = dense_matrix(net.layer<0>()), w2 = dense_matrix(net.layer<1>());
  check_linear_network(net, x, w2 * w1, w1);
}

TEST_CASE("analysis on a linear CNN: standardize, two convolutions, flatten, dense") {
  linear_cnn net = make_linear_cnn();
  std::mt19937_64 rng(2);
  const tensor_d x = random_tensor({2, 2, 6, 6}, rng, 0.0, 1.0);
  const matrix<double> penultimate = linear_cnn_penultimate_matrix(net);
  check_linear_network(net, x, dense_matrix(net.layer<4>()) * penultimate, penultimate);
}

TEST_CASE("a single dense layer: its Jacobian is W, and a_{L-1} is the input itself") {
  sequential<dense<double>> net(dense<double>(9, 4));
  net.initialize(5);
  std::mt19937_64 rng(3);
  const tensor_d x = random_tensor({2, 9}, rng, 0.0, 1.0);
  check_linear_network(net, x, dense_matrix(net.layer<0>()), matrix<double>::Identity(9, 9));
}

TEST_CASE("until outside the network is an error that names the depth") {
  two_dense net = make_two_dense();
  std::mt19937_64 rng(4);
  const tensor_d x = random_tensor({1, 12}, rng);
  CHECK_THROWS_WITH_AS(analysis::jacobian_by_jvp(net, x, 3), doctest::Contains("2 layers"), std::invalid_argument);
  analysis::regression_options<double> o;
  o.samples = 12;  // one short of inputs + 1
  CHECK_THROWS_WITH_AS(analysis::fit_affine_maps(net, x, o), doctest::Contains("at least 13 samples"), std::invalid_argument);
}

TEST_CASE("float models: the same API, with float-level agreement") {
  using float_net = sequential<dense<float>, dense<float>>;
  float_net net(dense<float>(12, 7), dense<float>(7, 5));
  net.initialize(23);
  tensor<float> x({2, 12});
  std::mt19937_64 rng(6);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (index_t i = 0; i < x.size(); ++i) x[i] = u(rng);
  const auto w1 = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(net.layer<0>().weight().data(), 7, 12).cast<double>();
  const auto w2 = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(net.layer<1>().weight().data(), 5, 7).cast<double>();
  const matrix<double> expected = w2 * w1;

  const auto exact = analysis::jacobian_by_vjp(net, x);
  analysis::regression_options<float> o;  // free activations, radius epsilon_float^(1/3) = 4.9e-3
  const auto fitted = analysis::jacobian_by_regression(net, x, o);
  o.activations = analysis::regression_activations::fixed_at_x;
  const auto frozen = analysis::jacobian_by_regression(net, x, o);
  for (std::size_t i = 0; i < 2; ++i) {
    CHECK(relative_difference(exact[i].cast<double>(), expected) < 1e-6);
    // Free mode: float rounding of y (6e-8 |y|) over r |J|, times the
    // conditioning: ~1e-5.
    CHECK(relative_difference(fitted[i].cast<double>(), expected) < 1e-4);
    // Fixed mode: only the float rounding of the JVPs themselves.
    CHECK(relative_difference(frozen[i].cast<double>(), expected) < 1e-6);
  }
  const auto s = analysis::singular_values(exact.front());
  const Eigen::JacobiSVD<matrix<double>> reference(expected);
  for (std::size_t r = 0; r < s.size(); ++r) CHECK(std::abs(s[r] - reference.singularValues()(static_cast<Eigen::Index>(r))) < 1e-6 * reference.singularValues()(0));

  analysis::distance_profile_options<float> p;
  p.radii = {0.5f};
  p.power_iterations = 0;
  const auto profile = analysis::profile_along_random_directions(net, x, p);
  for (double deviation : profile.deviation[0]) CHECK(deviation < 1e-5);
}
