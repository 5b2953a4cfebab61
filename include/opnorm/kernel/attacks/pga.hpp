#pragma once
// Attacks: projected gradient ascent (PGA/PGD) in l2 or linf, and the fast
// gradient method as its one-step case, in the shape attack libraries use:
//
//   attack_options<float> options;                      // float: the model's scalar type
//   options.eps = 1.5f;
//   auto attack = make_pga<l2>(model, options);         // or pga<Model, l2>(model, options)
//   auto result = attack(x, labels);                    // result.adversarial, result.success
//   robust_accuracy(model, options, x, labels, {0.5, 1.0, 2.0});
//
// PGA is the power-iteration kernel with a loss-gradient forward half and a
// projected step (paper Eq. 11/12). eps is in the model's input units: pixels
// in [0, 1], because standardization is a layer inside the model.
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../nn/losses.hpp"
#include "../power_iteration.hpp"

namespace opnorm {

/// An attack's options are the kernel's (steps.hpp: eps, alpha with 0 for
/// 2 eps / iterations, iterations, random_start, targeted, the box, seed)
/// plus the restarts, and clip to the pixel box [0, 1] unless told not to.
template <class T>
struct attack_options : iteration_options<T> {
  int restarts = 1;  // each restart draws a new random start; the worst case is kept

  attack_options() { this->clip_to_box = true; }
};

template <class T, class B>
struct attack_result {
  tensor<T, B> adversarial;           // x*, inside the eps-ball and the box
  std::vector<std::uint8_t> success;  // misclassified (untargeted) or target reached (targeted)
  std::vector<T> loss;                // the attack loss at x*, per example

  double success_rate() const {
    std::size_t s = 0;
    for (auto f : success) s += f;
    return success.empty() ? 0.0 : static_cast<double>(s) / static_cast<double>(success.size());
  }
};

template <class Model, class Norm = l2, class Loss = softmax_cross_entropy>
class pga {
  static_assert(has_projection<Norm>::value,
                "pga projects onto the eps-ball and starts inside it: its Norm must provide project(delta, eps) and "
                "random_in_ball(x, eps, seed, delta)");
  static_assert(std::is_same_v<typename Loss::template target_type<typename Model::scalar, typename Model::backend_type>,
                               label_tensor<typename Model::backend_type>>,
                "pga attacks classifiers with labels: its Loss must compare the logits with class labels, as "
                "softmax_cross_entropy and dlr do (for sum_of_squares, use the power_iteration kernel directly)");

 public:
  using T = typename Model::scalar;
  using B = typename Model::backend_type;
  using kernel = power_iteration<jacobian_operator<loss_gradient<Loss>>, Norm, projected_step>;

  pga(Model& model, attack_options<T> options) : model_(model), options_(options) {
    // NaN must not pass: a NaN radius makes every projection a no-op, and
    // the "robust accuracy" that follows is the clean one.
    detail::require_real(static_cast<double>(options_.eps), "pga", "eps", detail::at_least(0));
    detail::require_real(static_cast<double>(options_.alpha), "pga", "alpha", detail::at_least(0));  // 0: 2 eps / iterations
    detail::require_count(options_.iterations, "pga", "iterations", 1);
    detail::require_count(options_.restarts, "pga", "restarts", 1);
    detail::require_box(options_.clip_to_box, options_.box_min, options_.box_max, "pga");
  }

  const attack_options<T>& options() const { return options_; }

  /// Attacks every example of x; labels are the true classes (or the targets).
  attack_result<T, B> operator()(const tensor<T, B>& x, const label_tensor<B>& labels) {
    attack_result<T, B> best;
    const index_t n = x.dim(0);
    if (options_.eps == T(0)) {  // the identity, exactly
      assign(x, best.adversarial);
      score(best.adversarial, labels, best);
      return best;
    }
    iteration_options<T> o = options_.with_default_step();
    for (int r = 0; r < options_.restarts; ++r) {
      o.seed = random::hash(options_.seed, 0x7e57a27, static_cast<std::uint64_t>(r));
      auto pairs = kernel{}.run(model_, x, &labels, o, ws_);
      if (r == 0) {
        best.adversarial = std::move(pairs.point);
        score(best.adversarial, labels, best);
        continue;
      }
      attack_result<T, B> trial;
      trial.adversarial = std::move(pairs.point);
      score(trial.adversarial, labels, trial);
      keep_worst_case(trial, best, n);
    }
    return best;
  }

 private:
  // Success and loss at x*, from one eval-mode forward pass.
  void score(const tensor<T, B>& adversarial, const label_tensor<B>& labels, attack_result<T, B>& r) {
    const auto& logits = model_.forward(adversarial, score_tape_, mode::eval);
    tensor<T, B> per_example;
    Loss::evaluate(logits, labels, static_cast<tensor<T, B>*>(nullptr), reduction::sum, &per_example);
    r.loss = per_example.to_vector();
    // A NaN anywhere (input, weights, a gradient) would otherwise leave the
    // attack quietly weaker: the sign of NaN is not a direction, and a NaN
    // loss never wins a restart. Say so instead of returning a result.
    for (std::size_t i = 0; i < r.loss.size(); ++i)
      if (!std::isfinite(static_cast<double>(r.loss[i])))
        throw std::runtime_error("opnorm::pga: the attack loss at example " + std::to_string(i) +
                                 " is not finite (a NaN or infinity in the input, the model or a gradient)");
    const std::vector<index_t> predicted = argmax_rows(logits);
    const std::vector<std::int32_t> y = labels.to_vector();
    r.success.resize(predicted.size());
    for (std::size_t i = 0; i < predicted.size(); ++i)
      r.success[i] = options_.targeted ? predicted[i] == y[i] : predicted[i] != y[i];
    if (options_.targeted)  // a targeted attack minimizes the loss; keep the comparison "larger is worse"
      for (auto& l : r.loss) l = -l;
  }

  // Per example: a success beats a failure; otherwise the larger loss wins.
  // The decision is made on the host from the scores; the rows are moved on
  // the backend, so only n flags travel.
 public:  // nvcc rejects extended lambdas in private member functions
  static void keep_worst_case(const attack_result<T, B>& trial, attack_result<T, B>& best, index_t n) {
    std::vector<std::int32_t> take(static_cast<std::size_t>(n), 0);
    for (index_t i = 0; i < n; ++i) {
      const bool better = trial.success[i] > best.success[i] ||
                          (trial.success[i] == best.success[i] && trial.loss[i] > best.loss[i]);
      if (!better) continue;
      take[static_cast<std::size_t>(i)] = 1;
      best.success[i] = trial.success[i];
      best.loss[i] = trial.loss[i];
    }
    const auto flags = label_tensor<B>::from_vector({n}, take);
    const std::int32_t* f = flags.data();
    const T* from = trial.adversarial.data();
    T* to = best.adversarial.data();
    const index_t d = best.adversarial.example_size();
    backend_ops<B>::for_each_index(n * d, [=] OPNORM_HD(index_t k) {
      if (f[k / d]) to[k] = from[k];
    });
  }

 private:
  Model& model_;
  attack_options<T> options_;
  typename kernel::template workspace<Model> ws_;
  typename Model::tape score_tape_;
};

/// make_pga<linf>(model, options): the attack with its types deduced.
template <class Norm = l2, class Loss = softmax_cross_entropy, class Model>
pga<Model, Norm, Loss> make_pga(Model& model, attack_options<typename Model::scalar> options) {
  return pga<Model, Norm, Loss>(model, options);
}

/// The fast gradient method (FGM; FGSM for linf): one step of size eps from x.
template <class Norm = l2, class Loss = softmax_cross_entropy, class Model>
pga<Model, Norm, Loss> make_fgm(Model& model, typename Model::scalar eps, bool targeted = false) {
  attack_options<typename Model::scalar> o;
  o.eps = eps;
  o.alpha = eps;
  o.iterations = 1;
  o.random_start = false;
  o.targeted = targeted;
  return pga<Model, Norm, Loss>(model, o);
}

/// Fraction of examples still classified correctly under the attack, for
/// each eps in eps_list (one call, batched). base.eps is ignored; alpha = 0
/// in base keeps the step at 2 eps / iterations for every eps.
template <class Norm = l2, class Model>
std::vector<double> robust_accuracy(Model& model, attack_options<typename Model::scalar> base,
                                    const typename Model::tensor_type& x,
                                    const label_tensor<typename Model::backend_type>& labels,
                                    const std::vector<typename Model::scalar>& eps_list, index_t batch_size = 256) {
  using T = typename Model::scalar;
  std::vector<double> accuracy;
  const index_t n = x.dim(0);
  for (T eps : eps_list) {
    attack_options<T> o = base;
    o.eps = eps;
    o.targeted = false;
    pga<Model, Norm> attack(model, o);
    std::size_t correct = 0;
    for (index_t begin = 0; begin < n; begin += batch_size) {
      const index_t end = std::min(n, begin + batch_size);
      const auto r = attack(slice_rows(x, begin, end), slice_rows(labels, begin, end));
      for (auto s : r.success) correct += s ? 0 : 1;
    }
    accuracy.push_back(n ? static_cast<double>(correct) / static_cast<double>(n) : 0.0);
  }
  return accuracy;
}

}  // namespace opnorm
