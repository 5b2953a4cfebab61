#pragma once
// interleaved_sum: a deterministic sum that is not one serial dependency chain.
//
// Without -ffast-math the compiler may not reorder a floating-point
// reduction, so a plain `s += x[i]` loop runs one addition per FP-add
// latency. Keeping 8 interleaved partial sums puts 8 independent additions
// in flight (and lets the compiler use SIMD) while the order of every
// operation stays fixed: the same inputs give the same bits on every run
// and every thread count.
#include <type_traits>

#include "config.hpp"

namespace opnorm::detail {

/// What the layers accumulate sums of T in: at least double, because one
/// channel of a batch can have 10^5 terms, too many for a float accumulator.
template <class T>
using accumulator_t = std::common_type_t<T, double>;

template <class A>
struct interleaved_sum {
  A lane[8] = {};

  /// Adds f(i) for i in [0, n).
  template <class F>
  OPNORM_HD void add(index_t n, F f) {
    index_t i = 0;
    for (; i + 8 <= n; i += 8)
      for (int j = 0; j < 8; ++j) lane[j] += f(i + j);
    for (int j = 0; i < n; ++i, ++j) lane[j] += f(i);
  }

  OPNORM_HD A total() const {
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  }
};

}  // namespace opnorm::detail
