// The attack suite, the way attack libraries test their attacks: feasibility,
// eps = 0, steepest-ascent optimality on an analytic linear model, multi-step
// linf PGA against a reference loop, batch consistency, restarts that keep
// the worst case, no side effects (of attacks and of every kernel
// composition, parameter gradients included), monotone strength, the random
// start's distribution, and no NaN from a zero gradient. Double precision, on
// every backend; the norm-generic checks run for each (norm, backend) pair.
#include "attack_test_models.hpp"
#include "gradient_check.hpp"

#include <algorithm>
#include <set>
#include <string>

#include <opnorm/kernel/attacks.hpp>
#include <opnorm/kernel/power_iteration.hpp>
#include <opnorm/nn/layers/batch_norm.hpp>
#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/relu.hpp>

using namespace opnorm;
using namespace opnorm::testing;

namespace {

template <class B>
struct trained_fixture {
  tensor<double, B> x;
  label_tensor<B> y;
  mlp<B> net = make_mlp<B>(1, 12, 3);
  trained_fixture() {
    make_blobs(200, 12, 3, 0.08, 2, x, y);
    train(net, x, y, 300);
  }
};

// Everything an attack or a power iteration must leave as it found it:
// parameters, parameter gradients, buffers (running statistics), counters.
struct model_snapshot {
  std::vector<std::vector<double>> parameters, gradients, buffers;
  std::vector<std::int64_t> counters;
};

template <class Net>
model_snapshot snapshot(Net& net) {
  model_snapshot s;
  auto state = net.state();
  for (auto& p : state.parameters) {
    s.parameters.push_back(p.value->to_vector());
    s.gradients.push_back(p.grad->to_vector());
  }
  for (auto& b : state.buffers) s.buffers.push_back(b.value->to_vector());
  for (auto& c : state.counters) s.counters.push_back(*c.value);
  return s;
}

// Bit for bit: std::vector<double>'s == compares every entry exactly.
template <class Net>
void check_unchanged(const model_snapshot& before, Net& net) {
  const model_snapshot now = snapshot(net);
  auto state = net.state();
  for (std::size_t k = 0; k < state.parameters.size(); ++k) {
    CAPTURE(state.parameters[k].name);
    CHECK(now.parameters[k] == before.parameters[k]);
    CHECK(now.gradients[k] == before.gradients[k]);
  }
  for (std::size_t k = 0; k < state.buffers.size(); ++k) {
    CAPTURE(state.buffers[k].name);
    CHECK(now.buffers[k] == before.buffers[k]);
  }
  CHECK(now.counters == before.counters);
}

// Nonzero random parameter gradients, as a trainer would have them between
// accumulate_gradients and the optimizer step: an attack that zeroed them,
// or added its own, would show.
template <class Net>
void fill_gradients(Net& net, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> magnitude(0.5, 1.5);
  std::bernoulli_distribution negative(0.5);
  for (auto& p : net.state().parameters)
    for (index_t i = 0; i < p.grad->size(); ++i) (*p.grad)[i] = negative(rng) ? -magnitude(rng) : magnitude(rng);
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

TEST_CASE_TEMPLATE_DEFINE("restarts keep the worst case per example: a success beats a failure, then the larger loss",
                          C, restarts) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  using tensor_t = tensor<double, B>;
  using attack_t = pga<mlp<B>, Norm>;
  // An untrained model whose clean predictions are the labels: every example
  // starts correctly classified, and at this eps some restarts succeed where
  // others fail, so both rules (a success wins; otherwise the larger loss)
  // decide some examples.
  struct {
    mlp<B> net = make_mlp<B>(7, 12, 3);
    tensor_t x;
    label_tensor<B> y;
  } f;
  std::mt19937_64 rng(3);
  f.x = random_tensor<B>({200, 12}, rng, 0.0, 1.0);
  const auto clean = argmax_rows(f.net.predict(f.x));
  f.y = label_tensor<B>({200});
  for (index_t i = 0; i < 200; ++i) f.y[i] = static_cast<std::int32_t>(clean[static_cast<std::size_t>(i)]);
  attack_options<double> o;
  o.eps = std::is_same_v<Norm, l2> ? 1.0 : 0.3;
  o.iterations = 2;  // few steps from far-apart random starts: the restarts end in different places
  o.seed = 19;
  const int R = 5;
  const index_t n = f.y.size(), d = f.x.example_size();

  // Each restart alone, seeded as pga documents it: restart r runs the
  // kernel with seed hash(options.seed, 0x7e57a27, r), then is scored by an
  // eval-mode forward pass (per-example cross-entropy, argmax != label).
  iteration_options<double> io;
  io.iterations = o.iterations;
  io.eps = o.eps;
  io.alpha = 2 * o.eps / o.iterations;
  io.random_start = o.random_start;
  io.clip_to_box = o.clip_to_box;
  std::vector<std::vector<double>> points, losses;
  std::vector<std::vector<std::uint8_t>> successes;
  for (int r = 0; r < R; ++r) {
    io.seed = random::hash(o.seed, 0x7e57a27, static_cast<std::uint64_t>(r));
    const tensor_t point = typename attack_t::kernel{}.run(f.net, f.x, &f.y, io).point;
    typename mlp<B>::tape t;
    const auto& logits = f.net.forward(point, t, mode::eval);
    tensor_t per_example;
    softmax_cross_entropy::evaluate(logits, f.y, static_cast<tensor_t*>(nullptr), reduction::sum, &per_example);
    const auto predicted = argmax_rows(logits);
    std::vector<std::uint8_t> success(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) success[static_cast<std::size_t>(i)] = predicted[static_cast<std::size_t>(i)] != f.y[i];
    points.push_back(point.to_vector());
    losses.push_back(per_example.to_vector());
    successes.push_back(success);
  }

  std::set<int> winners;
  bool a_success_beats_a_larger_loss = false;  // some example is won by a success with the smaller loss
  for (int restarts = 1; restarts <= R; ++restarts) {
    CAPTURE(restarts);
    o.restarts = restarts;
    const auto result = make_pga<Norm>(f.net, o)(f.x, f.y);
    const std::vector<double> adversarial = result.adversarial.to_vector();
    for (index_t i = 0; i < n; ++i) {
      CAPTURE(i);
      const auto e = static_cast<std::size_t>(i);
      // The worst single restart: the largest (success, loss), the first on ties.
      int w = 0;
      for (int r = 1; r < restarts; ++r)
        if (successes[r][e] > successes[w][e] || (successes[r][e] == successes[w][e] && losses[r][e] > losses[w][e]))
          w = r;
      bool any_success = false;
      double largest_loss = losses[0][e];
      for (int r = 0; r < restarts; ++r) {
        any_success = any_success || successes[r][e] != 0;
        largest_loss = std::max(largest_loss, losses[r][e]);
      }
      CHECK(static_cast<bool>(result.success[e]) == any_success);  // the max of the flags
      CHECK(result.loss[e] == losses[w][e]);  // the max loss among the restarts with that flag
      CHECK(std::equal(adversarial.begin() + i * d, adversarial.begin() + (i + 1) * d, points[w].begin() + i * d));
      if (restarts == R) {
        winners.insert(w);
        if (losses[w][e] < largest_loss) a_success_beats_a_larger_loss = true;
      }
    }
  }
  // The case is only a test if different examples were won by different
  // restarts, and a success beat a failure with a larger loss somewhere.
  CAPTURE(winners.size());
  CHECK(winners.size() == static_cast<std::size_t>(R));
  CHECK(a_success_beats_a_larger_loss);
}
TEST_CASE_TEMPLATE_APPLY(restarts, test_backends::cross<l2, linf>);

// A reference for multi-step linf PGA in plain loops: the input gradient of
// the per-example cross-entropy from the model's eval-mode forward and VJP,
// its sign, a step of alpha, the clip to the eps-ball around x and to [0, 1].
template <class B>
tensor<double, B> reference_linf_pga(mlp<B>& net, const tensor<double, B>& x, const label_tensor<B>& y, double eps,
                                     double alpha, int iterations, const tensor<double, B>* start) {
  const index_t n = x.dim(0), d = x.example_size();
  tensor<double, B> p = x;
  if (start)
    for (index_t i = 0; i < p.size(); ++i) p[i] = std::clamp(x[i] + (*start)[i], 0.0, 1.0);
  for (int k = 0; k < iterations; ++k) {
    typename mlp<B>::tape t;
    const tensor<double, B> z = net.forward(p, t, mode::eval);
    const index_t classes = z.example_size();
    tensor<double, B> gz({n, classes});
    for (index_t i = 0; i < n; ++i) {
      double m = z(i, 0), s = 0;
      for (index_t j = 1; j < classes; ++j) m = std::max(m, z(i, j));
      for (index_t j = 0; j < classes; ++j) s += std::exp(z(i, j) - m);
      // d CE / d z_j = p_j, and p_y - 1 = -sum_{j != y} p_j (exact in any
      // precision, where p_y - 1 cancels for a confident example).
      double others = 0;
      for (index_t j = 0; j < classes; ++j) {
        if (j == y[i]) continue;
        gz(i, j) = std::exp(z(i, j) - m) / s;
        others += gz(i, j);
      }
      gz(i, y[i]) = -others;
    }
    tensor<double, B> gx;
    net.vjp(t, gz, &gx, false);
    for (index_t c = 0; c < n * d; ++c) {
      const double sign = gx[c] > 0 ? 1.0 : (gx[c] < 0 ? -1.0 : 0.0);
      const double delta = std::clamp(p[c] + alpha * sign - x[c], -eps, eps);
      p[c] = std::clamp(x[c] + delta, 0.0, 1.0);
    }
  }
  return p;
}

TEST_CASE_TEMPLATE("multi-step linf PGA equals a reference loop, with and without a random start", B,
                   OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  trained_fixture<B> f;
  const tensor_t x = slice_rows(f.x, 0, 32);
  const label_tensor<B> y = slice_rows(f.y, 0, 32);
  struct setting {
    double eps, alpha;  // alpha = 0: the default 2 eps / iterations
    int iterations;
  };
  for (const setting& c : {setting{0.06, 0.0, 5}, setting{0.06, 0.015, 10}, setting{0.2, 0.05, 3}}) {
    for (bool random_start : {false, true}) {
      CAPTURE(c.eps);
      CAPTURE(c.alpha);
      CAPTURE(c.iterations);
      CAPTURE(random_start);
      attack_options<double> o;
      o.eps = c.eps;
      o.alpha = c.alpha;
      o.iterations = c.iterations;
      o.random_start = random_start;
      o.seed = 23;
      const auto result = make_pga<linf>(f.net, o)(x, y);

      const double alpha = c.alpha > 0 ? c.alpha : 2 * c.eps / c.iterations;
      // The random start of restart 0: linf::random_in_ball with the seed
      // pga derives for it, hash(seed, 0x7e57a27, 0).
      tensor_t start;
      linf::random_in_ball(x, c.eps, random::hash(o.seed, 0x7e57a27, 0), start);
      const tensor_t expected = reference_linf_pga(f.net, x, y, c.eps, alpha, c.iterations, random_start ? &start : nullptr);

      double worst = 0;
      for (index_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(result.adversarial[i] - expected[i]));
      CHECK(worst < 1e-12);
      // The reference did more than stand still: the points left x.
      double moved = 0;
      for (index_t i = 0; i < x.size(); ++i) moved = std::max(moved, std::abs(expected[i] - x[i]));
      CHECK(moved >= alpha - 1e-12);
    }
  }
}

TEST_CASE_TEMPLATE("an attack leaves inputs, weights, parameter gradients and BatchNorm running statistics unchanged",
                   B, OPNORM_TEST_BACKENDS) {
  trained_fixture<B> f;
  fill_gradients(f.net, 5);
  const model_snapshot before = snapshot(f.net);
  const std::vector<double> x_before = f.x.to_vector();

  attack_options<double> o;
  o.eps = 0.5;
  o.restarts = 2;
  auto check_attack = [&](auto attack, const char* name) {
    CAPTURE(name);
    const auto r = attack(f.x, f.y);
    CHECK(r.adversarial.to_vector() != x_before);  // the attack ran
    CHECK(f.x.to_vector() == x_before);
    check_unchanged(before, f.net);
  };
  check_attack(make_pga<l2>(f.net, o), "pga, l2");
  check_attack(make_fgm<l2>(f.net, 0.5), "fgm, l2");
  o.targeted = true;
  check_attack(make_pga<l2>(f.net, o), "targeted pga, l2");
  o.targeted = false;
  o.eps = 0.1;
  check_attack(make_pga<linf>(f.net, o), "pga, linf");
  check_attack(make_fgm<linf>(f.net, 0.1), "fgsm (fgm, linf)");
}

TEST_CASE_TEMPLATE("every kernel composition leaves weights, parameter gradients and BatchNorm running statistics "
                   "unchanged", B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  trained_fixture<B> f;
  const tensor_t x = slice_rows(f.x, 0, 16);
  const label_tensor<B> y = slice_rows(f.y, 0, 16);
  fill_gradients(f.net, 6);
  const model_snapshot before = snapshot(f.net);
  const std::vector<double> x_before = x.to_vector();

  iteration_options<double> o;
  o.iterations = 3;
  o.eps = 0.3;
  o.alpha = 0.15;
  o.seed = 8;
  auto check_composition = [&](auto kernel, const char* name) {
    CAPTURE(name);
    const auto pairs = kernel.run(f.net, x, &y, o);
    CHECK(pairs.point.size() == x.size());
    CHECK(x.to_vector() == x_before);
    check_unchanged(before, f.net);
  };
  check_composition(power_iteration<jacobian_operator<exact_jvp>, l2, no_step>{}, "exact_jvp, l2, no_step");
  check_composition(power_iteration<jacobian_operator<exact_jvp>, linf, no_step>{}, "exact_jvp, linf, no_step");
  check_composition(power_iteration<jacobian_operator<finite_difference>, l2, unbounded_step>{},
                    "finite_difference, l2, unbounded_step");
  check_composition(power_iteration<jacobian_operator<finite_difference>, linf, unbounded_step>{},
                    "finite_difference, linf, unbounded_step");
  check_composition(power_iteration<jacobian_operator<loss_gradient<softmax_cross_entropy>>, l2, projected_step>{},
                    "loss_gradient<softmax_cross_entropy>, l2, projected_step");
  check_composition(power_iteration<jacobian_operator<loss_gradient<softmax_cross_entropy>>, linf, projected_step>{},
                    "loss_gradient<softmax_cross_entropy>, linf, projected_step");
  check_composition(power_iteration<jacobian_operator<loss_gradient<softmax_cross_entropy>>, l2, unbounded_step>{},
                    "loss_gradient<softmax_cross_entropy>, l2, unbounded_step");
  check_composition(power_iteration<jacobian_operator<loss_gradient<softmax_cross_entropy>>, linf, unbounded_step>{},
                    "loss_gradient<softmax_cross_entropy>, linf, unbounded_step");
  check_composition(power_iteration<jacobian_operator<loss_gradient<sum_of_squares>>, l2, unbounded_step>{},
                    "loss_gradient<sum_of_squares>, l2, unbounded_step");
  check_composition(power_iteration<jacobian_operator<loss_gradient<sum_of_squares>>, linf, unbounded_step>{},
                    "loss_gradient<sum_of_squares>, linf, unbounded_step");
  check_composition(power_iteration<jacobian_operator<loss_gradient<sum_of_squares>>, l2, projected_step>{},
                    "loss_gradient<sum_of_squares>, l2, projected_step");
  check_composition(power_iteration<jacobian_operator<loss_gradient<sum_of_squares>>, linf, projected_step>{},
                    "loss_gradient<sum_of_squares>, linf, projected_step");
  // weight_operator iterates on one weight matrix at a time (global SNR).
  for (auto& p : f.net.state().parameters) {
    if (p.value->rank() < 2) continue;
    CAPTURE(p.name);
    const tensor_t u({1, p.value->dim(0)}, 1.0), origin({1, p.value->dim(0)}, 0.0);
    iteration_options<double> weight_options;
    weight_options.iterations = 3;
    typename power_iteration<weight_operator, l2, no_step>::template workspace<tensor_t> ws;
    const double sigma =
        power_iteration<weight_operator, l2, no_step>{}.run(*p.value, origin, nullptr, weight_options, ws, &u).sigma.to_vector()[0];
    CHECK(sigma > 0);
    check_unchanged(before, f.net);
  }
}

// More iterations are not in this list: with alpha = 2 eps / iterations the
// final iterate of a longer run is not a better attack than a shorter run's,
// so robust accuracy may rise with iterations. More restarts cannot raise it:
// with the same seed, R + 1 restarts run the first R restarts again and keep
// the worst case per example.
TEST_CASE_TEMPLATE_DEFINE("robust accuracy does not increase with eps on a trained model, nor with restarts", C,
                          monotone) {
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

  std::vector<double> by_restarts;
  base.iterations = 3;
  for (int restarts = 1; restarts <= 5; ++restarts) {
    base.restarts = restarts;
    by_restarts.push_back(robust_accuracy<Norm>(f.net, base, f.x, f.y, {0.2 * scale}).front());
  }
  CAPTURE(by_restarts);
  for (std::size_t i = 1; i < by_restarts.size(); ++i) CHECK(by_restarts[i] <= by_restarts[i - 1]);
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
  mlp<B> net = make_mlp<B>(3, 12, 3);
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
