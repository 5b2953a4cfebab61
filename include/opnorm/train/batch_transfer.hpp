#pragma once
// batch_transfer: a batch gathered in host memory (where datasets live),
// presented to a model on backend B. On the cpu backend the host tensors are
// the model's input and nothing is copied; on another backend the batch is
// copied into device tensors kept from batch to batch.
#include <type_traits>

#include "../nn/losses.hpp"
#include "../core/tensor.hpp"

namespace opnorm {

template <class T, class B>
struct batch_transfer {
  static constexpr bool same_memory = std::is_same_v<B, backend::cpu>;

  tensor<T, backend::cpu> host_images;
  label_tensor<backend::cpu> host_labels;

  /// Makes images() and labels() show the current host batch.
  void to_backend() {
    if constexpr (!same_memory) {
      device_images_.resize(host_images.shape());
      backend_ops<B>::copy_from_host(host_images.data(), host_images.size(), device_images_.data());
      device_labels_.resize(host_labels.shape());
      backend_ops<B>::copy_from_host(host_labels.data(), host_labels.size(), device_labels_.data());
    }
  }

  const tensor<T, B>& images() const {
    if constexpr (same_memory) return host_images;
    else return device_images_;
  }
  const label_tensor<B>& labels() const {
    if constexpr (same_memory) return host_labels;
    else return device_labels_;
  }

 private:
  // Unused (empty) on the cpu backend.
  tensor<T, B> device_images_;
  label_tensor<B> device_labels_;
};

}  // namespace opnorm
