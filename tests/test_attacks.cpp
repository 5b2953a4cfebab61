// The attack suite, the way attack libraries test their attacks: feasibility,
// eps = 0, steepest-ascent optimality on an analytic linear model, batch
// consistency, no side effects, monotone strength, the random start's
// distribution, and no NaN from a zero gradient. Double precision, on every
// backend; the norm-generic checks run for each (norm, backend) pair.
#include "gradient_check.hpp"

#include <algorithm>

#include <opnorm/attacks.hpp>
#include <opnorm/layers/batch_norm.hpp>
#include <opnorm/layers/dense.hpp>
#include <opnorm/layers/relu.hpp>

using namespace opnorm;
using namespace opnorm::testing;

namespace {

template <class B>
using mlp = sequential<dense<double, B>, batch_norm<double, B>, relu<double, B>, dense<double, B>>;
template <class B>
using linear_model = sequential<dense<double, B>>;

template <class B>
mlp<B> make_mlp(std::uint64_t seed, index_t d = 12, index_t classes = 3) {
  mlp<B> net(dense<double, B>(d, 16), batch_norm<double, B>(16), relu<double, B>(), dense<double, B>(16, classes));
  net.initialize(seed);
  return net;
}

// Two Gaussian blobs per class in [0,1]^d, labels by the nearest centre.
template <class B>
void make_blobs(index_t n, index_t d, index_t classes, std::uint64_t seed, tensor<double, B>& x, label_tensor<B>& y) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> noise(0.0, 0.08);
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
    for (index_t j = 0; j < d; ++j) x(i, j) = std::clamp(centres[static_cast<std::size_t>(c)][static_cast<std::size_t>(j)] + noise(rng), 0.0, 1.0);
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

template <class B>
struct trained_fixture {
  tensor<double, B> x;
  label_tensor<B> y;
  mlp<B> net = make_mlp<B>(1);
  trained_fixture() {
    make_blobs(200, 12, 3, 2, x, y);
    train(net, x, y, 300);
  }
};

template <class Norm, class B>
std::vector<double> distances(const tensor<double, B>& a, const tensor<double, B>& b) {
  tensor<double, B> diff, out;
  subtract(a, b, diff);
  Norm::norms(diff, out);
  return out.to_vector();
}

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("perturbations are feasible: inside the eps-ball and the box", C, feasible) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  trained_fixture<B> f;
  REQUIRE(accuracy(f.net, f.x, f.y) > 0.9);
  for (double eps : {0.05, 0.3, 2.0}) {
    attack_options<double> o;
    o.eps = eps;
    o.iterations = 7;
    o.restarts = 2;
    auto attack = make_pga<Norm>(f.net, o);
    const auto r = attack(f.x, f.y);
    for (double d : distances<Norm>(r.adversarial, f.x)) CHECK(d <= eps + 1e-6);
    for (index_t i = 0; i < r.adversarial.size(); ++i) {
      CHECK(r.adversarial[i] >= 0.0);
      CHECK(r.adversarial[i] <= 1.0);
    }
  }
}
TEST_CASE_TEMPLATE_APPLY(feasible, test_backends::cross<l2, linf>);

TEST_CASE_TEMPLATE_DEFINE("eps = 0 returns x exactly", C, eps_zero) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  trained_fixture<B> f;
  attack_options<double> o;
  o.eps = 0;
  const auto r = make_pga<Norm>(f.net, o)(f.x, f.y);
  CHECK(r.adversarial.to_vector() == f.x.to_vector());
  const auto clean = argmax_rows(f.net.predict(f.x));
  for (index_t i = 0; i < f.y.size(); ++i) CHECK(r.success[static_cast<std::size_t>(i)] == (clean[static_cast<std::size_t>(i)] != f.y[i]));
}
TEST_CASE_TEMPLATE_APPLY(eps_zero, test_backends::cross<l2, linf>);

TEST_CASE_TEMPLATE_DEFINE("on a linear model one step is the analytic steepest-ascent solution", C, steepest_ascent) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  using tensor_t = tensor<double, B>;
  const index_t d = 6, k = 4, n = 5;
  linear_model<B> net(dense<double, B>(d, k));
  net.initialize(9);
  std::mt19937_64 rng(4);
  const tensor_t x = random_tensor<B>({n, d}, rng, 0.3, 0.7);
  label_tensor<B> y({n});
  for (index_t i = 0; i < n; ++i) y[i] = static_cast<std::int32_t>(i % k);
  const double eps = 0.01;  // small enough that the box never binds

  auto fgm = make_fgm<Norm>(net, eps);
  const auto r = fgm(x, y);

  // Analytic input gradient of the cross-entropy: g = W^T (softmax(Wx + b) - e_y).
  const auto& W = net.template layer<0>().weight();
  const tensor_t z = net.predict(x);
  tensor_t g({n, d}, 0.0);
  for (index_t i = 0; i < n; ++i) {
    double m = z(i, 0), s = 0;
    for (index_t j = 1; j < k; ++j) m = std::max(m, z(i, j));
    for (index_t j = 0; j < k; ++j) s += std::exp(z(i, j) - m);
    for (index_t j = 0; j < k; ++j) {
      const double p = std::exp(z(i, j) - m) / s - (j == y[i] ? 1.0 : 0.0);
      for (index_t c = 0; c < d; ++c) g(i, c) += p * W(j, c);
    }
  }
  tensor_t g_norm;
  l2_norms(g, g_norm);
  tensor_t dual;
  Norm::dual_norms(g, dual);
  for (index_t i = 0; i < n; ++i) {
    for (index_t c = 0; c < d; ++c) {
      const double step = std::is_same_v<Norm, l2> ? eps * g(i, c) / g_norm[i] : eps * (g(i, c) > 0 ? 1.0 : -1.0);
      CHECK(r.adversarial(i, c) == doctest::Approx(x(i, c) + step).epsilon(1e-12));
    }
    // Optimality: <g, delta*> = eps ||g||_*, and no random feasible delta does better.
    double achieved = 0;
    for (index_t c = 0; c < d; ++c) achieved += g(i, c) * (r.adversarial(i, c) - x(i, c));
    CHECK(achieved == doctest::Approx(eps * dual[i]).epsilon(1e-10));
    tensor_t probe;
    for (std::uint64_t s = 0; s < 50; ++s) {
      Norm::random_in_ball(x, eps, s, probe);
      double value = 0;
      for (index_t c = 0; c < d; ++c) value += g(i, c) * probe(i, c);
      CHECK(value <= achieved + 1e-15);
    }
  }
}
TEST_CASE_TEMPLATE_APPLY(steepest_ascent, test_backends::cross<l2, linf>);

TEST_CASE_TEMPLATE_DEFINE("attacking example i inside a batch equals attacking it alone", C, batch_consistency) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  trained_fixture<B> f;
  attack_options<double> o;
  o.eps = 0.4;
  o.iterations = 5;
  o.restarts = 2;
  o.seed = 77;
  auto attack = make_pga<Norm>(f.net, o);
  const tensor<double, B> xb = slice_rows(f.x, 0, 16);
  const label_tensor<B> yb = slice_rows(f.y, 0, 16);
  const auto batch = attack(xb, yb);
  for (index_t i : {0, 5, 15}) {
    const auto alone = attack(slice_rows(xb, i, i + 1), slice_rows(yb, i, i + 1));
    CHECK(relative_error(alone.adversarial, slice_rows(batch.adversarial, i, i + 1)) < 1e-12);
    CHECK(alone.success[0] == batch.success[static_cast<std::size_t>(i)]);
  }
}
TEST_CASE_TEMPLATE_APPLY(batch_consistency, test_backends::cross<l2, linf>);

TEST_CASE_TEMPLATE("an attack leaves inputs, weights and BatchNorm running statistics unchanged", B,
                   OPNORM_TEST_BACKENDS) {
  trained_fixture<B> f;
  auto state = f.net.state();
  std::vector<std::vector<double>> before;
  for (auto& p : state.parameters) before.push_back(p.value->to_vector());
  for (auto& b : state.buffers) before.push_back(b.value->to_vector());
  std::vector<std::int64_t> counters;
  for (auto& c : state.counters) counters.push_back(*c.value);
  const std::vector<double> x_before = f.x.to_vector();

  attack_options<double> o;
  o.eps = 0.5;
  o.restarts = 2;
  make_pga<l2>(f.net, o)(f.x, f.y);
  make_pga<linf>(f.net, o)(f.x, f.y);

  CHECK(f.x.to_vector() == x_before);
  std::size_t k = 0;
  for (auto& p : state.parameters) CHECK(p.value->to_vector() == before[k++]);
  for (auto& b : state.buffers) CHECK(b.value->to_vector() == before[k++]);
  for (std::size_t c = 0; c < counters.size(); ++c) CHECK(*state.counters[c].value == counters[c]);
}

TEST_CASE_TEMPLATE_DEFINE("robust accuracy does not increase with eps or with iterations", C, monotone) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  trained_fixture<B> f;
  const double scale = std::is_same_v<Norm, l2> ? 1.0 : 0.25;
  attack_options<double> base;
  base.iterations = 10;
  base.restarts = 2;
  const std::vector<double> eps_list = {0.0, 0.05 * scale, 0.1 * scale, 0.2 * scale, 0.4 * scale, 0.8 * scale};
  const auto acc = robust_accuracy<Norm>(f.net, base, f.x, f.y, eps_list);
  CAPTURE(acc);
  CHECK(acc.front() == doctest::Approx(accuracy(f.net, f.x, f.y)));
  for (std::size_t i = 1; i < acc.size(); ++i) CHECK(acc[i] <= acc[i - 1]);
  CHECK(acc.back() < acc.front());  // the attack does something

  std::vector<double> by_iterations;
  for (int iterations : {1, 3, 10, 30}) {
    base.iterations = iterations;
    by_iterations.push_back(robust_accuracy<Norm>(f.net, base, f.x, f.y, {0.2 * scale}).front());
  }
  CAPTURE(by_iterations);
  for (std::size_t i = 1; i < by_iterations.size(); ++i) CHECK(by_iterations[i] <= by_iterations[i - 1]);
}
TEST_CASE_TEMPLATE_APPLY(monotone, test_backends::cross<l2, linf>);

TEST_CASE_TEMPLATE("the l2 random start is uniform in the ball", B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  // For U(B_eps) in d dimensions, P(||delta|| <= r) = (r / eps)^d, so
  // (||delta|| / eps)^d is U(0, 1): check its quantiles (a Kolmogorov-Smirnov
  // distance), and that directions are centred.
  const index_t n = 4000, d = 3;
  std::mt19937_64 rng(12);
  const tensor_t x = random_tensor<B>({n, d}, rng, 0.0, 1.0);  // distinct rows => distinct streams
  const double eps = 0.7;
  tensor_t delta;
  l2::random_in_ball(x, eps, 5, delta);
  std::vector<double> u;
  for (double r : distances<l2>(delta, tensor_t({n, d}, 0.0))) {
    REQUIRE(r <= eps * (1 + 1e-12));
    u.push_back(std::pow(r / eps, static_cast<double>(d)));
  }
  std::sort(u.begin(), u.end());
  double ks = 0;
  for (std::size_t i = 0; i < u.size(); ++i)
    ks = std::max({ks, std::abs(u[i] - static_cast<double>(i) / n), std::abs(u[i] - static_cast<double>(i + 1) / n)});
  CHECK(ks < 1.63 / std::sqrt(static_cast<double>(n)));  // KS critical value at the 1% level
  for (index_t j = 0; j < d; ++j) {
    double mean = 0;
    for (index_t i = 0; i < n; ++i) mean += delta(i, j) / n;
    CHECK(std::abs(mean) < 4 * eps / std::sqrt(static_cast<double>(n)));
  }

  // The linf start is uniform per coordinate: its mean |delta| is eps / 2.
  linf::random_in_ball(x, eps, 5, delta);
  double mean_abs = 0;
  for (index_t i = 0; i < delta.size(); ++i) mean_abs += std::abs(delta[i]) / static_cast<double>(delta.size());
  CHECK(mean_abs == doctest::Approx(eps / 2).epsilon(0.03));
}

TEST_CASE_TEMPLATE_DEFINE("a zero gradient never produces NaN", C, zero_gradient) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  mlp<B> net = make_mlp<B>(3);
  for (auto& p : net.state().parameters) p.value->set_zero();  // constant logits: zero input gradient
  tensor<double, B> x({4, 12}, 0.5);
  label_tensor<B> y({4}, 1);
  attack_options<double> o;
  o.eps = 0.3;
  const auto r = make_pga<Norm>(net, o)(x, y);
  for (index_t i = 0; i < r.adversarial.size(); ++i) REQUIRE(std::isfinite(r.adversarial[i]));
  for (double d : distances<Norm>(r.adversarial, x)) CHECK(d <= 0.3 + 1e-12);
  o.random_start = false;
  const auto still = make_pga<Norm>(net, o)(x, y);
  CHECK(still.adversarial.to_vector() == x.to_vector());  // no direction to move in
}
TEST_CASE_TEMPLATE_APPLY(zero_gradient, test_backends::cross<l2, linf>);

TEST_CASE_TEMPLATE("targeted attacks move towards the target class", B, OPNORM_TEST_BACKENDS) {
  trained_fixture<B> f;
  label_tensor<B> target({f.y.size()});
  for (index_t i = 0; i < f.y.size(); ++i) target[i] = (f.y[i] + 1) % 3;
  attack_options<double> o;
  o.eps = 1.5;
  o.iterations = 20;
  o.targeted = true;
  const auto r = make_pga<l2>(f.net, o)(f.x, target);
  CHECK(r.success_rate() > 0.5);
  const auto predicted = argmax_rows(f.net.predict(r.adversarial));
  for (index_t i = 0; i < target.size(); ++i) CHECK(r.success[static_cast<std::size_t>(i)] == (predicted[static_cast<std::size_t>(i)] == target[i]));
}
