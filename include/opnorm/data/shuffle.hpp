#pragma once
// Portable seeded shuffling.
//
// std::mt19937_64 produces the same numbers everywhere (the standard fixes
// its algorithm), but std::shuffle and std::uniform_int_distribution do not:
// libstdc++, libc++ and MSVC turn the same engine output into different
// orders. The data order of a seeded run must not depend on the standard
// library, so the two steps on top of the engine are written out here.
#include <cstdint>
#include <limits>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#include "../detail/config.hpp"

namespace opnorm {

/// A uniformly distributed integer in [0, bound), bound >= 1, without modulo
/// bias: draws below 2^64 mod bound are rejected, so the accepted range is a
/// whole number of copies of [0, bound). Expected draws < 2 for any bound.
template <class Engine>
std::uint64_t uniform_below(Engine& rng, std::uint64_t bound) {
  static_assert(Engine::min() == 0 && Engine::max() == std::numeric_limits<std::uint64_t>::max(),
                "uniform_below needs an engine with 64 random bits per draw, such as std::mt19937_64");
  const std::uint64_t rejected_below = (0 - bound) % bound;  // 2^64 mod bound, in 64-bit arithmetic
  for (;;) {
    const std::uint64_t r = rng();
    if (r >= rejected_below) return r % bound;
  }
}

/// Fisher-Yates: every permutation of `values` equally likely.
template <class T, class Engine>
void fisher_yates_shuffle(std::vector<T>& values, Engine& rng) {
  for (std::size_t i = values.size(); i > 1; --i) {
    const std::size_t j = static_cast<std::size_t>(uniform_below(rng, i));
    using std::swap;
    swap(values[i - 1], values[j]);
  }
}

/// The engine for one epoch of a seeded run: a function of (seed, epoch)
/// only, so a run resumed at epoch e sees the same orders as an unbroken one.
/// std::seed_seq's mixing is fixed by the standard, hence portable too.
inline std::mt19937_64 epoch_engine(std::uint64_t seed, std::uint64_t epoch) {
  std::seed_seq words{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32),
                      static_cast<std::uint32_t>(epoch), static_cast<std::uint32_t>(epoch >> 32)};
  return std::mt19937_64(words);
}

}  // namespace opnorm
