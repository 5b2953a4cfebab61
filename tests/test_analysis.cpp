// Statistics, alignment and eps selection of the analysis API, on cases with
// known answers: hand-computed means and standard errors, perturbations equal
// to singular vectors, the exact mean |cosine| of random directions, PGA
// perturbations of a linear model (which lie in the row space of W), and the
// eps rule against a brute-force loop over the attack. Double precision.
#include "gradient_check.hpp"

#include <Eigen/SVD>

#include <cmath>
#include <limits>

#include <opnorm/analysis/alignment.hpp>
#include <opnorm/analysis/eps_selection.hpp>
#include <opnorm/analysis/statistics.hpp>
#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/relu.hpp>

using namespace opnorm;
using namespace opnorm::testing;
using analysis::matrix;

namespace {

matrix<double> random_matrix(index_t rows, index_t cols, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  matrix<double> m(rows, cols);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) m(i, j) = normal(rng);
  return m;
}

using mlp = sequential<dense<double>, relu<double>, dense<double>>;

// Three Gaussian blobs in [0,1]^8, labels by blob.
void make_blobs(index_t n, std::uint64_t seed, tensor_d& x, label_tensor<>& y) {
  const index_t d = 8, classes = 3;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> centre(0.2, 0.8);
  std::normal_distribution<double> noise(0.0, 0.06);
  std::vector<double> centres(static_cast<std::size_t>(classes * d));
  for (auto& c : centres) c = centre(rng);
  x = tensor_d({n, d});
  y = label_tensor<>({n});
  for (index_t i = 0; i < n; ++i) {
    y[i] = static_cast<std::int32_t>(i % classes);
    for (index_t j = 0; j < d; ++j)
      x(i, j) = std::clamp(centres[static_cast<std::size_t>(y[i] * d + j)] + noise(rng), 0.0, 1.0);
  }
}

// Full-batch gradient descent: enough for a classifier worth attacking.
mlp trained_classifier(const tensor_d& x, const label_tensor<>& y) {
  mlp net(dense<double>(8, 16), relu<double>{}, dense<double>(16, 3));
  net.initialize(7);
  mlp::tape t;
  tensor_d g;
  for (int step = 0; step < 300; ++step) {
    net.zero_grad();
    softmax_cross_entropy::evaluate(net.forward(x, t, mode::train), y, &g);
    net.vjp(t, g, nullptr, true);
    for (auto& p : net.state().parameters)
      for (index_t i = 0; i < p.value->size(); ++i) (*p.value)[i] -= 0.5 * (*p.grad)[i];
  }
  return net;
}

}  // namespace

TEST_CASE("summarize: mean and standard error of the mean") {
  const auto s = analysis::summarize(std::vector<double>{1, 2, 3, 4});
  CHECK(s.count == 4);
  CHECK(s.mean == 2.5);
  // Sample variance (1.5^2 + 0.5^2 + 0.5^2 + 1.5^2) / 3 = 5/3; SE = sqrt(5/3) / 2.
  CHECK(std::abs(s.standard_error - std::sqrt(5.0 / 3.0) / 2.0) < 1e-15);

  // A large common offset does not eat the spread (two passes).
  const auto offset = analysis::summarize(std::vector<double>{1e9 + 1, 1e9 + 2, 1e9 + 3});
  CHECK(offset.mean == 1e9 + 2);
  CHECK(std::abs(offset.standard_error - 1.0 / std::sqrt(3.0)) < 1e-12);

  const auto constant = analysis::summarize(std::vector<double>(5, 0.25));
  CHECK(constant.mean == 0.25);
  CHECK(constant.standard_error == 0.0);

  const auto single = analysis::summarize(std::vector<double>{7});
  CHECK(single.mean == 7);
  CHECK(std::isnan(single.standard_error));
  CHECK_THROWS_AS(analysis::summarize(std::vector<double>{}), std::invalid_argument);
}

TEST_CASE("curves: summarize per position, transpose, append batches") {
  // Per-example curves (3 examples, 2 positions) to curve samples.
  const analysis::curve_samples per_example = {{1, 10}, {2, 20}, {3, 60}};
  const analysis::curve_samples samples = analysis::transpose(per_example);
  REQUIRE(samples.size() == 2);
  CHECK(samples[0] == std::vector<double>{1, 2, 3});
  CHECK(samples[1] == std::vector<double>{10, 20, 60});
  CHECK(analysis::transpose(samples) == per_example);

  const auto c = analysis::summarize(samples);
  CHECK(c.mean == std::vector<double>{2, 30});
  CHECK(std::abs(c.standard_error[0] - 1.0 / std::sqrt(3.0)) < 1e-15);
  // Sample variance of {10, 20, 60}: (400 + 100 + 900) / 2 = 700.
  CHECK(std::abs(c.standard_error[1] - std::sqrt(700.0 / 3.0)) < 1e-12);
  CHECK(c.count == std::vector<std::size_t>{3, 3});
  CHECK(std::abs(c.upper()[1] - (30 + std::sqrt(700.0 / 3.0))) < 1e-12);
  CHECK(std::abs(c.lower()[0] - (2 - 1.0 / std::sqrt(3.0))) < 1e-15);

  // Two batches of test points summarize like one.
  analysis::curve_samples joined;
  analysis::append_examples(joined, analysis::transpose({{1, 10}, {2, 20}}));
  analysis::append_examples(joined, analysis::transpose({{3, 60}}));
  CHECK(joined == samples);

  CHECK_THROWS_AS(analysis::transpose({{1, 2}, {3}}), std::invalid_argument);
  CHECK_THROWS_AS(analysis::append_examples(joined, analysis::curve_samples(3)), std::invalid_argument);
  CHECK_THROWS_AS(analysis::summarize(analysis::curve_samples{{1.0}, {}}), std::invalid_argument);
}

TEST_CASE("alignment: singular vectors themselves, zero, and their combinations") {
  const matrix<double> J = random_matrix(10, 784, 1);
  const auto s = analysis::spectrum(J);
  REQUIRE(s.singular_values.size() == 10);
  REQUIRE(s.right_singular_vectors.rows() == 784);

  for (Eigen::Index r : {0, 4, 9}) {
    CAPTURE(r);
    const analysis::column_vector<double> delta = -2.5 * s.right_singular_vectors.col(r);  // sign and length do not matter
    const auto a = analysis::alignment_by_rank(delta, s);
    for (Eigen::Index q = 0; q < 10; ++q) CHECK(std::abs(a[static_cast<std::size_t>(q)] - (q == r ? 1.0 : 0.0)) < 1e-12);
  }

  // The top right singular vector from an SVD computed independently.
  const Eigen::JacobiSVD<matrix<double>> reference(J, Eigen::ComputeThinV);
  CHECK(std::abs(analysis::alignment_with_top(reference.matrixV().col(0), J) - 1.0) < 1e-12);
  CHECK(std::abs(analysis::alignment_with_top(reference.matrixV().col(1), J)) < 1e-12);

  // (v_1 + v_2) / sqrt 2: 1/sqrt 2 at ranks 1 and 2.
  const analysis::column_vector<double> mix = s.right_singular_vectors.col(0) + s.right_singular_vectors.col(1);
  const auto a = analysis::alignment_by_rank(mix, s);
  CHECK(std::abs(a[0] - std::sqrt(0.5)) < 1e-12);
  CHECK(std::abs(a[1] - std::sqrt(0.5)) < 1e-12);

  // No direction, no alignment (never NaN).
  const auto zero = analysis::alignment_by_rank(analysis::column_vector<double>::Zero(784), s);
  for (double v : zero) CHECK(v == 0.0);

  CHECK_THROWS_AS(analysis::alignment_by_rank(analysis::column_vector<double>::Zero(783), s), std::invalid_argument);
}

TEST_CASE("alignment of random directions: mean |cos| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)) ~ sqrt(2 / (pi d))") {
  const index_t d = 784, n = 300;
  const matrix<double> J = random_matrix(10, d, 2);
  std::mt19937_64 rng(3);
  const tensor_d x = random_tensor({n, d}, rng, 0.0, 1.0);
  tensor_d deltas;
  l2::random_direction(x, 11, deltas);
  const auto samples = analysis::alignment_by_rank(deltas, std::vector<analysis::svd_spectrum>(static_cast<std::size_t>(n), analysis::spectrum(J)));
  REQUIRE(samples.size() == 10);
  REQUIRE(samples[0].size() == static_cast<std::size_t>(n));

  // The first coordinate u_1 of a uniform unit vector in d dimensions has
  // E|u_1| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)), -> sqrt(2 / (pi d)).
  const double dd = static_cast<double>(d), pi = std::acos(-1.0);
  const double exact = std::exp(std::lgamma(dd / 2) - std::lgamma((dd + 1) / 2)) / std::sqrt(pi);
  CHECK(std::abs(exact / std::sqrt(2 / (pi * dd)) - 1) < 1e-3);

  std::vector<double> all;
  for (const auto& rank : samples) all.insert(all.end(), rank.begin(), rank.end());
  const auto s = analysis::summarize(all);
  CAPTURE(s.mean);
  CAPTURE(exact);
  CAPTURE(s.standard_error);
  // 3000 samples (dependent only through the 10 orthogonal v_r of one
  // direction, which makes them nearly independent): within 4 standard errors.
  CHECK(std::abs(s.mean - exact) < 4 * s.standard_error);
  // And no rank is special for a random direction.
  for (const auto& rank : samples) CHECK(std::abs(analysis::summarize(rank).mean - exact) < 4 * analysis::summarize(rank).standard_error);
}

TEST_CASE("PGA on a linear model moves inside the row space of W: alignments square-sum to 1") {
  // f(x) = W x + b: J = W (3 x 12), and every PGA step J^T u lies in the span
  // of the right singular vectors. Without a random start or box clip, the
  // perturbation stays there, so sum_r alignment_r^2 = 1.
  using linear_model = sequential<dense<double>>;
  linear_model net(dense<double>(12, 3));
  net.initialize(4);
  std::mt19937_64 rng(5);
  const tensor_d x = random_tensor({6, 12}, rng, 0.0, 1.0);
  label_tensor<> y({6});
  for (index_t i = 0; i < 6; ++i) y[i] = static_cast<std::int32_t>(i % 3);
  attack_options<double> attack;
  attack.eps = 0.7;
  attack.random_start = false;
  attack.clip_to_box = false;

  const auto by_rank = analysis::adversarial_alignment_by_rank(net, x, y, attack);
  REQUIRE(by_rank.size() == 3);
  for (std::size_t i = 0; i < 6; ++i) {
    double squares = 0;
    for (const auto& rank : by_rank) squares += rank[i] * rank[i];
    CHECK(std::abs(squares - 1.0) < 1e-12);
  }

  // Figure 3 (right) at this eps is rank 1 of the above; eps = 0 is no perturbation.
  const auto over_eps = analysis::adversarial_alignment_with_top(net, x, y, attack, {0.0, 0.7});
  REQUIRE(over_eps.size() == 2);
  for (std::size_t i = 0; i < 6; ++i) {
    CHECK(over_eps[0][i] == 0.0);
    CHECK(std::abs(over_eps[1][i] - by_rank[0][i]) < 1e-14);
  }

  // A random direction in 12 dimensions mostly leaves the 3-dimensional row space.
  const auto random = analysis::random_alignment_by_rank(net, x, 9);
  for (std::size_t i = 0; i < 6; ++i) {
    double squares = 0;
    for (const auto& rank : random) squares += rank[i] * rank[i];
    CHECK(squares < 1.0 - 1e-6);
  }
}

TEST_CASE("eps selection: the smallest grid eps at which the fraction is misclassified, as a brute-force loop finds") {
  tensor_d x;
  label_tensor<> y;
  make_blobs(150, 1, x, y);
  mlp net = trained_classifier(x, y);
  const double clean_accuracy = analysis::select_attack_eps(net, attack_options<double>{}, x, y, {0.0}).robust_accuracy[0];
  REQUIRE(clean_accuracy > 0.95);

  attack_options<double> base;
  base.iterations = 10;
  base.seed = 3;
  std::vector<double> grid;
  for (int k = 0; k <= 24; ++k) grid.push_back(0.05 * k);

  for (double fraction : {0.5, 0.9, analysis::default_misclassified_fraction}) {
    CAPTURE(fraction);
    const auto selected = analysis::select_attack_eps(net, base, x, y, grid, fraction, 64);
    REQUIRE(selected.misclassified.size() == grid.size());

    // The rule, spelled out: attack at every eps, count, stop at the first hit.
    std::optional<double> expected;
    for (std::size_t k = 0; k < grid.size(); ++k) {
      attack_options<double> o = base;
      o.eps = grid[k];
      const auto result = make_pga<l2>(net, o)(x, y);
      std::size_t wrong = 0;
      for (auto s : result.success) wrong += s;
      const double misclassified = static_cast<double>(wrong) / static_cast<double>(x.dim(0));
      CHECK(selected.misclassified[k] == misclassified);
      CHECK(std::abs(selected.robust_accuracy[k] - (1 - misclassified)) < 1e-15);
      if (!expected && misclassified >= fraction) expected = grid[k];
    }
    REQUIRE(expected.has_value());
    REQUIRE(selected.eps.has_value());
    CHECK(*selected.eps == *expected);
    CHECK(*selected.eps > 0.0);  // the classifier is accurate: eps = 0 cannot meet the fraction
  }

  // A fraction no grid point reaches: no eps, and the curve is still there.
  const auto none = analysis::select_attack_eps(net, base, x, y, {0.0, 0.01}, 1.0);
  CHECK_FALSE(none.eps.has_value());
  CHECK(none.misclassified.size() == 2);

  CHECK_THROWS_AS(analysis::select_attack_eps(net, base, x, y, {0.2, 0.1}), std::invalid_argument);
  CHECK_THROWS_AS(analysis::select_attack_eps(net, base, x, y, {0.1}, 0.0), std::invalid_argument);
  CHECK_THROWS_AS(analysis::select_attack_eps(net, base, x, y, {}), std::invalid_argument);
}
