#pragma once
// backend::cpu_blas: the cpu backend with its GEMMs through a BLAS.
//
// Everything else (storage, OpenMP tasks, thresholds) is the cpu backend's,
// so results agree with backend::cpu to rounding (tests/test_backend_agreement.cpp
// checks every layer, the kernel, the attacks and the methods in double).
// On the CPU the project is measured on, OpenBLAS's kernels ran the
// Winograd GEMMs of fmnist_cnn 25-38% faster than Eigen's (docs/performance.md),
// which is why this policy exists; Eigen stays the default because it needs
// nothing to be linked.
//
// Using it needs <cblas.h> and a CBLAS to link. With CMake, configure with
// -DOPNORM_BLAS=ON and link opnorm::cpu_blas, which finds the OpenMP build of
// OpenBLAS (Debian: libopenblas-openmp-dev). The BLAS must not start threads
// of its own inside opnorm's OpenMP regions: an OpenMP build runs
// single-threaded there (and threads the large GEMMs called outside them, as
// Eigen does); a pthreads build would oversubscribe the cores.
#include <cblas.h>

#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu.hpp"

namespace opnorm {

namespace backend {
struct cpu_blas {
  static constexpr const char* name = "cpu_blas";
};

namespace cblas {

/// One row-major GEMM through cblas_sgemm or cblas_dgemm.
///
/// Threads: inside opnorm's OpenMP regions an OpenMP BLAS runs on the calling
/// thread. Outside them it would wake its threads for every call, however
/// small. A GEMM below eigen::worth_threads's size, or shaped like a
/// matrix-vector product (fewer than 4 rows or columns: the batch-1 passes
/// of a Jacobian), runs on the calling thread instead, as Eigen's do; with
/// the BLAS's threads, jac_svd took twice as long. Larger ones use the
/// BLAS's threads.
struct gemm_kernel {
  static void gemm(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, float alpha, const float* a,
                   index_t lda, const float* b, index_t ldb, float beta, float* c, index_t ldc) {
    const calling_thread_only scope(!worth_threads(m, n, k));
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, blas_int(m),
                blas_int(n), blas_int(k), alpha, a, blas_int(lda), b, blas_int(ldb), beta, c, blas_int(ldc));
  }
  static void gemm(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, double alpha, const double* a,
                   index_t lda, const double* b, index_t ldb, double beta, double* c, index_t ldc) {
    const calling_thread_only scope(!worth_threads(m, n, k));
    cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, blas_int(m),
                blas_int(n), blas_int(k), alpha, a, blas_int(lda), b, blas_int(ldb), beta, c, blas_int(ldc));
  }

 private:
  static bool worth_threads(index_t m, index_t n, index_t k) {
    return m >= 4 && n >= 4 && eigen::worth_threads(m * n * k);
  }
  // While it lives, parallel regions opened by this thread (the BLAS's
  // included) get one thread, when `active`; the thread count is restored after.
  struct calling_thread_only {
#ifdef _OPENMP
    int saved = 0;
    explicit calling_thread_only(bool active) {
      if (active && !omp_in_parallel() && omp_get_max_threads() > 1) {
        saved = omp_get_max_threads();
        omp_set_num_threads(1);
      }
    }
    ~calling_thread_only() {
      if (saved > 0) omp_set_num_threads(saved);
    }
#else
    explicit calling_thread_only(bool) {}
#endif
    calling_thread_only(const calling_thread_only&) = delete;
    calling_thread_only& operator=(const calling_thread_only&) = delete;
  };

  // CBLAS takes (32-bit, in the usual LP64 builds) ints; no dimension of a
  // model's GEMMs comes near 2^31, but a silent wrap would be a wrong result.
  static int blas_int(index_t v) {
    if (v > index_t{2147483647}) throw std::length_error("opnorm::cpu_blas: a GEMM dimension exceeds the BLAS's int");
    return static_cast<int>(v);
  }
};

}  // namespace cblas
}  // namespace backend

template <>
struct backend_ops<backend::cpu_blas> : backend::detail::host_ops<backend::cblas::gemm_kernel> {};

}  // namespace opnorm
