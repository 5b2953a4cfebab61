#pragma once
// Loss and accuracy of a model on a whole dataset, in eval mode.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "../data/batching.hpp"
#include "../data/dataset.hpp"
#include "../distributed/data_parallel.hpp"
#include "../nn/losses.hpp"
#include "../methods/method.hpp"
#include "../core/mode.hpp"
#include "batch_transfer.hpp"

namespace opnorm {

struct evaluation {
  double loss = 0;       // mean softmax cross-entropy
  double accuracy = 0;   // fraction correct
  index_t correct = 0;
  index_t examples = 0;
};

namespace detail {
// Examples [begin, end) of data in batches of batch_size, in eval mode:
// the summed loss in double (fixed order) and the correct count.
template <class Model, class T>
void evaluate_range(Model& model, const dataset<T>& data, index_t begin, index_t end, index_t batch_size,
                    double& loss_sum, index_t& correct) {
  using B = typename Model::backend_type;
  typename Model::tape tape;
  batch_transfer<T, B> batch;
  std::vector<index_t> indices;
  for (index_t start = begin; start < end; start += batch_size) {
    const index_t count = std::min(batch_size, end - start);
    indices.resize(static_cast<std::size_t>(count));
    for (index_t k = 0; k < count; ++k) indices[static_cast<std::size_t>(k)] = start + k;
    gather_batch(data, indices, batch.host_images, batch.host_labels);
    batch.to_backend();
    const auto& logits = model.forward(batch.images(), tape, mode::eval);
    loss_sum += softmax_cross_entropy::evaluate(logits, batch.labels(),
                                                static_cast<typename Model::tensor_type*>(nullptr), reduction::sum);
    correct += count_correct(logits, batch.labels());
  }
}

inline evaluation make_evaluation(double loss_sum, index_t correct, index_t examples) {
  evaluation result;
  result.correct = correct;
  result.examples = examples;
  if (examples > 0) {
    result.loss = loss_sum / static_cast<double>(examples);
    result.accuracy = static_cast<double>(correct) / static_cast<double>(examples);
  }
  return result;
}
}  // namespace detail

/// Evaluates model on data in batches of batch_size (the last one may be
/// smaller), in eval mode: BatchNorm uses its running statistics and nothing
/// of the model changes. The result does not depend on batch_size beyond
/// floating-point summation order. The per-batch losses are summed in double
/// in a fixed order, so the result is reproducible.
template <class Model, class T>
evaluation evaluate(Model& model, const dataset<T>& data, index_t batch_size = 256) {
  static_assert(std::is_same_v<typename Model::scalar, T>,
                "evaluate: the dataset's pixel type must be the model's scalar type");
  if (batch_size <= 0) throw std::invalid_argument("opnorm::evaluate: batch_size must be > 0");
  double loss_sum = 0;
  index_t correct = 0;
  detail::evaluate_range(model, data, 0, data.size(), batch_size, loss_sum, correct);
  return detail::make_evaluation(loss_sum, correct, data.size());
}

/// The same evaluation split across the ranks of a job: each rank evaluates
/// its contiguous shard of the data (distributed::shard_of) and the sums are
/// reduced, so every rank returns the whole dataset's loss and accuracy.
/// The model must be the same on every rank.
template <class Communicator, class Model, class T,
          class = std::enable_if_t<distributed::is_communicator_v<Communicator>>>
evaluation evaluate(Communicator& comm, Model& model, const dataset<T>& data, index_t batch_size = 256) {
  static_assert(std::is_same_v<typename Model::scalar, T>,
                "evaluate: the dataset's pixel type must be the model's scalar type");
  if (batch_size <= 0) throw std::invalid_argument("opnorm::evaluate: batch_size must be > 0");
  const distributed::shard part = distributed::shard_of(data.size(), comm.rank(), comm.size());
  double loss_sum = 0;
  index_t correct = 0;
  detail::evaluate_range(model, data, part.begin, part.end, batch_size, loss_sum, correct);
  std::int64_t count = correct;
  comm.all_reduce_sum(&loss_sum, 1);
  comm.all_reduce_sum(&count, 1);
  return detail::make_evaluation(loss_sum, static_cast<index_t>(count), data.size());
}

}  // namespace opnorm
