#pragma once
// adversarial: training on l2- (or linf-) PGA adversarial examples.
//
//   objective::clean_plus_adversarial   l(y, f(x)) + lambda l(y, f(x*))   (paper Eq. 10)
//   objective::adversarial_only         l(y, f(x*))                        (Madry et al.)
//
// x* comes from the power-iteration kernel composed as PGA (loss-gradient
// forward half, projected step), run in eval mode so the attack itself
// changes nothing in the model; the training forward passes then run in
// train mode. The attack is untargeted: the labels are the true labels.
//
// BatchNorm: the clean and the adversarial pass are each normalized by their
// own batch statistics, and each updates the running statistics, so with
// Eq. 10 the running statistics see two batches per step, one of them
// adversarial (with adversarial_only, only the adversarial one). That is what
// the published PyTorch training loops do (both passes under model.train()),
// and the test-time map is calibrated on that mixture as part of the method.
// docs/batch-statistics.md compares this with data-dependent SNR's choice.
#include "../kernel/attacks.hpp"
#include "method.hpp"
#include "workspace_cache.hpp"

namespace opnorm {

template <class Norm = l2>
struct adversarial {
  enum class objective { clean_plus_adversarial, adversarial_only };

  static constexpr const char* name = "adversarial";
  using kernel = power_iteration<jacobian_operator<loss_gradient<softmax_cross_entropy>>, Norm, projected_step>;

  double eps = 0.875;    // [0, 1] pixel units: the paper's 1.75 on [-1, 1] images
  double alpha = 0;      // 0: 2 * eps / iterations, as in the paper
  int iterations = 10;
  double lambda = 1.0;   // weight of the adversarial loss in Eq. 10
  objective form = objective::clean_plus_adversarial;
  std::uint64_t seed = 0;

  /// Refuses settings that would quietly train something other than what was
  /// asked: a NaN or negative radius or step (which the projection would
  /// turn into no attack at all), a negative weight, no iterations.
  void check_options() const {
    detail::require_real(eps, name, "eps", detail::at_least(0));
    detail::require_real(alpha, name, "alpha", detail::at_least(0));  // 0 selects 2 eps / iterations
    detail::require_count(iterations, name, "iterations", 1);
    detail::require_real(lambda, name, "lambda", detail::at_least(0));
  }

  template <class Model>
  batch_result accumulate_gradients(Model& model, typename Model::tape& tape, const typename Model::tensor_type& x,
                                    const label_tensor<typename Model::backend_type>& y) {
    using T = typename Model::scalar;
    check_options();
    auto& ws = cache_.get<typename kernel::template workspace<Model>>();
    iteration_options<T> o;
    o.iterations = iterations;
    o.eps = static_cast<T>(eps);
    o.alpha = static_cast<T>(alpha);
    o.random_start = true;
    o.clip_to_box = true;
    o = o.with_default_step();
    // A fresh random start every batch, reproducible from the seed.
    o.seed = random::hash(seed, 0xad7, static_cast<std::uint64_t>(step_++));
    const auto pairs = kernel{}.run(model, x, &y, o, ws);
    return accumulate_gradients_at(model, tape, x, pairs.point, y);
  }

  /// The objective's gradients with the adversarial inputs given: what
  /// accumulate_gradients does after its attack.
  template <class Model>
  batch_result accumulate_gradients_at(Model& model, typename Model::tape& tape, const typename Model::tensor_type& x,
                                       const typename Model::tensor_type& adversarial_x,
                                       const label_tensor<typename Model::backend_type>& y) {
    using T = typename Model::scalar;
    check_options();
    typename Model::tensor_type gradient;
    double loss = 0;
    if (form == objective::clean_plus_adversarial) {
      loss += softmax_cross_entropy::evaluate(model.forward(x, tape, mode::train), y, &gradient, reduction::mean);
      model.vjp(tape, gradient, nullptr, true);
    }
    const double weight = form == objective::clean_plus_adversarial ? lambda : 1.0;
    const auto& logits = model.forward(adversarial_x, tape, mode::train);
    loss += weight * softmax_cross_entropy::evaluate(logits, y, &gradient, reduction::mean);
    const index_t correct = count_correct(logits, y);
    axpby(static_cast<T>(weight), gradient, T(0), gradient);
    model.vjp(tape, gradient, nullptr, true);
    return {loss, correct, x.dim(0)};
  }

  /// The step counter, which training checkpoints save as "method.step" so
  /// that a resumed run draws the random starts an unbroken one would.
  std::vector<named_counter> counters() { return {{"step", &step_}}; }

 private:
  detail::workspace_cache cache_;
  std::int64_t step_ = 0;  // batches seen; seeds each batch's random start
};

}  // namespace opnorm
