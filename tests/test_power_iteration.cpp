// The power-iteration kernel against exact linear algebra, in double, on
// every backend: sigma and v against a full SVD of the exact Jacobian of
// fmnist_cnn, the weight operator against the SVD of the reshaped kernel,
// and Theorem 1.
#include "gradient_check.hpp"

#include <Eigen/SVD>

#include <opnorm/analysis/jacobian.hpp>
#include <opnorm/networks.hpp>
#include <opnorm/power_iteration.hpp>

using namespace opnorm;
using namespace opnorm::testing;

namespace {

template <class B>
using net_d = fmnist_cnn<double, B>;

// A trained-like state for BatchNorm (non-trivial running statistics) so the
// eval-mode Jacobian is not the identity-normalized one.
template <class B>
net_d<B> make_net(std::uint64_t seed) {
  net_d<B> net = make_fmnist_cnn<double, B>(seed);
  std::mt19937_64 rng(seed + 100);
  tensor<double, B> warmup = random_tensor<B>({32, 1, 28, 28}, rng, 0.0, 1.0);
  typename net_d<B>::tape t;
  net.forward(warmup, t, mode::train);
  return net;
}

struct top_pair {
  double sigma, sigma2;
  Eigen::VectorXd v;
};

top_pair svd_top(const analysis::matrix<double>& J) {
  Eigen::JacobiSVD<analysis::matrix<double>> svd(J, Eigen::ComputeThinV);
  return {svd.singularValues()(0), svd.singularValues()(1), svd.matrixV().col(0)};
}

// |cos| between a and the a.size() entries of b starting at offset; b comes
// from a tensor's to_vector(), so nothing here reads backend memory.
double abs_cos(const Eigen::VectorXd& a, const std::vector<double>& b, std::size_t offset = 0) {
  REQUIRE(offset + static_cast<std::size_t>(a.size()) <= b.size());
  const Eigen::Map<const Eigen::VectorXd> bm(b.data() + offset, a.size());
  return std::abs(a.dot(bm)) / (a.norm() * bm.norm());
}

}  // namespace

TEST_CASE_TEMPLATE("exact-JVP power iteration matches the SVD of the exact Jacobian of fmnist_cnn", B,
                   OPNORM_TEST_BACKENDS) {
  net_d<B> net = make_net<B>(11);
  std::mt19937_64 rng(5);
  const tensor<double, B> x = random_tensor<B>({3, 1, 28, 28}, rng, 0.0, 1.0);
  const auto J = analysis::jacobian_by_vjp(net, x);

  iteration_options<double> o;
  o.iterations = 500;
  o.seed = 3;
  const auto pairs = power_iteration<jacobian_operator<exact_jvp>, l2, no_step>{}.run(net, x, nullptr, o);
  const std::vector<double> sigma = pairs.sigma.to_vector(), v = pairs.v.to_vector();
  for (std::size_t i = 0; i < 3; ++i) {
    CAPTURE(i);
    const top_pair top = svd_top(J[i]);
    REQUIRE(top.sigma2 < 0.95 * top.sigma);  // a spectral gap the iteration can resolve in 500 steps
    CHECK(std::abs(sigma[i] - top.sigma) / top.sigma < 1e-8);
    CHECK(abs_cos(top.v, v, i * 784) > 1 - 1e-8);
  }
}

TEST_CASE_TEMPLATE("the two exact Jacobian extractions agree", B, OPNORM_TEST_BACKENDS) {
  net_d<B> net = make_net<B>(12);
  std::mt19937_64 rng(6);
  const tensor<double, B> x = random_tensor<B>({2, 1, 28, 28}, rng, 0.0, 1.0);
  const auto by_vjp = analysis::jacobian_by_vjp(net, x);
  const auto by_jvp = analysis::jacobian_by_jvp(net, x);
  for (std::size_t i = 0; i < 2; ++i) CHECK((by_vjp[i] - by_jvp[i]).norm() / by_vjp[i].norm() < 1e-12);
}

TEST_CASE_TEMPLATE("sum-of-squares (finite-difference) power iteration matches the SVD for small eps", B,
                   OPNORM_TEST_BACKENDS) {
  net_d<B> net = make_net<B>(13);
  std::mt19937_64 rng(7);
  const tensor<double, B> x = random_tensor<B>({2, 1, 28, 28}, rng, 0.0, 1.0);
  const auto J = analysis::jacobian_by_vjp(net, x);
  iteration_options<double> o;
  o.iterations = 500;
  o.eps = 1e-6;
  const auto pairs = power_iteration<jacobian_operator<finite_difference>, l2, unbounded_step>{}.run(net, x, nullptr, o);
  const std::vector<double> sigma = pairs.sigma.to_vector(), v = pairs.v.to_vector();
  for (std::size_t i = 0; i < 2; ++i) {
    CAPTURE(i);
    const top_pair top = svd_top(J[i]);
    // Finite differences in double carry ~1e-16/eps relative rounding.
    CHECK(std::abs(sigma[i] - top.sigma) / top.sigma < 1e-7);
    CHECK(abs_cos(top.v, v, i * 784) > 1 - 1e-7);
  }
}

TEST_CASE_TEMPLATE("Theorem 1: PGA with the sum-of-squares loss and alpha -> infinity is the power method", B,
                   OPNORM_TEST_BACKENDS) {
  using net_t = net_d<B>;
  using tensor_t = tensor<double, B>;
  net_t net = make_net<B>(14);
  std::mt19937_64 rng(8);
  const tensor_t x = random_tensor<B>({2, 1, 28, 28}, rng, 0.0, 1.0);
  const double eps = 1e-5;  // small enough that the ball stays inside x's ReLU cell (checked below)
  tensor_t v0;
  l2::random_direction(x, 99, v0);

  iteration_options<double> o;
  o.iterations = 8;
  o.eps = eps;
  std::vector<tensor_t> pga_iterates, power_iterates, exact_iterates;
  auto record = [](std::vector<tensor_t>& into) {
    return [&into](int, const tensor_t& v, const tensor_t&, const tensor_t&) { into.push_back(v); };
  };
  using theorem_pga = power_iteration<jacobian_operator<loss_gradient<sum_of_squares>>, l2, unbounded_step>;
  using dd_snr = power_iteration<jacobian_operator<finite_difference>, l2, unbounded_step>;
  using power_method = power_iteration<jacobian_operator<exact_jvp>, l2, no_step>;
  typename theorem_pga::template workspace<net_t> w1;
  typename dd_snr::template workspace<net_t> w2;
  typename power_method::template workspace<net_t> w3;
  std::vector<tensor_t> points;
  const auto pga_result =
      theorem_pga{}.run(net, x, nullptr, o, w1, &v0, [&](int, const tensor_t& v, const tensor_t&, const tensor_t& p) {
        pga_iterates.push_back(v);
        points.push_back(p);
      });
  dd_snr{}.run(net, x, nullptr, o, w2, &v0, record(power_iterates));
  power_method{}.run(net, x, nullptr, o, w3, &v0, record(exact_iterates));

  // The ball is inside the cell: every ReLU and max-pool decision at each
  // iterate equals the one at x, so J_f is constant along the PGA path.
  typename net_t::tape at_x, at_p;
  net.forward(x, at_x, mode::eval);
  for (const auto& p : points) {
    net.forward(p, at_p, mode::eval);
    for (std::size_t a = 1; a < at_x.activations.size(); ++a) {
      const auto& u = at_x.activations[a];
      const auto& w = at_p.activations[a];
      index_t flips = 0;
      for (index_t k = 0; k < u.size(); ++k) flips += (u[k] > 0) != (w[k] > 0);
      REQUIRE(flips == 0);
    }
  }

  // The finite difference f(x + eps v) - f(x) is exact in the cell, but in
  // floating point x + eps v is stored with an absolute error of about
  // 2^-52 ||x||, which the difference divides by eps; the logits' own
  // rounding enters as 2^-52 ||f(x)|| / (eps sigma). That rounding, not the
  // mathematics, bounds how close the iterates can come to the exact JVP.
  double rounding = 0;
  for (index_t i = 0; i < 2; ++i) {
    double f_norm = 0, x_norm = 0;
    for (index_t j = 0; j < 10; ++j) f_norm += at_x.output()(i, j) * at_x.output()(i, j);
    for (index_t j = 0; j < 784; ++j) x_norm += x[i * 784 + j] * x[i * 784 + j];
    const double scale = std::max(std::sqrt(x_norm), std::sqrt(f_norm) / pga_result.sigma[i]);
    rounding = std::max(rounding, std::ldexp(1.0, -52) * scale / eps);
  }
  CAPTURE(rounding);

  REQUIRE(pga_iterates.size() == 8);
  for (std::size_t k = 0; k < pga_iterates.size(); ++k) {
    CAPTURE(k);
    // x_k = x + eps v_k with v_k the data-dependent power iterate ...
    CHECK(relative_error(pga_iterates[k], power_iterates[k]) < 1e-10);
    // ... which equals the exact power method on J_f(x), up to the rounding
    // of the finite difference (accumulated over k iterations).
    CHECK(relative_error(pga_iterates[k], exact_iterates[k]) < 10 * (k + 1) * rounding);
    tensor_t expected_point = x;
    for (index_t j = 0; j < x.size(); ++j) expected_point[j] += eps * pga_iterates[k][j];
    CHECK(relative_error(points[k], expected_point) == 0.0);
  }
  CHECK(relative_error(pga_result.v, power_iterates.back()) < 1e-10);
}

TEST_CASE_TEMPLATE("weight operator sigma matches the SVD of the reshaped conv kernel", B, OPNORM_TEST_BACKENDS) {
  net_d<B> net = make_net<B>(15);
  auto& conv = net.template layer<4>();  // conv3x3 32 -> 32: weight (32, 32, 3, 3) viewed as (32, 288)
  const tensor<double, B>& w = conv.weight();
  REQUIRE(w.shape() == shape_t{32, 32, 3, 3});
  const std::vector<double> w_host = w.to_vector();
  const Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> W(w_host.data(), 32,
                                                                                                   288);
  Eigen::JacobiSVD<analysis::matrix<double>> svd(W, Eigen::ComputeThinV | Eigen::ComputeThinU);

  tensor<double, B> u({32}), v;
  std::mt19937_64 rng(3);
  u = random_tensor<B>({32}, rng);
  const double sigma = power_iteration<weight_operator, l2, no_step>::run(w, u, v, 2000);
  CHECK(std::abs(sigma - svd.singularValues()(0)) / svd.singularValues()(0) < 1e-8);
  CHECK(abs_cos(svd.matrixV().col(0), v.to_vector()) > 1 - 1e-8);
  CHECK(abs_cos(svd.matrixU().col(0), u.to_vector()) > 1 - 1e-8);

  // The persistent u amortizes: one more call of one iteration stays converged.
  const double again = power_iteration<weight_operator, l2, no_step>::run(w, u, v, 1);
  CHECK(std::abs(again - sigma) / sigma < 1e-10);
}

TEST_CASE_TEMPLATE("power iteration leaves the model untouched and a zero Jacobian gives no NaN", B,
                   OPNORM_TEST_BACKENDS) {
  using net_t = net_d<B>;
  net_t net = make_net<B>(16);
  const auto before = net.state();
  std::vector<std::vector<double>> snapshot;
  for (auto& p : before.parameters) snapshot.push_back(p.value->to_vector());
  for (auto& b : before.buffers) snapshot.push_back(b.value->to_vector());

  tensor<double, B> x({2, 1, 28, 28}, 0.5);
  iteration_options<double> o;
  o.iterations = 3;
  o.eps = 0.1;
  power_iteration<jacobian_operator<finite_difference>, l2, unbounded_step>{}.run(net, x, nullptr, o);
  std::size_t k = 0;
  for (auto& p : before.parameters) CHECK(p.value->to_vector() == snapshot[k++]);
  for (auto& b : before.buffers) CHECK(b.value->to_vector() == snapshot[k++]);

  // A zero last layer makes J = 0: u = 0, g = 0, and v must be 0, not NaN.
  net.template layer<net_t::depth - 1>().weight().set_zero();
  const auto pairs = power_iteration<jacobian_operator<exact_jvp>, l2, no_step>{}.run(net, x, nullptr, o);
  for (double e : pairs.v.to_vector()) REQUIRE(e == 0.0);
  for (double s : pairs.sigma.to_vector()) CHECK(s == 0.0);
}
