#pragma once
// The CPU backend: xtensor storage, Eigen GEMM, OpenMP across the batch.
//
// backend::cpu is an empty tag; backend_ops<cpu> below is the whole of the
// backend (the vocabulary is listed in backend.hpp). It decides on its own
// when a piece of work is worth waking OpenMP threads for, so layers never
// do. backend::cpu_blas (cpu_blas.hpp) is the same backend with its GEMMs
// through a BLAS: both are detail::host_ops with another GEMM kernel.
#include <xtensor/xtensor.hpp>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "backend.hpp"
#include "eigen_gemm.hpp"

namespace opnorm {

namespace backend {
struct cpu {
  static constexpr const char* name = "cpu";
};
}  // namespace backend

namespace backend::detail {

/// Everything of the cpu backend but the choice of GEMM kernel.
template <class Kernel>
struct host_ops : eigen::host_memory_ops</*threaded=*/true, Kernel> {
  // Tensors on the cpu backend are flat xtensor containers (aligned, SIMD-friendly).
  template <class T>
  using storage = xt::xtensor<T, 1>;
  static constexpr bool host_accessible = true;

  template <class T>
  static storage<T> allocate(index_t n) {
    return storage<T>(typename storage<T>::shape_type{static_cast<std::size_t>(n)});
  }
  template <class T>
  static T* data(storage<T>& s) {
    return s.data();
  }
  template <class T>
  static const T* data(const storage<T>& s) {
    return s.data();
  }

  /// Runs f(i) for i in [0, n). Iterations are cheap and independent; they
  /// run on OpenMP threads when n is large enough to amortize the fork.
  template <class F>
  static void for_each_index(index_t n, F f) {
    run(n >= element_threshold, n, f);
  }

  /// f(i) for i in [0, n), each call touching segment_size elements: threaded
  /// when the total work pays for waking the threads. Small problems, such as
  /// those of the finite-difference tests, then never fork.
  template <class F>
  static void for_each_segment(index_t n, index_t segment_size, F f) {
    run(n > 1 && n * segment_size >= segment_threshold, n, f);
  }

  /// sum_i f(i) in R, in index order: the same bits on every run and thread count.
  template <class R, class F>
  static R sum(index_t n, F f) {
    R s = R(0);
    for (index_t i = 0; i < n; ++i) s += static_cast<R>(f(i));
    return s;
  }

  template <class T>
  static void fill(T* x, index_t n, T value) {
    std::fill(x, x + n, value);
  }
  // copy, copy_to_host, copy_from_host, the tasks and the GEMMs: host_memory_ops.

 private:
  // Elementwise work below 2^15 elements (PyTorch's grain size too) stays on
  // the calling thread: a batch-1 pass (a Jacobian's VJPs) then opens no
  // region per layer, where waking the second thread of a 2-vCPU VM took
  // longer than the work (jac_svd on 2 threads: 11.5 ms with 4096, and
  // 5.0-10.8 ms with 2^15, against 4.7 ms on 1 thread).
  static constexpr index_t element_threshold = index_t{1} << 15;
  static constexpr index_t segment_threshold = index_t{1} << 15;

  template <class F>
  static void run(bool parallel, index_t n, F& f) {
#ifdef _OPENMP
    if (parallel && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
      for (index_t i = 0; i < n; ++i) f(i);
      return;
    }
#endif
    (void)parallel;
    for (index_t i = 0; i < n; ++i) f(i);
  }
};

}  // namespace backend::detail

template <>
struct backend_ops<backend::cpu> : backend::detail::host_ops<backend::eigen::gemm_kernel> {};

}  // namespace opnorm
