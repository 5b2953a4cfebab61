#pragma once
// Data parallelism over a communicator (communicator.hpp): the pieces that
// fit(communicator, ...) (train/trainer.hpp) and evaluate(communicator, ...)
// (train/evaluate.hpp) put together, usable on their own too.
//
//   shard_of(count, rank, size)      the rows of a global batch this rank works on
//   broadcast_state(comm, state)     rank 0's parameters, buffers and counters everywhere
//   gradient_averager                sum_r c_r g_r over ranks, c_r = n_r / N, in buckets
//   reduce_batch_result(comm, r)     one step's loss, correct and examples over ranks
//   join_shards(comm, mine, n, rows) per-example values of every rank's shard, on every rank
//   fractions_over_ranks(comm, ...)  shares of a shard (accuracies) as shares of all examples
//   synchronize_batch_norm(model, r) SyncBatchNorm for every BatchNorm layer
//   on_root(comm, callback)          a callback that acts on rank 0 only
//
// Why shares and not a plain 1 / size: each rank's method returns the mean
// gradient over its shard of n_r examples, and the global batch's mean is
// sum_r (n_r / N) g_r; with equal shards that is PyTorch DDP's average, and
// with a smaller last batch it is still the single-process gradient.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/state.hpp"
#include "../methods/method.hpp"
#include "communicator.hpp"
#include "statistics_reducer.hpp"

namespace opnorm {
namespace distributed {

/// Rows [begin, end) of a batch of count rows that rank works on: contiguous
/// blocks whose sizes differ by at most one, in rank order, so that the
/// shards laid end to end are the global batch.
struct shard {
  index_t begin = 0, end = 0;
  index_t size() const { return end - begin; }
};
inline shard shard_of(index_t count, int rank, int size) {
  if (size < 1 || rank < 0 || rank >= size)
    throw std::invalid_argument("opnorm::distributed::shard_of: rank " + std::to_string(rank) + " outside a job of " +
                                std::to_string(size));
  const auto r = static_cast<index_t>(rank), s = static_cast<index_t>(size);
  return {count * r / s, count * (r + 1) / s};
}

namespace detail {
// Values of tensors laid end to end in host memory: what one message carries.
template <class T, class B>
void pack(const std::vector<tensor<T, B>*>& tensors, std::vector<T>& host) {
  std::size_t size = 0;
  for (const auto* t : tensors) size += static_cast<std::size_t>(t->size());
  host.resize(size);
  std::size_t at = 0;
  for (const auto* t : tensors) {
    backend_ops<B>::copy_to_host(t->data(), t->size(), host.data() + at);
    at += static_cast<std::size_t>(t->size());
  }
}
template <class T, class B>
void unpack(const std::vector<T>& host, const std::vector<tensor<T, B>*>& tensors) {
  std::size_t at = 0;
  for (auto* t : tensors) {
    backend_ops<B>::copy_from_host(host.data() + at, t->size(), t->data());
    at += static_cast<std::size_t>(t->size());
  }
}
}  // namespace detail

/// Copies rank 0's values of every tensor and counter of s to every rank
/// (the gradients are not copied: they are recomputed each step). Names and
/// shapes must agree on all ranks, which holds for the same network built by
/// the same code; a mismatch in total size is refused before any data moves.
template <class Communicator, class T, class B>
void broadcast_state(Communicator& comm, const state_list<T, B>& s) {
  static_assert(check_communicator<Communicator>());
  std::vector<tensor<T, B>*> tensors;
  for (const auto& p : s.parameters) tensors.push_back(p.value);
  for (const auto& b : s.buffers) tensors.push_back(b.value);
  std::vector<T> values;
  detail::pack(tensors, values);
  std::vector<std::int64_t> counters;
  for (const auto& c : s.counters) counters.push_back(*c.value);
  // Sizes first: a rank with another network must fail here, not read a
  // message of the wrong length.
  std::int64_t sizes[2] = {static_cast<std::int64_t>(values.size()), static_cast<std::int64_t>(counters.size())};
  std::int64_t root_sizes[2] = {sizes[0], sizes[1]};
  comm.broadcast(root_sizes, sizeof root_sizes, 0);
  if (root_sizes[0] != sizes[0] || root_sizes[1] != sizes[1])
    throw std::invalid_argument("opnorm::distributed::broadcast_state: rank " + std::to_string(comm.rank()) +
                                " holds " + std::to_string(sizes[0]) + " values and " + std::to_string(sizes[1]) +
                                " counters, rank 0 " + std::to_string(root_sizes[0]) + " and " +
                                std::to_string(root_sizes[1]) + ": the ranks built different networks");
  comm.broadcast(values.data(), values.size() * sizeof(T), 0);
  comm.broadcast(counters.data(), counters.size() * sizeof(std::int64_t), 0);
  detail::unpack(values, tensors);
  for (std::size_t i = 0; i < counters.size(); ++i) *s.counters[i].value = counters[i];
}

namespace detail {
// Communicators that reduce device memory in place (nccl_communicator).
template <class C, class V, class = void>
struct has_device_all_reduce : std::false_type {};
template <class C, class V>
struct has_device_all_reduce<
    C, V, std::void_t<decltype(std::declval<C&>().all_reduce_sum_on_device(std::declval<V*>(), index_t{}))>>
    : std::true_type {};
}  // namespace detail

/// Averages parameter gradients over ranks, weighting rank r by its share
/// c_r of the global batch: g <- sum_r c_r g_r on every rank. Tensors go in
/// the order of the state list (the same on every rank), packed into
/// buckets of about bucket_bytes so that the many small tensors (biases,
/// BatchNorm scales) share messages and the large ones are split only at
/// tensor boundaries. Gradients in device memory go to a communicator that
/// reduces device memory (NCCL) without a trip through the host; otherwise a
/// bucket is staged in host memory.
template <class T, class B>
class gradient_averager {
 public:
  explicit gradient_averager(std::size_t bucket_bytes = std::size_t(4) << 20) : bucket_bytes_(bucket_bytes) {}

  template <class Communicator>
  void average(Communicator& comm, const state_list<T, B>& s, double share) {
    static_assert(check_communicator<Communicator>());
    if (!(share >= 0 && share <= 1))
      throw std::invalid_argument("opnorm::distributed::gradient_averager: a rank's share of the batch must lie in "
                                  "[0, 1], got " + std::to_string(share));
    std::vector<tensor<T, B>*> bucket;
    std::size_t bytes = 0;
    auto flush = [&] {
      if (bucket.empty()) return;
      if constexpr (!backend_ops<B>::host_accessible && detail::has_device_all_reduce<Communicator, T>::value) {
        reduce_on_device(comm, bucket, static_cast<T>(share));
      } else {
        detail::pack(bucket, host_);
        for (T& v : host_) v = static_cast<T>(static_cast<double>(v) * share);
        comm.all_reduce_sum(host_.data(), static_cast<index_t>(host_.size()));
        detail::unpack(host_, bucket);
      }
      messages_ += 1;
      bucket.clear();
      bytes = 0;
    };
    for (const auto& p : s.parameters) {
      const std::size_t size = static_cast<std::size_t>(p.grad->size()) * sizeof(T);
      if (bytes > 0 && bytes + size > bucket_bytes_) flush();
      bucket.push_back(p.grad);
      bytes += size;
    }
    flush();
  }

  /// Messages sent so far (one per bucket and call): what the bucketing saves.
  std::int64_t messages() const { return messages_; }

  // Packs the bucket into one device tensor, scales it by the share, reduces
  // it in place and unpacks it. Public because nvcc rejects the extended
  // lambda in a private member function; not part of the interface.
  template <class Communicator>
  void reduce_on_device(Communicator& comm, const std::vector<tensor<T, B>*>& bucket, T share) {
    index_t size = 0;
    for (const auto* t : bucket) size += t->size();
    device_.resize({size});
    T* packed = device_.data();
    index_t at = 0;
    for (const auto* t : bucket) {
      backend_ops<B>::copy(t->data(), t->size(), packed + at);
      at += t->size();
    }
    backend_ops<B>::for_each_index(size, [=] OPNORM_HD(index_t i) { packed[i] *= share; });
    comm.all_reduce_sum_on_device(packed, size);
    at = 0;
    for (auto* t : bucket) {
      backend_ops<B>::copy(packed + at, t->size(), t->data());
      at += t->size();
    }
  }

 private:
  std::size_t bucket_bytes_;
  std::vector<T> host_;
  tensor<T, B> device_;  // the bucket, when the communicator reduces device memory
  std::int64_t messages_ = 0;
};

/// One step's batch_result over ranks: the loss weighted by examples, the
/// correct and example counts summed.
template <class Communicator>
batch_result reduce_batch_result(Communicator& comm, const batch_result& local) {
  static_assert(check_communicator<Communicator>());
  double loss_sum = local.loss * static_cast<double>(local.examples);
  std::int64_t counts[2] = {static_cast<std::int64_t>(local.correct), static_cast<std::int64_t>(local.examples)};
  comm.all_reduce_sum(&loss_sum, 1);
  comm.all_reduce_sum(counts, 2);
  batch_result global;
  global.correct = static_cast<index_t>(counts[0]);
  global.examples = static_cast<index_t>(counts[1]);
  global.loss = global.examples > 0 ? loss_sum / static_cast<double>(global.examples) : 0.0;
  return global;
}

/// Per-example measurements of a test set split with shard_of, joined: row
/// k of local holds this rank's values for its examples [mine.begin,
/// mine.end); the result's row k holds all count examples' values in
/// example order, on every rank. Measurements that need whole rows (means,
/// standard errors, the worst case over attacks) are then computed as if
/// one process had measured every example.
///
/// Exact: each entry is summed from its owner's value and zeros from the
/// other ranks. Every rank must pass the same number of rows; a rank that
/// does not makes every rank throw, since the row counts are compared
/// before anything is joined.
template <class Communicator>
std::vector<std::vector<double>> join_shards(Communicator& comm, const shard& mine, index_t count,
                                             const std::vector<std::vector<double>>& local) {
  static_assert(check_communicator<Communicator>());
  const auto rows = static_cast<std::int64_t>(local.size());
  for (std::size_t k = 0; k < local.size(); ++k)
    if (static_cast<index_t>(local[k].size()) != mine.size())
      throw std::invalid_argument("opnorm::distributed::join_shards: row " + std::to_string(k) + " has " +
                                  std::to_string(local[k].size()) + " values for a shard of " +
                                  std::to_string(mine.size()) + " examples");
  if (mine.begin < 0 || mine.end > count || mine.begin > mine.end)
    throw std::invalid_argument("opnorm::distributed::join_shards: the shard [" + std::to_string(mine.begin) + ", " +
                                std::to_string(mine.end) + ") lies outside " + std::to_string(count) + " examples");
  std::int64_t total_rows = rows;
  comm.all_reduce_sum(&total_rows, 1);
  if (total_rows != rows * comm.size())
    throw std::runtime_error("opnorm::distributed::join_shards: the ranks measured different numbers of rows (" +
                             std::to_string(total_rows) + " over " + std::to_string(comm.size()) + " ranks, " +
                             std::to_string(rows) + " here)");
  const auto n = static_cast<std::size_t>(count);
  std::vector<double> joined(static_cast<std::size_t>(rows) * n, 0.0);
  for (std::size_t k = 0; k < local.size(); ++k)
    std::copy(local[k].begin(), local[k].end(), joined.begin() + static_cast<std::ptrdiff_t>(k * n + mine.begin));
  if (!joined.empty()) comm.all_reduce_sum(joined.data(), static_cast<index_t>(joined.size()));
  std::vector<std::vector<double>> out(local.size());
  for (std::size_t k = 0; k < out.size(); ++k)
    out[k].assign(joined.begin() + static_cast<std::ptrdiff_t>(k * n),
                  joined.begin() + static_cast<std::ptrdiff_t>((k + 1) * n));
  return out;
}

/// Fractions measured on this rank's shard (accuracies: correct / shard
/// size), as fractions of all count examples of the split set, on every
/// rank. Exact: each fraction goes back to its integer count (count /
/// size * size rounds to count), the counts are summed over ranks, and
/// only the sum is divided. Every rank passes as many fractions.
template <class Communicator>
std::vector<double> fractions_over_ranks(Communicator& comm, const shard& mine, index_t count,
                                         const std::vector<double>& local) {
  static_assert(check_communicator<Communicator>());
  std::vector<std::int64_t> counts(local.size() + 1);
  for (std::size_t k = 0; k < local.size(); ++k)
    counts[k] = std::llround(local[k] * static_cast<double>(mine.size()));
  counts.back() = mine.size();  // the shards must cover the set exactly once
  comm.all_reduce_sum(counts.data(), static_cast<index_t>(counts.size()));
  if (counts.back() != count)
    throw std::runtime_error("opnorm::distributed::fractions_over_ranks: the shards hold " +
                             std::to_string(counts.back()) + " examples, the set " + std::to_string(count));
  std::vector<double> out(local.size());
  for (std::size_t k = 0; k < out.size(); ++k)
    out[k] = count > 0 ? static_cast<double>(counts[k]) / static_cast<double>(count) : 0.0;
  return out;
}

namespace detail {
template <class Layer, class = void>
struct has_statistics_synchronization : std::false_type {};
template <class Layer>
struct has_statistics_synchronization<
    Layer, std::void_t<decltype(std::declval<Layer&>().synchronize_statistics(
               std::declval<statistics_reducer*>()))>> : std::true_type {};

template <class Model, std::size_t... I>
int synchronize_layers(Model& model, statistics_reducer* reducer, std::index_sequence<I...>) {
  int count = 0;
  auto visit = [&](auto& layer) {
    if constexpr (has_statistics_synchronization<std::decay_t<decltype(layer)>>::value) {
      layer.synchronize_statistics(reducer);
      ++count;
    }
  };
  (visit(model.template layer<I>()), ...);
  return count;
}
}  // namespace detail

/// Makes every layer with batch statistics (batch_norm) normalize with the
/// global batch's statistics, summed by reducer (which must outlive the
/// training); null returns them to per-rank statistics. Returns the number
/// of layers changed.
template <class Model>
int synchronize_batch_norm(Model& model, statistics_reducer* reducer) {
  return detail::synchronize_layers(model, reducer, std::make_index_sequence<Model::depth>{});
}

/// Forwards a callback's hooks on rank 0 only: progress lines, logs and
/// checkpoint files are written once per job, by the rank whose state
/// every other rank was given. stop_requested is rank 0's answer, which fit
/// broadcasts so that every rank stops at the same epoch.
template <class Communicator, class Callback>
class root_only {
 public:
  root_only(Communicator& comm, Callback callback) : root_(comm.rank() == 0), callback_(std::move(callback)) {}

  // Each hook exists exactly when the callback has it (C = Callback makes
  // the check depend on the member template, so a missing hook removes the
  // member instead of failing to compile).
  template <class Run, class C = Callback>
  auto on_train_begin(const Run& run) -> decltype(std::declval<C&>().on_train_begin(run), void()) {
    if (root_) callback_.on_train_begin(run);
  }
  template <class Step, class C = Callback>
  auto on_step_end(const Step& step) -> decltype(std::declval<C&>().on_step_end(step), void()) {
    if (root_) callback_.on_step_end(step);
  }
  template <class Step, class Context, class C = Callback>
  auto on_step_end(const Step& step, Context& context)
      -> decltype(std::declval<C&>().on_step_end(step, context), void()) {
    if (root_) callback_.on_step_end(step, context);
  }
  template <class Epoch, class Context, class C = Callback>
  auto on_epoch_end(const Epoch& epoch, Context& context)
      -> decltype(std::declval<C&>().on_epoch_end(epoch, context), void()) {
    if (root_) callback_.on_epoch_end(epoch, context);
  }
  template <class C = Callback>
  auto stop_requested() const -> decltype(bool(std::declval<const C&>().stop_requested())) {
    return root_ && callback_.stop_requested();
  }

  Callback& callback() { return callback_; }

 private:
  bool root_;
  Callback callback_;
};

template <class Communicator, class Callback>
root_only<Communicator, std::decay_t<Callback>> on_root(Communicator& comm, Callback&& callback) {
  return root_only<Communicator, std::decay_t<Callback>>(comm, std::forward<Callback>(callback));
}

}  // namespace distributed
}  // namespace opnorm
