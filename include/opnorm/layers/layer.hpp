#pragma once
// What every layer provides, and the small types layers share.
//
// A layer L<T, Backend> is a plain class with:
//
//   struct cache;                                  // what forward leaves for vjp/jvp
//   shape_t output_shape(const shape_t& in) const; // in and out include the batch
//   void forward(const tensor& x, tensor& y, cache& c, mode m);
//   void vjp(const tensor& x, const tensor& y, const cache& c, const tensor& gy,
//            tensor* gx, bool parameter_gradients);
//   void jvp(const tensor& x, const tensor& y, const cache& c, const tensor& dx,
//            tensor& dy) const;
//   void collect_state(state_list<T, Backend>& out, const std::string& prefix);
//   void initialize(std::mt19937_64& rng);
//
// forward resizes y; x is the layer input and y its output as left in the
// tape by the sequential container, so layers need not copy them. vjp
// writes dL/dx into *gx (skipped when gx is null: the first layer of a
// network does not need it) and, when parameter_gradients is true,
// *accumulates* dL/dtheta into the layer's own gradient tensors; power
// iterations pass false so they never compute parameter gradients only to
// throw them away. jvp computes J(x) dx at the point of the last forward
// (forward-mode with respect to the input; parameters held fixed).
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "../mode.hpp"
#include "../per_example.hpp"
#include "../tensor.hpp"

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

/// Fills a tensor with U(-bound, bound) drawn on the host from rng, which
/// makes initialization identical on every backend for a given seed.
template <class T, class Backend>
void fill_uniform(tensor<T, Backend>& t, std::mt19937_64& rng, double bound) {
  std::uniform_real_distribution<double> dist(-bound, bound);
  std::vector<T> v(static_cast<std::size_t>(t.size()));
  for (auto& e : v) e = static_cast<T>(dist(rng));
  backend_ops<Backend>::copy_from_host(v.data(), t.size(), t.data());
}

/// Throws std::invalid_argument naming the layer and both shapes.
inline void require_shape(bool ok, const char* layer, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("opnorm::") + layer + ": " + what);
}

}  // namespace opnorm
