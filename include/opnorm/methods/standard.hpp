#pragma once
// standard: empirical risk minimization with softmax cross-entropy, the
// baseline every robust method is compared against.
#include "../core/mode.hpp"
#include "method.hpp"

namespace opnorm {

struct standard {
  static constexpr const char* name = "standard";

  /// One forward pass in train mode (BatchNorm uses batch statistics and
  /// updates its running statistics), mean cross-entropy, one backward pass
  /// for the parameter gradients only: nothing needs dL/dx, so it is skipped.
  template <class Model>
  batch_result accumulate_gradients(Model& model, typename Model::tape& tape,
                                    const typename Model::tensor_type& x,
                                    const label_tensor<typename Model::backend_type>& y) {
    const auto& logits = model.forward(x, tape, mode::train);
    typename Model::tensor_type logit_gradient;  // (n, classes): too small to be worth caching
    const double loss = softmax_cross_entropy::evaluate(logits, y, &logit_gradient, reduction::mean);
    const index_t correct = count_correct(logits, y);
    model.vjp(tape, logit_gradient, nullptr, true);
    return {loss, correct, x.dim(0)};
  }
};

}  // namespace opnorm
