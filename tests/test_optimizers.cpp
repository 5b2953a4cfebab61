// Optimizers and schedules against steps computed by hand and by
// torch.optim 1.13 in float64 (same three gradients, same start point).
#include <limits>
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/relu.hpp>
#include <opnorm/nn/sequential.hpp>
#include <opnorm/train/optimizers.hpp>
#include <opnorm/train/schedules.hpp>

#include "test_backends.hpp"

using namespace opnorm;
using tensor_d = tensor<double>;
using vec = std::vector<double>;

namespace {

// One parameter tensor w with gradient g, as a model's state() would list it.
template <class B = backend::cpu>
struct one_parameter {
  tensor<double, B> w = tensor<double, B>::from_vector({3}, {1.0, -2.0, 0.25});
  tensor<double, B> g = tensor<double, B>({3}, 0.0);
  state_list<double, B> state() {
    state_list<double, B> s;
    s.parameters.push_back({"w", &w, &g});
    return s;
  }
};

const std::vector<vec> gradients = {{0.5, 0.25, -3.0}, {-1.0, 2.0, 0.0}, {0.125, -0.5, 4.0}};

template <class B>
void check_close(const tensor<double, B>& actual, const vec& expected) {
  REQUIRE(actual.size() == static_cast<index_t>(expected.size()));
  for (std::size_t i = 0; i < expected.size(); ++i) {
    CAPTURE(i);
    CHECK(actual[static_cast<index_t>(i)] == doctest::Approx(expected[i]).epsilon(1e-13));
  }
}

// Runs the three gradients through opt, checking w after every step.
template <class B, class Optimizer>
void check_trajectory(one_parameter<B>& p, Optimizer& opt, const std::vector<vec>& expected) {
  for (std::size_t k = 0; k < gradients.size(); ++k) {
    CAPTURE(k);
    p.g = tensor<double, B>::from_vector({3}, gradients[k]);
    opt.step(p);
    check_close(p.w, expected[k]);
  }
  CHECK(opt.steps() == 3);
}

template <class B>
const tensor<double, B>& buffer(state_list<double, B>& s, const std::string& name) {
  for (auto& b : s.buffers)
    if (b.name == name) return *b.value;
  FAIL("no optimizer buffer named " << name);
  throw;  // unreachable
}

}  // namespace

TEST_CASE_TEMPLATE("sgd without momentum is w -= lr * grad and keeps no buffers", B, OPNORM_TEST_BACKENDS) {
  one_parameter<B> p;
  sgd<double, B> opt(p.state(), {0.5, 0.0, 0.0, false});
  check_trajectory(p, opt, {{0.75, -2.125, 1.75}, {1.25, -3.125, 1.75}, {1.1875, -2.875, -0.25}});
  auto s = opt.state();
  CHECK(s.buffers.empty());
  REQUIRE(s.counters.size() == 1);
  CHECK(s.counters[0].name == "step");
  CHECK(*s.counters[0].value == 3);
}

TEST_CASE_TEMPLATE("sgd with momentum and coupled weight decay follows torch.optim.SGD", B, OPNORM_TEST_BACKENDS) {
  // By hand, first coordinate: g = 0.5 + 0.1 * 1 = 0.6, buf = g (first step
  // starts the buffer at the gradient), w = 1 - 0.5 * 0.6 = 0.7; then
  // g = -1 + 0.1 * 0.7 = -0.93, buf = 0.9 * 0.6 - 0.93 = -0.39,
  // w = 0.7 + 0.5 * 0.39 = 0.895.
  one_parameter<B> p;
  sgd<double, B> opt(p.state(), {0.5, 0.9, 0.1, false});
  check_trajectory(p, opt,
                   {{0.7, -2.025, 1.7375}, {0.895, -2.94625, 2.989375}, {0.96325, -3.3780625, 1.96659375}});
  auto s = opt.state();
  check_close(buffer(s, "w.momentum_buffer"), {-0.1365, 0.863625, 2.0455625});
}

TEST_CASE_TEMPLATE("sgd with Nesterov momentum follows torch.optim.SGD(nesterov=True)", B, OPNORM_TEST_BACKENDS) {
  // By hand, first coordinate of step 1: g = 0.6, buf = 0.6,
  // d = g + 0.9 * buf = 1.14, w = 1 - 0.57 = 0.43.
  one_parameter<B> p;
  sgd<double, B> opt(p.state(), {0.5, 0.9, 0.1, true});
  check_trajectory(p, opt,
                   {{0.43, -2.0475, 3.07625},
                    {1.09615, -3.7732375, 3.98888125},
                    {1.04215075, -3.6850811875, 0.76973690625}});
  auto s = opt.state();
  check_close(buffer(s, "w.momentum_buffer"), {-0.140685, 0.77890125, 2.266000625});
}

TEST_CASE_TEMPLATE("adam follows torch.optim.Adam, bias correction included", B, OPNORM_TEST_BACKENDS) {
  // By hand, step 1: m = 0.1 g, v = 0.001 g^2, so m / (1 - 0.9) = g and
  // sqrt(v / (1 - 0.999)) = |g|: w -= 0.1 * g / (|g| + 1e-8), e.g.
  // 1 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.900000002.
  one_parameter<B> p;
  adam<double, B> opt(p.state(), adam_options{0.1, 0.9, 0.999, 1e-8, 0.0});
  check_trajectory(p, opt,
                   {{0.900000002, -2.099999996, 0.3499999996666667},
                    {0.9366103542405654, -2.1821465712571055, 0.41700582476437303},
                    {0.9576326827003621, -2.228388067521562, 0.3969398563765477}});
  auto s = opt.state();
  check_close(buffer(s, "w.exp_avg"), {-0.037, 0.15025, 0.157});
  check_close(buffer(s, "w.exp_avg_sq"), {0.00126412525, 0.0043083750625, 0.024982009});
  CHECK(*s.counters.at(0).value == 3);
}

TEST_CASE_TEMPLATE("adam with weight decay, other betas and a large epsilon follows torch.optim.Adam", B, OPNORM_TEST_BACKENDS) {
  one_parameter<B> p;
  adam<double, B> opt(p.state(), adam_options{0.1, 0.8, 0.99, 1e-3, 0.1});
  check_trajectory(p, opt,
                   {{0.9001663893510815, -2.0980392156862746, 0.3499663978494624},
                    {0.9310893554257633, -2.1780671232014717, 0.4120183828406888},
                    {0.9391255928069958, -2.2054834453490675, 0.3814471522728718}});
  auto s = opt.state();
  check_close(buffer(s, "w.exp_avg"), {-0.025175550661867427, 0.14927003008499018, 0.4330398300224051});
  check_close(buffer(s, "w.exp_avg_sq"),
              {0.012201965280043246, 0.03690450705490617, 0.25007022377398835});
}

TEST_CASE("optimizer state copied into a fresh optimizer continues the same trajectory") {
  // This is what resuming from a checkpoint does: buffers and step counter
  // restored, then the remaining steps. Adam's bias correction depends on the
  // step counter, so a lost counter would show here.
  auto run = [](auto make, int split) {
    one_parameter<> p;
    auto opt = make(p);
    for (int k = 0; k < split; ++k) {
      p.g = tensor_d::from_vector({3}, gradients[static_cast<std::size_t>(k)]);
      opt.step(p);
    }
    auto resumed = make(p);
    auto from = opt.state(), to = resumed.state();
    REQUIRE(from.buffers.size() == to.buffers.size());
    for (std::size_t i = 0; i < from.buffers.size(); ++i) {
      CHECK(from.buffers[i].name == to.buffers[i].name);
      *to.buffers[i].value = *from.buffers[i].value;
    }
    *to.counters.at(0).value = *from.counters.at(0).value;
    for (std::size_t k = static_cast<std::size_t>(split); k < gradients.size(); ++k) {
      p.g = tensor_d::from_vector({3}, gradients[k]);
      resumed.step(p);
    }
    return p.w.to_vector();
  };
  auto make_adam = [](one_parameter<>& p) { return adam<double>(p.state(), adam_options{0.1, 0.9, 0.999, 1e-8, 0.01}); };
  auto make_sgd = [](one_parameter<>& p) { return sgd<double>(p.state(), {0.5, 0.9, 0.1, true}); };
  CHECK(run(make_adam, 1) == run(make_adam, 3));
  CHECK(run(make_adam, 2) == run(make_adam, 3));
  CHECK(run(make_sgd, 1) == run(make_sgd, 3));
}

TEST_CASE("an optimizer bound to a network names its buffers after the parameters") {
  sequential<dense<double>, relu<double>, dense<double>> net(dense<double>(4, 3), relu<double>(),
                                                             dense<double>(3, 2));
  sgd opt(net, sgd_options{0.1, 0.9, 0.0, false});  // deduces sgd<double, cpu>
  static_assert(std::is_same_v<decltype(opt), sgd<double, backend::cpu>>);
  auto s = opt.state();
  REQUIRE(s.buffers.size() == 4);
  CHECK(s.buffers[0].name == "0.weight.momentum_buffer");
  CHECK(s.buffers[3].name == "2.bias.momentum_buffer");
  CHECK(s.buffers[0].value->shape() == shape_t{3, 4});

  // A gradient of ones moves every weight by -lr.
  const double before = net.layer<2>().weight()[0];
  for (auto& p : net.state().parameters) p.grad->fill(1.0);
  opt.step(net);
  CHECK(net.layer<2>().weight()[0] == doctest::Approx(before - 0.1).epsilon(1e-15));

  sequential<dense<double>, relu<double>, dense<double>> other(dense<double>(4, 5), relu<double>(),
                                                               dense<double>(5, 2));
  CHECK_THROWS_WITH_AS(opt.step(other),
                       doctest::Contains("the optimizer was built for '0.weight' (3, 4)"),
                       std::invalid_argument);
}

TEST_CASE("optimizers run in float") {
  sequential<dense<float>> net(dense<float>(3, 2));
  adam opt(net, adam_options{});
  for (auto& p : net.state().parameters) p.grad->fill(0.5f);
  const float before = net.layer<0>().weight()[0];
  opt.step(net);
  // The first Adam step moves every coordinate by lr * g / (|g| + eps), about lr.
  CHECK(net.layer<0>().weight()[0] == doctest::Approx(before - 1e-3f).epsilon(1e-4));
}

TEST_CASE("optimizer options are validated, and NaN or infinity is refused by name") {
  one_parameter<> p;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS(sgd<double>(p.state(), {0.1, 1.0, 0.0, false}),
                       "opnorm::sgd: momentum is 1; it must be a finite number in [0, 1)", std::invalid_argument);
  CHECK_THROWS_WITH_AS(sgd<double>(p.state(), {0.1, 0.0, 0.0, true}),
                       "opnorm::sgd: Nesterov momentum needs momentum > 0", std::invalid_argument);
  CHECK_THROWS_WITH_AS(sgd<double>(p.state(), {-1.0, 0.0, 0.0, false}),
                       "opnorm::sgd: learning_rate is -1; it must be a finite number >= 0", std::invalid_argument);
  CHECK_THROWS_WITH_AS(sgd<double>(p.state(), {nan, 0.0, 0.0, false}),
                       "opnorm::sgd: learning_rate is nan; it must be a finite number >= 0", std::invalid_argument);
  CHECK_THROWS_WITH_AS(sgd<double>(p.state(), {0.1, nan, 0.0, false}),
                       "opnorm::sgd: momentum is nan; it must be a finite number in [0, 1)", std::invalid_argument);
  CHECK_THROWS_WITH_AS(sgd<double>(p.state(), {0.1, 0.0, inf, false}),
                       "opnorm::sgd: weight_decay is inf; it must be a finite number >= 0", std::invalid_argument);
  CHECK_THROWS_WITH_AS(adam<double>(p.state(), adam_options{0.1, 0.9, 0.999, 0.0, 0.0}),
                       "opnorm::adam: epsilon is 0; it must be a finite number > 0", std::invalid_argument);
  CHECK_THROWS_WITH_AS(adam<double>(p.state(), adam_options{0.1, 1.0, 0.999, 1e-8, 0.0}),
                       "opnorm::adam: beta1 is 1; it must be a finite number in [0, 1)", std::invalid_argument);
  CHECK_THROWS_WITH_AS(adam<double>(p.state(), adam_options{0.1, 0.9, nan, 1e-8, 0.0}),
                       "opnorm::adam: beta2 is nan; it must be a finite number in [0, 1)", std::invalid_argument);
  CHECK_THROWS_WITH_AS(adam<double>(p.state(), adam_options{inf, 0.9, 0.999, 1e-8, 0.0}),
                       "opnorm::adam: learning_rate is inf; it must be a finite number >= 0", std::invalid_argument);
}

TEST_CASE("schedules refuse NaN, infinity and out-of-range settings by name") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH_AS((constant_schedule(nan)), "opnorm::constant_schedule: learning_rate is nan; it must be a finite number >= 0",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(step_decay_schedule(0.1, 2, nan),
                       "opnorm::step_decay_schedule: gamma is nan; it must be a finite number > 0", std::invalid_argument);
  CHECK_THROWS_WITH_AS(step_decay_schedule(0.1, 0, 0.5),
                       "opnorm::step_decay_schedule: step_epochs is 0; it must be at least 1", std::invalid_argument);
  CHECK_THROWS_WITH_AS(cosine_schedule(std::numeric_limits<double>::infinity(), 4),
                       "opnorm::cosine_schedule: learning_rate is inf; it must be a finite number >= 0",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(cosine_schedule(0.1, 4, 0, 0.2),
                       "opnorm::cosine_schedule: min_learning_rate is 0.2; it must be a finite number in [0, 0.1]",
                       std::invalid_argument);
}

TEST_CASE("constant and step-decay schedules") {
  constant_schedule constant(0.3);
  CHECK(constant(0, 0, 10) == 0.3);
  CHECK(constant(7, 9, 10) == 0.3);

  step_decay_schedule decay(0.1, 3, 0.5);
  CHECK(decay(0, 0, 10) == doctest::Approx(0.1).epsilon(1e-15));
  CHECK(decay(2, 9, 10) == doctest::Approx(0.1).epsilon(1e-15));
  CHECK(decay(3, 0, 10) == doctest::Approx(0.05).epsilon(1e-15));
  CHECK(decay(5, 4, 10) == doctest::Approx(0.05).epsilon(1e-15));
  CHECK(decay(6, 0, 10) == doctest::Approx(0.025).epsilon(1e-15));
  CHECK_THROWS_AS(step_decay_schedule(0.1, 0, 0.5), std::invalid_argument);
}

TEST_CASE("cosine schedule without warmup") {
  const double pi = 3.14159265358979323846;
  cosine_schedule cosine(1.0, 4);  // 4 epochs of 10 steps: 40 steps
  CHECK(cosine(0, 0, 10) == doctest::Approx(1.0).epsilon(1e-15));
  CHECK(cosine(1, 0, 10) == doctest::Approx((1 + std::cos(pi / 4)) / 2).epsilon(1e-15));
  CHECK(cosine(2, 0, 10) == doctest::Approx(0.5).epsilon(1e-15));
  CHECK(cosine(0, 5, 10) == doctest::Approx((1 + std::cos(pi * 5 / 40)) / 2).epsilon(1e-15));
  CHECK(cosine(3, 9, 10) == doctest::Approx((1 + std::cos(pi * 39 / 40)) / 2).epsilon(1e-15));
  CHECK(cosine(4, 0, 10) == doctest::Approx(0.0));  // past the end: min_lr
  CHECK(cosine(9, 0, 10) == doctest::Approx(0.0));

  cosine_schedule with_floor(0.1, 2, 0, 0.01);
  CHECK(with_floor(1, 0, 5) == doctest::Approx(0.01 + 0.09 * 0.5).epsilon(1e-15));
  CHECK(with_floor(2, 0, 5) == doctest::Approx(0.01).epsilon(1e-15));
}

TEST_CASE("cosine schedule with linear warmup") {
  cosine_schedule cosine(1.0, 4, 1);  // warmup over epoch 0 (10 steps), cosine over 30 steps
  CHECK(cosine(0, 0, 10) == doctest::Approx(0.1).epsilon(1e-15));
  CHECK(cosine(0, 4, 10) == doctest::Approx(0.5).epsilon(1e-15));
  CHECK(cosine(0, 9, 10) == doctest::Approx(1.0).epsilon(1e-15));
  CHECK(cosine(1, 0, 10) == doctest::Approx(1.0).epsilon(1e-15));
  CHECK(cosine(2, 5, 10) == doctest::Approx(0.5).epsilon(1e-15));  // 15 of 30 cosine steps
  CHECK_THROWS_WITH_AS(cosine_schedule(1.0, 4, 4), "opnorm::cosine_schedule: warmup_epochs must lie in [0, epochs)",
                       std::invalid_argument);
}
