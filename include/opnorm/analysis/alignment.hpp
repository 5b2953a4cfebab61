#pragma once
// Alignment of perturbations with the singular vectors of J_f(x) (paper §5.2,
// Figure 1 right, and §5.4, Figure 3 right):
//
//   alignment_r(delta) = |<delta, v_r>| / ||delta||_2,   r = 1..k
//
// the absolute cosine between a perturbation and the r-th right singular
// vector (absolute, because singular vectors are defined only up to sign).
// A perturbation that is exactly v_1 scores 1 at rank 1 and 0 elsewhere; a
// random direction in n dimensions scores about sqrt(2 / (pi n)) at every
// rank. A zero perturbation has no direction and scores 0 everywhere.
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "../kernel/attacks.hpp"
#include "jacobian.hpp"
#include "spectrum.hpp"
#include "statistics.hpp"

namespace opnorm::analysis {

/// alignment_r(delta) for every rank r of the spectrum (index r - 1).
inline std::vector<double> alignment_by_rank(const column_vector<double>& delta, const svd_spectrum& s) {
  const matrix<double>& v = s.right_singular_vectors;
  if (delta.size() != v.rows())
    throw std::invalid_argument("opnorm::analysis::alignment_by_rank: a perturbation with " +
                                std::to_string(delta.size()) + " entries for singular vectors with " +
                                std::to_string(v.rows()));
  std::vector<double> out(static_cast<std::size_t>(v.cols()), 0.0);
  const double length = delta.norm();
  if (length == 0) return out;
  for (Eigen::Index r = 0; r < v.cols(); ++r) out[static_cast<std::size_t>(r)] = std::abs(v.col(r).dot(delta)) / length;
  return out;
}

/// alignment_1(delta): the cosine with the dominant right singular vector.
inline double alignment_with_top(const column_vector<double>& delta, const svd_spectrum& s) {
  const std::vector<double> all = alignment_by_rank(delta, s);
  if (all.empty()) throw std::invalid_argument("opnorm::analysis::alignment_with_top: the spectrum is empty");
  return all.front();
}

/// alignment_1(delta) for J given as a matrix (its SVD is computed here).
template <class T>
double alignment_with_top(const column_vector<double>& delta, const matrix<T>& jacobian) {
  return alignment_with_top(delta, spectrum(jacobian));
}

/// Row i of a (n, ...) tensor as a double column vector.
template <class T, class B>
column_vector<double> example_vector(const tensor<T, B>& x, index_t i) {
  const std::vector<T> row = slice_rows(x, i, i + 1).to_vector();
  column_vector<double> out(static_cast<Eigen::Index>(row.size()));
  for (std::size_t k = 0; k < row.size(); ++k) out(static_cast<Eigen::Index>(k)) = static_cast<double>(row[k]);
  return out;
}

/// Alignment by rank of every perturbation of a batch (row i of deltas)
/// with the spectrum of its own example: out[r][i], ready for summarize.
template <class T, class B>
curve_samples alignment_by_rank(const tensor<T, B>& deltas, const std::vector<svd_spectrum>& spectra) {
  if (static_cast<std::size_t>(deltas.dim(0)) != spectra.size())
    throw std::invalid_argument("opnorm::analysis::alignment_by_rank: " + std::to_string(deltas.dim(0)) +
                                " perturbations for " + std::to_string(spectra.size()) + " spectra");
  curve_samples per_example;
  per_example.reserve(spectra.size());
  for (index_t i = 0; i < deltas.dim(0); ++i)
    per_example.push_back(alignment_by_rank(example_vector(deltas, i), spectra[static_cast<std::size_t>(i)]));
  return transpose(per_example);
}

/// Figure 1 (right): attacks x with PGA in Norm, extracts J_f(x) at the clean
/// points (one VJP per logit) and returns the alignment of delta = x* - x
/// with every right singular vector: out[r][i].
template <class Norm = l2, class Model>
curve_samples adversarial_alignment_by_rank(Model& model, const typename Model::tensor_type& x,
                                            const label_tensor<typename Model::backend_type>& labels,
                                            const attack_options<typename Model::scalar>& attack) {
  auto result = make_pga<Norm>(model, attack)(x, labels);
  typename Model::tensor_type delta;
  subtract(result.adversarial, x, delta);
  return alignment_by_rank(delta, spectra(jacobian_by_vjp(model, x)));
}

/// The random baseline of Figures 1 and 3 (right): the alignment of one
/// random direction per example (Norm::random_direction: Gaussian for l2,
/// random signs for linf) with the singular vectors of J_f(x): out[r][i].
/// A direction's alignment does not depend on its length, so row 0 is also
/// the random curve of Figure 3 (right) at every eps.
template <class Norm = l2, class Model>
curve_samples random_alignment_by_rank(Model& model, const typename Model::tensor_type& x, std::uint64_t seed = 0) {
  typename Model::tensor_type direction;
  Norm::random_direction(x, seed, direction);
  return alignment_by_rank(direction, spectra(jacobian_by_vjp(model, x)));
}

/// Figure 3 (right): for every eps of eps_list, the alignment of the PGA
/// perturbation of strength eps with the dominant right singular vector of
/// J_f(x) at the clean point: out[e][i]. attack.eps is replaced by each eps.
template <class Norm = l2, class Model>
curve_samples adversarial_alignment_with_top(Model& model, const typename Model::tensor_type& x,
                                             const label_tensor<typename Model::backend_type>& labels,
                                             attack_options<typename Model::scalar> attack,
                                             const std::vector<typename Model::scalar>& eps_list) {
  const std::vector<svd_spectrum> clean = spectra(jacobian_by_vjp(model, x));
  curve_samples out;
  out.reserve(eps_list.size());
  typename Model::tensor_type delta;
  for (const auto eps : eps_list) {
    attack.eps = eps;
    auto result = make_pga<Norm>(model, attack)(x, labels);
    subtract(result.adversarial, x, delta);
    std::vector<double> row(clean.size());
    for (index_t i = 0; i < x.dim(0); ++i)
      row[static_cast<std::size_t>(i)] = alignment_with_top(example_vector(delta, i), clean[static_cast<std::size_t>(i)]);
    out.push_back(std::move(row));
  }
  return out;
}

}  // namespace opnorm::analysis
