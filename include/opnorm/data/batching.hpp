#pragma once
// Mini-batches: the order of examples in an epoch, and copying the examples
// of one batch into tensors that are reused from batch to batch.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "dataset.hpp"
#include "shuffle.hpp"

namespace opnorm {

enum class batch_order { sequential, shuffled };

/// What to do with the examples left over when the batch size does not
/// divide the data set: a smaller last batch, or none (every batch full, as
/// BatchNorm statistics prefer).
enum class last_batch { keep, drop };

/// The indices 0..n-1 in the order epoch `epoch` visits them: as they are,
/// or a permutation that depends only on (seed, epoch).
inline std::vector<index_t> epoch_order(index_t n, batch_order order, std::uint64_t seed, index_t epoch) {
  if (n < 0) throw std::invalid_argument("opnorm::epoch_order: negative number of examples");
  std::vector<index_t> indices(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) indices[static_cast<std::size_t>(i)] = i;
  if (order == batch_order::shuffled) {
    std::mt19937_64 rng = epoch_engine(seed, static_cast<std::uint64_t>(epoch));
    fisher_yates_shuffle(indices, rng);
  }
  return indices;
}

/// Copies examples indices[0..count) of `data` into `images` (count, C, H, W)
/// and `labels` (count), resizing them only when the shape changes.
template <class T>
void gather_batch(const dataset<T>& data, const index_t* indices, index_t count, tensor<T, backend::cpu>& images,
                  label_tensor<backend::cpu>& labels) {
  shape_t shape = data.images.shape();
  shape.at(0) = count;
  images.resize(shape);
  labels.resize({count});
  const index_t e = data.images.example_size();
  const T* source = data.images.data();
  const std::int32_t* source_labels = data.labels.data();
  for (index_t k = 0; k < count; ++k) {
    const index_t i = indices[k];
    if (i < 0 || i >= data.size())
      throw std::out_of_range("opnorm::gather_batch: index " + std::to_string(i) + " outside a dataset of " +
                              std::to_string(data.size()) + " examples");
    std::copy_n(source + i * e, e, images.data() + k * e);
    labels[k] = source_labels[i];
  }
}

template <class T>
void gather_batch(const dataset<T>& data, const std::vector<index_t>& indices, tensor<T, backend::cpu>& images,
                  label_tensor<backend::cpu>& labels) {
  gather_batch(data, indices.data(), static_cast<index_t>(indices.size()), images, labels);
}

/// Walks a dataset in batches, one epoch at a time:
///
///   batch_loader<float> batches(train, 128, batch_order::shuffled, last_batch::drop, seed);
///   for (index_t epoch = 0; epoch < epochs; ++epoch) {
///     batches.start_epoch(epoch);
///     while (batches.next(x, y)) { ... }
///   }
///
/// It refers to `data`, which must outlive it.
template <class T = float>
class batch_loader {
 public:
  batch_loader(const dataset<T>& data, index_t batch_size, batch_order order = batch_order::shuffled,
               last_batch last = last_batch::keep, std::uint64_t seed = 0)
      : data_(&data), batch_size_(batch_size), order_(order), last_(last), seed_(seed) {
    if (batch_size < 1)
      throw std::invalid_argument("opnorm::batch_loader: batch size must be positive, got " + std::to_string(batch_size));
    if (data.labels.size() != data.size())
      throw std::invalid_argument("opnorm::batch_loader: dataset '" + data.name + "' has " +
                                  std::to_string(data.size()) + " images but " + std::to_string(data.labels.size()) +
                                  " labels");
    start_epoch(0);
  }
  batch_loader(const dataset<T>&&, index_t, batch_order = batch_order::shuffled, last_batch = last_batch::keep,
               std::uint64_t = 0) = delete;  // would refer to a temporary

  /// Draws the order of epoch `epoch` and rewinds to its first batch.
  void start_epoch(index_t epoch) {
    epoch_ = epoch;
    indices_ = epoch_order(data_->size(), order_, seed_, epoch);
    next_ = 0;
  }

  /// Copies the next batch into `images` and `labels`; false (and nothing
  /// copied) once the epoch is exhausted.
  bool next(tensor<T, backend::cpu>& images, label_tensor<backend::cpu>& labels) {
    const index_t n = data_->size();
    const index_t left = n - next_;
    if (left <= 0 || (left < batch_size_ && last_ == last_batch::drop)) return false;
    const index_t count = std::min(batch_size_, left);
    batch_indices_.assign(indices_.begin() + next_, indices_.begin() + next_ + count);
    gather_batch(*data_, batch_indices_, images, labels);
    next_ += count;
    return true;
  }

  index_t batches_per_epoch() const {
    const index_t n = data_->size();
    return last_ == last_batch::keep ? (n + batch_size_ - 1) / batch_size_ : n / batch_size_;
  }
  index_t batch_size() const { return batch_size_; }
  index_t epoch() const { return epoch_; }
  /// This epoch's order of dataset indices.
  const std::vector<index_t>& order() const { return indices_; }
  /// Dataset indices of the batch last returned by next().
  const std::vector<index_t>& batch_indices() const { return batch_indices_; }

 private:
  const dataset<T>* data_;
  index_t batch_size_;
  batch_order order_;
  last_batch last_;
  std::uint64_t seed_;
  index_t epoch_ = 0;
  std::vector<index_t> indices_;
  std::vector<index_t> batch_indices_;
  index_t next_ = 0;
};

}  // namespace opnorm
