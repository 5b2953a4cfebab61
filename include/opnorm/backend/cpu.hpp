#pragma once
// The CPU backend: xtensor storage, Eigen GEMM, OpenMP across the batch.
//
// A backend is an empty tag type. Layers never touch memory directly; they
// call the small kernel vocabulary below (for_each_index, gemm,
// gemm_batched, gemm_batched_sum, copy, fill), found by argument-dependent
// lookup on the tag. A second backend provides the same overloads for its own
// tag and every layer runs on it unchanged.
#include <algorithm>
#include <cstring>
#include <vector>

#include <Eigen/Core>
#include <xtensor/xtensor.hpp>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../detail/config.hpp"

namespace opnorm::backend {

struct cpu {
  static constexpr const char* name = "cpu";
  // Where the memory of a tensor on this backend lives; CPU tensors are
  // flat xtensor containers (aligned, SIMD-friendly).
  template <class T>
  using storage = xt::xtensor<T, 1>;
  static constexpr bool host_accessible = true;
};

template <class B>
struct is_backend : std::false_type {};
template <>
struct is_backend<cpu> : std::true_type {};

// ---------------------------------------------------------------------------
// Kernel vocabulary for the cpu tag.

/// Runs f(i) for i in [0, n). Iterations must be independent; they run on
/// OpenMP threads when n is large enough to amortize the fork.
template <class F>
inline void for_each_index(cpu, index_t n, F f) {
#ifdef _OPENMP
  if (n >= 4096 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (index_t i = 0; i < n; ++i) f(i);
    return;
  }
#endif
  for (index_t i = 0; i < n; ++i) f(i);
}

/// Like for_each_index, but each i is a coarse, expensive task (one example,
/// one channel): always threaded when there is more than one task.
template <class F>
inline void for_each_task(cpu, index_t n, F f) {
#ifdef _OPENMP
  if (n > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (index_t i = 0; i < n; ++i) f(i);
    return;
  }
#endif
  for (index_t i = 0; i < n; ++i) f(i);
}

template <class T>
inline void fill(cpu, T* x, index_t n, T value) {
  std::fill(x, x + n, value);
}

template <class T>
inline void copy(cpu, const T* src, index_t n, T* dst) {
  if (n > 0 && src != dst) std::memcpy(dst, src, sizeof(T) * static_cast<std::size_t>(n));
}

/// Moves n elements between this backend's memory and plain host memory.
template <class T>
inline void copy_to_host(cpu, const T* src, index_t n, T* host_dst) {
  copy(cpu{}, src, n, host_dst);
}
template <class T>
inline void copy_from_host(cpu, const T* host_src, index_t n, T* dst) {
  copy(cpu{}, host_src, n, dst);
}

namespace detail {
template <class T>
using row_major = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using cmap = Eigen::Map<const row_major<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using mmap = Eigen::Map<row_major<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

// Whether a batch of GEMMs with this many multiply-adds pays for waking
// threads. Below it the fork/join costs more than it saves, and on a
// loaded machine spinning OpenMP workers make it much worse (the
// finite-difference tests, thousands of tiny GEMMs, ran 100x slower).
inline bool worth_threads(index_t multiply_adds) { return multiply_adds >= (index_t{1} << 18); }

// C = alpha * op(A) op(B) + beta * C, row-major, single call into Eigen.
template <class T>
inline void gemm_one(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha,
                     const T* a, index_t lda, const T* b, index_t ldb, T beta, T* c, index_t ldc) {
  cmap<T> A(a, trans_a ? k : m, trans_a ? m : k, Eigen::OuterStride<>(lda));
  cmap<T> B(b, trans_b ? n : k, trans_b ? k : n, Eigen::OuterStride<>(ldb));
  mmap<T> C(c, m, n, Eigen::OuterStride<>(ldc));
  if (beta == T(0))
    C.setZero();
  else if (beta != T(1))
    C *= beta;
  if (!trans_a && !trans_b)
    C.noalias() += alpha * A * B;
  else if (trans_a && !trans_b)
    C.noalias() += alpha * A.transpose() * B;
  else if (!trans_a && trans_b)
    C.noalias() += alpha * A * B.transpose();
  else
    C.noalias() += alpha * A.transpose() * B.transpose();
}
}  // namespace detail

/// Row-major GEMM: C (m x n) = alpha * op(A) op(B) + beta * C.
template <class T>
inline void gemm(cpu, bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha,
                 const T* a, index_t lda, const T* b, index_t ldb, T beta, T* c, index_t ldc) {
  detail::gemm_one(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/// count independent GEMMs C_i = alpha op(A_i) op(B_i) + beta C_i, with
/// A_i = a + i*stride_a and so on. A stride of 0 shares one operand.
template <class T>
inline void gemm_batched(cpu, bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha,
                         const T* a, index_t lda, index_t stride_a, const T* b, index_t ldb,
                         index_t stride_b, T beta, T* c, index_t ldc, index_t stride_c,
                         index_t count) {
  auto one = [&](index_t i) {
    detail::gemm_one(trans_a, trans_b, m, n, k, alpha, a + i * stride_a, lda, b + i * stride_b,
                     ldb, beta, c + i * stride_c, ldc);
  };
  if (detail::worth_threads(m * n * k * count))
    for_each_task(cpu{}, count, one);
  else
    for (index_t i = 0; i < count; ++i) one(i);
}

/// C = alpha * sum_i op(A_i) op(B_i) + beta * C. Used for parameter
/// gradients summed over a batch. The sum is split into a fixed number of
/// contiguous chunks (one per thread) and the chunks are added in order, so
/// the result is bit-reproducible for a given thread count.
template <class T>
inline void gemm_batched_sum(cpu, bool trans_a, bool trans_b, index_t m, index_t n, index_t k,
                             T alpha, const T* a, index_t lda, index_t stride_a, const T* b,
                             index_t ldb, index_t stride_b, T beta, T* c, index_t ldc,
                             index_t count) {
  int threads = 1;
#ifdef _OPENMP
  if (!omp_in_parallel()) threads = omp_get_max_threads();
#endif
  if (!detail::worth_threads(m * n * k * count)) threads = 1;
  const index_t chunks = std::max<index_t>(1, std::min<index_t>(threads, count));
  std::vector<detail::row_major<T>> partial(static_cast<std::size_t>(chunks));
  for_each_task(cpu{}, chunks, [&](index_t t) {
    auto& p = partial[static_cast<std::size_t>(t)];
    p.setZero(m, n);
    const index_t begin = count * t / chunks, end = count * (t + 1) / chunks;
    for (index_t i = begin; i < end; ++i)
      detail::gemm_one(trans_a, trans_b, m, n, k, T(1), a + i * stride_a, lda, b + i * stride_b,
                       ldb, T(1), p.data(), n);
  });
  detail::mmap<T> C(c, m, n, Eigen::OuterStride<>(ldc));
  if (beta == T(0))
    C.setZero();
  else if (beta != T(1))
    C *= beta;
  for (auto& p : partial) C += alpha * p;
}

}  // namespace opnorm::backend
