#pragma once
// The paper's rule for the training attack strength (§5.1): "the smallest
// value such that almost all adversarially perturbed inputs to the standard
// model are successfully misclassified" (eps = 1.75 for CIFAR-10 in [-1, 1]
// units there).
//
//   eps* = min { eps in grid : misclassified(eps) >= fraction }
//
// where misclassified(eps) = 1 - robust accuracy is the share of *all*
// examples (already misclassified clean ones included) that the attack of
// strength eps leaves misclassified. "Almost all" becomes fraction = 0.98 by
// default: high enough that the attack defeats the standard model nearly
// everywhere, low enough that a handful of examples far from any decision
// boundary (which no reasonable eps flips) do not push eps* to the end of
// the grid.
//
// The whole grid is evaluated, so the returned curve is also the standard
// model's accuracy-versus-eps curve (Figure 3, left).
#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../kernel/attacks.hpp"

namespace opnorm::analysis {

inline constexpr double default_misclassified_fraction = 0.98;

template <class T>
struct eps_selection {
  std::vector<T> grid;                  // the candidate eps, ascending, input units
  std::vector<double> robust_accuracy;  // share still classified correctly under the attack
  std::vector<double> misclassified;    // 1 - robust_accuracy, as (n - correct) / n exactly
  double fraction = default_misclassified_fraction;
  std::optional<T> eps;                 // the smallest grid eps meeting the fraction; none if no eps does
};

namespace detail {
/// The rule's inputs: a non-empty, strictly ascending grid of non-negative
/// eps, a fraction in (0, 1] and at least one example.
template <class T>
void check_eps_rule_inputs(const std::vector<T>& grid, index_t n, double fraction) {
  if (grid.empty()) throw std::invalid_argument("opnorm::analysis::select_attack_eps: the eps grid is empty");
  for (std::size_t k = 0; k < grid.size(); ++k) {
    if (!(grid[k] >= T(0))) throw std::invalid_argument("opnorm::analysis::select_attack_eps: eps must be non-negative");
    if (k > 0 && !(grid[k] > grid[k - 1]))
      throw std::invalid_argument("opnorm::analysis::select_attack_eps: the eps grid must be strictly ascending (entry " +
                                  std::to_string(k) + ")");
  }
  if (!(fraction > 0.0 && fraction <= 1.0))
    throw std::invalid_argument("opnorm::analysis::select_attack_eps: fraction must lie in (0, 1], got " +
                                std::to_string(fraction));
  if (n <= 0) throw std::invalid_argument("opnorm::analysis::select_attack_eps: no examples");
}
}  // namespace detail

/// The rule above applied to robust accuracies already measured on n
/// examples at each grid eps (robust_accuracy[k] at grid[k]); what
/// select_attack_eps does after its attacks, and what a caller that
/// measured the accuracies itself (split across the ranks of a job, say)
/// calls directly.
template <class T>
eps_selection<T> apply_eps_rule(const std::vector<T>& grid, const std::vector<double>& robust_accuracy, index_t n,
                                double fraction = default_misclassified_fraction) {
  detail::check_eps_rule_inputs(grid, n, fraction);
  if (robust_accuracy.size() != grid.size())
    throw std::invalid_argument("opnorm::analysis::apply_eps_rule: " + std::to_string(robust_accuracy.size()) +
                                " accuracies for a grid of " + std::to_string(grid.size()));
  eps_selection<T> out;
  out.grid = grid;
  out.fraction = fraction;
  out.robust_accuracy = robust_accuracy;
  for (std::size_t k = 0; k < grid.size(); ++k) {
    // Back to the integer count, so the comparison is the exact (n - correct) / n.
    const auto correct = static_cast<index_t>(std::llround(robust_accuracy[k] * static_cast<double>(n)));
    out.misclassified.push_back(static_cast<double>(n - correct) / static_cast<double>(n));
    if (!out.eps && out.misclassified.back() >= fraction) out.eps = grid[k];
  }
  return out;
}

/// Attacks x with PGA in Norm (base options; eps set from the grid, untargeted)
/// at every grid point and applies the rule above.
template <class Norm = l2, class Model>
eps_selection<typename Model::scalar> select_attack_eps(Model& model, const attack_options<typename Model::scalar>& base,
                                                        const typename Model::tensor_type& x,
                                                        const label_tensor<typename Model::backend_type>& labels,
                                                        const std::vector<typename Model::scalar>& grid,
                                                        double fraction = default_misclassified_fraction,
                                                        index_t batch_size = 256) {
  detail::check_eps_rule_inputs(grid, x.dim(0), fraction);  // before the attacks run, not after
  return apply_eps_rule(grid, robust_accuracy<Norm>(model, base, x, labels, grid, batch_size), x.dim(0), fraction);
}

}  // namespace opnorm::analysis
