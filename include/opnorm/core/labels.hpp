#pragma once
// Class labels, and the two questions asked of logits against them: which
// class each row predicts, and how many rows predict their label. Losses,
// methods, the trainer and the attacks share these.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "per_example.hpp"
#include "tensor.hpp"

namespace opnorm {

/// Class labels, one per example, on the same backend as the logits.
template <class Backend = backend::cpu>
using label_tensor = tensor<std::int32_t, Backend>;

/// The number of rows of logits (n, classes) whose largest entry is at the
/// label. Ties go to the first maximal class, as torch.argmax does; a row
/// holding a NaN counts as wrong. Counted on the backend: one integer
/// reaches the host.
template <class T, class B>
index_t count_correct(const tensor<T, B>& logits, const label_tensor<B>& labels) {
  const index_t n = logits.dim(0), k = logits.example_size();
  if (labels.size() != n)
    throw std::invalid_argument("opnorm::count_correct: " + std::to_string(labels.size()) +
                                " labels for " + std::to_string(n) + " examples");
  const T* z = logits.data();
  const std::int32_t* y = labels.data();
  // detail::argmax_row gives -1 for a row holding a NaN, which matches no label.
  return backend_ops<B>::template sum<index_t>(
      n, [=] OPNORM_HD(index_t i) { return index_t(detail::argmax_row(z + i * k, k) == y[i]); });
}

}  // namespace opnorm
