// The attack path in float, where rounding is what breaks attacks: the
// cross-entropy gradient of a confident example (its true-class component
// must not cancel to 0), steepest-ascent directions of tiny and huge
// gradients (squares that underflow or overflow), and NaN, which must never
// become a quiet 0 (a weaker attack that reports nothing). Each result is
// compared with a double-precision reference, on every backend.
#include "gradient_check.hpp"

#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <opnorm/kernel/attacks.hpp>
#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/relu.hpp>

using namespace opnorm;
using namespace opnorm::testing;

namespace {

// |a - b| <= tolerance |b|: relative however small b is. doctest's Approx
// adds 1 to its scale, so it would pass any two numbers near 1e-35.
bool close(double a, double b, double tolerance) { return std::abs(a - b) <= tolerance * std::abs(b); }

// What f throws as std::runtime_error, or "" when it throws nothing.
template <class F>
std::string runtime_error_message(F&& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Float values drawn in double, scaled, then rounded to float.
template <class B>
tensor<float, B> random_float_tensor(const shape_t& shape, std::mt19937_64& rng, double lo, double hi,
                                     double scale = 1.0) {
  std::uniform_real_distribution<double> u(lo, hi);
  tensor<float, B> t(shape);
  for (index_t i = 0; i < t.size(); ++i) t[i] = static_cast<float>(u(rng) * scale);
  return t;
}

}  // namespace

TEST_CASE_TEMPLATE("float cross-entropy gradient at logit margins 20, 30, 80: the true class's component is nonzero "
                   "and equals -sum of the others", B, OPNORM_TEST_BACKENDS) {
  const std::vector<double> margins = {20, 30, 80};
  const index_t n = static_cast<index_t>(margins.size()), k = 4;
  tensor<float, B> z({n, k});
  label_tensor<B> y({n});
  for (index_t i = 0; i < n; ++i) {
    y[i] = 1;
    // The label's logit lies margin above the largest other one (0.5).
    z(i, 0) = -2.0f;
    z(i, 1) = static_cast<float>(margins[static_cast<std::size_t>(i)] + 0.5);
    z(i, 2) = 0.5f;
    z(i, 3) = -0.75f;
  }
  for (reduction r : {reduction::sum, reduction::mean}) {
    const double scale = r == reduction::mean ? 1.0 / static_cast<double>(n) : 1.0;
    tensor<float, B> g;
    softmax_cross_entropy::evaluate(z, y, &g, r);
    for (index_t i = 0; i < n; ++i) {
      CAPTURE(margins[static_cast<std::size_t>(i)]);
      CAPTURE(r == reduction::mean);
      // Double reference from the same float logits.
      double m = z(i, 0), s = 0;
      for (index_t j = 1; j < k; ++j) m = std::max(m, static_cast<double>(z(i, j)));
      for (index_t j = 0; j < k; ++j) s += std::exp(static_cast<double>(z(i, j)) - m);
      double reference_others = 0, float_others = 0;
      for (index_t j = 0; j < k; ++j) {
        if (j == 1) continue;
        const double p = std::exp(static_cast<double>(z(i, j)) - m) / s * scale;
        CHECK(close(g(i, j), p, 1e-6));
        reference_others += p;
        float_others += static_cast<double>(g(i, j));
      }
      const double true_class = g(i, 1);
      CHECK(true_class != 0.0);
      CHECK(true_class < 0.0);
      CHECK(close(true_class, -reference_others, 1e-6));
      CHECK(close(true_class, -float_others, 1e-6));
    }
  }
}

TEST_CASE_TEMPLATE("float l2 PGA on a confident example (margin > 17) still moves the point, against the "
                   "true class's weights", B, OPNORM_TEST_BACKENDS) {
  using net_t = sequential<dense<float, B>>;
  const index_t d = 8;
  const float eps = 0.05f;
  std::mt19937_64 rng(3);
  for (double margin : {20.0, 30.0, 80.0}) {
    CAPTURE(margin);
    // Only the true class's logit depends on x (the other rows of W are 0),
    // so the input gradient is (p_y - 1) w: with the true-class component
    // rounded to 0 there would be no gradient at all, and at margin 80 its
    // squares (~1e-70) underflow in float.
    net_t net(dense<float, B>(d, 3));
    auto& layer = net.template layer<0>();
    tensor<float, B> x = random_float_tensor<B>({1, d}, rng, 0.3, 0.7);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    double w_norm = 0, w_dot_x = 0;
    for (index_t c = 0; c < d; ++c) {
      layer.weight()(0, c) = static_cast<float>(u(rng));
      layer.weight()(1, c) = 0.0f;
      layer.weight()(2, c) = 0.0f;
      w_norm += static_cast<double>(layer.weight()(0, c)) * layer.weight()(0, c);
      w_dot_x += static_cast<double>(layer.weight()(0, c)) * x(0, c);
    }
    w_norm = std::sqrt(w_norm);
    layer.bias()[0] = static_cast<float>(margin - w_dot_x);
    layer.bias()[1] = 0.0f;
    layer.bias()[2] = 0.0f;
    label_tensor<B> y({1}, 0);
    const tensor<float, B> logits = net.predict(x);
    CAPTURE(logits(0, 0));
    REQUIRE(logits(0, 0) - std::max(logits(0, 1), logits(0, 2)) > 17.0f);
    // In float, 1 - p_y is exactly 0 at this margin: the difference form
    // would give the attack nothing.
    REQUIRE(1.0f - 1.0f / (1.0f + 2.0f * std::exp(-logits(0, 0))) == 0.0f);

    // The ascent direction is -w / ||w||: the step lowers the true logit.
    auto check_moved = [&](const tensor<float, B>& adversarial) {
      double distance = 0;
      for (index_t c = 0; c < d; ++c) {
        const double expected = static_cast<double>(x(0, c)) - eps * layer.weight()(0, c) / w_norm;
        CHECK(std::abs(adversarial(0, c) - expected) <= 1e-6);
        distance += (static_cast<double>(adversarial(0, c)) - x(0, c)) * (static_cast<double>(adversarial(0, c)) - x(0, c));
      }
      CHECK(close(std::sqrt(distance), eps, 1e-4));
    };
    check_moved(make_fgm<l2>(net, eps)(x, y).adversarial);  // one step
    attack_options<float> o;  // three steps of eps / 2, no random start
    o.eps = eps;
    o.alpha = eps / 2;
    o.iterations = 3;
    o.random_start = false;
    check_moved(make_pga<l2>(net, o)(x, y).adversarial);
  }
}

TEST_CASE_TEMPLATE("float steepest ascent of gradients scaled to 1e-23 and 1e+20: l2 returns the unit vector, "
                   "linf keeps the signs", B, OPNORM_TEST_BACKENDS) {
  // Squares of 1e-23 underflow in float and squares of 1e+20 overflow; the
  // row scaled by 1 is the control.
  const std::vector<double> scales = {1e-23, 1e+20, 1.0};
  const index_t n = static_cast<index_t>(scales.size()), d = 40;
  std::mt19937_64 rng(17);
  tensor<float, B> g({n, d});
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < d; ++j) g(i, j) = static_cast<float>(u(rng) * scales[static_cast<std::size_t>(i)]);
  for (index_t i = 0; i < n; ++i) g(i, 5) = 0.0f;  // sign(0) = 0, and a zero entry of the unit vector

  tensor<float, B> v;
  l2::steepest_ascent(g, v);
  for (index_t i = 0; i < n; ++i) {
    CAPTURE(scales[static_cast<std::size_t>(i)]);
    double s = 0, v_norm = 0;  // in double, where neither square under- nor overflows
    for (index_t j = 0; j < d; ++j) s += static_cast<double>(g(i, j)) * g(i, j);
    REQUIRE(s > 0);
    double worst = 0;
    for (index_t j = 0; j < d; ++j) {
      worst = std::max(worst, std::abs(v(i, j) - g(i, j) / std::sqrt(s)));
      v_norm += static_cast<double>(v(i, j)) * v(i, j);
    }
    CHECK(worst <= 1e-6);
    CHECK(std::sqrt(v_norm) == doctest::Approx(1.0).epsilon(1e-6));
    CHECK(v(i, 5) == 0.0f);
  }

  linf::steepest_ascent(g, v);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < d; ++j) {
      CAPTURE(i);
      CAPTURE(j);
      CHECK(v(i, j) == (g(i, j) > 0 ? 1.0f : (g(i, j) < 0 ? -1.0f : 0.0f)));
    }
}

TEST_CASE_TEMPLATE("a NaN gradient is never a quiet 0: l2 and linf steepest ascent give NaN for its example", B,
                   OPNORM_TEST_BACKENDS) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const index_t n = 4, d = 6;
  std::mt19937_64 rng(8);
  tensor<float, B> g = random_float_tensor<B>({n, d}, rng, -1.0, 1.0);
  g(1, 2) = nan;
  g(3, 4) = std::numeric_limits<float>::infinity();  // l2 has no direction for it either

  tensor<float, B> v;
  l2::steepest_ascent(g, v);
  for (index_t j = 0; j < d; ++j) {
    CHECK(std::isnan(v(1, j)));
    CHECK(std::isnan(v(3, j)));
  }
  for (index_t i : {0, 2}) {  // the other examples keep their unit vectors
    double s = 0;
    for (index_t j = 0; j < d; ++j) s += static_cast<double>(g(i, j)) * g(i, j);
    for (index_t j = 0; j < d; ++j) CHECK(std::abs(v(i, j) - g(i, j) / std::sqrt(s)) <= 1e-6);
  }

  linf::steepest_ascent(g, v);
  CHECK(std::isnan(v(1, 2)));
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < d; ++j) {
      if (i == 1 && j == 2) continue;
      CAPTURE(i);
      CAPTURE(j);
      CHECK(v(i, j) == (g(i, j) > 0 ? 1.0f : -1.0f));
    }
}

namespace {

// Attacks model with a NaN in its loss and checks the refusal: with and
// without a random start, and as FGM, each throws std::runtime_error whose
// message says "not finite" and names the example.
template <class Norm, class Net, class B>
void check_refused(Net& model, const tensor<float, B>& input, const label_tensor<B>& y,
                   const std::string& expected_example) {
  attack_options<float> o;
  o.eps = 0.1f;
  o.iterations = 3;
  for (bool random_start : {true, false}) {
    CAPTURE(random_start);
    o.random_start = random_start;
    const std::string message = runtime_error_message([&] { make_pga<Norm>(model, o)(input, y); });
    CAPTURE(message);
    CHECK(contains(message, "not finite"));
    CHECK(contains(message, expected_example));
  }
  const std::string fgm_message = runtime_error_message([&] { make_fgm<Norm>(model, 0.1f)(input, y); });
  CAPTURE(fgm_message);
  CHECK(contains(fgm_message, "not finite"));
  CHECK(contains(fgm_message, expected_example));
}

template <class B>
struct nan_fixture {
  using mlp = sequential<dense<float, B>, relu<float, B>, dense<float, B>>;
  using linear = sequential<dense<float, B>>;
  mlp net{dense<float, B>(6, 8), relu<float, B>(), dense<float, B>(8, 3)};
  linear linear_net{dense<float, B>(6, 3)};
  tensor<float, B> x;
  label_tensor<B> y{4};
  nan_fixture() {
    net.initialize(4);
    linear_net.initialize(4);
    std::mt19937_64 rng(5);
    x = random_float_tensor<B>({4, 6}, rng, 0.2, 0.8);
    for (index_t i = 0; i < 4; ++i) y[i] = static_cast<std::int32_t>(i % 3);
  }
  tensor<float, B> x_with_nan_in_example_2() const {
    tensor<float, B> with_nan = x;
    with_nan(2, 3) = std::numeric_limits<float>::quiet_NaN();
    return with_nan;
  }
};

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("pga throws std::runtime_error naming the example when the attack loss is not finite: a NaN "
                          "weight or a NaN input that reaches the logits", C, nan_attack) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  nan_fixture<B> f;
  attack_options<float> o;
  o.eps = 0.1f;
  REQUIRE(runtime_error_message([&] { make_pga<Norm>(f.net, o)(f.x, f.y); }).empty());  // finite: no complaint
  REQUIRE(runtime_error_message([&] { make_pga<Norm>(f.linear_net, o)(f.x, f.y); }).empty());
  {
    INFO("a NaN weight in the last layer: every example's logits");
    auto with_nan = f.net;
    with_nan.template layer<2>().weight()(1, 4) = std::numeric_limits<float>::quiet_NaN();
    check_refused<Norm>(with_nan, f.x, f.y, "example 0 ");
  }
  {
    INFO("a NaN in the input of example 2, to a linear model");
    check_refused<Norm>(f.linear_net, f.x_with_nan_in_example_2(), f.y, "example 2 ");
  }
}
TEST_CASE_TEMPLATE_APPLY(nan_attack, test_backends::cross<l2, linf>);

// ReLU passes NaN through (as torch.relu does), so a NaN in front of it
// reaches the attack loss; were it mapped to 0, pga would return an
// "adversarial" example still holding the NaN, with no error.
TEST_CASE_TEMPLATE_DEFINE("pga throws std::runtime_error naming the example for a NaN input or a NaN weight that "
                          "passes through a ReLU", C, nan_through_relu) {
  using Norm = typename C::policy;
  using B = typename C::backend;
  nan_fixture<B> f;
  {
    INFO("a NaN in the input of example 2");
    check_refused<Norm>(f.net, f.x_with_nan_in_example_2(), f.y, "example 2 ");
  }
  {
    INFO("a NaN weight in the first layer, before the ReLU");
    auto with_nan = f.net;
    with_nan.template layer<0>().weight()(4, 1) = std::numeric_limits<float>::quiet_NaN();
    check_refused<Norm>(with_nan, f.x, f.y, "example 0 ");
  }
}
TEST_CASE_TEMPLATE_APPLY(nan_through_relu, test_backends::cross<l2, linf>);
