#pragma once
// What a backend is, in one place.
//
// A backend is an empty tag type (backend::cpu, backend::thrust<System>).
// Everything it does is reached through one trait, backend_ops<Tag>, which
// the backend specializes. Layers, losses, norms, the kernel, the methods and
// the trainer only ever write backend_ops<B>::something(...), so they never
// name a backend, and because the trait is looked up when a template is
// instantiated (not where it is defined) a backend header may be included
// before or after the rest of opnorm.
//
// The whole vocabulary, with B = the tag and ops = backend_ops<B>:
//
//   storage and memory
//     ops::storage<T>                  an owning container of T (xtensor, a Thrust vector)
//     ops::allocate<T>(n)              a storage of n elements (contents unspecified)
//     ops::data(storage)               raw pointer to its first element
//     ops::host_accessible             can the host dereference that pointer?
//     ops::copy_to_host(src, n, host_dst), ops::copy_from_host(host_src, n, dst)
//     ops::copy(src, n, dst), ops::fill(dst, n, value)
//   element-wise work
//     ops::for_each_index(n, f)        f(i) for i in [0, n): independent, cheap iterations
//     ops::for_each_segment(n, size, f) f(i) for i in [0, n), each touching `size`
//                                      elements (one example, channel or plane);
//                                      the backend decides how to schedule it
//   host-side tasks
//     ops::task_workers()             how many tasks of for_each_task may run at once
//     ops::for_each_task(n, f)         f(i, worker) for i in [0, n): coarse tasks (a chunk of
//                                      a batch) that call the backend themselves; those calls
//                                      then run on the task's thread alone. worker, in
//                                      [0, min(task_workers(), n)), names the scratch a task
//                                      may use: no two running tasks share one. Backends
//                                      whose work is queued on a device run the tasks in
//                                      order, as worker 0.
//   reductions to one host scalar
//     ops::sum<R>(n, f)                sum of f(i) over [0, n) as R (double, index_t)
//   dense linear algebra, row-major
//     ops::gemm(...)                   C = alpha op(A) op(B) + beta C
//     ops::gemm_batched(...)           count GEMMs at fixed strides (stride 0 shares an operand)
//     ops::gemm_batched_sum(...)       C = alpha sum_i op(A_i) op(B_i) + beta C
//
// Kernels are OPNORM_HD lambdas capturing raw pointers and scalars by value,
// so the same lambda runs on a CPU thread or a CUDA thread.
#include <cstdint>
#include <type_traits>
#include <utility>

#include "../detail/config.hpp"

namespace opnorm {

/// Every backend specializes this trait; the primary template is left
/// undefined so that a tag without one is rejected by is_backend.
template <class Backend>
struct backend_ops;

namespace backend::detail {

// A kernel the checks below hand to for_each_index and sum.
struct probe_kernel {
  OPNORM_HD void operator()(index_t) const {}
};
struct probe_term {
  OPNORM_HD double operator()(index_t) const { return 0.0; }
};

template <class B, class = void>
struct has_ops : std::false_type {};
template <class B>
struct has_ops<B, std::void_t<decltype(sizeof(backend_ops<B>))>> : std::true_type {};

template <class B, class = void>
struct has_storage : std::false_type {};
template <class B>
struct has_storage<B, std::void_t<typename backend_ops<B>::template storage<float>,
                                  decltype(backend_ops<B>::template allocate<float>(index_t{})),
                                  decltype(backend_ops<B>::data(
                                      std::declval<typename backend_ops<B>::template storage<float>&>()))>>
    : std::true_type {};

template <class B, class = void>
struct has_host_flag : std::false_type {};
template <class B>
struct has_host_flag<B, std::enable_if_t<std::is_same_v<decltype(backend_ops<B>::host_accessible), const bool>>>
    : std::true_type {};

template <class B, class = void>
struct has_elementwise : std::false_type {};
template <class B>
struct has_elementwise<B, std::void_t<decltype(backend_ops<B>::for_each_index(index_t{}, probe_kernel{})),
                                      decltype(backend_ops<B>::for_each_segment(index_t{}, index_t{}, probe_kernel{}))>>
    : std::true_type {};

struct probe_task {
  void operator()(index_t, int) const {}
};
template <class B, class = void>
struct has_tasks : std::false_type {};
template <class B>
struct has_tasks<B, std::enable_if_t<std::is_same_v<decltype(backend_ops<B>::task_workers()), int> &&
                                     std::is_void_v<decltype(backend_ops<B>::for_each_task(index_t{}, probe_task{}))>>>
    : std::true_type {};

template <class B, class = void>
struct has_reduction : std::false_type {};
template <class B>
struct has_reduction<B, std::enable_if_t<std::is_same_v<
                            decltype(backend_ops<B>::template sum<double>(index_t{}, probe_term{})), double>>>
    : std::true_type {};

template <class B, class = void>
struct has_copies : std::false_type {};
template <class B>
struct has_copies<B, std::void_t<decltype(backend_ops<B>::copy(std::declval<const float*>(), index_t{},
                                                                std::declval<float*>())),
                                 decltype(backend_ops<B>::fill(std::declval<float*>(), index_t{}, 0.0f)),
                                 decltype(backend_ops<B>::copy_to_host(std::declval<const float*>(), index_t{},
                                                                        std::declval<float*>())),
                                 decltype(backend_ops<B>::copy_from_host(std::declval<const float*>(), index_t{},
                                                                          std::declval<float*>()))>>
    : std::true_type {};

template <class B, class = void>
struct has_gemm : std::false_type {};
template <class B>
struct has_gemm<B, std::void_t<
                       decltype(backend_ops<B>::gemm(false, false, index_t{}, index_t{}, index_t{}, 1.0f,
                                                     std::declval<const float*>(), index_t{},
                                                     std::declval<const float*>(), index_t{}, 0.0f,
                                                     std::declval<float*>(), index_t{})),
                       decltype(backend_ops<B>::gemm_batched(
                           false, false, index_t{}, index_t{}, index_t{}, 1.0f, std::declval<const float*>(),
                           index_t{}, index_t{}, std::declval<const float*>(), index_t{}, index_t{}, 0.0f,
                           std::declval<float*>(), index_t{}, index_t{}, index_t{})),
                       decltype(backend_ops<B>::gemm_batched_sum(
                           false, false, index_t{}, index_t{}, index_t{}, 1.0f, std::declval<const float*>(),
                           index_t{}, index_t{}, std::declval<const float*>(), index_t{}, index_t{}, 0.0f,
                           std::declval<float*>(), index_t{}, index_t{}))>> : std::true_type {};

}  // namespace backend::detail

namespace backend {

/// True for a tag whose backend_ops provides the whole vocabulary.
template <class B>
struct is_backend
    : std::bool_constant<detail::has_ops<B>::value && detail::has_storage<B>::value &&
                         detail::has_host_flag<B>::value && detail::has_elementwise<B>::value &&
                         detail::has_reduction<B>::value && detail::has_copies<B>::value &&
                         detail::has_gemm<B>::value && detail::has_tasks<B>::value> {};

/// Instantiated by tensor<T, B>: names the first missing piece of a would-be
/// backend in a sentence, instead of an error deep inside a layer.
template <class B>
struct check_backend {
  static_assert(detail::has_ops<B>::value,
                "a backend tag needs a specialization of opnorm::backend_ops<Tag> (see backend/backend.hpp)");
  static_assert(!detail::has_ops<B>::value || detail::has_storage<B>::value,
                "a backend must provide storage<T>, allocate<T>(n) and data(storage) in its backend_ops");
  static_assert(!detail::has_ops<B>::value || detail::has_host_flag<B>::value,
                "a backend must say whether the host can read its memory: static constexpr bool host_accessible");
  static_assert(!detail::has_ops<B>::value || detail::has_elementwise<B>::value,
                "a backend must provide for_each_index(n, f) and for_each_segment(n, size, f)");
  static_assert(!detail::has_ops<B>::value || detail::has_reduction<B>::value,
                "a backend must provide sum<R>(n, f), a reduction to one host scalar");
  static_assert(!detail::has_ops<B>::value || detail::has_copies<B>::value,
                "a backend must provide copy, fill, copy_to_host and copy_from_host");
  static_assert(!detail::has_ops<B>::value || detail::has_gemm<B>::value,
                "a backend must provide gemm, gemm_batched and gemm_batched_sum (row-major)");
  static_assert(!detail::has_ops<B>::value || detail::has_tasks<B>::value,
                "a backend must provide task_workers() and for_each_task(n, f) with f(i, worker)");
  static constexpr bool value = true;
};

}  // namespace backend
}  // namespace opnorm
