#pragma once
// The Thrust backends: backend::thrust<System> for System = system::cuda
// (a GPU, through nvcc), system::omp (OpenMP threads) and system::cpp (the
// calling thread), with Thrust's own containers and algorithms.
//
//   storage        thrust::{cuda,omp,cpp}::vector<T>
//   element-wise   thrust::for_each_n over a counting iterator
//   reductions     thrust::transform_reduce to one scalar
//   GEMM           cuBLAS on cuda (one handle and stream per host thread),
//                  Eigen on the host systems, whose memory is host memory
//
// The host systems run the very kernels a GPU runs (the same OPNORM_HD
// lambdas through the same Thrust calls), which is how the test suite checks
// the Thrust backend on a machine without a GPU. For g++ and clang, CCCL's
// headers need -I<cuda>/include/cccl (CMake's opnorm::thrust target adds it).
#include <cstring>
#include <stdexcept>
#include <string>

#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/transform_reduce.h>
#include <thrust/functional.h>
#include <thrust/fill.h>
#include <thrust/copy.h>
#include <thrust/execution_policy.h>
#include <thrust/system/cpp/execution_policy.h>
#include <thrust/system/cpp/vector.h>
#include <thrust/system/omp/execution_policy.h>
#include <thrust/system/omp/vector.h>

#if defined(__CUDACC__)
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <thrust/system/cuda/execution_policy.h>
#include <thrust/system/cuda/vector.h>
#endif

#include "backend.hpp"
#include "eigen_gemm.hpp"

namespace opnorm {

namespace backend {

/// Thrust's systems, as opnorm names them.
namespace system {
struct cuda {
  static constexpr const char* name = "cuda";
};
struct omp {
  static constexpr const char* name = "omp";
};
struct cpp {
  static constexpr const char* name = "cpp";
};
}  // namespace system

template <class System>
struct thrust {
  static constexpr const char* name = System::name;
};

using thrust_omp = thrust<system::omp>;
using thrust_cpp = thrust<system::cpp>;
using thrust_cuda = thrust<system::cuda>;

namespace detail {

// sum<R>'s kernel: f(i) converted to R, callable on host and device.
template <class R, class F>
struct as_term {
  F f;
  OPNORM_HD R operator()(index_t i) const { return static_cast<R>(f(i)); }
};

// What differs between Thrust's host systems: the container and the
// execution policy. The rest of backend_ops is shared.
template <class System>
struct host_system;
template <>
struct host_system<system::omp> {
  template <class T>
  using vector = ::thrust::omp::vector<T>;
  static auto policy() { return ::thrust::omp::par; }
  static constexpr bool threaded = true;
};
template <>
struct host_system<system::cpp> {
  template <class T>
  using vector = ::thrust::cpp::vector<T>;
  static auto policy() { return ::thrust::cpp::par; }
  static constexpr bool threaded = false;
};

// Storage in a Thrust vector (Vector<T> is thrust::{cuda,omp,cpp}::vector<T>).
template <template <class> class Vector>
struct thrust_vector_storage {
  template <class T>
  using storage = Vector<T>;

  template <class T>
  static storage<T> allocate(index_t n) {
    return storage<T>(static_cast<std::size_t>(n));
  }
  template <class T>
  static T* data(storage<T>& s) {
    return ::thrust::raw_pointer_cast(s.data());
  }
  template <class T>
  static const T* data(const storage<T>& s) {
    return ::thrust::raw_pointer_cast(s.data());
  }
};

}  // namespace detail
}  // namespace backend

/// thrust<omp> and thrust<cpp>: Thrust algorithms on host memory.
template <class System>
struct backend_ops<backend::thrust<System>>
    : backend::detail::thrust_vector_storage<backend::detail::host_system<System>::template vector>,
      backend::eigen::host_memory_ops<backend::detail::host_system<System>::threaded> {
  using system = backend::detail::host_system<System>;
  static constexpr bool host_accessible = true;

  // OpenMP forks a team on every Thrust call; below this many elements the
  // fork costs more than the work, and the calling thread does it alone.
  static constexpr index_t threshold = index_t{1} << 12;

  template <class F>
  static void for_each_index(index_t n, F f) {
    if (n <= 0) return;
    if (system::threaded && n >= threshold)
      ::thrust::for_each_n(system::policy(), ::thrust::counting_iterator<index_t>(0), n, f);
    else
      ::thrust::for_each_n(::thrust::seq, ::thrust::counting_iterator<index_t>(0), n, f);
  }
  template <class F>
  static void for_each_segment(index_t n, index_t segment_size, F f) {
    if (n <= 0) return;
    if (system::threaded && n > 1 && n * segment_size >= threshold)
      ::thrust::for_each_n(system::policy(), ::thrust::counting_iterator<index_t>(0), n, f);
    else
      ::thrust::for_each_n(::thrust::seq, ::thrust::counting_iterator<index_t>(0), n, f);
  }
  template <class R, class F>
  static R sum(index_t n, F f) {
    if (n <= 0) return R(0);
    return ::thrust::transform_reduce(system::policy(), ::thrust::counting_iterator<index_t>(0),
                                      ::thrust::counting_iterator<index_t>(n), backend::detail::as_term<R, F>{f}, R(0),
                                      ::thrust::plus<R>());
  }

  template <class T>
  static void fill(T* x, index_t n, T value) {
    if (n > 0) ::thrust::fill_n(system::policy(), x, n, value);
  }
  // copy, copy_to_host, copy_from_host, the tasks and the GEMMs (Eigen): host_memory_ops.
};

#if defined(__CUDACC__)

namespace backend::detail {

inline void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("opnorm::backend::thrust<cuda>: ") + what + ": " + cudaGetErrorString(e));
}
inline void cublas_check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("opnorm::backend::thrust<cuda>: ") + what + " failed with cuBLAS status " +
                             std::to_string(static_cast<int>(s)));
}

/// One CUDA stream and one cuBLAS handle per host thread, created on first
/// use. Every kernel, copy and GEMM of that thread goes to this stream, so
/// they run in program order without host synchronization; the host waits
/// only when it reads a result. The stream is a blocking one, ordered with
/// the legacy default stream that Thrust's containers allocate and free on.
/// Both live until the process ends: destroying them from a thread_local
/// destructor could run after the CUDA runtime has shut down.
struct cuda_context {
  cudaStream_t stream = nullptr;
  cublasHandle_t handle = nullptr;

  static cuda_context& current() {
    thread_local cuda_context* context = create();
    return *context;
  }

 private:
  static cuda_context* create() {
    auto* c = new cuda_context;
    cuda_check(cudaStreamCreate(&c->stream), "cudaStreamCreate");
    cublas_check(cublasCreate(&c->handle), "cublasCreate");
    cublas_check(cublasSetStream(c->handle, c->stream), "cublasSetStream");
    return c;
  }
};

inline cublasOperation_t op(bool transpose) { return transpose ? CUBLAS_OP_T : CUBLAS_OP_N; }

// cuBLAS is column-major: the row-major product C = op(A) op(B) is the
// column-major product C^T = op(B)^T op(A)^T, the same memory read with the
// operands swapped.
inline void gemm_column_major(cublasHandle_t h, bool ta, bool tb, int m, int n, int k, float alpha, const float* a,
                              int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  cublas_check(cublasSgemm(h, op(tb), op(ta), n, m, k, &alpha, b, ldb, a, lda, &beta, c, ldc), "cublasSgemm");
}
inline void gemm_column_major(cublasHandle_t h, bool ta, bool tb, int m, int n, int k, double alpha, const double* a,
                              int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  cublas_check(cublasDgemm(h, op(tb), op(ta), n, m, k, &alpha, b, ldb, a, lda, &beta, c, ldc), "cublasDgemm");
}
inline void gemm_strided_column_major(cublasHandle_t h, bool ta, bool tb, int m, int n, int k, float alpha,
                                      const float* a, int lda, long long sa, const float* b, int ldb, long long sb,
                                      float beta, float* c, int ldc, long long sc, int count) {
  cublas_check(cublasSgemmStridedBatched(h, op(tb), op(ta), n, m, k, &alpha, b, ldb, sb, a, lda, sa, &beta, c, ldc,
                                         sc, count),
               "cublasSgemmStridedBatched");
}
inline void gemm_strided_column_major(cublasHandle_t h, bool ta, bool tb, int m, int n, int k, double alpha,
                                      const double* a, int lda, long long sa, const double* b, int ldb, long long sb,
                                      double beta, double* c, int ldc, long long sc, int count) {
  cublas_check(cublasDgemmStridedBatched(h, op(tb), op(ta), n, m, k, &alpha, b, ldb, sb, a, lda, sa, &beta, c, ldc,
                                         sc, count),
               "cublasDgemmStridedBatched");
}

}  // namespace backend::detail

/// thrust<cuda>: device memory, Thrust kernels and cuBLAS on the calling
/// thread's stream.
template <class T>
using cuda_vector = ::thrust::cuda::vector<T>;

template <>
struct backend_ops<backend::thrust<backend::system::cuda>> : backend::detail::thrust_vector_storage<cuda_vector> {
  static constexpr bool host_accessible = false;

  static cudaStream_t stream() { return backend::detail::cuda_context::current().stream; }
  static cublasHandle_t handle() { return backend::detail::cuda_context::current().handle; }
  // No synchronization after each kernel: the stream orders the work.
  static auto policy() { return ::thrust::cuda::par_nosync.on(stream()); }

  template <class F>
  static void for_each_index(index_t n, F f) {
    if (n > 0) ::thrust::for_each_n(policy(), ::thrust::counting_iterator<index_t>(0), n, f);
  }
  template <class F>
  static void for_each_segment(index_t n, index_t, F f) {
    for_each_index(n, f);
  }
  template <class R, class F>
  static R sum(index_t n, F f) {
    if (n <= 0) return R(0);
    // The blocking policy: the result is on the host when this returns.
    return ::thrust::transform_reduce(::thrust::cuda::par.on(stream()), ::thrust::counting_iterator<index_t>(0),
                                      ::thrust::counting_iterator<index_t>(n), backend::detail::as_term<R, F>{f}, R(0),
                                      ::thrust::plus<R>());
  }

  // Host-side tasks queue their work on the one stream, in order.
  static int task_workers() { return 1; }
  template <class F>
  static void for_each_task(index_t n, F&& f) {
    for (index_t i = 0; i < n; ++i) f(i, 0);
  }

  template <class T>
  static void fill(T* x, index_t n, T value) {
    if (n > 0) ::thrust::fill_n(policy(), x, n, value);
  }
  template <class T>
  static void copy(const T* src, index_t n, T* dst) {
    if (n > 0 && src != dst)
      backend::detail::cuda_check(cudaMemcpyAsync(dst, src, sizeof(T) * static_cast<std::size_t>(n),
                                                  cudaMemcpyDeviceToDevice, stream()),
                                  "cudaMemcpyAsync (device to device)");
  }
  template <class T>
  static void copy_to_host(const T* src, index_t n, T* host_dst) {
    if (n <= 0) return;
    backend::detail::cuda_check(cudaMemcpyAsync(host_dst, src, sizeof(T) * static_cast<std::size_t>(n),
                                                cudaMemcpyDeviceToHost, stream()),
                                "cudaMemcpyAsync (device to host)");
    backend::detail::cuda_check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
  }
  template <class T>
  static void copy_from_host(const T* host_src, index_t n, T* dst) {
    if (n <= 0) return;
    backend::detail::cuda_check(cudaMemcpyAsync(dst, host_src, sizeof(T) * static_cast<std::size_t>(n),
                                                cudaMemcpyHostToDevice, stream()),
                                "cudaMemcpyAsync (host to device)");
    // The caller may free or reuse host_src as soon as this returns.
    backend::detail::cuda_check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
  }

  template <class T>
  static void gemm(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda,
                   const T* b, index_t ldb, T beta, T* c, index_t ldc) {
    if (m == 0 || n == 0) return;
    backend::detail::gemm_column_major(handle(), trans_a, trans_b, int(m), int(n), int(k), alpha, a, int(lda), b,
                                       int(ldb), beta, c, int(ldc));
  }
  template <class T>
  static void gemm_batched(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha, const T* a,
                           index_t lda, index_t stride_a, const T* b, index_t ldb, index_t stride_b, T beta, T* c,
                           index_t ldc, index_t stride_c, index_t count) {
    if (m == 0 || n == 0 || count == 0) return;
    backend::detail::gemm_strided_column_major(handle(), trans_a, trans_b, int(m), int(n), int(k), alpha, a, int(lda),
                                               stride_a, b, int(ldb), stride_b, beta, c, int(ldc), stride_c,
                                               int(count));
  }
  /// The sum over the batch is a sequence of GEMMs accumulating into C on
  /// one stream: a fixed order, so the result is reproducible.
  template <class T>
  static void gemm_batched_sum(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha, const T* a,
                               index_t lda, index_t stride_a, const T* b, index_t ldb, index_t stride_b, T beta, T* c,
                               index_t ldc, index_t count) {
    if (count == 0) {
      if (beta != T(1)) gemm(trans_a, trans_b, m, n, 0, alpha, a, lda, b, ldb, beta, c, ldc);
      return;
    }
    for (index_t i = 0; i < count; ++i)
      gemm(trans_a, trans_b, m, n, k, alpha, a + i * stride_a, lda, b + i * stride_b, ldb, i == 0 ? beta : T(1), c,
           ldc);
  }

};

#endif  // __CUDACC__

}  // namespace opnorm
