// BatchNorm in data-dependent SNR: passes that borrow the clean batch's
// statistics (sequential::forward_with_statistics_of), their exact
// gradients, and the method's three statistics options end to end. The
// reference for "f with the clean batch's statistics" is built independently
// of the borrowing code: a copy of the network in eval mode whose running
// statistics are set to the clean batch's mean and biased variance, computed
// in the test from the clean pass's activations. Double precision, every
// backend.
#include "gradient_check.hpp"

#include <functional>

#include <opnorm/nn/layers/batch_norm.hpp>
#include <opnorm/nn/layers/conv2d.hpp>
#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/flatten.hpp>
#include <opnorm/nn/layers/relu.hpp>
#include <opnorm/methods/data_dependent_snr.hpp>
#include <opnorm/methods/standard.hpp>

using namespace opnorm;
using namespace opnorm::testing;

namespace {

// Two BatchNorms: one over (N, C, H, W), one over (N, C).
template <class B>
using two_norm_net = sequential<conv2d<double, B>, batch_norm<double, B>, relu<double, B>, flatten<double, B>,
                                dense<double, B>, batch_norm<double, B>, relu<double, B>, dense<double, B>>;
constexpr std::size_t first_norm = 1, second_norm = 5;

template <class B>
two_norm_net<B> make_net(std::uint64_t seed) {
  two_norm_net<B> net(conv2d<double, B>(1, 3, 3, 1, 1), batch_norm<double, B>(3), relu<double, B>(),
                      flatten<double, B>(), dense<double, B>(3 * 5 * 5, 6), batch_norm<double, B>(6),
                      relu<double, B>(), dense<double, B>(6, 4));
  net.initialize(seed);
  // Non-trivial affine parameters and running statistics, so that nothing
  // passes by accident of gamma = 1, beta = 0, mean = 0, var = 1.
  std::mt19937_64 rng(seed + 1);
  for (auto& p : net.state().parameters)
    if (p.value->rank() == 1)
      for (index_t i = 0; i < p.value->size(); ++i) (*p.value)[i] += std::uniform_real_distribution<double>(-0.3, 0.3)(rng);
  for (auto& b : net.state().buffers)
    for (index_t i = 0; i < b.value->size(); ++i) (*b.value)[i] += std::uniform_real_distribution<double>(0.1, 0.4)(rng);
  return net;
}

// Per channel mean and biased variance of a (N, C) or (N, C, H, W) tensor,
// with plain loops.
template <class B>
void channel_statistics(const tensor<double, B>& a, std::vector<double>& mean, std::vector<double>& var) {
  const index_t N = a.dim(0), C = a.dim(1), S = a.example_size() / C;
  mean.assign(static_cast<std::size_t>(C), 0.0);
  var.assign(static_cast<std::size_t>(C), 0.0);
  for (index_t c = 0; c < C; ++c) {
    double s = 0;
    for (index_t n = 0; n < N; ++n)
      for (index_t i = 0; i < S; ++i) s += a[(n * C + c) * S + i];
    const double mu = s / static_cast<double>(N * S);
    double q = 0;
    for (index_t n = 0; n < N; ++n)
      for (index_t i = 0; i < S; ++i) q += (a[(n * C + c) * S + i] - mu) * (a[(n * C + c) * S + i] - mu);
    mean[static_cast<std::size_t>(c)] = mu;
    var[static_cast<std::size_t>(c)] = q / static_cast<double>(N * S);
  }
}

template <class B>
void set_running(batch_norm<double, B>& bn, const std::vector<double>& mean, const std::vector<double>& var) {
  for (std::size_t c = 0; c < mean.size(); ++c) {
    bn.running_mean()[static_cast<index_t>(c)] = mean[c];
    bn.running_var()[static_cast<index_t>(c)] = var[c];
  }
}

// The reference: net's train-mode map with the batch statistics of x,
// evaluated at p, as an eval-mode copy whose running statistics are x's
// batch statistics. Also returns the clean train-mode logits at x.
template <class B>
struct clean_batch_reference {
  two_norm_net<B> copy;
  tensor<double, B> clean;
  clean_batch_reference(const two_norm_net<B>& net, const tensor<double, B>& x) : copy(net) {
    typename two_norm_net<B>::tape t;
    two_norm_net<B> scratch(net);  // its train pass moves running statistics; net's stay as they are
    clean = scratch.forward(x, t, mode::train);
    std::vector<double> mean, var;
    channel_statistics(t.activations[first_norm], mean, var);
    set_running(copy.template layer<first_norm>(), mean, var);
    channel_statistics(t.activations[second_norm], mean, var);
    set_running(copy.template layer<second_norm>(), mean, var);
  }
  tensor<double, B> at(const tensor<double, B>& p) { return copy.predict(p); }
};

template <class B>
std::vector<double> buffers_of(two_norm_net<B>& net) {
  std::vector<double> out;
  for (auto& b : net.state().buffers)
    for (index_t i = 0; i < b.value->size(); ++i) out.push_back((*b.value)[i]);
  for (auto& c : net.state().counters) out.push_back(static_cast<double>(*c.value));
  return out;
}

template <class B>
void copy_buffers(two_norm_net<B>& from, two_norm_net<B>& to) {
  auto f = from.state(), t = to.state();
  for (std::size_t k = 0; k < f.buffers.size(); ++k) assign(*f.buffers[k].value, *t.buffers[k].value);
  for (std::size_t k = 0; k < f.counters.size(); ++k) *t.counters[k].value = *f.counters[k].value;
}

template <class B>
struct fixture {
  two_norm_net<B> net = make_net<B>(5);
  tensor<double, B> x, probe;
  label_tensor<B> y{6};
  fixture() {
    std::mt19937_64 rng(17);
    x = random_tensor<B>({6, 1, 5, 5}, rng, 0.0, 1.0);
    probe = x;
    const tensor<double, B> step = random_tensor<B>({6, 1, 5, 5}, rng, -0.4, 0.4);
    for (index_t i = 0; i < probe.size(); ++i) probe[i] += step[i];
    for (index_t i = 0; i < 6; ++i) y[i] = static_cast<std::int32_t>(i % 4);
  }
};

template <class B>
void check_parameter_gradients(two_norm_net<B>& net, const std::function<double()>& objective) {
  for (auto& p : net.state().parameters) {
    CAPTURE(p.name);
    const tensor<double, B> fd = finite_difference_gradient(*p.value, objective);
    // A bias followed by train-mode BatchNorm has an exactly zero gradient
    // (the batch mean removes it) when only clean passes see it; both sides
    // are then rounding noise.
    const bool both_zero = norm(*p.grad) < 1e-9 && norm(fd) < 1e-9;
    CHECK((both_zero || relative_error(*p.grad, fd) < 1e-6));
  }
}

}  // namespace

TEST_CASE_TEMPLATE("a pass with borrowed statistics is the clean batch's train-mode map, example by example, and changes nothing",
                   B, OPNORM_TEST_BACKENDS) {
  fixture<B> f;
  typename two_norm_net<B>::tape clean, borrowed;
  f.net.forward(f.x, clean, mode::train);
  const std::vector<double> before = buffers_of(f.net);
  const tensor<double, B> out = f.net.forward_with_statistics_of(f.probe, borrowed, clean);
  CHECK(buffers_of(f.net) == before);  // running statistics and counters untouched

  // Against the independent reference (statistics recomputed from x). The
  // reference net copy is taken before the clean pass moved the running
  // statistics, which the borrowed pass must not read anyway.
  fixture<B> g;
  clean_batch_reference<B> reference(g.net, g.x);
  CHECK(relative_error(out, reference.at(g.probe)) < 1e-13);
  // At x itself it reproduces the clean logits.
  typename two_norm_net<B>::tape again;
  CHECK(relative_error(f.net.forward_with_statistics_of(f.x, again, clean), clean.output()) < 1e-14);

  // Example i's output depends on example i alone: changing example 0 of
  // the probe changes row 0 only.
  tensor<double, B> moved = f.probe;
  for (index_t j = 0; j < 25; ++j) moved[j] += 0.3;
  typename two_norm_net<B>::tape other;
  const tensor<double, B> out2 = f.net.forward_with_statistics_of(moved, other, clean);
  for (index_t i = 0; i < 6; ++i)
    for (index_t k = 0; k < 4; ++k) {
      if (i == 0) continue;
      CHECK(out2(i, k) == out(i, k));
    }
  CHECK(std::abs(out2(0, 0) - out(0, 0)) + std::abs(out2(0, 1) - out(0, 1)) > 1e-6);

  // Borrowing from an eval-mode pass is refused.
  typename two_norm_net<B>::tape eval_tape;
  f.net.forward(f.x, eval_tape, mode::eval);
  CHECK_THROWS_AS(f.net.forward_with_statistics_of(f.probe, borrowed, eval_tape), std::invalid_argument);
}

TEST_CASE_TEMPLATE("gradients through borrowed statistics are exact: parameters and clean inputs", B,
                   OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  fixture<B> f;
  std::mt19937_64 rng(23);
  const tensor_t a = random_tensor<B>({6, 4}, rng);  // weights of the borrowed pass's logits
  const tensor_t b = random_tensor<B>({6, 4}, rng);  // weights of the clean pass's logits
  // E = <a, f_S(x)(probe)> + <b, f_train(x)> with S the statistics of x.
  auto objective = [&] {
    clean_batch_reference<B> reference(f.net, f.x);
    return dot(a, reference.at(f.probe)) + dot(b, reference.clean);
  };

  typename two_norm_net<B>::tape clean, borrowed;
  f.net.zero_grad();
  f.net.forward(f.x, clean, mode::train);
  f.net.forward_with_statistics_of(f.probe, borrowed, clean);
  f.net.vjp(borrowed, a, nullptr, true);  // first: it hands the statistics' gradient to the clean pass
  tensor_t gx;
  f.net.vjp(clean, b, &gx, true);
  check_parameter_gradients(f.net, objective);
  CHECK(relative_error(gx, finite_difference_gradient(f.x, objective)) < 1e-6);

  // A power iteration's backward (no parameter gradients) lends nothing:
  // the clean pass's own gradient is then that of <b, f_train(x)> alone.
  typename two_norm_net<B>::tape clean2, borrowed2;
  f.net.forward(f.x, clean2, mode::train);
  f.net.forward_with_statistics_of(f.probe, borrowed2, clean2);
  tensor_t unused, gx_alone, gx_plain;
  f.net.vjp(borrowed2, a, &unused, false);
  f.net.zero_grad();
  f.net.vjp(clean2, b, &gx_alone, false);
  typename two_norm_net<B>::tape clean3;
  f.net.forward(f.x, clean3, mode::train);
  f.net.vjp(clean3, b, &gx_plain, false);
  CHECK(relative_error(gx_alone, gx_plain) == 0.0);
}

TEST_CASE_TEMPLATE("data-dependent SNR with the clean batch's statistics: v maximizes the penalized residual and the gradients are exact end to end",
                   B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  fixture<B> f;
  data_dependent_snr<> method;  // statistics::clean_batch is the default
  REQUIRE(method.batch_statistics == data_dependent_snr<>::statistics::clean_batch);
  method.lambda = 0.8;
  method.eps = 0.5;
  method.iterations = 4;
  method.seed = 11;
  two_norm_net<B> before = f.net;

  // The probe, found independently: the same finite-difference power
  // iteration run on the reference map (an eval-mode copy carrying the
  // clean batch's statistics), with the seed the method documents for its
  // first step.
  clean_batch_reference<B> reference(before, f.x);
  iteration_options<double> o;
  o.iterations = method.iterations;
  o.eps = method.eps;
  o.seed = random::hash(method.seed, 0xdd5, 0);
  using kernel = data_dependent_snr<>::finite_difference_kernel;
  const auto pairs = kernel{}.run(reference.copy, f.x, nullptr, o);
  const tensor_t probe = pairs.point;

  typename two_norm_net<B>::tape tape;
  f.net.zero_grad();
  const batch_result r = method.accumulate_gradients(f.net, tape, f.x, f.y);

  // E(theta) = CE(f_train(x)) + lambda / 2 mean ||f_S(probe) - f_train(x)||^2,
  // with S the clean batch's statistics (functions of theta), probe fixed.
  auto objective = [&] {
    clean_batch_reference<B> ref(f.net, f.x);
    const tensor_t perturbed = ref.at(probe);
    double penalty = 0;
    for (index_t i = 0; i < perturbed.size(); ++i)
      penalty += (perturbed[i] - ref.clean[i]) * (perturbed[i] - ref.clean[i]);
    return softmax_cross_entropy::evaluate(ref.clean, f.y, static_cast<tensor_t*>(nullptr)) +
           method.lambda / 2 * penalty / 6;
  };
  CHECK(r.loss == doctest::Approx(objective()).epsilon(1e-10));
  check_parameter_gradients(f.net, objective);

  // The running statistics moved once, exactly as one standard step moves them.
  two_norm_net<B> baseline = before;
  typename two_norm_net<B>::tape t2;
  standard{}.accumulate_gradients(baseline, t2, f.x, f.y);
  CHECK(buffers_of(f.net) == buffers_of(baseline));
}

TEST_CASE_TEMPLATE("data-dependent SNR with running statistics: the penalty and v are the eval-mode map's, gradients exact end to end",
                   B, OPNORM_TEST_BACKENDS) {
  using tensor_t = tensor<double, B>;
  fixture<B> f;
  data_dependent_snr<> method;
  method.batch_statistics = data_dependent_snr<>::statistics::running;
  method.lambda = 0.8;
  method.eps = 0.5;
  method.iterations = 4;
  method.seed = 3;
  two_norm_net<B> before = f.net;

  // The running statistics the penalty sees are those after the clean
  // train-mode pass, which comes first.
  two_norm_net<B> updated = before;
  typename two_norm_net<B>::tape t0;
  updated.forward(f.x, t0, mode::train);
  iteration_options<double> o;
  o.iterations = method.iterations;
  o.eps = method.eps;
  o.seed = random::hash(method.seed, 0xdd5, 0);
  const tensor_t probe = data_dependent_snr<>::finite_difference_kernel{}.run(updated, f.x, nullptr, o).point;

  typename two_norm_net<B>::tape tape;
  f.net.zero_grad();
  const batch_result r = method.accumulate_gradients(f.net, tape, f.x, f.y);
  CHECK(buffers_of(f.net) == buffers_of(updated));  // moved once, by the clean pass

  // Running statistics are buffers, constants of the objective: the
  // penalty is taken with the ones the step's clean pass left.
  auto objective = [&] {
    two_norm_net<B> copy = f.net;  // f.net's parameters (perturbed by the check) ...
    copy_buffers(updated, copy);   // ... with the running statistics the penalty saw
    typename two_norm_net<B>::tape t, a, b;
    const tensor_t& eval_clean = copy.forward(f.x, a, mode::eval);
    const tensor_t& eval_probe = copy.forward(probe, b, mode::eval);
    const tensor_t clean = copy.forward(f.x, t, mode::train);
    double penalty = 0;
    for (index_t i = 0; i < eval_probe.size(); ++i)
      penalty += (eval_probe[i] - eval_clean[i]) * (eval_probe[i] - eval_clean[i]);
    return softmax_cross_entropy::evaluate(clean, f.y, static_cast<tensor_t*>(nullptr)) +
           method.lambda / 2 * penalty / 6;
  };
  CHECK(r.loss == doctest::Approx(objective()).epsilon(1e-10));
  check_parameter_gradients(f.net, objective);
}

TEST_CASE_TEMPLATE("data-dependent SNR with independent batch statistics updates the running statistics twice per step",
                   B, OPNORM_TEST_BACKENDS) {
  fixture<B> f;
  data_dependent_snr<> method;
  method.batch_statistics = data_dependent_snr<>::statistics::independent_batches;
  method.iterations = 2;
  typename two_norm_net<B>::tape tape;
  const std::int64_t tracked = f.net.template layer<first_norm>().num_batches_tracked();
  method.accumulate_gradients(f.net, tape, f.x, f.y);
  CHECK(f.net.template layer<first_norm>().num_batches_tracked() == tracked + 2);

  data_dependent_snr<> clean_batch;
  clean_batch.iterations = 2;
  clean_batch.accumulate_gradients(f.net, tape, f.x, f.y);
  CHECK(f.net.template layer<first_norm>().num_batches_tracked() == tracked + 3);
}
