#pragma once
// The worst case over a list of attacks, AutoAttack's way: an example is
// robust only if it is classified correctly at x and every attack fails on
// it. The attacks run in order, each on the examples still robust, so a
// strong first attack (APGD-CE) leaves the later ones little to do.
//
//   apgd_options<float> options;                                     // float: the model's scalar type
//   options.eps = 0.1f;
//   auto attacks = make_apgd_ensemble<linf>(model, options);          // APGD-CE, then APGD-T
//   auto report = worst_case(model, attacks, x, labels);   // report.robust[i], report.accuracy()
//   double acc = robust_accuracy(model, attacks, x, labels);
//   auto same = worst_case(model, x, labels, apgd_ce, pga10);         // attacks by reference
//
// An attack is anything callable as attack(x, labels) -> attack_result with
// untargeted success flags (pga, apgd). The ensemble does not take an
// attack's word for a success: it evaluates the model at the returned point
// and counts the example as broken only if the model misclassifies it there,
// as AutoAttack does.
//
// make_apgd_ensemble is APGD-CE followed by APGD-T (targeted DLR over the 9
// highest non-true classes): AutoAttack's "standard" version without FAB-T
// (a minimum-norm attack) and Square (a black-box, gradient-free one). Those
// two are there to catch the points where gradients mislead the APGDs
// (gradient masking); they are not implemented here, so on a model suspected
// of masking its gradients this ensemble is an upper bound that may be loose.
#include <algorithm>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "apgd.hpp"
#include "pga.hpp"
#include "rows.hpp"

namespace opnorm {

/// An attack with its model bound: (x, labels) -> attack_result.
template <class T, class B>
using attack_function = std::function<attack_result<T, B>(const tensor<T, B>&, const label_tensor<B>&)>;

template <class T, class B>
struct worst_case_result {
  tensor<T, B> adversarial;                // the first breaking attack's point; x where none broke it
  std::vector<std::uint8_t> correct;       // classified correctly at x
  std::vector<std::uint8_t> robust;        // correct at x and every attack failed
  std::vector<int> broken_by;              // the index of the attack that broke it, -1 if none did

  double accuracy() const { return share(robust); }
  double clean_accuracy() const { return share(correct); }

 private:
  static double share(const std::vector<std::uint8_t>& flags) {
    std::size_t s = 0;
    for (auto f : flags) s += f;
    return flags.empty() ? 0.0 : static_cast<double>(s) / static_cast<double>(flags.size());
  }
};

/// Runs the attacks in order, each on the examples still robust, in batches
/// of batch_size; see the header comment.
template <class Model>
worst_case_result<typename Model::scalar, typename Model::backend_type> worst_case(
    Model& model, const std::vector<attack_function<typename Model::scalar, typename Model::backend_type>>& attacks,
    const typename Model::tensor_type& x, const label_tensor<typename Model::backend_type>& labels,
    index_t batch_size = 256) {
  using T = typename Model::scalar;
  using B = typename Model::backend_type;
  const index_t n = x.dim(0), d = x.example_size();
  if (labels.size() != n)
    throw std::invalid_argument("opnorm::worst_case: " + std::to_string(labels.size()) + " labels for " +
                                std::to_string(n) + " examples");
  if (batch_size < 1) throw std::invalid_argument("opnorm::worst_case: batch_size must be at least 1");
  worst_case_result<T, B> out;
  assign(x, out.adversarial);
  out.correct.assign(static_cast<std::size_t>(n), 0);
  out.robust.assign(static_cast<std::size_t>(n), 0);
  out.broken_by.assign(static_cast<std::size_t>(n), -1);
  const std::vector<std::int32_t> y = labels.to_vector();
  for (index_t begin = 0; begin < n; begin += batch_size) {
    const index_t end = std::min(n, begin + batch_size);
    const tensor<T, B> xb = slice_rows(x, begin, end);
    const label_tensor<B> yb = slice_rows(labels, begin, end);
    const std::vector<index_t> clean = argmax_rows(model.predict(xb));
    std::vector<index_t> active;  // indices into the batch
    for (index_t j = 0; j < end - begin; ++j) {
      const bool ok = clean[static_cast<std::size_t>(j)] == y[static_cast<std::size_t>(begin + j)];
      out.correct[static_cast<std::size_t>(begin + j)] = ok;
      out.robust[static_cast<std::size_t>(begin + j)] = ok;
      if (ok) active.push_back(j);
    }
    tensor<T, B> adversarial = xb;
    for (std::size_t a = 0; a < attacks.size() && !active.empty(); ++a) {
      const auto rows = row_list<B>(active);
      tensor<T, B> xs;
      label_tensor<B> ys;
      gather_rows(xb, rows, xs);
      gather_rows(yb, rows, ys);
      const attack_result<T, B> r = attacks[a](xs, ys);
      if (r.adversarial.shape() != xs.shape())
        throw std::invalid_argument("opnorm::worst_case: attack " + std::to_string(a) + " returned " +
                                    shape_string(r.adversarial.shape()) + " for inputs " + shape_string(xs.shape()));
      // Broken means misclassified at the returned point, whatever the attack reports.
      const std::vector<index_t> predicted = argmax_rows(model.predict(r.adversarial));
      std::vector<std::int32_t> broken(active.size(), 0);
      std::vector<index_t> still;
      for (std::size_t j = 0; j < active.size(); ++j) {
        const auto i = static_cast<std::size_t>(begin + active[j]);
        if (predicted[j] != y[i]) {
          broken[j] = 1;
          out.robust[i] = 0;
          out.broken_by[i] = static_cast<int>(a);
        } else {
          still.push_back(active[j]);
        }
      }
      scatter_rows_where(r.adversarial, rows,
                         label_tensor<B>::from_vector({static_cast<index_t>(broken.size())}, broken), adversarial);
      active = std::move(still);
    }
    backend_ops<B>::copy(adversarial.data(), adversarial.size(), out.adversarial.data() + begin * d);
  }
  return out;
}

/// An attack_function that calls `attack` by reference (it must outlive the function).
template <class T, class B, class Attack>
attack_function<T, B> by_reference(Attack& attack) {
  return [&attack](const tensor<T, B>& x, const label_tensor<B>& labels) { return attack(x, labels); };
}

/// worst_case over attacks given by reference: worst_case(model, x, labels, apgd_ce, apgd_t).
template <class Model, class... Attacks>
worst_case_result<typename Model::scalar, typename Model::backend_type> worst_case(
    Model& model, const typename Model::tensor_type& x, const label_tensor<typename Model::backend_type>& labels,
    Attacks&... attacks) {
  using T = typename Model::scalar;
  using B = typename Model::backend_type;
  std::vector<attack_function<T, B>> list;
  (list.push_back(by_reference<T, B>(attacks)), ...);
  return worst_case(model, list, x, labels);
}

/// The share of examples robust to every attack of the list (worst_case's accuracy).
template <class Model>
double robust_accuracy(Model& model,
                       const std::vector<attack_function<typename Model::scalar, typename Model::backend_type>>& attacks,
                       const typename Model::tensor_type& x, const label_tensor<typename Model::backend_type>& labels,
                       index_t batch_size = 256) {
  return worst_case(model, attacks, x, labels, batch_size).accuracy();
}

/// APGD-CE, then APGD-T (targeted DLR), both with options: AutoAttack's
/// standard ensemble without FAB-T and Square (see the header comment).
template <class Norm = l2, class Model>
std::vector<attack_function<typename Model::scalar, typename Model::backend_type>> make_apgd_ensemble(
    Model& model, apgd_options<typename Model::scalar> options) {
  return {make_apgd<Norm, softmax_cross_entropy>(model, options), make_apgd<Norm, targeted_dlr>(model, options)};
}

}  // namespace opnorm
