#pragma once
// xview(t): an xtensor view with the tensor's shape over its memory, so users
// can apply xtensor expressions to tensors whose memory the host can read.
#include <xtensor/xadapt.hpp>

#include "tensor.hpp"

namespace opnorm {

template <class T, class B>
auto xview(tensor<T, B>& t) {
  static_assert(tensor<T, B>::host_accessible, "xview needs a tensor in host memory");
  return xt::adapt(t.data(), static_cast<std::size_t>(t.size()), xt::no_ownership(), t.shape());
}
template <class T, class B>
auto xview(const tensor<T, B>& t) {
  static_assert(tensor<T, B>::host_accessible, "xview needs a tensor in host memory");
  return xt::adapt(t.data(), static_cast<std::size_t>(t.size()), xt::no_ownership(), t.shape());
}

}  // namespace opnorm
