// APGD (APGD-CE, APGD-DLR, APGD-T), the DLR losses and the worst case over
// an ensemble of attacks, tested the way attack libraries test their attacks:
// feasibility, eps = 0, the checkpoint schedule and the step-size rule,
// batch consistency, dropping broken examples from a run (the same results,
// fewer rows), no side effects, restarts, the losses' gradients and
// invariances, the exact optimum of a linear model, strength against PGA,
// and NaN surfacing as an error. Double precision, on every backend; the
// norm-generic checks run for each (norm, backend) pair.
#include "attack_test_models.hpp"
#include "gradient_check.hpp"

#include <algorithm>
#include <limits>
#include <numeric>

#include <opnorm/kernel/attacks.hpp>
#include <opnorm/nn/layers/batch_norm.hpp>
#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/relu.hpp>

using namespace opnorm;
using namespace opnorm::testing;

namespace {

constexpr index_t features = 12, classes = 4;  // 4 classes: targeted DLR needs z_pi4

template <class B>
struct trained_fixture {
  tensor<double, B> x;
  label_tensor<B> y;
  mlp<B> net = make_mlp<B>(1, features, classes);
  trained_fixture() {
    make_blobs(200, features, classes, 0.1, 2, x, y);
    train(net, x, y, 300);
  }
};

template <class T>
struct tag {
  using type = T;
};

// f(tag<Loss>) for APGD-CE, APGD-DLR and APGD-T.
template <class F>
void for_each_loss(F&& f) {
  f(tag<softmax_cross_entropy>{});
  f(tag<dlr>{});
  f(tag<targeted_dlr>{});
}

template <class Loss>
const char* loss_name() {
  if constexpr (std::is_same_v<Loss, softmax_cross_entropy>) return "APGD-CE";
  else if constexpr (std::is_same_v<Loss, dlr>) return "APGD-DLR";
  else return "APGD-T";
}

template <class B>
std::vector<double> row(const tensor<double, B>& x, index_t i) {
  return slice_rows(x, i, i + 1).to_vector();
}

// The loss of Loss at logits z (one example) by its defining formula, on the host.
double dlr_reference(const std::vector<double>& z, int y) {
  std::vector<double> s = z;
  std::sort(s.begin(), s.end(), std::greater<double>());
  double other = -std::numeric_limits<double>::infinity();
  for (std::size_t j = 0; j < z.size(); ++j)
    if (static_cast<int>(j) != y) other = std::max(other, z[j]);
  return -(z[y] - other) / (s[0] - s[2] + 1e-12);
}
double targeted_dlr_reference(const std::vector<double>& z, int y, int t) {
  std::vector<double> s = z;
  std::sort(s.begin(), s.end(), std::greater<double>());
  return -(z[y] - z[t]) / (s[0] - 0.5 * (s[2] + s[3]) + 1e-12);
}

// Logits with every gap at least 0.6 (a random order of 0, 0.7, 1.4, ...
// plus noise below 0.1), so the finite differences never cross a tie.
template <class B>
tensor<double, B> separated_logits(index_t n, index_t k, std::mt19937_64& rng) {
  tensor<double, B> z({n, k});
  std::uniform_real_distribution<double> u(0.0, 0.1);
  for (index_t i = 0; i < n; ++i) {
    std::vector<int> order(static_cast<std::size_t>(k));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (index_t j = 0; j < k; ++j) z(i, j) = 0.7 * order[static_cast<std::size_t>(j)] - 3.0 + u(rng);
  }
  return z;
}

// The class at each rank of row i, largest logit first.
template <class B>
std::vector<int> ranking(const tensor<double, B>& z, index_t i) {
  const index_t k = z.example_size();
  std::vector<int> order(static_cast<std::size_t>(k));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return z(i, a) > z(i, b); });
  return order;
}

}  // namespace

// ---- the losses -------------------------------------------------------------

TEST_CASE_TEMPLATE("dlr and targeted_dlr give the values of their defining formulas", B, OPNORM_TEST_BACKENDS) {
  // z = (3, 1, 2, 0): pi = (0, 2, 1, 3).
  const tensor<double, B> z = tensor<double, B>::from_vector({3, 4}, {3, 1, 2, 0, 3, 1, 2, 0, 3, 1, 2, 0});
  const label_tensor<B> y = label_tensor<B>::from_vector({3}, {0, 2, 3});
  tensor<double, B> values;
  dlr::evaluate(z, y, static_cast<tensor<double, B>*>(nullptr), reduction::sum, &values);
  // y = 0 (the top): -(3 - 2) / (3 - 1); y = 2: -(2 - 3) / 2; y = 3: -(0 - 3) / 2.
  CHECK(values[0] == doctest::Approx(-0.5).epsilon(1e-11));
  CHECK(values[1] == doctest::Approx(0.5).epsilon(1e-11));
  CHECK(values[2] == doctest::Approx(1.5).epsilon(1e-11));

  const label_tensor<B> pairs = label_pairs(y, label_tensor<B>::from_vector({3}, {2, 0, 1}));
  targeted_dlr::evaluate(z, pairs, static_cast<tensor<double, B>*>(nullptr), reduction::sum, &values);
  // Denominator 3 - (1 + 0)/2 = 2.5: -(3 - 2)/2.5, -(2 - 3)/2.5, -(0 - 1)/2.5.
  CHECK(values[0] == doctest::Approx(-0.4).epsilon(1e-11));
  CHECK(values[1] == doctest::Approx(0.4).epsilon(1e-11));
  CHECK(values[2] == doctest::Approx(0.4).epsilon(1e-11));

  // Too few classes, or pairs of the wrong shape, are errors, not garbage.
  const tensor<double, B> three({2, 3}, 0.5);
  CHECK_THROWS_AS(targeted_dlr::evaluate(three, label_pairs(label_tensor<B>({2}, 0), label_tensor<B>({2}, 1)),
                                         static_cast<tensor<double, B>*>(nullptr)),
                  std::invalid_argument);
  CHECK_THROWS_AS(dlr::evaluate(tensor<double, B>({2, 2}, 0.5), label_tensor<B>({2}, 0),
                                static_cast<tensor<double, B>*>(nullptr)),
                  std::invalid_argument);
  CHECK_THROWS_AS(targeted_dlr::evaluate(z, y, static_cast<tensor<double, B>*>(nullptr)), std::invalid_argument);
  CHECK_THROWS_AS(dlr::evaluate(z, label_tensor<B>::from_vector({3}, {0, 4, 1}), static_cast<tensor<double, B>*>(nullptr)),
                  std::invalid_argument);
}

TEST_CASE_TEMPLATE("dlr and targeted_dlr gradients match finite differences", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(31);
  const index_t n = 10, k = 10;
  tensor<double, B> z = separated_logits<B>(n, k, rng);
  // Labels at every rank (the top, the runner-up, pi_3, pi_4, the last), so
  // each case of the formula (y among the denominator's classes or not) is hit.
  label_tensor<B> y({n}), t({n});
  const int label_rank[n] = {0, 1, 2, 3, 9, 0, 0, 2, 3, 5};
  const int target_rank[n] = {1, 0, 0, 2, 3, 3, 6, 3, 0, 1};
  for (index_t i = 0; i < n; ++i) {
    const auto order = ranking(z, i);
    y[i] = order[label_rank[i]];
    t[i] = order[target_rank[i]];
  }
  const label_tensor<B> pairs = label_pairs(y, t);
  for (reduction r : {reduction::sum, reduction::mean}) {
    tensor<double, B> g, g_targeted;
    dlr::evaluate(z, y, &g, r);
    targeted_dlr::evaluate(z, pairs, &g_targeted, r);
    const auto fd = finite_difference_gradient(z, [&] { return dlr::evaluate(z, y, static_cast<tensor<double, B>*>(nullptr), r); });
    const auto fd_targeted = finite_difference_gradient(
        z, [&] { return targeted_dlr::evaluate(z, pairs, static_cast<tensor<double, B>*>(nullptr), r); });
    CHECK(relative_error(g, fd) < 1e-8);
    CHECK(relative_error(g_targeted, fd_targeted) < 1e-8);
  }
  // The values against the formulas, per example.
  tensor<double, B> values, values_targeted;
  dlr::evaluate(z, y, static_cast<tensor<double, B>*>(nullptr), reduction::sum, &values);
  targeted_dlr::evaluate(z, pairs, static_cast<tensor<double, B>*>(nullptr), reduction::sum, &values_targeted);
  for (index_t i = 0; i < n; ++i) {
    CHECK(values[i] == doctest::Approx(dlr_reference(row(z, i), y[i])).epsilon(1e-12));
    CHECK(values_targeted[i] == doctest::Approx(targeted_dlr_reference(row(z, i), y[i], t[i])).epsilon(1e-12));
  }
}

TEST_CASE_TEMPLATE("dlr and targeted_dlr are invariant to shifting and positive scaling of the logits", B,
                   OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(5);
  const index_t n = 8, k = 10;
  const tensor<double, B> z = random_tensor<B>({n, k}, rng, -4.0, 4.0);
  label_tensor<B> y({n}), t({n});
  for (index_t i = 0; i < n; ++i) {
    y[i] = static_cast<std::int32_t>(i % k);
    t[i] = static_cast<std::int32_t>((i + 3) % k);
  }
  const label_tensor<B> pairs = label_pairs(y, t);
  tensor<double, B> v0, g0, vt0, gt0;
  dlr::evaluate(z, y, &g0, reduction::sum, &v0);
  targeted_dlr::evaluate(z, pairs, &gt0, reduction::sum, &vt0);
  for (double a : {0.25, 3.0, 1000.0}) {
    for (double b : {-50.0, 0.0, 7.0}) {
      CAPTURE(a);
      CAPTURE(b);
      tensor<double, B> moved({n, k});
      for (index_t i = 0; i < z.size(); ++i) moved[i] = a * z[i] + b;
      tensor<double, B> v, g, vt, gt;
      dlr::evaluate(moved, y, &g, reduction::sum, &v);
      targeted_dlr::evaluate(moved, pairs, &gt, reduction::sum, &vt);
      // Invariance up to the 1e-12 in the denominators.
      for (index_t i = 0; i < n; ++i) {
        CHECK(v[i] == doctest::Approx(v0[i]).epsilon(1e-10));
        CHECK(vt[i] == doctest::Approx(vt0[i]).epsilon(1e-10));
      }
      // L(a z + b) = L(z) gives a * grad L(a z + b) = grad L(z).
      axpby(a, g, 0.0, g);
      axpby(a, gt, 0.0, gt);
      CHECK(relative_error(g, g0) < 1e-10);
      CHECK(relative_error(gt, gt0) < 1e-10);
    }
  }
}

TEST_CASE_TEMPLATE("APGD-T's targets are the highest non-true classes in order", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(8);
  const index_t n = 12, k = 7;
  const tensor<double, B> z = random_tensor<B>({n, k}, rng, -2.0, 2.0);
  label_tensor<B> y({n});
  for (index_t i = 0; i < n; ++i) y[i] = static_cast<std::int32_t>((5 * i) % k);
  for (int rank = 1; rank <= k - 1; ++rank) {
    label_tensor<B> targets;
    nth_other_class(z, y, rank, targets);
    for (index_t i = 0; i < n; ++i) {
      std::vector<int> others;
      for (int c : ranking(z, i))
        if (c != y[i]) others.push_back(c);
      CHECK(targets[i] == others[static_cast<std::size_t>(rank - 1)]);
    }
  }
  label_tensor<B> unused;
  CHECK_THROWS_AS(nth_other_class(z, y, static_cast<int>(k), unused), std::invalid_argument);
}

// ---- the schedule ------------------------------------------------------------

TEST_CASE("the APGD checkpoints for 100 iterations are the paper's p_j") {
  // p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), in
  // hundredths so the arithmetic is exact; checkpoint j is after p_j * 100
  // iterations, while p_j <= 1.
  std::vector<int> paper;
  int before = 0, now = 22;
  while (now <= 100) {
    paper.push_back(now);
    const int next = now + std::max(now - before - 3, 6);
    before = now;
    now = next;
  }
  CHECK(paper == std::vector<int>{22, 41, 57, 70, 80, 87, 93, 99});
  CHECK(apgd_checkpoints(100) == paper);
  // The same recurrence scaled to 1000 iterations (thousandths).
  std::vector<int> paper1000;
  before = 0;
  now = 220;
  while (now <= 1000) {
    paper1000.push_back(now);
    const int next = now + std::max(now - before - 30, 60);
    before = now;
    now = next;
  }
  CHECK(apgd_checkpoints(1000) == paper1000);
  CHECK(apgd_checkpoints(1) == std::vector<int>{1});
}

TEST_CASE_TEMPLATE_DEFINE("APGD halves the step size exactly at the checkpoints where condition 1 or 2 holds, and "
                          "restarts from the best point",
                          C, step_rule) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  trained_fixture<B> f;
  const double eps = std::is_same_v<Norm, l2> ? 0.3 : 0.15;
  const int iterations = 100;
  const std::vector<int> checkpoints = apgd_checkpoints(iterations);
  // With drop_broken an example leaves the records once dropped, so each
  // example is followed by its index; without, every record has every row.
  for (bool drop : {false, true}) {
    CAPTURE(drop);
    int halvings = 0, kept = 0, halvings_by_condition_2_alone = 0;
    for_each_loss([&](auto loss_tag) {
      using Loss = typename decltype(loss_tag)::type;
      CAPTURE(loss_name<Loss>());
      apgd_options<double> o;
      o.eps = eps;
      o.iterations = iterations;
      o.target_classes = 1;
      o.drop_broken = drop;
      auto attack = make_apgd<Norm, Loss>(f.net, o);
      std::vector<apgd_iteration<double>> trace;
      attack.observe([&](const apgd_iteration<double>& it) {
        if (it.run == 0) trace.push_back(it);
      });
      attack(f.x, f.y);
      REQUIRE(trace.size() == static_cast<std::size_t>(iterations + 1));
      const std::size_t m = trace[0].examples.size();
      const std::size_t d = static_cast<std::size_t>(features);
      REQUIRE(m > 0);
      for (std::size_t j0 = 0; j0 < m; ++j0) {
        // row[it]: the example's row in record it, for every iteration it
        // was evaluated at (a prefix of the run).
        const index_t example = trace[0].examples[j0];
        std::vector<std::size_t> row;
        for (const auto& record : trace) {
          const auto at = std::find(record.examples.begin(), record.examples.end(), example);
          if (at == record.examples.end()) break;
          row.push_back(static_cast<std::size_t>(at - record.examples.begin()));
        }
        if (!drop) REQUIRE(row.size() == trace.size());
        const auto loss = [&](int it) { return trace[static_cast<std::size_t>(it)].loss[row[static_cast<std::size_t>(it)]]; };
        const auto best_loss = [&](int it) {
          return trace[static_cast<std::size_t>(it)].best_loss[row[static_cast<std::size_t>(it)]];
        };
        const auto step_size = [&](int it) {
          return trace[static_cast<std::size_t>(it)].step_size[row[static_cast<std::size_t>(it)]];
        };
        const auto point = [&](int it, std::size_t c) {
          return trace[static_cast<std::size_t>(it)].point[row[static_cast<std::size_t>(it)] * d + c];
        };
        CHECK(step_size(0) == 2 * eps);
        CHECK(best_loss(0) == loss(0));
        int last = 0;
        bool halved_last = true;  // condition 2 starts at the second checkpoint
        std::size_t next = 0;
        for (int it = 1; it < static_cast<int>(row.size()); ++it) {
          // The best loss is the running maximum of the losses.
          CHECK(best_loss(it) == std::max(best_loss(it - 1), loss(it)));
          if (next < checkpoints.size() && it == checkpoints[next]) {
            int increases = 0;
            for (int s = last + 1; s <= it; ++s) increases += loss(s) > loss(s - 1);
            const bool condition_1 = increases <= 0.75 * (it - last);
            const bool condition_2 = !halved_last && best_loss(last) >= best_loss(it);
            const bool halve = condition_1 || condition_2;
            const double previous = step_size(last);
            CHECK(step_size(it) == (halve ? previous / 2 : previous));
            if (halve) {
              // The next step starts from the first iterate that reached the best loss.
              int best_at = 0;
              while (loss(best_at) != best_loss(it)) ++best_at;
              for (std::size_t c = 0; c < d; ++c) CHECK(point(it, c) == point(best_at, c));
            }
            halvings += halve;
            kept += !halve;
            halvings_by_condition_2_alone += condition_2 && !condition_1;
            halved_last = halve;
            last = it;
            ++next;
          } else {
            CHECK(step_size(it) == step_size(it - 1));
          }
        }
      }
    });
    // Both outcomes happen, and condition 2 decides some of them alone, so
    // the rule above was exercised every way. With linf (eps = 0.15 on this
    // model) condition 2 decides alone only on examples already broken, at
    // iterations drop_broken no longer evaluates: that case is required of
    // the run that keeps every row.
    CHECK(halvings > 0);
    CHECK(kept > 0);
    if (!drop || std::is_same_v<Norm, l2>) CHECK(halvings_by_condition_2_alone > 0);
  }
}
TEST_CASE_TEMPLATE_APPLY(step_rule, test_backends::cross<l2, linf>);

// ---- the attack's contract ------------------------------------------------------

TEST_CASE_TEMPLATE_DEFINE("APGD perturbations are feasible: inside the eps-ball and the box, for CE, DLR and targeted DLR",
                          C, feasible) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  trained_fixture<B> f;
  REQUIRE(accuracy(f.net, f.x, f.y) > 0.9);
  for_each_loss([&](auto loss_tag) {
    using Loss = typename decltype(loss_tag)::type;
    CAPTURE(loss_name<Loss>());
    for (double eps : {0.05, 0.3, 2.0}) {
      CAPTURE(eps);
      apgd_options<double> o;
      o.eps = eps;
      o.iterations = 20;
      o.restarts = 2;
      o.target_classes = 3;
      const auto r = make_apgd<Norm, Loss>(f.net, o)(f.x, f.y);
      REQUIRE(r.adversarial.shape() == f.x.shape());
      for (double dist : distances<Norm>(r.adversarial, f.x)) CHECK(dist <= eps * (1 + 1e-12));
      for (index_t i = 0; i < r.adversarial.size(); ++i) {
        CHECK(r.adversarial[i] >= 0.0);
        CHECK(r.adversarial[i] <= 1.0);
      }
      // Success means misclassified at the returned point.
      const auto predicted = argmax_rows(f.net.predict(r.adversarial));
      for (index_t i = 0; i < f.y.size(); ++i) CHECK(r.success[i] == (predicted[i] != f.y[i]));
    }
  });
}
TEST_CASE_TEMPLATE_APPLY(feasible, test_backends::cross<l2, linf>);

TEST_CASE_TEMPLATE_DEFINE("APGD with eps = 0 returns x exactly", C, eps_zero) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  trained_fixture<B> f;
  const auto clean = argmax_rows(f.net.predict(f.x));
  for_each_loss([&](auto loss_tag) {
    using Loss = typename decltype(loss_tag)::type;
    CAPTURE(loss_name<Loss>());
    apgd_options<double> o;
    o.eps = 0;
    const auto r = make_apgd<Norm, Loss>(f.net, o)(f.x, f.y);
    CHECK(r.adversarial.to_vector() == f.x.to_vector());
    for (index_t i = 0; i < f.y.size(); ++i) CHECK(r.success[i] == (clean[i] != f.y[i]));
  });
}
TEST_CASE_TEMPLATE_APPLY(eps_zero, test_backends::cross<l2, linf>);

TEST_CASE_TEMPLATE_DEFINE("APGD on example i inside a batch equals APGD on it alone", C, batch_consistency) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  trained_fixture<B> f;
  const tensor<double, B> xb = slice_rows(f.x, 0, 16);
  const label_tensor<B> yb = slice_rows(f.y, 0, 16);
  for_each_loss([&](auto loss_tag) {
    using Loss = typename decltype(loss_tag)::type;
    CAPTURE(loss_name<Loss>());
    // 20 iterations: checkpoints at 4, 7, 9, 10, ..., 20 and a second
    // restart on the examples left, so every per-example rule runs. Not many
    // more: the GEMM of a batch and that of one example round differently
    // (1e-17), and once eta has halved some 20 times consecutive iterates lie
    // so close that which of them has the larger loss is decided by that
    // rounding, and x_max may then differ by their (tiny) distance.
    apgd_options<double> o;
    o.eps = std::is_same_v<Norm, l2> ? 0.4 : 0.08;
    o.iterations = 20;
    o.restarts = 2;
    o.target_classes = 3;
    o.seed = 77;
    auto attack = make_apgd<Norm, Loss>(f.net, o);
    const auto batch = attack(xb, yb);
    for (index_t i : {0, 5, 9, 15}) {
      CAPTURE(i);
      const auto alone = attack(slice_rows(xb, i, i + 1), slice_rows(yb, i, i + 1));
      CHECK(relative_error(alone.adversarial, slice_rows(batch.adversarial, i, i + 1)) < 1e-12);
      CHECK(alone.success[0] == batch.success[i]);
      CHECK(alone.loss[0] == doctest::Approx(batch.loss[i]).epsilon(1e-12));
    }
  });
}
TEST_CASE_TEMPLATE_APPLY(batch_consistency, test_backends::cross<l2, linf>);

TEST_CASE_TEMPLATE_DEFINE("dropping broken examples changes no result", C, drop_broken_results) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  trained_fixture<B> f;
  const auto clean = argmax_rows(f.net.predict(f.x));
  const auto compare = [&](auto loss_tag) {
    using Loss = typename decltype(loss_tag)::type;
    CAPTURE(loss_name<Loss>());
    // The batch-consistency setting: restarts and target classes, so later
    // runs start from what earlier ones left. Dropping rows changes the
    // batch the model's GEMMs see, and a GEMM over fewer rows may round an
    // example's logits differently (1e-17, the Eigen kernels block by the
    // batch size); after 20 iterations that stays far below 1e-12.
    apgd_options<double> o;
    o.eps = std::is_same_v<Norm, l2> ? 0.4 : 0.08;
    o.iterations = 20;
    o.restarts = 2;
    o.target_classes = 3;
    o.seed = 11;
    o.drop_broken = false;
    const auto all_rows = make_apgd<Norm, Loss>(f.net, o)(f.x, f.y);
    o.drop_broken = true;
    auto attack = make_apgd<Norm, Loss>(f.net, o);
    std::vector<std::vector<index_t>> live;  // the first run's examples at each iteration
    attack.observe([&](const apgd_iteration<double>& it) {
      if (it.run == 0) live.push_back(it.examples);
    });
    const auto dropping = attack(f.x, f.y);

    REQUIRE(live.size() == static_cast<std::size_t>(o.iterations + 1));
    std::size_t broken_early = 0, never_broken = 0;
    for (index_t i : live.front()) {
      broken_early += std::find(live[5].begin(), live[5].end(), i) == live[5].end();
      never_broken += !all_rows.success[static_cast<std::size_t>(i)];
    }
    // Examples left the first run by iteration 5, and others resisted every
    // run to the end: the comparison covers both kinds of result.
    CAPTURE(broken_early);
    CAPTURE(never_broken);
    CHECK(broken_early > 0);
    CHECK(never_broken > 0);

    CHECK(dropping.success == all_rows.success);
    for (index_t i = 0; i < f.y.size(); ++i) {
      CAPTURE(i);
      CAPTURE(clean[static_cast<std::size_t>(i)] == f.y[i]);
      CHECK(relative_error(slice_rows(dropping.adversarial, i, i + 1), slice_rows(all_rows.adversarial, i, i + 1)) <
            1e-12);
      CHECK(dropping.loss[static_cast<std::size_t>(i)] ==
            doctest::Approx(all_rows.loss[static_cast<std::size_t>(i)]).epsilon(1e-12));
    }
  };
  compare(tag<softmax_cross_entropy>{});
  compare(tag<targeted_dlr>{});
}
TEST_CASE_TEMPLATE_APPLY(drop_broken_results, test_backends::cross<l2, linf>);

TEST_CASE_TEMPLATE_DEFINE("APGD with drop_broken evaluates a run only on the examples it has not broken yet", C,
                          drop_broken_rows) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  trained_fixture<B> f;
  const int iterations = 30;
  const std::vector<int> checkpoints = apgd_checkpoints(iterations);
  // The iterations after whose record broken examples may leave: the start,
  // every 5th, and the checkpoints.
  const auto drop_point = [&](int it) {
    return it % 5 == 0 || std::find(checkpoints.begin(), checkpoints.end(), it) != checkpoints.end();
  };
  apgd_options<double> o;
  o.eps = std::is_same_v<Norm, l2> ? 0.3 : 0.08;
  o.iterations = iterations;
  std::size_t evaluations[2] = {0, 0};
  for (bool drop : {false, true}) {
    CAPTURE(drop);
    o.drop_broken = drop;
    auto attack = make_apgd<Norm, softmax_cross_entropy>(f.net, o);
    std::vector<apgd_iteration<double>> trace;
    attack.observe([&](const apgd_iteration<double>& it) { trace.push_back(it); });
    const auto r = attack(f.x, f.y);
    REQUIRE(trace.size() == static_cast<std::size_t>(iterations + 1));  // one run, to its end
    const std::vector<index_t>& start = trace.front().examples;
    for (std::size_t it = 0; it < trace.size(); ++it) {
      CAPTURE(it);
      const auto& now = trace[it];
      evaluations[drop] += now.examples.size();
      // The per-example vectors follow the examples listed.
      CHECK(now.loss.size() == now.examples.size());
      CHECK(now.best_loss.size() == now.examples.size());
      CHECK(now.step_size.size() == now.examples.size());
      CHECK(now.point.size() == now.examples.size() * static_cast<std::size_t>(features));
      if (!drop) {
        CHECK(now.examples == start);
        continue;
      }
      if (it == 0) continue;
      // Examples only leave, in order, after a drop point, and only broken ones.
      const auto& before = trace[it - 1].examples;
      CHECK(std::includes(before.begin(), before.end(), now.examples.begin(), now.examples.end()));
      if (now.examples.size() < before.size()) CHECK(drop_point(static_cast<int>(it) - 1));
      for (index_t i : before)
        if (!std::binary_search(now.examples.begin(), now.examples.end(), i)) CHECK(r.success[static_cast<std::size_t>(i)]);
    }
    if (drop) {
      CAPTURE(start.size());
      CAPTURE(trace.back().examples.size());
      CHECK(trace.back().examples.size() < start.size());  // the rows shrank
      CHECK(!trace.back().examples.empty());               // and some lasted the whole run
    }
  }
  CAPTURE(evaluations[0]);
  CAPTURE(evaluations[1]);
  CHECK(evaluations[1] < evaluations[0]);

  // A run in which every example breaks ends when the last one is dropped.
  o.eps = std::is_same_v<Norm, l2> ? 2.0 : 0.5;
  o.iterations = 100;
  o.drop_broken = true;
  auto attack = make_apgd<Norm, softmax_cross_entropy>(f.net, o);
  int records = 0;
  attack.observe([&](const apgd_iteration<double>&) { ++records; });
  const auto r = attack(f.x, f.y);
  for (index_t i = 0; i < f.y.size(); ++i) REQUIRE(r.success[static_cast<std::size_t>(i)]);
  CHECK(records < o.iterations + 1);
}
TEST_CASE_TEMPLATE_APPLY(drop_broken_rows, test_backends::cross<l2, linf>);

TEST_CASE_TEMPLATE("APGD and the ensemble leave inputs, labels, weights, parameter gradients and BatchNorm running "
                   "statistics unchanged",
                   B, OPNORM_TEST_BACKENDS) {
  trained_fixture<B> f;
  auto state = f.net.state();
  // Parameter gradients hold something an attack could overwrite or add to.
  std::mt19937_64 rng(3);
  for (auto& p : state.parameters)
    for (index_t i = 0; i < p.grad->size(); ++i) (*p.grad)[i] = std::uniform_real_distribution<double>(-1, 1)(rng);
  std::vector<std::vector<double>> before;
  for (auto& p : state.parameters) {
    before.push_back(p.value->to_vector());
    before.push_back(p.grad->to_vector());
  }
  for (auto& b : state.buffers) before.push_back(b.value->to_vector());
  std::vector<std::int64_t> counters;
  for (auto& c : state.counters) counters.push_back(*c.value);
  const std::vector<double> x_before = f.x.to_vector();
  const std::vector<std::int32_t> y_before = f.y.to_vector();

  apgd_options<double> o;
  o.eps = 0.3;
  o.iterations = 15;
  o.restarts = 2;
  o.target_classes = 2;
  SUBCASE("APGD-CE, l2") { make_apgd<l2, softmax_cross_entropy>(f.net, o)(f.x, f.y); }
  SUBCASE("APGD-DLR, linf") {
    o.eps = 0.05;
    make_apgd<linf, dlr>(f.net, o)(f.x, f.y);
  }
  SUBCASE("APGD-T, l2") { make_apgd<l2, targeted_dlr>(f.net, o)(f.x, f.y); }
  SUBCASE("the ensemble, linf") {
    o.eps = 0.05;
    worst_case(f.net, make_apgd_ensemble<linf>(f.net, o), f.x, f.y, 64);
  }

  CHECK(f.x.to_vector() == x_before);
  CHECK(f.y.to_vector() == y_before);
  std::size_t k = 0;
  for (auto& p : state.parameters) {
    CHECK(p.value->to_vector() == before[k++]);
    CHECK(p.grad->to_vector() == before[k++]);
  }
  for (auto& b : state.buffers) CHECK(b.value->to_vector() == before[k++]);
  for (std::size_t c = 0; c < counters.size(); ++c) CHECK(*state.counters[c].value == counters[c]);
}

TEST_CASE_TEMPLATE_DEFINE("APGD restarts keep the worst case per example: any restart's success, else its largest loss",
                          C, restarts) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  trained_fixture<B> f;
  const int restarts = 3;
  for_each_loss([&](auto loss_tag) {
    using Loss = typename decltype(loss_tag)::type;
    CAPTURE(loss_name<Loss>());
    apgd_options<double> o;
    o.eps = std::is_same_v<Norm, l2> ? 0.25 : 0.05;
    o.iterations = 20;
    o.target_classes = 2;
    o.seed = 40;
    // Restart r is a run with seed + r: the same as a one-restart attack with that seed.
    std::vector<attack_result<double, B>> single;
    for (int r = 0; r < restarts; ++r) {
      apgd_options<double> one = o;
      one.seed = o.seed + static_cast<std::uint64_t>(r);
      single.push_back(make_apgd<Norm, Loss>(f.net, one)(f.x, f.y));
    }
    o.restarts = restarts;
    const auto all = make_apgd<Norm, Loss>(f.net, o)(f.x, f.y);
    const auto clean = argmax_rows(f.net.predict(f.x));
    std::size_t gained = 0, failed = 0;
    for (index_t i = 0; i < f.y.size(); ++i) {
      CAPTURE(i);
      int first = -1, largest = 0;
      for (int r = 0; r < restarts; ++r) {
        if (single[r].success[i] && first < 0) first = r;
        if (single[r].loss[i] > single[largest].loss[i]) largest = r;
      }
      CHECK(all.success[i] == (first >= 0));
      if (clean[i] != f.y[i]) continue;  // not attacked: x itself
      gained += first > 0;
      if (first >= 0) {
        // Untargeted losses have one run per restart: the point is that of
        // the first restart that broke the example.
        if (!std::is_same_v<Loss, targeted_dlr>) CHECK(relative_error(slice_rows(all.adversarial, i, i + 1), slice_rows(single[first].adversarial, i, i + 1)) < 1e-12);
      } else {
        ++failed;
        CHECK(all.loss[i] == doctest::Approx(single[largest].loss[i]).epsilon(1e-12));
        CHECK(relative_error(slice_rows(all.adversarial, i, i + 1), slice_rows(single[largest].adversarial, i, i + 1)) < 1e-12);
      }
    }
    CAPTURE(gained);
    CHECK(failed > 0);  // the loss rule was exercised
  });
}
TEST_CASE_TEMPLATE_APPLY(restarts, test_backends::cross<l2, linf>);

TEST_CASE_TEMPLATE_DEFINE("APGD-CE reaches the exact optimum of a linear binary classifier", C, linear_optimum) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  using tensor_t = tensor<double, B>;
  // For z = W x + b with two classes, CE = log(1 + exp(z_o - z_y)) grows with
  // the margin <w_o - w_y, delta>, whose maximum over the eps-ball is
  // eps ||w_o - w_y||_*, attained only at delta = eps (w_o - w_y) / ||w_o - w_y||_2
  // (l2) or eps sign(w_o - w_y) (linf). x is inside [0.3, 0.7]^d and
  // eps = 0.05, so the box never binds.
  const index_t d = 6, n = 6;
  linear_model<B> net(dense<double, B>(d, 2));
  net.initialize(9);
  std::mt19937_64 rng(4);
  const tensor_t x = random_tensor<B>({n, d}, rng, 0.3, 0.7);
  // Labels are the clean predictions: examples misclassified at x are not attacked.
  const auto clean = argmax_rows(net.predict(x));
  label_tensor<B> y({n});
  for (index_t i = 0; i < n; ++i) y[i] = static_cast<std::int32_t>(clean[i]);
  const double eps = 0.05;
  apgd_options<double> o;
  o.eps = eps;
  o.iterations = 100;
  const auto r = make_apgd<Norm, softmax_cross_entropy>(net, o)(x, y);

  const auto& W = net.template layer<0>().weight();
  const tensor_t z = net.predict(x);
  const bool is_l2 = std::is_same_v<Norm, l2>;
  const std::vector<double> radius = distances<Norm>(r.adversarial, x);
  for (index_t i = 0; i < n; ++i) {
    CAPTURE(i);
    const index_t t = y[i], other = 1 - y[i];
    std::vector<double> w(static_cast<std::size_t>(d));
    double l2_norm = 0, l1_norm = 0, achieved = 0;
    for (index_t c = 0; c < d; ++c) {
      w[c] = W(other, c) - W(t, c);
      l2_norm += w[c] * w[c];
      l1_norm += std::abs(w[c]);
      achieved += w[c] * (r.adversarial(i, c) - x(i, c));
    }
    l2_norm = std::sqrt(l2_norm);
    const double best_margin = eps * (is_l2 ? l2_norm : l1_norm);
    // The optimal margin and loss, to rounding.
    CHECK(radius[i] <= eps * (1 + 1e-12));
    CHECK(achieved == doctest::Approx(best_margin).epsilon(1e-12));
    CHECK(r.loss[i] == doctest::Approx(std::log1p(std::exp(z(i, other) - z(i, t) + best_margin))).epsilon(1e-12));
    // The optimal point. For linf a vertex, exactly. For l2 the margin above
    // pins it (Cauchy-Schwarz holds with equality only along w), but only to
    // about sqrt(rounding): a point at angle a from the optimum loses
    // eps ||w|| a^2 / 2 of margin, invisible in double below a ~ 1e-8, so no
    // loss comparison (x_max is chosen by one) can tell those points apart.
    for (index_t c = 0; c < d; ++c) {
      const double step = is_l2 ? eps * w[c] / l2_norm : eps * (w[c] > 0 ? 1.0 : -1.0);
      CHECK(r.adversarial(i, c) == doctest::Approx(x(i, c) + step).epsilon(is_l2 ? 1e-6 : 1e-12));
    }
  }
}
TEST_CASE_TEMPLATE_APPLY(linear_optimum, test_backends::cross<l2, linf>);

TEST_CASE_TEMPLATE_DEFINE("APGD is at least as strong as PGA-10 on a trained MLP", C, stronger) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  trained_fixture<B> f;
  const double scale = std::is_same_v<Norm, l2> ? 1.0 : 0.3;
  double weakest = 1;
  for (double eps : {0.3 * scale, 0.4 * scale, 0.5 * scale}) {
    CAPTURE(eps);
    attack_options<double> pga10;
    pga10.iterations = 10;
    const double pga = robust_accuracy<Norm>(f.net, pga10, f.x, f.y, {eps}).front();
    apgd_options<double> o;
    o.eps = eps;
    const auto ce = make_apgd<Norm, softmax_cross_entropy>(f.net, o)(f.x, f.y);
    const double apgd_ce = 1.0 - ce.success_rate();
    const double ensemble = robust_accuracy(f.net, make_apgd_ensemble<Norm>(f.net, o), f.x, f.y);
    CAPTURE(pga);
    CAPTURE(apgd_ce);
    CAPTURE(ensemble);
    CHECK(apgd_ce <= pga);
    CHECK(ensemble <= apgd_ce);
    weakest = std::min(weakest, pga);
  }
  CHECK(weakest < 0.9);  // the comparison is not between two attacks that break nothing
}
TEST_CASE_TEMPLATE_APPLY(stronger, test_backends::cross<l2, linf>);

TEST_CASE_TEMPLATE_DEFINE("a zero input gradient never produces NaN in APGD", C, zero_gradient) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  mlp<B> net = make_mlp<B>(3, features, classes);
  for (auto& p : net.state().parameters) p.value->set_zero();  // equal logits: zero input gradient
  tensor<double, B> x({4, features}, 0.5);
  label_tensor<B> y({4}, 1);
  for_each_loss([&](auto loss_tag) {
    using Loss = typename decltype(loss_tag)::type;
    CAPTURE(loss_name<Loss>());
    apgd_options<double> o;
    o.eps = 0.3;
    o.iterations = 10;
    const auto r = make_apgd<Norm, Loss>(net, o)(x, y);
    for (index_t i = 0; i < r.adversarial.size(); ++i) REQUIRE(std::isfinite(r.adversarial[i]));
    for (double l : r.loss) CHECK(std::isfinite(l));
    for (double dist : distances<Norm>(r.adversarial, x)) CHECK(dist <= 0.3 * (1 + 1e-12));
  });
}
TEST_CASE_TEMPLATE_APPLY(zero_gradient, test_backends::cross<l2, linf>);

TEST_CASE_TEMPLATE("a NaN or infinite loss, at x or at an iterate, makes APGD throw rather than return a weaker attack", B,
                   OPNORM_TEST_BACKENDS) {
  trained_fixture<B> f;
  apgd_options<double> o;
  o.eps = 0.3;
  o.iterations = 5;
  // A NaN input reaches the loss through a linear model (a ReLU would map it to 0).
  linear_model<B> linear(dense<double, B>(features, classes));
  linear.initialize(2);
  for_each_loss([&](auto loss_tag) {
    using Loss = typename decltype(loss_tag)::type;
    CAPTURE(loss_name<Loss>());
    tensor<double, B> x = f.x;
    x(7, 3) = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_AS((make_apgd<l2, Loss>(linear, o)(x, f.y)), std::runtime_error);
  });
  // A NaN in the last layer's bias reaches every logit.
  auto& bias = *f.net.state().parameters.back().value;
  REQUIRE(bias.size() == classes);
  bias[1] = std::numeric_limits<double>::quiet_NaN();
  for_each_loss([&](auto loss_tag) {
    using Loss = typename decltype(loss_tag)::type;
    CAPTURE(loss_name<Loss>());
    CHECK_THROWS_AS((make_apgd<linf, Loss>(f.net, o)(f.x, f.y)), std::runtime_error);
  });

  // A loss finite at x that overflows inside the ball: z_0 = 1.5e308 + 1e308 x_0
  // with x_0 = 0 at every example is finite, and becomes inf (a NaN loss)
  // where an iterate moves x_0 above 0.3, as the linf start does for about
  // a fifth of the examples.
  linear_model<B> edge(dense<double, B>(features, classes));
  edge.template layer<0>().weight().set_zero();
  edge.template layer<0>().weight()(0, 0) = 1e308;
  auto& b = edge.template layer<0>().bias();
  b.set_zero();
  b[0] = 1.5e308;
  b[1] = 1.6e308;
  std::mt19937_64 rng(6);
  const index_t n = 40;
  tensor<double, B> x = random_tensor<B>({n, features}, rng, 0.2, 0.8);
  for (index_t i = 0; i < n; ++i) x(i, 0) = 0.0;
  const label_tensor<B> y({n}, 1);
  apgd_options<double> wide;
  wide.eps = 0.5;
  wide.iterations = 3;
  for_each_loss([&](auto loss_tag) {
    using Loss = typename decltype(loss_tag)::type;
    CAPTURE(loss_name<Loss>());
    tensor<double, B> at_x;
    const label_tensor<B> pairs = label_pairs(y, label_tensor<B>({n}, 0));
    if constexpr (std::is_same_v<Loss, targeted_dlr>)
      Loss::evaluate(edge.predict(x), pairs, static_cast<tensor<double, B>*>(nullptr), reduction::sum, &at_x);
    else
      Loss::evaluate(edge.predict(x), y, static_cast<tensor<double, B>*>(nullptr), reduction::sum, &at_x);
    for (double l : at_x.to_vector()) REQUIRE(std::isfinite(l));
    CHECK_THROWS_AS((make_apgd<linf, Loss>(edge, wide)(x, y)), std::runtime_error);
  });
}

// ---- the ensemble ------------------------------------------------------------

TEST_CASE_TEMPLATE_DEFINE("the ensemble counts an example robust only if it is correct and every attack fails on it", C,
                          ensemble) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  trained_fixture<B> f;
  const double eps = std::is_same_v<Norm, l2> ? 0.3 : 0.1;
  attack_options<double> po;
  po.eps = eps;
  po.iterations = 5;
  po.seed = 3;
  auto pga5 = make_pga<Norm>(f.net, po);
  apgd_options<double> ao;
  ao.eps = eps;
  ao.iterations = 30;
  auto apgd_dlr = make_apgd<Norm, dlr>(f.net, ao);

  // Each attack alone on every example (an example's result does not depend on its batch).
  const auto first = pga5(f.x, f.y);
  const auto second = apgd_dlr(f.x, f.y);
  const auto clean = argmax_rows(f.net.predict(f.x));

  const std::vector<attack_function<double, B>> list = {pga5, apgd_dlr};
  const auto report = worst_case(f.net, list, f.x, f.y, 64);  // 200 examples: batches of 64, 64, 64, 8
  std::size_t robust = 0, by_second = 0;
  for (index_t i = 0; i < f.y.size(); ++i) {
    CAPTURE(i);
    const bool correct = clean[i] == f.y[i];
    CHECK(report.correct[i] == correct);
    CHECK(report.robust[i] == (correct && !first.success[i] && !second.success[i]));
    const int expected = !correct ? -1 : first.success[i] ? 0 : second.success[i] ? 1 : -1;
    CHECK(report.broken_by[i] == expected);
    const auto& source = expected == 0 ? first.adversarial : expected == 1 ? second.adversarial : f.x;
    CHECK(relative_error(slice_rows(report.adversarial, i, i + 1), slice_rows(source, i, i + 1)) < 1e-12);
    robust += report.robust[i];
    by_second += expected == 1;
  }
  CHECK(report.accuracy() == static_cast<double>(robust) / static_cast<double>(f.y.size()));
  CHECK(robust > 0);
  CHECK(by_second > 0);  // the second attack ran on what the first left
  CHECK(robust_accuracy(f.net, list, f.x, f.y) == report.accuracy());

  // The variadic form, with the attacks by reference, gives the same report.
  const auto by_reference = worst_case(f.net, f.x, f.y, pga5, apgd_dlr);
  CHECK(by_reference.robust == report.robust);
  CHECK(by_reference.broken_by == report.broken_by);
  CHECK(relative_error(by_reference.adversarial, report.adversarial) < 1e-12);
}
TEST_CASE_TEMPLATE_APPLY(ensemble, test_backends::cross<l2, linf>);
