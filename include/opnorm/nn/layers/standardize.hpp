#pragma once
// standardize: y = (x - mean_c) / std_c per channel, with fixed statistics
// (torchvision's Normalize as a module).
//
// Standardization is part of the model rather than of the data pipeline so
// that inputs, perturbation radii and box constraints all live in [0, 1]
// pixel space, where users of attack libraries expect them. The statistics
// are buffers ("mean", "std"), saved with the model but never trained.
#include <string>
#include <vector>

#include "layer.hpp"

namespace opnorm {

template <class T = float, class Backend = backend::cpu>
class standardize {
 public:
  using scalar = T;
  using backend_type = Backend;
  struct cache {};

  /// One value per channel, or a single value shared by all channels.
  standardize(const std::vector<T>& mean, const std::vector<T>& stddev) {
    require_shape(!mean.empty() && mean.size() == stddev.size(), "standardize",
                  "needs as many standard deviations as means (at least one), got " +
                      std::to_string(mean.size()) + " means and " + std::to_string(stddev.size()) +
                      " standard deviations");
    for (T s : stddev)
      require_shape(s > T(0), "standardize", "standard deviations must be positive");
    const index_t c = static_cast<index_t>(mean.size());
    mean_ = tensor<T, Backend>::from_vector({c}, mean);
    std_ = tensor<T, Backend>::from_vector({c}, stddev);
  }

  /// The same layer on another backend (its statistics copied through the host).
  template <class B2>
  explicit standardize(const standardize<T, B2>& other)
      : standardize(other.mean().to_vector(), other.stddev().to_vector()) {}

  index_t channels() const { return mean_.size(); }
  const tensor<T, Backend>& mean() const { return mean_; }
  const tensor<T, Backend>& stddev() const { return std_; }

  shape_t output_shape(const shape_t& in) const {
    const bool shared = channels() == 1;
    require_shape(in.size() >= 2 && (shared || in[1] == channels()), "standardize",
                  "expects input (batch, " + (shared ? std::string("channels") : std::to_string(channels())) +
                      ", ...), got " + shape_string(in));
    return in;
  }

  void forward(const tensor<T, Backend>& x, tensor<T, Backend>& y, cache&, mode) {
    y.resize(output_shape(x.shape()));
    const T* m = mean_.data();
    const T* sd = std_.data();
    // Divide rather than multiply by 1/std, to give PyTorch's bits.
    scale_rows(x, y, [=] OPNORM_HD(T v, index_t c) { return (v - m[c]) / sd[c]; });
  }

  void vjp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache&,
           const tensor<T, Backend>& gy, tensor<T, Backend>* gx, bool) {
    if (!gx) return;
    gx->resize(x.shape());
    const T* sd = std_.data();
    scale_rows(gy, *gx, [=] OPNORM_HD(T v, index_t c) { return v / sd[c]; });
  }

  void jvp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache&,
           const tensor<T, Backend>& dx, tensor<T, Backend>& dy) const {
    dy.resize(x.shape());
    const T* sd = std_.data();
    scale_rows(dx, dy, [=] OPNORM_HD(T v, index_t c) { return v / sd[c]; });
  }

  void collect_state(state_list<T, Backend>& s, const std::string& prefix) {
    s.buffers.push_back({prefix + "mean", &mean_, nullptr});
    s.buffers.push_back({prefix + "std", &std_, nullptr});
  }

  /// The statistics are data, not parameters: nothing to draw.
  void initialize(std::mt19937_64&) {}

  // The helpers below launch OPNORM_HD kernels, and nvcc rejects an extended
  // lambda inside a private or protected member function, so they are
  // public; they are not part of the interface.
 public:
  // out[n][c][...] = f(in[n][c][...], c'), with c' = c, or 0 when one value
  // serves every channel. One invocation per (n, c) row of contiguous pixels.
  template <class F>
  void scale_rows(const tensor<T, Backend>& in, tensor<T, Backend>& out, F f) const {
    const index_t C = in.dim(1), S = shape_size(shape_t(in.shape().begin() + 2, in.shape().end()));
    const bool shared = channels() == 1;
    const T* is = in.data();
    T* os = out.data();
    backend_ops<Backend>::for_each_index(in.dim(0) * C, [=] OPNORM_HD(index_t r) {
      const index_t c = shared ? 0 : r % C;
      const T* src = is + r * S;
      T* dst = os + r * S;
      for (index_t i = 0; i < S; ++i) dst[i] = f(src[i], c);
    });
  }

 private:
  tensor<T, Backend> mean_, std_;
};

}  // namespace opnorm
