// custom_layer: extending opnorm from your own code, without touching it.
//
// This program defines, in its own namespace, the three kinds of extension
// docs/extending.md describes, checks each, and then uses them together:
//
//   user::tanh_layer     a layer (the elementwise tanh), checked by the
//                        shipped opnorm::testing::check_layer in double;
//   user::margin_loss    an attack loss (Carlini and Wagner's margin
//                        max_{j != y} z_j - z_y), checked against central
//                        finite differences;
//   user::l1             a norm (l1: steepest ascent, dual norm, projection
//                        onto the ball, random starts), checked against its
//                        defining properties;
//
// then trains a small network with the tanh layer by l1 adversarial
// training (opnorm::adversarial<user::l1>, i.e. the power-iteration kernel
// composed with the user's norm) on a slice of Fashion-MNIST, and attacks it
// with the kernel composed as power_iteration<jacobian_operator<
// loss_gradient<user::margin_loss>>, user::l1, projected_step> (through
// opnorm::pga). Exit status 0 when every check passes, 1 otherwise.
//
//   custom_layer [--data-dir DIR] [--train-examples N] [--epochs E]
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iomanip>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <opnorm/opnorm.hpp>
#include <opnorm/testing/check_layer.hpp>

#include "command_line.hpp"

namespace user {

using opnorm::backend_ops;
using opnorm::index_t;
using opnorm::tensor;

// --- A layer ----------------------------------------------------------------

/// y = tanh(x). Its Jacobian is diagonal, 1 - y^2, so vjp and jvp are the
/// same product with the incoming vector. It has no parameters, so it needs
/// no jvp_parameter_vjp (Eq. 8 differentiates parameters only).
template <class T = float, class Backend = opnorm::backend::cpu>
class tanh_layer {
 public:
  using scalar = T;
  using backend_type = Backend;
  struct cache {};

  tanh_layer() = default;
  /// The same layer on another backend (it has no state).
  template <class B2>
  explicit tanh_layer(const tanh_layer<T, B2>&) {}

  opnorm::shape_t output_shape(const opnorm::shape_t& in) const { return in; }

  void forward(const tensor<T, Backend>& x, tensor<T, Backend>& y, cache&, opnorm::mode) {
    y.resize(x.shape());
    const T* xs = x.data();
    T* ys = y.data();
    backend_ops<Backend>::for_each_index(x.size(), [=] OPNORM_HD(index_t i) { ys[i] = std::tanh(xs[i]); });
  }

  void vjp(const tensor<T, Backend>&, const tensor<T, Backend>& y, const cache&, const tensor<T, Backend>& gy,
           tensor<T, Backend>* gx, bool) {
    if (gx) times_derivative(y, gy, *gx);
  }

  void jvp(const tensor<T, Backend>&, const tensor<T, Backend>& y, const cache&, const tensor<T, Backend>& dx,
           tensor<T, Backend>& dy) const {
    times_derivative(y, dx, dy);
  }

  void collect_state(opnorm::state_list<T, Backend>&, const std::string&) {}
  void initialize(std::mt19937_64&) {}

  // Launches an OPNORM_HD kernel; nvcc rejects those in private members.
  /// out = (1 - y^2) * in, elementwise.
  static void times_derivative(const tensor<T, Backend>& y, const tensor<T, Backend>& in, tensor<T, Backend>& out) {
    out.resize(y.shape());
    const T* ys = y.data();
    const T* is = in.data();
    T* os = out.data();
    backend_ops<Backend>::for_each_index(y.size(), [=] OPNORM_HD(index_t i) { os[i] = (T(1) - ys[i] * ys[i]) * is[i]; });
  }
};

// --- An attack loss ---------------------------------------------------------

/// Carlini and Wagner's margin, unclipped: l(z, y) = max_{j != y} z_j - z_y.
/// Positive exactly when the example is misclassified. Its gradient is +1 at
/// the best rival class and -1 at the true class (ties go to the smaller
/// index, as argmax does).
struct margin_loss {
  static constexpr const char* name = "margin_loss";
  template <class T, class B>
  using target_type = opnorm::label_tensor<B>;

  template <class T, class B>
  static T evaluate(const tensor<T, B>& logits, const opnorm::label_tensor<B>& labels, tensor<T, B>* gradient,
                    opnorm::reduction r = opnorm::reduction::mean, tensor<T, B>* per_example = nullptr) {
    const index_t n = logits.dim(0), k = logits.example_size();
    if (labels.size() != n)
      throw std::invalid_argument("user::margin_loss: " + std::to_string(labels.size()) + " labels for " +
                                  std::to_string(n) + " examples");
    if (k < 2) throw std::invalid_argument("user::margin_loss: needs at least 2 classes");
    for (std::int32_t y : labels.to_vector())
      if (y < 0 || y >= k) throw std::invalid_argument("user::margin_loss: label " + std::to_string(y) + " out of range");
    tensor<T, B> values({n});
    if (gradient) gradient->resize(logits.shape());
    margins(logits, labels, values, gradient, r == opnorm::reduction::mean ? T(1) / T(n) : T(1));
    const T* v = values.data();
    double total = backend_ops<B>::template sum<double>(n, [=] OPNORM_HD(index_t i) { return double(v[i]); });
    if (r == opnorm::reduction::mean) total /= double(n);
    if (per_example) *per_example = values;
    return static_cast<T>(total);
  }

  // Launches an OPNORM_HD kernel; nvcc rejects those in private members.
  template <class T, class B>
  static void margins(const tensor<T, B>& logits, const opnorm::label_tensor<B>& labels, tensor<T, B>& values,
                      tensor<T, B>* gradient, T scale) {
    const index_t n = logits.dim(0), k = logits.example_size();
    const T* z = logits.data();
    const std::int32_t* y = labels.data();
    T* val = values.data();
    T* g = gradient ? gradient->data() : nullptr;
    backend_ops<B>::for_each_index(n, [=] OPNORM_HD(index_t i) {
      const index_t label = y[i];
      index_t rival = label == 0 ? 1 : 0;
      for (index_t j = 0; j < k; ++j)
        if (j != label && z[i * k + j] > z[i * k + rival]) rival = j;
      val[i] = z[i * k + rival] - z[i * k + label];
      if (g) {
        for (index_t j = 0; j < k; ++j) g[i * k + j] = T(0);
        g[i * k + rival] = scale;
        g[i * k + label] = -scale;
      }
    });
  }
};

// --- A norm -----------------------------------------------------------------

/// The l1 norm, per example (row i of a (n, ...) tensor):
///   steepest_ascent   v = sign(g_j) e_j at j = argmax |g_j|: the vertex of
///                     the unit l1 ball that maximizes <g, v> = ||g||_inf
///   dual_norms        ||g||_inf
///   project           the nearest point of the l1 ball: soft-thresholding
///                     by the tau with sum max(|d_j| - tau, 0) = eps
///   random_in_ball    uniform in the ball; random_direction uniform on the sphere
struct l1 {
  static constexpr const char* name = "l1";

  template <class T, class B>
  static void steepest_ascent(const tensor<T, B>& g, tensor<T, B>& v) {
    v.resize(g.shape());
    const index_t n = g.dim(0), d = g.example_size();
    const T* gs = g.data();
    T* vs = v.data();
    backend_ops<B>::for_each_segment(n, d, [=] OPNORM_HD(index_t i) {
      index_t best = 0;
      bool finite = true;
      for (index_t j = 0; j < d; ++j) {
        finite = finite && std::abs(gs[i * d + j]) <= std::numeric_limits<T>::max();
        if (std::abs(gs[i * d + j]) > std::abs(gs[i * d + best])) best = j;
      }
      // As opnorm's own norms: a NaN gradient has no direction (NaN says
      // so), and a zero gradient has none either (0, never 0/0).
      for (index_t j = 0; j < d; ++j) vs[i * d + j] = finite ? T(0) : std::numeric_limits<T>::quiet_NaN();
      if (finite) {
        const T a = gs[i * d + best];
        vs[i * d + best] = a > T(0) ? T(1) : (a < T(0) ? T(-1) : T(0));
      }
    });
  }

  template <class T, class B>
  static void dual_norms(const tensor<T, B>& g, tensor<T, B>& out) {
    const index_t n = g.dim(0), d = g.example_size();
    out.resize({n});
    const T* gs = g.data();
    T* o = out.data();
    backend_ops<B>::for_each_segment(n, d, [=] OPNORM_HD(index_t i) {
      T m = T(0);
      for (index_t j = 0; j < d; ++j) m = std::abs(gs[i * d + j]) > m ? std::abs(gs[i * d + j]) : m;
      o[i] = m;
    });
  }

  template <class T, class B>
  static void norms(const tensor<T, B>& x, tensor<T, B>& out) {
    const index_t n = x.dim(0), d = x.example_size();
    out.resize({n});
    const T* xs = x.data();
    T* o = out.data();
    backend_ops<B>::for_each_segment(n, d, [=] OPNORM_HD(index_t i) {
      T s = T(0);
      for (index_t j = 0; j < d; ++j) s += std::abs(xs[i * d + j]);
      o[i] = s;
    });
  }

  template <class T, class B>
  static void project(tensor<T, B>& delta, T eps) {
    const index_t n = delta.dim(0), d = delta.example_size();
    T* ds = delta.data();
    backend_ops<B>::for_each_segment(n, d, [=] OPNORM_HD(index_t i) {
      T* row = ds + i * d;
      double total = 0, largest = 0;
      for (index_t j = 0; j < d; ++j) {
        total += std::abs(double(row[j]));
        largest = std::max(largest, std::abs(double(row[j])));
      }
      if (total <= double(eps)) return;
      // sum max(|d_j| - tau, 0) falls from total > eps at tau = 0 to 0 at
      // tau = largest: bisect, keeping the upper end so the result is
      // inside the ball (never outside by a rounding).
      double lo = 0, hi = largest;
      for (int step = 0; step < 100; ++step) {
        const double tau = (lo + hi) / 2;
        double s = 0;
        for (index_t j = 0; j < d; ++j) s += std::max(std::abs(double(row[j])) - tau, 0.0);
        (s > double(eps) ? lo : hi) = tau;
      }
      for (index_t j = 0; j < d; ++j) {
        const double shrunk = std::max(std::abs(double(row[j])) - hi, 0.0);
        row[j] = static_cast<T>(row[j] < T(0) ? -shrunk : shrunk);
      }
    });
  }

  template <class T, class B>
  static void random_in_ball(const tensor<T, B>& x, T eps, std::uint64_t seed, tensor<T, B>& delta) {
    sample(x, eps, seed, delta, true);
  }
  template <class T, class B>
  static void random_direction(const tensor<T, B>& x, std::uint64_t seed, tensor<T, B>& v) {
    sample(x, T(1), seed, v, false);
  }

  // Launches an OPNORM_HD kernel; nvcc rejects those in private members.
  // Normalized exponentials with random signs are uniform on the l1
  // sphere; a radius eps U^(1/d) makes the point uniform in the ball.
  // The draws are keyed by the example's content, as opnorm's norms do, so
  // an example's start does not depend on its batch.
  template <class T, class B>
  static void sample(const tensor<T, B>& x, T radius, std::uint64_t seed, tensor<T, B>& out, bool fill_ball) {
    out.resize(x.shape());
    const index_t n = x.dim(0), d = x.example_size();
    const T* xs = x.data();
    T* os = out.data();
    backend_ops<B>::for_each_segment(n, d, [=] OPNORM_HD(index_t i) {
      const std::uint64_t stream = opnorm::random::mix(opnorm::random::fingerprint(xs + i * d, d) ^ 0x11u);
      double s = 0;
      for (index_t j = 0; j < d; ++j) {
        const double e = -std::log(1.0 - opnorm::random::uniform(seed, stream, std::uint64_t(2 * j)));
        const bool negative = opnorm::random::uniform(seed, stream, std::uint64_t(2 * j + 1)) < 0.5;
        os[i * d + j] = static_cast<T>(negative ? -e : e);
        s += e;
      }
      double r = double(radius);
      if (fill_ball) r *= std::pow(opnorm::random::uniform(seed, stream, std::uint64_t(2 * d)), 1.0 / double(d));
      for (index_t j = 0; j < d; ++j) os[i * d + j] = static_cast<T>(double(os[i * d + j]) * (s > 0 ? r / s : 0.0));
    });
  }
};

}  // namespace user

namespace {

using namespace opnorm;

// What opnorm's policy checks see: the user's types are accepted by the
// same structural traits as the shipped ones.
static_assert(is_norm<user::l1>::value && has_projection<user::l1>::value,
              "user::l1 must be a norm policy with a projection");
static_assert(is_loss<user::margin_loss>::value && has_loss_gradient<user::margin_loss>::value,
              "user::margin_loss must be a loss policy with a gradient");

int failures = 0;
void report(bool ok, const std::string& what) {
  std::cout << (ok ? "  ok    " : "  FAIL  ") << what << "\n";
  if (!ok) ++failures;
}

std::string scientific(double value) {
  std::ostringstream out;
  out << std::scientific << std::setprecision(2) << value;
  return out.str();
}

double relative_gap(double a, double b) { return std::abs(a - b) / std::max({1.0, std::abs(a), std::abs(b)}); }

// The layer, in double, through the shipped checker.
void check_tanh_layer() {
  std::cout << "user::tanh_layer, through opnorm::testing::check_layer (double):\n";
  user::tanh_layer<double> layer;
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<double> pick(-2, 2);
  tensor<double> x({3, 5, 4});
  for (index_t i = 0; i < x.size(); ++i) x[i] = pick(rng);
  const auto checks = testing::check_layer(layer, x, mode::eval);
  for (const auto& c : checks.checks)
    report(c.error < c.tolerance, c.name + ": relative error " + scientific(c.error));
}

// The loss gradient against central differences, in double.
void check_margin_loss() {
  std::cout << "user::margin_loss, gradient against central differences (double):\n";
  std::mt19937_64 rng(2);
  std::normal_distribution<double> normal;
  tensor<double> z({4, 10});
  for (index_t i = 0; i < z.size(); ++i) z[i] = normal(rng);
  const auto y = label_tensor<>::from_vector({4}, {3, 0, 9, 5});
  tensor<double> g;
  user::margin_loss::evaluate(z, y, &g, reduction::mean);
  double worst = 0;
  const double h = 1e-6;
  for (index_t i = 0; i < z.size(); ++i) {
    const double keep = z[i];
    z[i] = keep + h;
    const double up = user::margin_loss::evaluate(z, y, static_cast<tensor<double>*>(nullptr), reduction::mean);
    z[i] = keep - h;
    const double down = user::margin_loss::evaluate(z, y, static_cast<tensor<double>*>(nullptr), reduction::mean);
    z[i] = keep;
    worst = std::max(worst, std::abs((up - down) / (2 * h) - g[i]));
  }
  report(worst < 1e-8, "gradient: largest absolute difference " + scientific(worst));
}

// The norm's defining properties, in double.
void check_l1_norm() {
  std::cout << "user::l1, its defining properties (double):\n";
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  tensor<double> g({6, 50});
  for (index_t i = 0; i < g.size(); ++i) g[i] = normal(rng);
  tensor<double> v, duals, lengths;
  user::l1::steepest_ascent(g, v);
  user::l1::dual_norms(g, duals);
  user::l1::norms(v, lengths);
  // <g, v> = ||g||_inf = max over the unit l1 ball, attained by v, ||v||_1 = 1.
  double worst = 0;
  for (index_t i = 0; i < 6; ++i) {
    double inner = 0;
    for (index_t j = 0; j < 50; ++j) inner += g(i, j) * v(i, j);
    worst = std::max({worst, relative_gap(inner, duals[i]), relative_gap(lengths[i], 1.0)});
  }
  report(worst < 1e-12, "steepest ascent attains the dual norm with a unit vector: gap " + scientific(worst));

  // Projection: inside the ball, a fixed point there, and no farther from
  // the original than any other point of the ball that we try.
  tensor<double> delta = g, projected = g;
  user::l1::project(projected, 3.0);
  user::l1::norms(projected, lengths);
  bool inside = true;
  for (index_t i = 0; i < 6; ++i) inside = inside && lengths[i] <= 3.0 * (1 + 1e-12);
  report(inside, "projection lands inside the l1 ball of radius 3");
  tensor<double> again = projected;
  user::l1::project(again, 3.0);
  double moved = 0;
  for (index_t i = 0; i < again.size(); ++i) moved = std::max(moved, std::abs(again[i] - projected[i]));
  report(moved < 1e-9, "projecting a projected point leaves it in place: moved " + scientific(moved));
  bool nearest = true;
  for (int trial = 0; trial < 200; ++trial) {
    tensor<double> other;
    user::l1::random_in_ball(g, 3.0, static_cast<std::uint64_t>(trial), other);
    for (index_t i = 0; i < 6; ++i) {
      double to_projection = 0, to_other = 0;
      for (index_t j = 0; j < 50; ++j) {
        to_projection += (delta(i, j) - projected(i, j)) * (delta(i, j) - projected(i, j));
        to_other += (delta(i, j) - other(i, j)) * (delta(i, j) - other(i, j));
      }
      nearest = nearest && to_projection <= to_other * (1 + 1e-12);
    }
  }
  report(nearest, "the projection is nearer than 1200 random points of the ball");

  tensor<double> start;
  user::l1::random_in_ball(g, 3.0, 7, start);
  user::l1::norms(start, lengths);
  bool starts_inside = true;
  for (index_t i = 0; i < 6; ++i) starts_inside = starts_inside && lengths[i] <= 3.0 * (1 + 1e-12) && lengths[i] > 0;
  report(starts_inside, "random starts lie inside the ball");
}

struct options {
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  index_t train_examples = 2048;
  index_t epochs = 2;
};

// A small network with the user's layer in it: flatten, dense(784 -> 64),
// tanh, dense(64 -> 10). Trained by l1 adversarial training, then attacked.
void train_and_attack(const options& o) {
  using net = sequential<flatten<float>, dense<float>, user::tanh_layer<float>, dense<float>>;
  net model(flatten<float>{}, dense<float>(784, 64), user::tanh_layer<float>{}, dense<float>(64, 10));
  model.initialize(5);

  const auto train_all = load_fashion_mnist<float>(o.data_dir, split::train);
  const auto test_all = load_fashion_mnist<float>(o.data_dir, split::test);
  const auto train = subset(train_all, 0, std::min(o.train_examples, train_all.size()));
  const auto test = subset(test_all, 0, 500);

  std::cout << "training flatten-dense-tanh-dense on " << train.size()
            << " Fashion-MNIST images by adversarial<user::l1> (eps 4, 5 iterations):\n";
  adversarial<user::l1> method;
  method.eps = 4.0;
  method.iterations = 5;
  adam<float> optimizer(model, adam_options{});
  fit_options fit_settings;
  fit_settings.epochs = o.epochs;
  fit_settings.batch_size = 64;
  const fit_result result = fit(model, method, optimizer, constant_schedule(1e-3), train, test, fit_settings,
                                progress(std::cout, 16, false));
  const double clean = result.history.back().test_accuracy;
  report(clean > 0.5, "clean test accuracy " + std::to_string(clean) + " is above 0.5 after training");

  // The attack: the kernel composed with the user's loss and norm.
  attack_options<float> a;
  a.eps = 4.0f;
  a.iterations = 20;
  a.restarts = 1;
  pga<net, user::l1, user::margin_loss> attack(model, a);
  const auto x = test.images;
  const auto r = attack(x, test.labels);
  tensor<float> delta = r.adversarial;
  axpby(-1.0f, x, 1.0f, delta);
  tensor<float> lengths;
  user::l1::norms(delta, lengths);
  bool feasible = true;
  for (index_t i = 0; i < lengths.size(); ++i) feasible = feasible && lengths[i] <= a.eps * (1 + 1e-5f);
  for (index_t i = 0; i < r.adversarial.size(); ++i)
    feasible = feasible && r.adversarial[i] >= 0.0f && r.adversarial[i] <= 1.0f;
  report(feasible, "every adversarial example is inside the l1 ball of radius 4 and the pixel box");
  const double robust = 1.0 - r.success_rate();
  std::cout << "  clean accuracy " << clean << ", l1 robust accuracy (margin-loss PGA, eps 4, 20 iterations) "
            << robust << "\n";
  report(robust <= clean, "the attack does not raise accuracy above the clean accuracy");
}

}  // namespace

int main(int argc, char** argv) {
  namespace cl = opnorm::command_line;
  CLI::App app{"Defines a layer, an attack loss and a norm outside opnorm, checks each, then trains and attacks with them.",
               "custom_layer"};
  cl::one_line_errors(app, "custom_layer");
  options o;
  app.add_option("--data-dir", o.data_dir, "folder of the Fashion-MNIST files")->capture_default_str();
  app.add_option("--train-examples", o.train_examples, "training images to use")
      ->check(cl::whole_number_at_least(64))
      ->capture_default_str();
  app.add_option("--epochs", o.epochs, "training epochs")->check(cl::whole_number_at_least(1))->capture_default_str();
  if (const int code = cl::parse_or_exit_code(app, argc, argv); code >= 0) return code;
  try {
    check_tanh_layer();
    check_margin_loss();
    check_l1_norm();
    train_and_attack(o);
  } catch (const std::exception& e) {
    std::cerr << "custom_layer: error: " << e.what() << '\n';
    return cl::exit_failure;
  }
  std::cout << (failures == 0 ? "custom_layer: every check passed\n" : "custom_layer: some checks failed\n");
  return failures == 0 ? cl::exit_success : cl::exit_failure;
}
