#pragma once
// The full singular value decomposition of extracted Jacobians (paper §5.2):
// the power method only gives the dominant pair, the figures need all of
// them. J (outputs x inputs) = U diag(sigma) V^T with k = min(outputs,
// inputs) singular values, sorted descending.
//
// The decomposition always runs in double, whatever the model's scalar type:
// the spectrum of a float Jacobian is then exact for that Jacobian, and the
// cost (a 10 x 784 matrix for Fashion-MNIST logits) is negligible next to
// extracting it. Eigen's JacobiSVD is used (after a column-pivoting QR that
// reduces a wide or tall matrix to its small square side): it is the most
// accurate of Eigen's SVDs, fast for the logit Jacobians the figures need
// (k = 10), and it compiles in a third of the time of the divide-and-conquer
// BDCSVD, whose speed only pays off for k in the hundreds.
#include <vector>

#include <Eigen/SVD>

#include "jacobian.hpp"
#include "statistics.hpp"

namespace opnorm::analysis {

struct svd_spectrum {
  std::vector<double> singular_values;    // sigma_1 >= sigma_2 >= ... >= sigma_k >= 0
  matrix<double> right_singular_vectors;  // inputs x k: column r is v_{r+1} (unit norm)
  matrix<double> left_singular_vectors;   // outputs x k: column r is u_{r+1}
};

/// The singular values of J, descending.
template <class T>
std::vector<double> singular_values(const matrix<T>& jacobian) {
  const Eigen::JacobiSVD<matrix<double>> svd(jacobian.template cast<double>());
  const auto& s = svd.singularValues();
  return std::vector<double>(s.data(), s.data() + s.size());
}

/// The thin SVD of J: k singular values with their left and right vectors.
/// Singular vectors are defined up to sign (and within repeated singular
/// values up to rotation); alignment.hpp only uses |<delta, v_r>|.
template <class T>
svd_spectrum spectrum(const matrix<T>& jacobian) {
  const Eigen::JacobiSVD<matrix<double>> svd(jacobian.template cast<double>(), Eigen::ComputeThinU | Eigen::ComputeThinV);
  svd_spectrum out;
  const auto& s = svd.singularValues();
  out.singular_values.assign(s.data(), s.data() + s.size());
  out.right_singular_vectors = svd.matrixV();
  out.left_singular_vectors = svd.matrixU();
  return out;
}

/// Singular values of every Jacobian of a batch, as curve samples:
/// out[r][i] = sigma_{r+1} of example i (Figure 1 left, ready for
/// summarize). All Jacobians must have the same shape.
template <class T>
curve_samples singular_values(const std::vector<matrix<T>>& jacobians) {
  curve_samples per_example;
  per_example.reserve(jacobians.size());
  for (const auto& j : jacobians) per_example.push_back(singular_values(j));
  return transpose(per_example);
}

/// The thin SVD of every Jacobian of a batch.
template <class T>
std::vector<svd_spectrum> spectra(const std::vector<matrix<T>>& jacobians) {
  std::vector<svd_spectrum> out;
  out.reserve(jacobians.size());
  for (const auto& j : jacobians) out.push_back(spectrum(j));
  return out;
}

}  // namespace opnorm::analysis
