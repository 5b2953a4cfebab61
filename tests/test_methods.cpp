// The training methods' parameter gradients against central finite
// differences of their objectives, with the power-iteration output (v, x*,
// or the weight singular vectors) held fixed, in double, on every backend.
#include "gradient_check.hpp"

#include <opnorm/layers/batch_norm.hpp>
#include <opnorm/layers/conv2d.hpp>
#include <opnorm/layers/dense.hpp>
#include <opnorm/layers/flatten.hpp>
#include <opnorm/layers/relu.hpp>
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

}  // namespace

TEST_CASE_TEMPLATE("data-dependent SNR (Eq. 9): gradients match finite differences with v held fixed", B,
                   OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  using net_t = small_cnn<B>;
  fixture<B> f;
  data_dependent_snr<> method;
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

TEST_CASE_TEMPLATE("global SNR: the added gradient is lambda sigma u v^T, the gradient of lambda/2 (u^T W v)^2", B,
                   OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  fixture<B> f;
  global_snr<double, B> method(f.net, 0.8, 3, 11);
  f.net.zero_grad();
  const double penalty = method.add_penalty_gradients(f.net);
  REQUIRE(method.last_sigma().size() == 2);  // the conv kernel and the dense weight; BN's rank-1 weight is skipped

  // With u and v held at this step's values, R(W) = lambda/2 (u^T W v)^2.
  auto state = f.net.state();
  auto vectors = method.state();
  double sum = 0;
  for (auto& p : state.parameters) {
    CAPTURE(p.name);
    const bool is_matrix = p.value->rank() >= 2;
    if (!is_matrix) {
      for (index_t i = 0; i < p.grad->size(); ++i) CHECK((*p.grad)[i] == 0.0);
      continue;
    }
    const double sigma = method.last_sigma().at(p.name);
    sum += method.lambda / 2 * sigma * sigma;
    // Recover v = W^T u / ||W^T u|| for this u: one more half-iteration.
    tensor_t* u = nullptr;
    for (auto& b : vectors.buffers)
      if (b.name == p.name + ".u") u = b.value;
    REQUIRE(u);
    const index_t rows = p.value->dim(0), cols = p.value->size() / rows;
    // The gradient must be rank one: lambda sigma u v^T, with v of unit norm.
    tensor_t v({cols}, 0.0);
    for (index_t c = 0; c < cols; ++c) v[c] = (*p.grad)[c] / (method.lambda * sigma * (*u)[0]);
    double v_norm = 0;
    for (index_t c = 0; c < cols; ++c) v_norm += v[c] * v[c];
    CHECK(v_norm == doctest::Approx(1.0).epsilon(1e-10));
    auto objective = [&] {
      double s = 0;
      for (index_t r = 0; r < rows; ++r)
        for (index_t c = 0; c < cols; ++c) s += (*u)[r] * (*p.value)[r * cols + c] * v[c];
      return method.lambda / 2 * s * s;
    };
    CHECK(relative_error(*p.grad, finite_difference_gradient(*p.value, objective)) < 1e-6);
    // sigma is u^T W v for the final u and v.
    CHECK(std::sqrt(2 * objective() / method.lambda) == doctest::Approx(sigma).epsilon(1e-10));
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

TEST_CASE_TEMPLATE("the regularizer is not silently zero with default settings", B, OPNORM_TEST_BACKENDS) {
  using net_t = small_cnn<B>;
  fixture<B> f;
  typename net_t::tape tape;
  f.net.zero_grad();
  const double plain = standard{}.accumulate_gradients(f.net, tape, f.x, f.y).loss;
  data_dependent_snr<> dd;
  f.net.zero_grad();
  const double with_dd = dd.accumulate_gradients(f.net, tape, f.x, f.y).loss;
  CHECK(dd.lambda > 0);
  CHECK(with_dd > plain);
  global_snr<double, B> gs(f.net);
  f.net.zero_grad();
  const double with_gs = gs.accumulate_gradients(f.net, tape, f.x, f.y).loss;
  CHECK(gs.lambda > 0);
  CHECK(with_gs > plain);
}
