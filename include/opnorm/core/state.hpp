#pragma once
// A model's state as named views, with PyTorch's state_dict names: what
// layers list, optimizers bind to, methods expose for checkpoints and io
// reads and writes. Shared by all of them, so it belongs to none of them.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "tensor.hpp"

namespace opnorm {

/// A named view of one tensor of a model's state, with PyTorch state_dict
/// naming ("3.weight", "4.running_mean").
template <class T, class Backend>
struct named_tensor {
  std::string name;
  tensor<T, Backend>* value;
  tensor<T, Backend>* grad;  // null for buffers, which are not trained
};

/// An int64 scalar of a model's state (BatchNorm's num_batches_tracked).
struct named_counter {
  std::string name;
  std::int64_t* value;
};

template <class T, class Backend>
struct state_list {
  std::vector<named_tensor<T, Backend>> parameters;  // trainable, with gradients
  std::vector<named_tensor<T, Backend>> buffers;     // running statistics, constants
  std::vector<named_counter> counters;
};

/// Copies every tensor (value, and gradient where both sides have one) and
/// counter of from into the entry of to with the same name, through the
/// host; the two lists may live on different backends. Both must have the
/// same names and shapes (the same network, or the same optimizer or method
/// state): anything else throws std::invalid_argument before a copy, since a
/// partial transfer would leave a model that is neither one nor the other.
template <class T, class B, class B2>
void copy_state(const state_list<T, B>& from, const state_list<T, B2>& to) {
  auto check = [](const auto& source, const auto& target, const char* kind) {
    if (source.size() != target.size())
      throw std::invalid_argument(std::string("opnorm::copy_state: ") + std::to_string(source.size()) + " " + kind +
                                  " to copy into " + std::to_string(target.size()));
    for (std::size_t i = 0; i < source.size(); ++i) {
      if (source[i].name != target[i].name)
        throw std::invalid_argument(std::string("opnorm::copy_state: ") + kind + " " + std::to_string(i) +
                                    " is '" + source[i].name + "' in the source and '" + target[i].name +
                                    "' in the target");
      if constexpr (!std::is_same_v<std::decay_t<decltype(source[i])>, named_counter>)
        if (source[i].value->shape() != target[i].value->shape())
          throw std::invalid_argument(std::string("opnorm::copy_state: ") + kind + " '" + source[i].name +
                                      "' is " + shape_string(source[i].value->shape()) + " in the source and " +
                                      shape_string(target[i].value->shape()) + " in the target");
    }
  };
  check(from.parameters, to.parameters, "parameters");
  check(from.buffers, to.buffers, "buffers");
  check(from.counters, to.counters, "counters");
  auto copy = [](const tensor<T, B>& source, tensor<T, B2>& target) {
    const std::vector<T> host = source.to_vector();
    backend_ops<B2>::copy_from_host(host.data(), target.size(), target.data());
  };
  for (std::size_t i = 0; i < from.parameters.size(); ++i) {
    copy(*from.parameters[i].value, *to.parameters[i].value);
    if (from.parameters[i].grad && to.parameters[i].grad) copy(*from.parameters[i].grad, *to.parameters[i].grad);
  }
  for (std::size_t i = 0; i < from.buffers.size(); ++i) copy(*from.buffers[i].value, *to.buffers[i].value);
  for (std::size_t i = 0; i < from.counters.size(); ++i) *to.counters[i].value = *from.counters[i].value;
}

}  // namespace opnorm
