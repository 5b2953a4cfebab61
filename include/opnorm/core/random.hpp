#pragma once
// Counter-based random numbers: the value drawn for (seed, stream, index) is
// a pure function of those three integers. Every backend therefore draws the
// same numbers for the same seed, whatever its thread count, and an example's
// random start can be keyed by the example itself rather than by its place
// in a batch.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../detail/config.hpp"

namespace opnorm::random {

/// SplitMix64 finalizer: a bijective avalanche mix of 64 bits.
OPNORM_HD inline std::uint64_t mix(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

OPNORM_HD inline std::uint64_t hash(std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
  return mix(mix(mix(seed) ^ stream) ^ index);
}

/// Uniform in (0, 1), never exactly 0 or 1 (safe for log and Box-Muller).
OPNORM_HD inline double uniform(std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
  return (static_cast<double>(hash(seed, stream, index) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/// Standard normal by Box-Muller on two independent uniforms.
OPNORM_HD inline double normal(std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
  const double u1 = uniform(seed, stream, 2 * index);
  const double u2 = uniform(seed, stream, 2 * index + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
}

/// A 64-bit fingerprint of n values (FNV-1a over their bit patterns), used to
/// key an example's random stream by its content.
template <class T>
OPNORM_HD inline std::uint64_t fingerprint(const T* values, index_t n) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (index_t i = 0; i < n; ++i) {
    std::uint64_t bits = 0;
    std::memcpy(&bits, values + i, sizeof(T));
    h = (h ^ bits) * 0x100000001b3ULL;
  }
  return mix(h);
}

}  // namespace opnorm::random
