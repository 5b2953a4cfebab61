#pragma once
// Helpers shared by the analysis tests.
#include "gradient_check.hpp"

#include <algorithm>

#include <opnorm/analysis/jacobian.hpp>

namespace opnorm::testing {

/// ||a - b|| / max(||a||, ||b||) for matrices.
inline double relative_difference(const analysis::matrix<double>& a, const analysis::matrix<double>& b) {
  return (a - b).norm() / std::max(a.norm(), b.norm());
}

/// How many examples of `activation` have a sign pattern (a > 0) other than
/// that of example `example` of `reference`.
inline index_t pattern_changes(const tensor_d& reference, index_t example, const tensor_d& activation) {
  const index_t d = activation.example_size();
  index_t changed = 0;
  for (index_t j = 0; j < activation.dim(0); ++j) {
    bool same = true;
    for (index_t k = 0; k < d && same; ++k) same = (activation[j * d + k] > 0) == (reference[example * d + k] > 0);
    changed += same ? 0 : 1;
  }
  return changed;
}

}  // namespace opnorm::testing
