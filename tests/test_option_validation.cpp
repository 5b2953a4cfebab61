// Every real-valued option of the library must be finite and in range, or be
// refused with std::invalid_argument naming who refused it and the option.
// NaN is the case that matters: every comparison with NaN is false, so a
// check written `eps < 0` lets it through, and a NaN radius turns an attack
// or an adversarial training step into a silent no-op.
//
// The second half checks the other way NaN used to hide: a non-finite
// weight or buffer anywhere in fmnist_cnn must reach the logits (ReLU and
// max pooling pass NaN on, as in PyTorch), so the trainer's and the
// attacks' finiteness checks can see it.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>

#include <opnorm/kernel/attacks.hpp>
#include <opnorm/methods/adversarial.hpp>
#include <opnorm/methods/data_dependent_snr.hpp>
#include <opnorm/methods/global_snr.hpp>
#include <opnorm/nn/networks.hpp>
#include <opnorm/kernel/power_iteration.hpp>

#include "attack_test_models.hpp"

using namespace opnorm;
using opnorm::testing::make_blobs;
using opnorm::testing::make_mlp;
using opnorm::testing::mlp;

namespace {

const double not_a_number = std::numeric_limits<double>::quiet_NaN();
const double infinity = std::numeric_limits<double>::infinity();

struct problem {
  mlp<backend::cpu> net = make_mlp<backend::cpu>(3, 6, 4);
  tensor<double> x;
  label_tensor<backend::cpu> y;
  mlp<backend::cpu>::tape tape;
  problem() { make_blobs<backend::cpu>(8, 6, 4, 0.1, 5, x, y); }
};

}  // namespace

TEST_CASE("the shared option check names who, the option, its value and the rule") {
  CHECK_THROWS_WITH_AS(detail::require_real(not_a_number, "who", "eps", detail::at_least(0)),
                       "opnorm::who: eps is nan; it must be a finite number >= 0", std::invalid_argument);
  CHECK_THROWS_WITH_AS(detail::require_real(-infinity, "who", "eps", detail::at_least(0)),
                       "opnorm::who: eps is -inf; it must be a finite number >= 0", std::invalid_argument);
  CHECK_THROWS_WITH_AS(detail::require_real(1.0, "who", "rho", detail::open_closed_interval(0, 0.5)),
                       "opnorm::who: rho is 1; it must be a finite number in (0, 0.5]", std::invalid_argument);
  CHECK_THROWS_WITH_AS(detail::require_real(0.0, "who", "gamma", detail::greater_than(0)),
                       "opnorm::who: gamma is 0; it must be a finite number > 0", std::invalid_argument);
  CHECK_THROWS_WITH_AS(detail::require_count(0, "who", "iterations", 1),
                       "opnorm::who: iterations is 0; it must be at least 1", std::invalid_argument);
  // Values at the closed ends are accepted.
  CHECK_NOTHROW(detail::require_real(0.0, "who", "eps", detail::at_least(0)));
  CHECK_NOTHROW(detail::require_real(1.0, "who", "rho", detail::open_closed_interval(0, 1)));
  CHECK_NOTHROW(detail::require_real(0.0, "who", "momentum", detail::half_open_interval(0, 1)));
}

TEST_CASE("adversarial training refuses a NaN, infinite or negative eps, alpha or lambda, and zero iterations, "
          "before it changes any gradient") {
  problem p;
  for (double bad : {not_a_number, infinity, -1.0}) {
    adversarial<l2> m;
    m.eps = bad;
    CHECK_THROWS_WITH_AS(m.check_options(),
                         ("opnorm::adversarial: eps is " + detail::option_number(bad) +
                          "; it must be a finite number >= 0")
                             .c_str(),
                         std::invalid_argument);
    // The training step itself refuses, and leaves the gradients alone.
    p.net.zero_grad();
    CHECK_THROWS_AS(m.accumulate_gradients(p.net, p.tape, p.x, p.y), std::invalid_argument);
    for (const auto& q : p.net.state().parameters)
      for (index_t i = 0; i < q.grad->size(); ++i) REQUIRE((*q.grad)[i] == 0.0);
  }
  adversarial<l2> m;
  m.alpha = not_a_number;
  CHECK_THROWS_WITH_AS(m.check_options(), "opnorm::adversarial: alpha is nan; it must be a finite number >= 0",
                       std::invalid_argument);
  m.alpha = 0;
  m.lambda = -0.5;
  CHECK_THROWS_WITH_AS(m.check_options(), "opnorm::adversarial: lambda is -0.5; it must be a finite number >= 0",
                       std::invalid_argument);
  m.lambda = 1;
  m.iterations = 0;
  CHECK_THROWS_WITH_AS(m.check_options(), "opnorm::adversarial: iterations is 0; it must be at least 1",
                       std::invalid_argument);
  m.iterations = 10;
  CHECK_NOTHROW(m.check_options());
}

TEST_CASE("data-dependent SNR refuses a NaN, infinite or negative eps or lambda and zero iterations, in every "
          "entry point") {
  problem p;
  data_dependent_snr<l2> m;
  m.eps = not_a_number;
  CHECK_THROWS_WITH_AS(m.check_options(),
                       "opnorm::data_dependent_snr: eps is nan; it must be a finite number >= 0",
                       std::invalid_argument);
  CHECK_THROWS_AS(m.accumulate_gradients(p.net, p.tape, p.x, p.y), std::invalid_argument);
  CHECK_THROWS_AS(m.accumulate_gradients_at(p.net, p.tape, p.x, p.x, p.y), std::invalid_argument);
  CHECK_THROWS_AS(m.accumulate_jacobian_gradients_at(p.net, p.tape, p.x, p.x, p.y), std::invalid_argument);
  m.eps = 0.5;
  m.lambda = infinity;
  CHECK_THROWS_WITH_AS(m.check_options(),
                       "opnorm::data_dependent_snr: lambda is inf; it must be a finite number >= 0",
                       std::invalid_argument);
  m.lambda = 0.03;
  m.iterations = -3;
  CHECK_THROWS_WITH_AS(m.check_options(), "opnorm::data_dependent_snr: iterations is -3; it must be at least 1",
                       std::invalid_argument);
}

TEST_CASE("global SNR refuses a NaN lambda at construction and when changed afterwards") {
  problem p;
  CHECK_THROWS_WITH_AS((global_snr<double>(p.net, not_a_number)),
                       "opnorm::global_snr: lambda is nan; it must be a finite number >= 0", std::invalid_argument);
  CHECK_THROWS_WITH_AS((global_snr<double>(p.net, 1e-3, 0)),
                       "opnorm::global_snr: iterations is 0; it must be at least 1", std::invalid_argument);
  global_snr<double> m(p.net, 1e-3);
  m.lambda = -infinity;
  CHECK_THROWS_AS(m.accumulate_gradients(p.net, p.tape, p.x, p.y), std::invalid_argument);
}

TEST_CASE("pga refuses a NaN or negative eps, a NaN alpha and a box with a NaN or infinite end") {
  problem p;
  auto refused = [&](attack_options<double> o, const std::string& message) {
    CHECK_THROWS_WITH_AS((pga<mlp<backend::cpu>>(p.net, o)), message.c_str(), std::invalid_argument);
  };
  attack_options<double> o;
  o.eps = not_a_number;
  refused(o, "opnorm::pga: eps is nan; it must be a finite number >= 0");
  o.eps = -0.1;
  refused(o, "opnorm::pga: eps is -0.1; it must be a finite number >= 0");
  o.eps = 0.5;
  o.alpha = not_a_number;
  refused(o, "opnorm::pga: alpha is nan; it must be a finite number >= 0");
  o.alpha = 0;
  o.box_max = infinity;
  refused(o, "opnorm::pga: the box [0, inf] must have finite ends with box_min <= box_max");
  o.box_max = 1;
  o.box_min = not_a_number;
  refused(o, "opnorm::pga: the box [nan, 1] must have finite ends with box_min <= box_max");
  o.box_min = 0;
  o.restarts = 0;
  refused(o, "opnorm::pga: restarts is 0; it must be at least 1");
}

TEST_CASE("apgd refuses a NaN or infinite eps and a rho outside (0, 1]") {
  problem p;
  apgd_options<double> o;
  o.eps = not_a_number;
  CHECK_THROWS_WITH_AS((apgd<mlp<backend::cpu>, l2>(p.net, o)),
                       "opnorm::apgd: eps is nan; it must be a finite number >= 0", std::invalid_argument);
  o.eps = infinity;
  CHECK_THROWS_WITH_AS((apgd<mlp<backend::cpu>, l2>(p.net, o)),
                       "opnorm::apgd: eps is inf; it must be a finite number >= 0", std::invalid_argument);
  o.eps = 0.5;
  o.rho = not_a_number;
  CHECK_THROWS_WITH_AS((apgd<mlp<backend::cpu>, l2>(p.net, o)),
                       "opnorm::apgd: rho is nan; it must be a finite number in (0, 1]", std::invalid_argument);
}

TEST_CASE("the power-iteration kernel refuses a NaN eps or alpha from any caller") {
  problem p;
  using kernel = power_iteration<jacobian_operator<loss_gradient<softmax_cross_entropy>>, l2, projected_step>;
  kernel::workspace<mlp<backend::cpu>> ws;
  iteration_options<double> o;
  o.eps = not_a_number;
  CHECK_THROWS_WITH_AS(kernel{}.run(p.net, p.x, &p.y, o, ws),
                       "opnorm::power_iteration: eps is nan; it must be a finite number >= 0", std::invalid_argument);
  o.eps = 0.5;
  o.alpha = -infinity;
  CHECK_THROWS_WITH_AS(kernel{}.run(p.net, p.x, &p.y, o, ws),
                       "opnorm::power_iteration: alpha is -inf; it must be a finite number >= 0",
                       std::invalid_argument);
}

TEST_CASE("a NaN in any parameter or buffer of fmnist_cnn reaches the logits of every example") {
  // Each tensor in turn gets one NaN (the first entry, and one in the
  // middle); in eval mode every example's logits must then hold a NaN. This
  // is what lets the trainer and the attacks notice. (Infinity need not
  // surface: relu(-infinity) = 0 is right, which is one reason load_checkpoint
  // refuses non-finite tensors outright.)
  tensor<double> x({4, 1, 28, 28});
  for (index_t i = 0; i < x.size(); ++i) x[i] = static_cast<double>((i * 7919) % 256) / 255.0;
  auto clean = make_fmnist_cnn<double>(1);
  const std::size_t tensors = clean.state().parameters.size() + clean.state().buffers.size();
  for (std::size_t k = 0; k < tensors; ++k)
    for (double bad : {not_a_number}) {
      for (int where = 0; where < 2; ++where) {
        auto net = make_fmnist_cnn<double>(1);
        auto state = net.state();
        const bool is_parameter = k < state.parameters.size();
        const auto& t = is_parameter ? state.parameters[k] : state.buffers[k - state.parameters.size()];
        const index_t at = where == 0 ? 0 : t.value->size() / 2;
        (*t.value)[at] = bad;
        CAPTURE(t.name);
        CAPTURE(at);
        CAPTURE(bad);
        const auto logits = net.predict(x);
        for (index_t i = 0; i < logits.dim(0); ++i) {
          bool has_nan = false;
          for (index_t c = 0; c < logits.dim(1); ++c) has_nan |= std::isnan(logits(i, c));
          CHECK(has_nan);
        }
      }
    }
}
