#pragma once
// simd: a pack of 32 bytes of T (8 floats or 4 doubles) and the few
// operations the Winograd tile transforms (nn/layers/winograd.hpp) and max
// pooling (nn/layers/max_pool2d.hpp) need: loads and stores at any address,
// + and -, scaling by a number, splitting a run of values into its even and odd entries and
// interleaving them back, shifting lanes, zeroing the lanes past a count,
// and a lane-wise maximum that keeps where it came from.
//
// Why explicit packs. A transform's loops run over the tiles of a row, and
// the small images of this field have short rows (fmnist_cnn's have 14 and
// 7 tiles). Left to the auto-vectorizer, loops that short stayed scalar, and
// the stride-2 accesses of the transforms became 16-byte shuffles. Written
// in packs, a block of tiles is a handful of vector instructions.
//
// Where it is a vector. In host code compiled by GCC or Clang for a target
// with AVX, a pack is a 32-byte vector type (vector_size), and the
// operations below become AVX instructions. Everywhere else (nvcc's host and
// device passes, whose front end does not take vector types, and targets
// without AVX, where 32-byte vectors would change the calling convention)
// it is a plain array, with loops over its lanes: the same results, one
// lane at a time. The two definitions live in different inline namespaces,
// so programs mixing translation units of both kinds see two different
// functions rather than one function defined twice.
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "config.hpp"

#if !defined(__CUDACC__) && defined(__AVX__) && (defined(__GNUC__) || defined(__clang__))
#define OPNORM_SIMD_VECTOR 1
#else
#define OPNORM_SIMD_VECTOR 0
#endif

namespace opnorm::detail::simd {

/// Lanes in a pack of T.
template <class T>
constexpr index_t lanes = static_cast<index_t>(32 / sizeof(T));

#if OPNORM_SIMD_VECTOR
inline namespace vector_packs {

template <class T>
struct native;
template <>
struct native<float> {
  typedef float type __attribute__((vector_size(32)));
  typedef std::int32_t mask __attribute__((vector_size(32)));
};
template <>
struct native<double> {
  typedef double type __attribute__((vector_size(32)));
  typedef std::int64_t mask __attribute__((vector_size(32)));
};

template <class T>
using pack = typename native<T>::type;

template <class T>
inline pack<T> load(const T* p) {
  pack<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <class T>
inline void store(T* p, pack<T> v) {
  std::memcpy(p, &v, sizeof(v));
}
template <class T>
inline pack<T> zero() {
  return pack<T>{};
}

/// (a0, a2, ..., b0, b2, ...): the even entries of the run a, b.
template <class T>
inline pack<T> evens(pack<T> a, pack<T> b) {
  if constexpr (lanes<T> == 8)
    return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
  else
    return __builtin_shufflevector(a, b, 0, 2, 4, 6);
}
/// (a1, a3, ..., b1, b3, ...): the odd entries of the run a, b.
template <class T>
inline pack<T> odds(pack<T> a, pack<T> b) {
  if constexpr (lanes<T> == 8)
    return __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
  else
    return __builtin_shufflevector(a, b, 1, 3, 5, 7);
}
/// The first half of the run (e0, o0, e1, o1, ...).
template <class T>
inline pack<T> interleave_low(pack<T> e, pack<T> o) {
  if constexpr (lanes<T> == 8)
    return __builtin_shufflevector(e, o, 0, 8, 1, 9, 2, 10, 3, 11);
  else
    return __builtin_shufflevector(e, o, 0, 4, 1, 5);
}
/// The second half of the run (e0, o0, e1, o1, ...).
template <class T>
inline pack<T> interleave_high(pack<T> e, pack<T> o) {
  if constexpr (lanes<T> == 8)
    return __builtin_shufflevector(e, o, 4, 12, 5, 13, 6, 14, 7, 15);
  else
    return __builtin_shufflevector(e, o, 2, 6, 3, 7);
}
/// (first, p0, p1, ..., p_{L-2}): p moved up one lane.
template <class T>
inline pack<T> shift_in(pack<T> p, T first) {
  const pack<T> f = pack<T>{} + first;
  if constexpr (lanes<T> == 8)
    return __builtin_shufflevector(f, p, 0, 8, 9, 10, 11, 12, 13, 14);
  else
    return __builtin_shufflevector(f, p, 0, 4, 5, 6);
}
/// The last lane.
template <class T>
inline T last(pack<T> p) {
  return p[lanes<T> - 1];
}
/// p with the lanes from n on set to zero (NaN and infinity included).
template <class T>
inline pack<T> keep_first(pack<T> p, index_t n) {
  using mask = typename native<T>::mask;
  using integer = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;
  mask index;
  for (index_t i = 0; i < lanes<T>; ++i) index[i] = static_cast<integer>(i);
  const mask kept = index < (mask{} + static_cast<integer>(n));
  return (pack<T>)((mask)p & kept);
}
/// (value, value, ...).
template <class T>
inline pack<T> broadcast(T value) {
  pack<T> r;
  for (index_t i = 0; i < lanes<T>; ++i) r[i] = value;
  return r;
}
/// (start, start + step, start + 2 step, ...).
template <class T>
inline pack<T> ramp(T start, T step) {
  pack<T> r;
  for (index_t i = 0; i < lanes<T>; ++i) r[i] = start + static_cast<T>(i) * step;
  return r;
}
/// Lane by lane, where candidate > best or candidate is NaN: best =
/// candidate and best_at = candidate_at. Fed a window's entries in order,
/// the first of equal maxima stays and the last NaN wins.
template <class T>
inline void keep_maximum(pack<T>& best, pack<T>& best_at, pack<T> candidate, pack<T> candidate_at) {
  using mask = typename native<T>::mask;
  const mask take = (candidate > best) | (candidate != candidate);
  best = (pack<T>)(((mask)candidate & take) | ((mask)best & ~take));
  best_at = (pack<T>)(((mask)candidate_at & take) | ((mask)best_at & ~take));
}

}  // namespace vector_packs
#else
inline namespace array_packs {

template <class T>
struct pack {
  T v[lanes<T>];
};

#define OPNORM_SIMD_LANEWISE(result, expression) \
  pack<T> result;                                \
  for (index_t i = 0; i < lanes<T>; ++i) result.v[i] = (expression)

template <class T>
OPNORM_HD inline pack<T> operator+(pack<T> a, pack<T> b) {
  OPNORM_SIMD_LANEWISE(r, a.v[i] + b.v[i]);
  return r;
}
template <class T>
OPNORM_HD inline pack<T> operator-(pack<T> a, pack<T> b) {
  OPNORM_SIMD_LANEWISE(r, a.v[i] - b.v[i]);
  return r;
}
template <class T>
OPNORM_HD inline pack<T> operator-(pack<T> a) {
  OPNORM_SIMD_LANEWISE(r, -a.v[i]);
  return r;
}
template <class T>
OPNORM_HD inline pack<T> operator*(T s, pack<T> a) {
  OPNORM_SIMD_LANEWISE(r, s * a.v[i]);
  return r;
}
template <class T>
OPNORM_HD inline pack<T> load(const T* p) {
  OPNORM_SIMD_LANEWISE(r, p[i]);
  return r;
}
template <class T>
OPNORM_HD inline void store(T* p, pack<T> a) {
  for (index_t i = 0; i < lanes<T>; ++i) p[i] = a.v[i];
}
template <class T>
OPNORM_HD inline pack<T> zero() {
  OPNORM_SIMD_LANEWISE(r, T(0));
  return r;
}
template <class T>
OPNORM_HD inline pack<T> evens(pack<T> a, pack<T> b) {
  constexpr index_t L = lanes<T>;
  OPNORM_SIMD_LANEWISE(r, 2 * i < L ? a.v[2 * i] : b.v[2 * i - L]);
  return r;
}
template <class T>
OPNORM_HD inline pack<T> odds(pack<T> a, pack<T> b) {
  constexpr index_t L = lanes<T>;
  OPNORM_SIMD_LANEWISE(r, 2 * i + 1 < L ? a.v[2 * i + 1] : b.v[2 * i + 1 - L]);
  return r;
}
template <class T>
OPNORM_HD inline pack<T> interleave_low(pack<T> e, pack<T> o) {
  OPNORM_SIMD_LANEWISE(r, i % 2 == 0 ? e.v[i / 2] : o.v[i / 2]);
  return r;
}
template <class T>
OPNORM_HD inline pack<T> interleave_high(pack<T> e, pack<T> o) {
  constexpr index_t L = lanes<T>;
  OPNORM_SIMD_LANEWISE(r, i % 2 == 0 ? e.v[L / 2 + i / 2] : o.v[L / 2 + i / 2]);
  return r;
}
template <class T>
OPNORM_HD inline pack<T> shift_in(pack<T> p, T first) {
  OPNORM_SIMD_LANEWISE(r, i == 0 ? first : p.v[i - 1]);
  return r;
}
template <class T>
OPNORM_HD inline T last(pack<T> p) {
  return p.v[lanes<T> - 1];
}
template <class T>
OPNORM_HD inline pack<T> keep_first(pack<T> p, index_t n) {
  OPNORM_SIMD_LANEWISE(r, i < n ? p.v[i] : T(0));
  return r;
}
template <class T>
OPNORM_HD inline pack<T> broadcast(T value) {
  OPNORM_SIMD_LANEWISE(r, value);
  return r;
}
template <class T>
OPNORM_HD inline pack<T> ramp(T start, T step) {
  OPNORM_SIMD_LANEWISE(r, start + static_cast<T>(i) * step);
  return r;
}
template <class T>
OPNORM_HD inline void keep_maximum(pack<T>& best, pack<T>& best_at, pack<T> candidate, pack<T> candidate_at) {
  for (index_t i = 0; i < lanes<T>; ++i) {
    const T v = candidate.v[i];
    if (v > best.v[i] || v != v) {
      best.v[i] = v;
      best_at.v[i] = candidate_at.v[i];
    }
  }
}

#undef OPNORM_SIMD_LANEWISE

}  // namespace array_packs
#endif

/// dst[0, n) = src[0, n) for n < 2 packs (the valid lanes of a block, or
/// the valid columns of a block's output row), without a loop. Copy loops
/// this short are recognized as memcpy and become library calls or `rep
/// movsq`, whose start-up cost took a third of the Winograd output
/// adjoint's time (docs/performance.md, change 11).
template <class T>
OPNORM_HD inline void copy_short(T* dst, const T* src, index_t n) {
  constexpr index_t L = lanes<T>;
  index_t s = 0;
  if (s + L <= n) {
    store(dst + s, load(src + s));
    s += L;
  }
  if (L > 4 && s + 4 <= n) {
    std::memcpy(dst + s, src + s, 4 * sizeof(T));
    s += 4;
  }
  if (s + 2 <= n) {
    std::memcpy(dst + s, src + s, 2 * sizeof(T));
    s += 2;
  }
  if (s < n) dst[s] = src[s];
}

}  // namespace opnorm::detail::simd
