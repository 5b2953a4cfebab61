// The training methods' parameter gradients against central finite
// differences of their objectives, in double, on every backend: the *_at
// variants with the power-iteration output (v, x*) given, and
// accumulate_gradients end to end (standard, adversarial, global SNR), where
// the test finds the power-iteration output itself, the way each method
// documents it, and holds it fixed in the finite differences.
#include "gradient_check.hpp"

#include <map>
#include <string>

#include <opnorm/nn/layers/batch_norm.hpp>
#include <opnorm/nn/layers/conv2d.hpp>
#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/flatten.hpp>
#include <opnorm/nn/layers/relu.hpp>
#include <opnorm/methods/adversarial.hpp>
#include <opnorm/methods/data_dependent_snr.hpp>
#include <opnorm/methods/global_snr.hpp>
#include <opnorm/methods/standard.hpp>

using namespace opnorm;
using namespace opnorm::testing;

namespace {

template <class B>
using small_cnn =
    sequential<conv2d<double, B>, batch_norm<double, B>, relu<double, B>, flatten<double, B>, dense<double, B>>;

template <class B>
small_cnn<B> make_net(std::uint64_t seed) {
  small_cnn<B> net(conv2d<double, B>(1, 3, 3, 1, 1), batch_norm<double, B>(3), relu<double, B>(), flatten<double, B>(),
                   dense<double, B>(3 * 5 * 5, 4));
  net.initialize(seed);
  return net;
}

template <class B>
struct fixture {
  small_cnn<B> net = make_net<B>(3);
  tensor<double, B> x;
  label_tensor<B> y{4};
  fixture() {
    std::mt19937_64 rng(9);
    x = random_tensor<B>({4, 1, 5, 5}, rng, 0.0, 1.0);
    for (index_t i = 0; i < 4; ++i) y[i] = static_cast<std::int32_t>(i % 4);
  }
};

// Compares every parameter gradient left in the model with central
// differences of objective(), which must evaluate the method's loss.
template <class B, class Objective>
void check_parameter_gradients(small_cnn<B>& net, Objective objective, double tolerance = 1e-6) {
  auto state = net.state();
  for (auto& p : state.parameters) {
    CAPTURE(p.name);
    const tensor<double, B> fd = finite_difference_gradient(*p.value, objective);
    // A conv bias followed by train-mode BatchNorm has an exactly zero
    // gradient (the batch mean removes it); both sides are then rounding noise.
    const bool both_zero = norm(*p.grad) < 1e-9 && norm(fd) < 1e-9;
    CHECK((both_zero || relative_error(*p.grad, fd) < tolerance));
  }
}

template <class B>
double cross_entropy(small_cnn<B>& net, const tensor<double, B>& x, const label_tensor<B>& y) {
  typename small_cnn<B>::tape t;
  return softmax_cross_entropy::evaluate(net.forward(x, t, mode::train), y, static_cast<tensor<double, B>*>(nullptr));
}

// Every parameter gradient of the model, by parameter name.
template <class B>
std::map<std::string, std::vector<double>> gradients_of(small_cnn<B>& net) {
  std::map<std::string, std::vector<double>> g;
  for (auto& p : net.state().parameters) g[p.name] = p.grad->to_vector();
  return g;
}

// ||a - b|| over every parameter gradient, and ||b||.
inline double gradient_distance(const std::map<std::string, std::vector<double>>& a,
                                const std::map<std::string, std::vector<double>>& b) {
  double s = 0;
  for (const auto& [name, values] : b)
    for (std::size_t i = 0; i < values.size(); ++i) s += (a.at(name)[i] - values[i]) * (a.at(name)[i] - values[i]);
  return std::sqrt(s);
}
inline double gradient_norm(const std::map<std::string, std::vector<double>>& a) {
  double s = 0;
  for (const auto& [name, values] : a)
    for (double v : values) s += v * v;
  return std::sqrt(s);
}

// global_snr's persistent left vectors, by weight name ("<param>.u" in its state).
template <class B>
std::map<std::string, std::vector<double>> left_vectors(global_snr<double, B>& method) {
  std::map<std::string, std::vector<double>> u;
  const std::string suffix = ".u";
  for (auto& b : method.state().buffers) u[b.name.substr(0, b.name.size() - suffix.size())] = b.value->to_vector();
  return u;
}

// One weight matrix's power iteration written out in plain loops, as
// global_snr documents it: W viewed as (rows = dim 0, cols = the rest),
// `iterations` times v = normalize(W^T u), u = normalize(W v), then
// sigma = u^T W v.
struct weight_pair {
  std::vector<double> u, v;
  double sigma = 0;
};

inline void normalize_in_place(std::vector<double>& a) {
  double s = 0;
  for (double e : a) s += e * e;
  for (double& e : a) e /= std::sqrt(s);
}

template <class B>
weight_pair reference_power_iteration(const tensor<double, B>& w, std::vector<double> u, int iterations) {
  const index_t rows = w.dim(0), cols = w.size() / rows;
  REQUIRE(static_cast<index_t>(u.size()) == rows);
  std::vector<double> v(static_cast<std::size_t>(cols));
  for (int k = 0; k < iterations; ++k) {
    for (index_t c = 0; c < cols; ++c) {
      v[c] = 0;
      for (index_t r = 0; r < rows; ++r) v[c] += w[r * cols + c] * u[r];
    }
    normalize_in_place(v);
    for (index_t r = 0; r < rows; ++r) {
      u[r] = 0;
      for (index_t c = 0; c < cols; ++c) u[r] += w[r * cols + c] * v[c];
    }
    normalize_in_place(u);
  }
  double sigma = 0;
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) sigma += u[r] * w[r * cols + c] * v[c];
  return {u, v, sigma};
}

// u^T W v for W's current entries, with u and v given.
template <class B>
double bilinear(const std::vector<double>& u, const tensor<double, B>& w, const std::vector<double>& v) {
  const index_t rows = w.dim(0), cols = w.size() / rows;
  double s = 0;
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) s += u[r] * w[r * cols + c] * v[c];
  return s;
}

template <class B>
double l2_distance(const tensor<double, B>& a, const tensor<double, B>& b) {
  double s = 0;
  for (index_t i = 0; i < a.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return std::sqrt(s);
}

}  // namespace

// With independent train-mode passes (what the authors' code does); the
// default, the clean batch's statistics in both passes, and the running
// statistics are checked end to end in test_batch_statistics.cpp.
TEST_CASE_TEMPLATE("data-dependent SNR (Eq. 9) with independent batch statistics: gradients match finite differences with v held fixed", B,
                   OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  using net_t = small_cnn<B>;
  fixture<B> f;
  data_dependent_snr<> method;
  method.batch_statistics = data_dependent_snr<>::statistics::independent_batches;
  method.lambda = 0.7;
  method.eps = 0.3;
  tensor_t v;
  l2::random_direction(f.x, 4, v);
  tensor_t probe = f.x;
  for (index_t i = 0; i < probe.size(); ++i) probe[i] += method.eps * v[i];

  f.net.zero_grad();
  typename net_t::tape tape;
  const batch_result r = method.accumulate_gradients_at(f.net, tape, f.x, probe, f.y);

  auto objective = [&] {
    typename net_t::tape a, b;
    const tensor_t clean = f.net.forward(f.x, a, mode::train);
    const tensor_t& perturbed = f.net.forward(probe, b, mode::train);
    double penalty = 0;
    for (index_t i = 0; i < clean.size(); ++i) penalty += (perturbed[i] - clean[i]) * (perturbed[i] - clean[i]);
    return softmax_cross_entropy::evaluate(clean, f.y, static_cast<tensor_t*>(nullptr)) + method.lambda / 2 * penalty / 4;
  };
  CHECK(r.loss == doctest::Approx(objective()).epsilon(1e-12));
  check_parameter_gradients(f.net, objective);
}

TEST_CASE_TEMPLATE("data-dependent SNR, Jacobian form (Eq. 8): gradients match finite differences with v held fixed", B,
                   OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  using net_t = small_cnn<B>;
  fixture<B> f;
  data_dependent_snr<> method;
  method.lambda = 0.9;
  method.regularizer = data_dependent_snr<>::form::jacobian;
  // Eval-mode BatchNorm with non-trivial running statistics and scale.
  {
    typename net_t::tape warm;
    f.net.forward(f.x, warm, mode::train);
    f.net.template layer<1>().weight()[1] = 1.7;
  }
  tensor_t v;
  l2::random_direction(f.x, 6, v);

  // A train-mode pass updates the running statistics the eval-mode Jacobian
  // depends on, so every train-mode pass below runs on a copy: the objective
  // and the method then see the same eval-mode Jacobian.
  auto objective = [&] {
    typename net_t::tape at_x;
    f.net.forward(f.x, at_x, mode::eval);
    tensor_t jv;
    f.net.jvp(at_x, v, jv);
    net_t copy = f.net;
    return cross_entropy(copy, f.x, f.y) + method.lambda / 2 * dot(jv, jv) / 4;
  };
  const double expected = objective();

  net_t trained = f.net;
  trained.zero_grad();
  typename net_t::tape tape;
  const batch_result r = method.accumulate_jacobian_gradients_at(trained, tape, f.x, v, f.y);
  CHECK(r.loss == doctest::Approx(expected).epsilon(1e-12));
  auto from = trained.state();
  auto to = f.net.state();
  for (std::size_t i = 0; i < to.parameters.size(); ++i) *to.parameters[i].grad = *from.parameters[i].grad;
  check_parameter_gradients(f.net, objective);
}

TEST_CASE_TEMPLATE("adversarial training (Eq. 10 and Madry): gradients match finite differences with x* held fixed", B,
                   OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  using net_t = small_cnn<B>;
  for (auto form : {adversarial<>::objective::clean_plus_adversarial, adversarial<>::objective::adversarial_only}) {
    fixture<B> f;
    adversarial<> method;
    method.lambda = 0.6;
    method.form = form;
    std::mt19937_64 rng(2);
    const tensor_t x_adv = random_tensor<B>(f.x.shape(), rng, 0.0, 1.0);
    f.net.zero_grad();
    typename net_t::tape tape;
    const batch_result r = method.accumulate_gradients_at(f.net, tape, f.x, x_adv, f.y);
    auto objective = [&] {
      const double adv = cross_entropy(f.net, x_adv, f.y);
      return form == adversarial<>::objective::clean_plus_adversarial ? cross_entropy(f.net, f.x, f.y) + method.lambda * adv : adv;
    };
    CHECK(r.loss == doctest::Approx(objective()).epsilon(1e-12));
    check_parameter_gradients(f.net, objective);
  }
}

TEST_CASE_TEMPLATE("adversarial training leaves the parameters alone and updates BatchNorm only in its two train-mode passes", B,
                   OPNORM_TEST_BACKENDS) {
  using net_t = small_cnn<B>;
  fixture<B> f;
  adversarial<> method;
  method.eps = 0.5;
  method.iterations = 3;
  auto state = f.net.state();
  const std::vector<double> mean_before = state.buffers[0].value->to_vector();
  std::vector<std::vector<double>> parameters_before;
  for (auto& p : state.parameters) parameters_before.push_back(p.value->to_vector());
  f.net.zero_grad();
  typename net_t::tape tape;
  const batch_result r = method.accumulate_gradients(f.net, tape, f.x, f.y);
  CHECK(std::isfinite(r.loss));
  // Only the optimizer changes parameters; the method fills gradients.
  for (std::size_t k = 0; k < state.parameters.size(); ++k) {
    CAPTURE(state.parameters[k].name);
    CHECK(state.parameters[k].value->to_vector() == parameters_before[k]);
  }
  CHECK(r.examples == 4);
  // Two train-mode passes (clean, adversarial) update the running mean twice,
  // never the attack's eval-mode passes.
  CHECK(*state.counters[0].value == 2);
  CHECK(state.buffers[0].value->to_vector() != mean_before);
}


TEST_CASE_TEMPLATE("standard end to end: accumulate_gradients leaves the gradient of the mean train-mode cross-entropy", B,
                   OPNORM_TEST_BACKENDS) {
  using net_t = small_cnn<B>;
  fixture<B> f;
  f.net.zero_grad();
  typename net_t::tape tape;
  const batch_result r = standard{}.accumulate_gradients(f.net, tape, f.x, f.y);
  // Each evaluation runs on a copy: a train-mode pass moves the running
  // statistics, and the objective must be one fixed function of the weights.
  auto objective = [&] {
    net_t copy = f.net;
    return cross_entropy(copy, f.x, f.y);
  };
  CHECK(r.loss == doctest::Approx(objective()).epsilon(1e-12));
  CHECK(r.examples == 4);
  check_parameter_gradients(f.net, objective);
}

TEST_CASE_TEMPLATE("adversarial training end to end (Eq. 10 and Madry): accumulate_gradients leaves the gradient of "
                   "its objective at the point its documented attack reaches, step after step", B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  using net_t = small_cnn<B>;
  using method_t = adversarial<>;
  for (auto form : {method_t::objective::clean_plus_adversarial, method_t::objective::adversarial_only}) {
    const int form_index = static_cast<int>(form);
    CAPTURE(form_index);
    fixture<B> f;
    {  // Non-trivial running statistics, so the eval-mode attack depends on them.
      std::mt19937_64 rng(31);
      typename net_t::tape warm;
      f.net.forward(random_tensor<B>(f.x.shape(), rng, 0.0, 1.0), warm, mode::train);
    }
    method_t method;
    method.eps = 0.6;
    method.iterations = 4;
    method.lambda = 0.6;
    method.form = form;
    method.seed = 17;
    // Two steps: the second attack uses the seed of step 1 and the running
    // statistics the first step's train-mode passes left behind.
    for (std::uint64_t step = 0; step < 2; ++step) {
      CAPTURE(step);
      // The attack as adversarial.hpp documents it: the PGA kernel in eval
      // mode, alpha = 2 eps / iterations, a random start seeded with
      // hash(seed, 0xad7, step), iterates clipped to [0, 1]; run before the
      // method's own call, on the model as the method will find it.
      iteration_options<double> o;
      o.iterations = method.iterations;
      o.eps = method.eps;
      o.alpha = 2 * method.eps / method.iterations;
      o.random_start = true;
      o.clip_to_box = true;
      o.seed = random::hash(method.seed, 0xad7, step);
      const tensor_t x_star = typename method_t::kernel{}.run(f.net, f.x, &f.y, o).point;
      REQUIRE(l2_distance(x_star, f.x) > 0.1);  // the attack moved

      f.net.zero_grad();
      typename net_t::tape tape;
      const batch_result r = method.accumulate_gradients(f.net, tape, f.x, f.y);
      auto objective = [&] {
        net_t copy = f.net;  // train-mode passes move the running statistics: keep f.net's
        const double adv = cross_entropy(copy, x_star, f.y);
        return form == method_t::objective::clean_plus_adversarial ? cross_entropy(copy, f.x, f.y) + method.lambda * adv
                                                                   : adv;
      };
      CHECK(r.loss == doctest::Approx(objective()).epsilon(1e-12));
      check_parameter_gradients(f.net, objective);
    }
  }
}

TEST_CASE_TEMPLATE("global SNR: u and v are the documented power iteration, sigma = u^T W v, and the added gradient "
                   "is lambda sigma u v^T, the gradient of lambda/2 (u^T W v)^2", B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  fixture<B> f;
  const int iterations = 3;
  global_snr<double, B> method(f.net, 0.8, iterations, 11);
  const auto u_before = left_vectors(method);
  REQUIRE(u_before.size() == 2);  // the conv kernel and the dense weight; BN's rank-1 weight is skipped
  f.net.zero_grad();
  const double penalty = method.add_penalty_gradients(f.net);
  REQUIRE(method.last_sigma().size() == 2);
  const auto u_after = left_vectors(method);

  auto state = f.net.state();
  double sum = 0;
  for (auto& p : state.parameters) {
    CAPTURE(p.name);
    if (p.value->rank() < 2) {
      for (index_t i = 0; i < p.grad->size(); ++i) CHECK((*p.grad)[i] == 0.0);
      continue;
    }
    const weight_pair ref = reference_power_iteration(*p.value, u_before.at(p.name), iterations);
    const index_t rows = p.value->dim(0), cols = p.value->size() / rows;
    // The persistent u moved to this step's normalize(W v).
    CHECK(relative_error(tensor_t::from_vector({rows}, u_after.at(p.name)), tensor_t::from_vector({rows}, ref.u)) <
          1e-12);
    // The kernel runs on W^T from u: its right vector u_K / ||u_K|| is
    // normalize(W^T u) for the u before the last half-step.
    {
      using kernel = typename global_snr<double, B>::kernel;
      const tensor_t u = tensor_t::from_vector({1, rows}, u_before.at(p.name)), origin({1, rows}, 0.0);
      iteration_options<double> o;
      o.iterations = iterations;
      typename kernel::template workspace<tensor_t> ws;
      const auto pairs = kernel{}.run(*p.value, origin, nullptr, o, ws, &u);
      std::vector<double> v = pairs.u.to_vector();
      double length = 0;
      for (double e : v) length += e * e;
      for (double& e : v) e /= std::sqrt(length);
      CHECK(relative_error(tensor_t::from_vector({cols}, v), tensor_t::from_vector({cols}, ref.v)) < 1e-12);
      CHECK(pairs.sigma.to_vector()[0] == doctest::Approx(ref.sigma).epsilon(1e-12));
    }
    const double sigma = method.last_sigma().at(p.name);
    CHECK(sigma == doctest::Approx(ref.sigma).epsilon(1e-12));  // u^T W v, with u and v from the test
    CHECK(sigma > 0);
    sum += method.lambda / 2 * sigma * sigma;
    tensor_t expected({rows, cols});
    for (index_t r = 0; r < rows; ++r)
      for (index_t c = 0; c < cols; ++c) expected(r, c) = method.lambda * ref.sigma * ref.u[r] * ref.v[c];
    CHECK(relative_error(p.grad->reshaped({rows, cols}), expected) < 1e-12);
    // ... which is the derivative of lambda/2 (u^T W v)^2 with u and v held.
    auto objective = [&] {
      const double s = bilinear(ref.u, *p.value, ref.v);
      return method.lambda / 2 * s * s;
    };
    CHECK(relative_error(*p.grad, finite_difference_gradient(*p.value, objective)) < 1e-6);
  }
  CHECK(penalty == doctest::Approx(sum).epsilon(1e-12));

  // Gradients are fresh each step: once u has converged, a second step after
  // zero_grad gives the same gradient, one term and nothing carried over.
  method.iterations = 2000;
  f.net.zero_grad();
  method.add_penalty_gradients(f.net);
  const std::vector<double> once = state.parameters[0].grad->to_vector();
  f.net.zero_grad();
  method.add_penalty_gradients(f.net);
  const std::vector<double> again = state.parameters[0].grad->to_vector();
  for (std::size_t i = 0; i < once.size(); ++i) CHECK(again[i] == doctest::Approx(once[i]).epsilon(1e-6));
}

TEST_CASE_TEMPLATE("global SNR end to end: accumulate_gradients leaves the gradient of CE + lambda/2 sum (u^T W v)^2 "
                   "with u and v from this step's iteration on the persistent u, step after step", B,
                   OPNORM_TEST_BACKENDS) {
  using net_t = small_cnn<B>;
  fixture<B> f;
  global_snr<double, B> method(f.net, 0.5, 1, 5);
  auto state = f.net.state();
  for (int step = 0; step < 3; ++step) {
    CAPTURE(step);
    // The persistent u moves on every call: the pairs of this step start from
    // where the last step left it, and are found before the call.
    const auto u_before = left_vectors(method);
    std::map<std::string, weight_pair> pairs;
    for (auto& p : state.parameters)
      if (p.value->rank() >= 2) pairs[p.name] = reference_power_iteration(*p.value, u_before.at(p.name), 1);
    REQUIRE(pairs.size() == 2);

    f.net.zero_grad();
    typename net_t::tape tape;
    const batch_result r = method.accumulate_gradients(f.net, tape, f.x, f.y);
    const auto u_after = left_vectors(method);
    // Not a structured binding: CAPTURE captures name in a lambda, which
    // C++17 does not allow for a binding (clang rejects it; the sanitizer
    // build uses clang).
    for (const auto& entry : pairs) {
      const std::string& name = entry.first;
      const weight_pair& pair = entry.second;
      CAPTURE(name);
      double diff = 0;
      for (std::size_t i = 0; i < pair.u.size(); ++i) diff = std::max(diff, std::abs(u_after.at(name)[i] - pair.u[i]));
      CHECK(diff < 1e-12);
      CHECK(method.last_sigma().at(name) == doctest::Approx(pair.sigma).epsilon(1e-12));
    }

    // u and v held at this step's values; the weights vary.
    auto objective = [&] {
      net_t copy = f.net;  // train-mode passes move the running statistics: keep f.net's
      double s = cross_entropy(copy, f.x, f.y);
      for (auto& p : state.parameters) {
        if (p.value->rank() < 2) continue;
        const weight_pair& pair = pairs.at(p.name);
        const double b = bilinear(pair.u, *p.value, pair.v);
        s += method.lambda / 2 * b * b;
      }
      return s;
    };
    CHECK(r.loss == doctest::Approx(objective()).epsilon(1e-12));
    check_parameter_gradients(f.net, objective);

    // An SGD step, so the next step iterates on other weights.
    for (auto& p : state.parameters)
      for (index_t i = 0; i < p.value->size(); ++i) (*p.value)[i] -= 0.3 * (*p.grad)[i];
  }
}

TEST_CASE_TEMPLATE("the regularizer is not silently zero with default settings: each method's parameter gradients "
                   "differ from plain cross-entropy's", B, OPNORM_TEST_BACKENDS) {
  using net_t = small_cnn<B>;
  fixture<B> f;
  // Every method starts from its own copy of the same model.
  auto run = [&](auto& method, std::map<std::string, std::vector<double>>& gradients) {
    net_t net = f.net;
    net.zero_grad();
    typename net_t::tape tape;
    const batch_result r = method.accumulate_gradients(net, tape, f.x, f.y);
    gradients = gradients_of(net);
    return r.loss;
  };
  std::map<std::string, std::vector<double>> plain, with_adv, with_dd, with_gs;
  standard s;
  const double plain_loss = run(s, plain);
  const double plain_norm = gradient_norm(plain);
  REQUIRE(plain_norm > 0);

  SUBCASE("adversarial") {
    adversarial<> adv;
    CHECK(adv.lambda > 0);
    CHECK(run(adv, with_adv) > plain_loss);
    const double d = gradient_distance(with_adv, plain);
    CAPTURE(d / plain_norm);
    CHECK(d > 0.1 * plain_norm);
  }
  SUBCASE("data-dependent SNR") {
    data_dependent_snr<> dd;
    CHECK(dd.lambda > 0);
    CHECK(run(dd, with_dd) > plain_loss);
    const double d = gradient_distance(with_dd, plain);
    CAPTURE(d / plain_norm);
    CHECK(d > 1e-2 * plain_norm);  // about 0.1 here: an order of magnitude of room
  }
  SUBCASE("global SNR") {
    global_snr<double, B> gs(f.net);
    CHECK(gs.lambda > 0);
    CHECK(run(gs, with_gs) > plain_loss);
    // The difference is lambda sigma u v^T on each weight matrix, whose
    // Frobenius norm is lambda sigma (u and v are unit vectors), and nothing
    // elsewhere.
    auto state = f.net.state();
    for (auto& p : state.parameters) {
      CAPTURE(p.name);
      const std::vector<double>& a = with_gs.at(p.name);
      const std::vector<double>& b = plain.at(p.name);
      double d = 0;
      for (std::size_t i = 0; i < a.size(); ++i) d += (a[i] - b[i]) * (a[i] - b[i]);
      d = std::sqrt(d);
      if (p.value->rank() < 2) {
        CHECK(d <= 1e-12 * plain_norm);
        continue;
      }
      const double sigma = gs.last_sigma().at(p.name);
      CHECK(sigma > 0);
      CHECK(d == doctest::Approx(gs.lambda * sigma).epsilon(1e-8));
    }
  }
}
