#pragma once
// What a communicator is: the few collective operations data-parallel
// training needs, on host memory, over an existing distributed engine.
//
//   struct Communicator {
//     int rank() const;                                   // 0 .. size() - 1
//     int size() const;                                   // processes in the job
//     void all_reduce_sum(double* values, index_t count); // in place, on every rank
//     void all_reduce_sum(float* values, index_t count);
//     void all_reduce_sum(std::int64_t* values, index_t count);
//     void broadcast(void* bytes, std::size_t count, int root);  // root's bytes to every rank
//     void barrier();
//   };
//
// Every rank must call the same collectives in the same order with the same
// counts; opnorm's training loop does so by construction (each rank runs the
// same code on the same shapes). Sums are over ranks in the engine's order,
// which is fixed for a given job size, so a run is reproducible.
//
// Two communicators ship: single_process (below: the identity, what fit uses
// without one) and mpi_communicator (mpi.hpp, with OPNORM_MPI);
// any_communicator (below) holds either behind one type.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>

#include "../core/tensor.hpp"

namespace opnorm {
namespace distributed {

/// One process: every collective is the identity. fit(...) without a
/// communicator trains through this one.
struct single_process {
  int rank() const { return 0; }
  int size() const { return 1; }
  void all_reduce_sum(double*, index_t) {}
  void all_reduce_sum(float*, index_t) {}
  void all_reduce_sum(std::int64_t*, index_t) {}
  void broadcast(void*, std::size_t, int) {}
  void barrier() {}
};

namespace detail {
template <class C, class = void>
struct has_rank_and_size : std::false_type {};
template <class C>
struct has_rank_and_size<C, std::enable_if_t<std::is_convertible_v<decltype(std::declval<const C&>().rank()), int> &&
                                             std::is_convertible_v<decltype(std::declval<const C&>().size()), int>>>
    : std::true_type {};

template <class C, class Value, class = void>
struct has_all_reduce_sum : std::false_type {};
template <class C, class Value>
struct has_all_reduce_sum<C, Value,
                          std::void_t<decltype(std::declval<C&>().all_reduce_sum(std::declval<Value*>(), index_t{}))>>
    : std::true_type {};

template <class C, class = void>
struct has_broadcast_and_barrier : std::false_type {};
template <class C>
struct has_broadcast_and_barrier<C, std::void_t<decltype(std::declval<C&>().broadcast(std::declval<void*>(),
                                                                                        std::size_t{}, int{})),
                                                  decltype(std::declval<C&>().barrier())>> : std::true_type {};
}  // namespace detail

/// True when C offers the interface above.
template <class C>
inline constexpr bool is_communicator_v =
    detail::has_rank_and_size<C>::value && detail::has_all_reduce_sum<C, double>::value &&
    detail::has_all_reduce_sum<C, float>::value && detail::has_all_reduce_sum<C, std::int64_t>::value &&
    detail::has_broadcast_and_barrier<C>::value;

/// Checks C with one sentence per missing piece, so a wrong type fails at the
/// call that uses it with a message instead of a page of template errors.
template <class C>
constexpr bool check_communicator() {
  static_assert(detail::has_rank_and_size<C>::value,
                "a communicator must say where this process stands: `int rank() const` and `int size() const`");
  static_assert(detail::has_all_reduce_sum<C, double>::value && detail::has_all_reduce_sum<C, float>::value &&
                    detail::has_all_reduce_sum<C, std::int64_t>::value,
                "a communicator must sum host arrays over ranks in place: "
                "`all_reduce_sum(double*, index_t)`, `(float*, index_t)` and `(std::int64_t*, index_t)`");
  static_assert(detail::has_broadcast_and_barrier<C>::value,
                "a communicator must copy the root's bytes to every rank and wait for all ranks: "
                "`broadcast(void*, std::size_t, int root)` and `barrier()`");
  return true;
}

static_assert(is_communicator_v<single_process>, "single_process is a communicator");

/// Any communicator behind one type, so that a program offering both one
/// process and MPI compiles its training code once, not once per
/// communicator (a virtual call per collective costs nothing next to the
/// collective). It also measures the wall time spent in collectives, which
/// includes waiting for the slowest rank, and their number and payload.
class any_communicator {
 public:
  template <class Communicator, class = std::enable_if_t<!std::is_same_v<Communicator, any_communicator>>>
  explicit any_communicator(Communicator& communicator)
      : self_(std::make_shared<holder<Communicator>>(communicator)) {
    static_assert(check_communicator<Communicator>());
  }

  int rank() const { return self_->rank(); }
  int size() const { return self_->size(); }
  void all_reduce_sum(double* values, index_t count) { timed(count * 8, [&] { self_->all_reduce_sum(values, count); }); }
  void all_reduce_sum(float* values, index_t count) { timed(count * 4, [&] { self_->all_reduce_sum(values, count); }); }
  void all_reduce_sum(std::int64_t* values, index_t count) {
    timed(count * 8, [&] { self_->all_reduce_sum(values, count); });
  }
  void broadcast(void* bytes, std::size_t count, int root) {
    timed(static_cast<index_t>(count), [&] { self_->broadcast(bytes, count, root); });
  }
  void barrier() { timed(0, [&] { self_->barrier(); }); }

  double collective_seconds() const { return seconds_; }
  std::int64_t collective_calls() const { return calls_; }
  std::int64_t collective_bytes() const { return bytes_; }

 private:
  struct interface {
    virtual ~interface() = default;
    virtual int rank() const = 0;
    virtual int size() const = 0;
    virtual void all_reduce_sum(double*, index_t) = 0;
    virtual void all_reduce_sum(float*, index_t) = 0;
    virtual void all_reduce_sum(std::int64_t*, index_t) = 0;
    virtual void broadcast(void*, std::size_t, int) = 0;
    virtual void barrier() = 0;
  };
  template <class Communicator>
  struct holder final : interface {
    explicit holder(Communicator& c) : communicator(&c) {}
    int rank() const override { return communicator->rank(); }
    int size() const override { return communicator->size(); }
    void all_reduce_sum(double* v, index_t n) override { communicator->all_reduce_sum(v, n); }
    void all_reduce_sum(float* v, index_t n) override { communicator->all_reduce_sum(v, n); }
    void all_reduce_sum(std::int64_t* v, index_t n) override { communicator->all_reduce_sum(v, n); }
    void broadcast(void* b, std::size_t n, int root) override { communicator->broadcast(b, n, root); }
    void barrier() override { communicator->barrier(); }
    Communicator* communicator;
  };

  template <class F>
  void timed(index_t bytes, F&& f) {
    const auto start = std::chrono::steady_clock::now();
    f();
    seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    calls_ += 1;
    bytes_ += static_cast<std::int64_t>(bytes);
  }

  std::shared_ptr<interface> self_;
  double seconds_ = 0;
  std::int64_t calls_ = 0, bytes_ = 0;
};

static_assert(is_communicator_v<any_communicator>, "any_communicator is a communicator");

}  // namespace distributed
}  // namespace opnorm
