#pragma once
// Loss and accuracy of a model on a whole dataset, in eval mode.
#include <stdexcept>
#include <type_traits>

#include "../data/batching.hpp"
#include "../data/dataset.hpp"
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
  evaluation result;
  using B = typename Model::backend_type;
  typename Model::tape tape;
  batch_transfer<T, B> batch;
  batch_loader<T> batches(data, batch_size, batch_order::sequential, last_batch::keep);
  double loss_sum = 0;
  while (batches.next(batch.host_images, batch.host_labels)) {
    batch.to_backend();
    const auto& x = batch.images();
    const auto& y = batch.labels();
    const index_t count = x.dim(0);
    const auto& logits = model.forward(x, tape, mode::eval);
    loss_sum += softmax_cross_entropy::evaluate(logits, y, static_cast<typename Model::tensor_type*>(nullptr),
                                                reduction::sum);
    result.correct += count_correct(logits, y);
    result.examples += count;
  }
  if (result.examples > 0) {
    result.loss = loss_sum / static_cast<double>(result.examples);
    result.accuracy = static_cast<double>(result.correct) / static_cast<double>(result.examples);
  }
  return result;
}

}  // namespace opnorm
