#pragma once
// Row-major GEMMs on host memory, shared by every backend whose memory the
// host can read (cpu, cpu_blas, thrust<omp>, thrust<cpp>). `threaded` says
// whether batches may be spread over OpenMP threads.
//
// One GEMM is a kernel policy's job: a type with a static
// gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) for
// float and double, row-major. eigen::gemm_kernel (below) is the default;
// cblas::gemm_kernel (backend/cpu_blas.hpp) calls a BLAS. The batched forms
// and their threading are written once, for any kernel.
#include <algorithm>
#include <cstring>
#include <vector>

#include <Eigen/Core>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../detail/config.hpp"

namespace opnorm::backend::eigen {

template <class T>
using row_major = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using cmap = Eigen::Map<const row_major<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using mmap = Eigen::Map<row_major<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

/// The OpenMP threads a parallel region opened here would get: 1 inside a
/// region already, or when threading is not wanted.
inline int available_threads(bool threaded) {
#ifdef _OPENMP
  if (threaded && !omp_in_parallel()) return omp_get_max_threads();
#endif
  (void)threaded;
  return 1;
}

/// Runs f(i) for i in [0, n) on `threads` OpenMP threads (static schedule).
template <class F>
inline void run_tasks(int threads, index_t n, F&& f) {
#ifdef _OPENMP
  if (threads > 1 && n > 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (index_t i = 0; i < n; ++i) f(i);
    return;
  }
#endif
  (void)threads;
  for (index_t i = 0; i < n; ++i) f(i);
}

// Whether a batch of GEMMs with this many multiply-adds pays for waking
// threads. Below it the fork/join costs more than it saves, and on a
// loaded machine spinning OpenMP workers make it much worse (the
// finite-difference tests, thousands of tiny GEMMs, ran 100x slower).
// 2^22 multiply-adds take about 80 us at one core's GEMM peak. A batch-1
// pass of fmnist_cnn stays below it (its 16 Winograd GEMMs per layer come
// to at most 3.2M; cpu_blas applies the same test to single GEMMs): threading those made a 10 x 784 Jacobian 1.5x slower
// when this VM's two vCPUs behave as one shared core (the spinning worker
// takes half of it), and saved under 10% when they do not
// (docs/performance.md, change 16).
inline bool worth_threads(index_t multiply_adds) { return multiply_adds >= (index_t{1} << 22); }

/// C = alpha * op(A) op(B) + beta * C, row-major, one call into Eigen.
template <class T>
inline void gemm(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda,
                 const T* b, index_t ldb, T beta, T* c, index_t ldc) {
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

/// The default kernel policy: one call into Eigen.
struct gemm_kernel {
  template <class T>
  static void gemm(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda,
                   const T* b, index_t ldb, T beta, T* c, index_t ldc) {
    eigen::gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
};

/// count independent GEMMs C_i = alpha op(A_i) op(B_i) + beta C_i, with
/// A_i = a + i*stride_a and so on. A stride of 0 shares one operand.
template <class Kernel, class T>
inline void gemm_batched(bool threaded, bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha,
                         const T* a, index_t lda, index_t stride_a, const T* b, index_t ldb, index_t stride_b,
                         T beta, T* c, index_t ldc, index_t stride_c, index_t count) {
  const int threads = worth_threads(m * n * k * count) ? available_threads(threaded) : 1;
  run_tasks(threads, count, [&](index_t i) {
    Kernel::gemm(trans_a, trans_b, m, n, k, alpha, a + i * stride_a, lda, b + i * stride_b, ldb, beta,
                 c + i * stride_c, ldc);
  });
}

/// C = alpha * sum_i op(A_i) op(B_i) + beta * C. The sum is split into a
/// fixed number of contiguous chunks (one per thread) and the chunks are
/// added in order, so the result is bit-reproducible for a given thread count.
template <class Kernel, class T>
inline void gemm_batched_sum(bool threaded, bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha,
                             const T* a, index_t lda, index_t stride_a, const T* b, index_t ldb, index_t stride_b,
                             T beta, T* c, index_t ldc, index_t count) {
  const int threads = worth_threads(m * n * k * count) ? available_threads(threaded) : 1;
  const index_t chunks = std::max<index_t>(1, std::min<index_t>(threads, count));
  std::vector<row_major<T>> partial(static_cast<std::size_t>(chunks));
  run_tasks(threads, chunks, [&](index_t t) {
    auto& p = partial[static_cast<std::size_t>(t)];
    p.setZero(m, n);
    const index_t begin = count * t / chunks, end = count * (t + 1) / chunks;
    for (index_t i = begin; i < end; ++i)
      Kernel::gemm(trans_a, trans_b, m, n, k, T(1), a + i * stride_a, lda, b + i * stride_b, ldb, T(1), p.data(), n);
  });
  mmap<T> C(c, m, n, Eigen::OuterStride<>(ldc));
  if (beta == T(0))
    C.setZero();
  else if (beta != T(1))
    C *= beta;
  for (auto& p : partial) C += alpha * p;
}

/// The part of backend_ops that every backend on host memory shares: plain
/// copies (host memory is the host's), host-side tasks on OpenMP threads and
/// the three GEMMs through the kernel policy (Eigen by default).
/// `threaded` says whether batched GEMMs may use OpenMP threads.
template <bool threaded, class Kernel = gemm_kernel>
struct host_memory_ops {
  template <class T>
  static void copy(const T* src, index_t n, T* dst) {
    if (n > 0 && src != dst) std::memcpy(dst, src, sizeof(T) * static_cast<std::size_t>(n));
  }
  template <class T>
  static void copy_to_host(const T* src, index_t n, T* host_dst) {
    copy(src, n, host_dst);
  }
  template <class T>
  static void copy_from_host(const T* host_src, index_t n, T* dst) {
    copy(host_src, n, dst);
  }

  /// Tasks run on OpenMP threads (when threaded and not inside a region
  /// already), one region for all of them: a layer that cuts its batch into
  /// chunks opens one region per pass instead of several per chunk, and
  /// each chunk's transforms and GEMMs stay in its thread's caches.
  static int task_workers() { return available_threads(threaded); }
  template <class F>
  static void for_each_task(index_t n, F&& f) {
    const int workers = static_cast<int>(std::min<index_t>(task_workers(), n));
#ifdef _OPENMP
    if (workers > 1) {
#pragma omp parallel for schedule(static) num_threads(workers)
      for (index_t i = 0; i < n; ++i) f(i, omp_get_thread_num());
      return;
    }
#endif
    (void)workers;
    for (index_t i = 0; i < n; ++i) f(i, 0);
  }

  template <class T>
  static void gemm(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda,
                   const T* b, index_t ldb, T beta, T* c, index_t ldc) {
    Kernel::gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  template <class T>
  static void gemm_batched(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha, const T* a,
                           index_t lda, index_t stride_a, const T* b, index_t ldb, index_t stride_b, T beta, T* c,
                           index_t ldc, index_t stride_c, index_t count) {
    eigen::gemm_batched<Kernel>(threaded, trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta,
                                c, ldc, stride_c, count);
  }
  template <class T>
  static void gemm_batched_sum(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha, const T* a,
                               index_t lda, index_t stride_a, const T* b, index_t ldb, index_t stride_b, T beta, T* c,
                               index_t ldc, index_t count) {
    eigen::gemm_batched_sum<Kernel>(threaded, trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b,
                                    beta, c, ldc, count);
  }
};

}  // namespace opnorm::backend::eigen
