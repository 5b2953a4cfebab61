#pragma once
// batch_norm: per-channel normalization of (N, C) or (N, C, spatial...)
// input, as torch.nn.BatchNorm1d / BatchNorm2d.
//
//   train: y = gamma * (x - mu_B) / sqrt(var_B + eps) + beta, with mu_B and
//          the biased var_B over the batch and all spatial positions; the
//          running statistics move towards mu_B and the *unbiased* batch
//          variance with weight momentum, and num_batches_tracked counts the
//          update (PyTorch's semantics, so checkpoints agree).
//   eval:  the same map with the running statistics: a fixed per-channel
//          affine map; nothing is updated.
//
// In train mode the batch statistics depend on every input, so the input
// derivative is not a per-channel scaling. With xhat = (x - mu) / s and
// s = sqrt(var + eps), per channel over its M = N * spatial elements,
//
//   J dx    = gamma / s * (dx - mean(dx) - xhat * mean(xhat * dx))
//   J^T gy  = gamma / s * (gy - mean(gy) - xhat * mean(xhat * gy)),
//
// the map being symmetric. Both are implemented exactly; the power method
// and the adjointness tests rely on it.
//
// One task per channel does all of a channel's reductions in a fixed order,
// so results do not depend on thread scheduling. Sums are accumulated in at
// least double precision: a channel of a 128 x 28 x 28 batch has 100352
// elements, too many for a float accumulator.
//
// Synchronized statistics (SyncBatchNorm, for data-parallel training): with
// a statistics_reducer set (synchronize_statistics), a train-mode pass
// normalizes with the mean and variance of the global batch, the union of
// every rank's shard, and its backward pass uses the global sums of gy and
// xhat * gy. Each rank's loss is the mean over its own shard, a share
// c_r = M_r / M of the global mean loss, and the data-parallel driver
// averages parameter gradients with those shares; so the backward pass
// scales its contribution to the global sums by c_r and the result back by
// 1 / c_r, which makes every rank's input gradient the exact derivative of
// the global loss in its own loss's units. Rank-local passes (eval mode,
// borrowed statistics, power iterations) never communicate.
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "../../detail/interleaved_sum.hpp"
#include "../../distributed/statistics_reducer.hpp"
#include "layer.hpp"

namespace opnorm {

template <class T = float, class Backend = backend::cpu>
class batch_norm : public detail::weight_and_bias<T, Backend> {
  using accumulator = detail::accumulator_t<T>;
  using base = detail::weight_and_bias<T, Backend>;
  using base::weight_, base::weight_grad_, base::bias_, base::bias_grad_;

 public:
  // scalar, backend_type and has_parameters come from the base: the affine
  // scale (weight) and shift (bias) are trainable (affine = false leaves the
  // list empty at run time; the type still declares it); jvp_parameter_vjp
  // below serves Eq. 8.

  /// The per-channel statistics the forward pass normalized with, and
  /// whether they were the batch's own (then they depend on the input).
  ///
  /// A pass may also borrow another pass's batch statistics
  /// (forward_with_statistics_of): data-dependent SNR evaluates
  /// f(x + eps v) with the clean batch's statistics, so that each residual
  /// depends on its own example only. The borrowed statistics are still
  /// functions of the clean batch, hence of the parameters below this layer,
  /// so the borrowing pass's backward leaves dL/dmu and dL/d(1/s) in the
  /// lender's cache, and the lender's backward (which must run after it)
  /// carries them on to the clean inputs. That makes the gradient exact.
  struct cache {
    bool batch_statistics = false;
    tensor<T, Backend> mean, inv_std;  // (C): mu and 1 / sqrt(var + eps)
    cache* lender = nullptr;           // set when the statistics are borrowed from another pass
    // Synchronized statistics: the global batch's elements per channel, and
    // this rank's share c_r of them (see the top of the file).
    bool synchronized = false;
    double global_count = 0, share = 1;
    // Filled by borrowers' backward passes, consumed by this pass's own.
    mutable bool statistics_gradient_pending = false;
    mutable tensor<T, Backend> mean_gradient, inv_std_gradient;  // (C)
  };

  explicit batch_norm(index_t features, bool affine = true, double momentum = 0.1,
                      double eps = 1e-5)
      : base(affine, {checked_features(features, momentum, eps)}, T(1), features), features_(features),
        affine_(affine), momentum_(momentum), eps_(eps) {
    running_mean_ = tensor<T, Backend>({features}, T(0));
    running_var_ = tensor<T, Backend>({features}, T(1));
  }

  /// The same layer on another backend: configuration, parameters,
  /// gradients, running statistics and num_batches_tracked copied through the
  /// host (opnorm::to in transfer.hpp moves a whole network this way).
  template <class B2>
  explicit batch_norm(const batch_norm<T, B2>& other)
      : batch_norm(other.features_, other.affine_, other.momentum_, other.eps_) {
    this->copy_parameters(other);
    running_mean_ = copy_to_backend<Backend>(other.running_mean_);
    running_var_ = copy_to_backend<Backend>(other.running_var_);
    num_batches_tracked_ = other.num_batches_tracked_;
  }
  template <class, class>
  friend class batch_norm;  // the converting constructor reads the other backend's members

  index_t features() const { return features_; }
  bool affine() const { return affine_; }
  double momentum() const { return momentum_; }
  double eps() const { return eps_; }
  tensor<T, Backend>& running_mean() { return running_mean_; }
  const tensor<T, Backend>& running_mean() const { return running_mean_; }
  tensor<T, Backend>& running_var() { return running_var_; }
  const tensor<T, Backend>& running_var() const { return running_var_; }
  std::int64_t num_batches_tracked() const { return num_batches_tracked_; }

  /// Train-mode passes normalize with the global batch's statistics, summed
  /// over ranks by reducer (which must outlive its use); null (the default)
  /// returns to per-rank statistics. A copy on another backend (to<B2>) starts
  /// unsynchronized; a copy on the same backend shares the reducer.
  void synchronize_statistics(distributed::statistics_reducer* reducer) { reducer_ = reducer; }
  distributed::statistics_reducer* statistics_synchronization() const { return reducer_; }

  shape_t output_shape(const shape_t& in) const {
    require_shape(in.size() >= 2 && in[1] == features_, "batch_norm",
                  "expects input (batch, " + std::to_string(features_) +
                      ") or (batch, " + std::to_string(features_) + ", height, width), got " +
                      shape_string(in));
    return in;
  }

  void forward(const tensor<T, Backend>& x, tensor<T, Backend>& y, cache& c, mode m) {
    y.resize(output_shape(x.shape()));
    choose_statistics(x, c, m);
    normalize(x, c, y.data(), nullptr);
  }

  /// forward, and the relu above this layer, in one pass over the
  /// activation instead of two: y as forward writes it (not at all when y
  /// is null, for a pass that keeps only the network's output) and relu_y =
  /// relu(y), the same bits as relu's forward. sequential fuses the pair
  /// this way.
  void forward_then_relu(const tensor<T, Backend>& x, tensor<T, Backend>* y, tensor<T, Backend>& relu_y, cache& c,
                         mode m) {
    if (y) y->resize(output_shape(x.shape()));
    relu_y.resize(output_shape(x.shape()));
    choose_statistics(x, c, m);
    normalize(x, c, y ? y->data() : nullptr, relu_y.data());
  }

  /// The train-mode map with another pass's batch statistics: y = gamma *
  /// (x - mu_B) / s_B + beta with mu_B, s_B taken from lender (a train-mode
  /// pass on the clean batch). Running statistics are not touched. With
  /// respect to x this is a per-channel affine map; the dependence on the
  /// lender's inputs is carried by vjp (see cache).
  void forward_with_statistics_of(const tensor<T, Backend>& x, tensor<T, Backend>& y, cache& c, cache& lender) {
    y.resize(output_shape(x.shape()));
    borrow_statistics(c, lender);
    normalize(x, c, y.data(), nullptr);
  }

  /// forward_with_statistics_of and the relu above, fused as in forward_then_relu.
  void forward_with_statistics_of_then_relu(const tensor<T, Backend>& x, tensor<T, Backend>* y,
                                            tensor<T, Backend>& relu_y, cache& c, cache& lender) {
    if (y) y->resize(output_shape(x.shape()));
    relu_y.resize(output_shape(x.shape()));
    borrow_statistics(c, lender);
    normalize(x, c, y ? y->data() : nullptr, relu_y.data());
  }

  void vjp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache& c,
           const tensor<T, Backend>& gy, tensor<T, Backend>* gx, bool parameter_gradients) {
    if (gx) gx->resize(x.shape());
    const bool parameters = parameter_gradients && affine_;
    // Borrowed statistics depend on the parameters below this layer through
    // the lender's inputs: hand dL/dmu and dL/d(1/s) to the lender. Power
    // iterations (no parameter gradients) leave the lender alone.
    if (c.lender && parameter_gradients) lend_statistics_gradient(x, c, gy);
    if (!gx && !parameters) return;
    // The train-mode map is symmetric, so J^T gy is J applied to gy; in
    // eval mode both are the per-channel scaling.
    apply_jacobian(x, c, gy, gx ? gx->data() : nullptr, parameters ? weight_grad_.data() : nullptr,
                   parameters ? bias_grad_.data() : nullptr);
    if (gx && c.statistics_gradient_pending) {
      if (c.synchronized) reduce_statistics_gradient(c);
      add_statistics_gradient(x, c, gx->data());
      c.statistics_gradient_pending = false;  // consumed: a second backward must not add it again
    }
  }

  void jvp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache& c,
           const tensor<T, Backend>& dx, tensor<T, Backend>& dy) const {
    dy.resize(x.shape());
    // A tangent is not a share of a loss: its global sums are plain sums.
    apply_jacobian(x, c, dx, dy.data(), nullptr, nullptr, /*tangent=*/true);
  }

  /// Accumulates d<g, J dx>/dgamma = sum g * (J dx) / gamma per channel, the
  /// explicit dependence of the JVP on the scale (beta does not enter J dx).
  /// The normalization statistics are held at their cached values: exact in
  /// eval mode, where they are buffers, which is how the Jacobian-form
  /// regularizer uses it.
  void jvp_parameter_vjp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache& c,
                         const tensor<T, Backend>& dx, const tensor<T, Backend>& g) {
    if (!affine_) return;
    if (c.synchronized)
      throw std::logic_error("opnorm::batch_norm: jvp_parameter_vjp holds the statistics fixed, which is exact in "
                             "eval mode only; with synchronized batch statistics run it on an eval-mode pass");
    const index_t C = features_, N = x.dim(0), S = spatial_size(x.shape());
    const accumulator M = static_cast<accumulator>(N * S);
    const bool batch = c.batch_statistics;
    const T* xs = x.data();
    const T* vs = dx.data();
    const T* gs = g.data();
    const T* mean = c.mean.data();
    const T* inv_std = c.inv_std.data();
    T* gamma_grad = weight_grad_.data();
    backend_ops<Backend>::for_each_segment(C, N * S, [=] OPNORM_HD(index_t ch) {
      const T mu = mean[ch], is = inv_std[ch];
      detail::interleaved_sum<accumulator> v_sum, xhat_v_sum, total;
      if (batch) {
        for (index_t n = 0; n < N; ++n) {
          const T* xr = xs + (n * C + ch) * S;
          const T* vr = vs + (n * C + ch) * S;
          v_sum.add(S, [=](index_t i) { return static_cast<accumulator>(vr[i]); });
          xhat_v_sum.add(S, [=](index_t i) { return static_cast<accumulator>((xr[i] - mu) * is) * vr[i]; });
        }
      }
      const T mean_v = batch ? static_cast<T>(v_sum.total() / M) : T(0);
      const T mean_xhat_v = batch ? static_cast<T>(xhat_v_sum.total() / M) : T(0);
      for (index_t n = 0; n < N; ++n) {
        const T* xr = xs + (n * C + ch) * S;
        const T* vr = vs + (n * C + ch) * S;
        const T* gr = gs + (n * C + ch) * S;
        total.add(S, [=](index_t i) {
          const T xhat = (xr[i] - mu) * is;
          return static_cast<accumulator>(gr[i]) * static_cast<accumulator>(is * (vr[i] - mean_v - xhat * mean_xhat_v));
        });
      }
      gamma_grad[ch] += static_cast<T>(total.total());
    });
  }

  /// Whether this pass's vjp is a per-channel scale of gy: statistics held
  /// fixed (running ones, or borrowed), and neither parameter gradients nor
  /// a borrower's statistics gradient to hand on. Attacks and power
  /// iterations backpropagate through such passes only.
  bool vjp_is_channel_scale(const cache& c, bool parameter_gradients) const {
    return !c.batch_statistics && !c.synchronized && !parameter_gradients && !c.statistics_gradient_pending;
  }

  /// gx = J^T (mask . gy), mask = (relu_input > 0): the VJP of a relu that
  /// follows this layer and of this layer, in one pass over the activation
  /// instead of two, where vjp_is_channel_scale. relu_input is this layer's
  /// output. sequential fuses the pair this way; the result is the same
  /// bits as relu's vjp followed by this layer's.
  void vjp_through_relu(const tensor<T, Backend>& relu_input, const cache& c, const tensor<T, Backend>& gy,
                        tensor<T, Backend>& gx) const {
    gx.resize(gy.shape());
    const index_t C = features_, N = gy.dim(0), S = spatial_size(gy.shape());
    const T* xs = relu_input.data();
    const T* gs = gy.data();
    T* out = gx.data();
    const T* inv_std = c.inv_std.data();
    const T* gamma = affine_ ? weight_.data() : nullptr;
    backend_ops<Backend>::for_each_index(N * C, [=] OPNORM_HD(index_t r) {
      const index_t ch = r % C;
      const T scale = (gamma ? gamma[ch] : T(1)) * inv_std[ch];
      const T* xr = xs + r * S;
      const T* gr = gs + r * S;
      T* o = out + r * S;
      for (index_t i = 0; i < S; ++i) {
        const T g = gr[i];  // loaded unconditionally, as relu's mask does: it vectorizes
        o[i] = scale * (xr[i] > T(0) ? g : T(0));
      }
    });
  }

  /// PyTorch's state_dict order: weight, bias, running_mean, running_var,
  /// num_batches_tracked.
  void collect_state(state_list<T, Backend>& s, const std::string& prefix) {
    this->collect_parameters(s, prefix);
    s.buffers.push_back({prefix + "running_mean", &running_mean_, nullptr});
    s.buffers.push_back({prefix + "running_var", &running_var_, nullptr});
    s.counters.push_back({prefix + "num_batches_tracked", &num_batches_tracked_});
  }

  /// PyTorch's reset: gamma = 1, beta = 0, running statistics of a standard
  /// normal, no batches seen. Draws nothing from rng.
  void initialize(std::mt19937_64&) {
    if (affine_) {
      weight_.fill(T(1));
      bias_.fill(T(0));
    }
    running_mean_.fill(T(0));
    running_var_.fill(T(1));
    num_batches_tracked_ = 0;
  }

  // The helpers below launch OPNORM_HD kernels, and nvcc rejects an extended
  // lambda inside a private or protected member function, so they are
  // public; they are not part of the interface.
 public:
  // The statistics a pass in mode m normalizes with, into c: the batch's (and
  // the running statistics updated) in train mode, the running ones in eval.
  void choose_statistics(const tensor<T, Backend>& x, cache& c, mode m) {
    const index_t C = features_, N = x.dim(0), S = spatial_size(x.shape()), M = N * S;
    c.batch_statistics = m == mode::train;
    c.lender = nullptr;
    c.statistics_gradient_pending = false;
    c.synchronized = m == mode::train && reducer_ != nullptr;
    c.global_count = static_cast<double>(M);
    c.share = 1;
    c.mean.resize({C});
    c.inv_std.resize({C});
    T* mean = c.mean.data();
    T* inv_std = c.inv_std.data();
    T* rm = running_mean_.data();
    T* rv = running_var_.data();
    const T* xs = x.data();
    const accumulator eps = static_cast<accumulator>(eps_);

    if (c.synchronized) {
      synchronized_statistics(x, c);
    } else if (m == mode::train) {
      require_shape(M > 1, "batch_norm",
                    "train mode needs more than one value per channel, got input " +
                        shape_string(x.shape()));
      const accumulator momentum = static_cast<accumulator>(momentum_);
      backend_ops<Backend>::for_each_segment(C, N * S, [=] OPNORM_HD(index_t ch) {
        // Two passes (mean, then squared deviations): no cancellation.
        detail::interleaved_sum<accumulator> sum;
        for (index_t n = 0; n < N; ++n) {
          const T* row = xs + (n * C + ch) * S;
          sum.add(S, [=](index_t i) { return static_cast<accumulator>(row[i]); });
        }
        const accumulator mu = sum.total() / static_cast<accumulator>(M);
        detail::interleaved_sum<accumulator> deviations;
        for (index_t n = 0; n < N; ++n) {
          const T* row = xs + (n * C + ch) * S;
          deviations.add(S, [=](index_t i) {
            const accumulator d = row[i] - mu;
            return d * d;
          });
        }
        const accumulator squares = deviations.total();
        const accumulator var = squares / static_cast<accumulator>(M);
        mean[ch] = static_cast<T>(mu);
        inv_std[ch] = static_cast<T>(1 / std::sqrt(var + eps));
        const accumulator unbiased = squares / static_cast<accumulator>(M - 1);
        rm[ch] = static_cast<T>((1 - momentum) * rm[ch] + momentum * mu);
        rv[ch] = static_cast<T>((1 - momentum) * rv[ch] + momentum * unbiased);
      });
      ++num_batches_tracked_;
    } else {
      backend_ops<Backend>::for_each_index(C, [=] OPNORM_HD(index_t ch) {
        mean[ch] = rm[ch];
        inv_std[ch] = static_cast<T>(1 / std::sqrt(static_cast<accumulator>(rv[ch]) + eps));
      });
    }
  }

  void borrow_statistics(cache& c, cache& lender) const {
    if (!lender.batch_statistics || lender.mean.size() != features_)
      throw std::invalid_argument("opnorm::batch_norm: statistics can only be borrowed from a train-mode pass");
    c.batch_statistics = false;
    c.lender = &lender;
    c.statistics_gradient_pending = false;
    c.synchronized = false;  // a per-channel affine map of x: nothing to share
    assign(lender.mean, c.mean);
    assign(lender.inv_std, c.inv_std);
  }

  // y = gamma * (x - mean) * inv_std + beta with the statistics in c, into
  // ys unless it is null, and relu(y) into relu_ys unless it is null (with
  // relu's rule: a NaN passes through).
  void normalize(const tensor<T, Backend>& x, const cache& c, T* ys, T* relu_ys) const {
    const index_t C = features_, N = x.dim(0), S = spatial_size(x.shape());
    const T* xs = x.data();
    const T* gamma = affine_ ? weight_.data() : nullptr;
    const T* beta = affine_ ? bias_.data() : nullptr;
    const T* mu = c.mean.data();
    const T* is = c.inv_std.data();
    backend_ops<Backend>::for_each_index(N * C, [=] OPNORM_HD(index_t r) {
      const index_t ch = r % C;
      const T scale = (gamma ? gamma[ch] : T(1)) * is[ch];
      const T shift = (beta ? beta[ch] : T(0)) - mu[ch] * scale;
      const T* in = xs + r * S;
      T* out = ys ? ys + r * S : nullptr;
      T* rectified = relu_ys ? relu_ys + r * S : nullptr;
      // One loop per case, each without branches, so that each vectorizes.
      if (out && rectified) {
        for (index_t i = 0; i < S; ++i) {
          const T v = in[i] * scale + shift;
          out[i] = v;
          rectified[i] = (v > T(0) || v != v) ? v : T(0);
        }
      } else if (rectified) {
        for (index_t i = 0; i < S; ++i) {
          const T v = in[i] * scale + shift;
          rectified[i] = (v > T(0) || v != v) ? v : T(0);
        }
      } else {
        for (index_t i = 0; i < S; ++i) out[i] = in[i] * scale + shift;
      }
    });
  }


  // Borrowing pass, y' = gamma (x' - mu) inv_std + beta: accumulates
  // dL/dmu = -gamma inv_std sum(gy) and dL/dinv_std = gamma sum(gy (x' - mu))
  // per channel into the lender's cache.
  void lend_statistics_gradient(const tensor<T, Backend>& x, const cache& c, const tensor<T, Backend>& gy) const {
    const index_t C = features_, N = x.dim(0), S = spatial_size(x.shape());
    cache& lender = *c.lender;
    if (!lender.statistics_gradient_pending) {
      lender.mean_gradient.resize({C});
      lender.inv_std_gradient.resize({C});
      lender.mean_gradient.fill(T(0));
      lender.inv_std_gradient.fill(T(0));
      lender.statistics_gradient_pending = true;
    }
    const T* xs = x.data();
    const T* gs = gy.data();
    const T* mean = c.mean.data();
    const T* inv_std = c.inv_std.data();
    const T* gamma = affine_ ? weight_.data() : nullptr;
    T* mean_gradient = lender.mean_gradient.data();
    T* inv_std_gradient = lender.inv_std_gradient.data();
    backend_ops<Backend>::for_each_segment(C, N * S, [=] OPNORM_HD(index_t ch) {
      const T mu = mean[ch];
      detail::interleaved_sum<accumulator> g_sum, g_centered_sum;
      for (index_t n = 0; n < N; ++n) {
        const T* xr = xs + (n * C + ch) * S;
        const T* gr = gs + (n * C + ch) * S;
        g_sum.add(S, [=](index_t i) { return static_cast<accumulator>(gr[i]); });
        g_centered_sum.add(S, [=](index_t i) {
          return static_cast<accumulator>(gr[i]) * static_cast<accumulator>(xr[i] - mu);
        });
      }
      const accumulator scale = gamma ? static_cast<accumulator>(gamma[ch]) : accumulator(1);
      mean_gradient[ch] += static_cast<T>(-scale * static_cast<accumulator>(inv_std[ch]) * g_sum.total());
      inv_std_gradient[ch] += static_cast<T>(scale * g_centered_sum.total());
    });
  }

  // Lending pass: with mu = mean(x) and inv_std = (var(x) + eps)^(-1/2) over
  // the channel's M elements, dmu/dx_j = 1 / M and dinv_std/dx_j =
  // -inv_std^2 xhat_j / M, so gx_j += (dL/dmu - dL/dinv_std inv_std^2 xhat_j) / M.
  void add_statistics_gradient(const tensor<T, Backend>& x, const cache& c, T* gx) const {
    const index_t C = features_, N = x.dim(0), S = spatial_size(x.shape());
    const T M = static_cast<T>(c.global_count);  // the lender's statistics were over the global batch
    const T* xs = x.data();
    const T* mean = c.mean.data();
    const T* inv_std = c.inv_std.data();
    const T* mean_gradient = c.mean_gradient.data();
    const T* inv_std_gradient = c.inv_std_gradient.data();
    backend_ops<Backend>::for_each_index(N * C, [=] OPNORM_HD(index_t r) {
      const index_t ch = r % C;
      const T mu = mean[ch], is = inv_std[ch];
      const T a = mean_gradient[ch] / M, b = inv_std_gradient[ch] * is * is / M;
      const T* xr = xs + r * S;
      T* o = gx + r * S;
      for (index_t i = 0; i < S; ++i) o[i] += a - b * ((xr[i] - mu) * is);
    });
  }

  // Elements per (example, channel): 1 for (N, C) input, H * W for (N, C, H, W).
  static index_t spatial_size(const shape_t& in) {
    return shape_size(shape_t(in.begin() + 2, in.end()));
  }

  // out = J v at the cached point (J is symmetric). When gamma_grad and
  // beta_grad are given, also accumulates sum(v * xhat) and sum(v) into them:
  // with v = gy those are dL/dgamma and dL/dbeta. out may be null.
  void apply_jacobian(const tensor<T, Backend>& x, const cache& c, const tensor<T, Backend>& v,
                      T* out, T* gamma_grad, T* beta_grad, bool tangent = false) const {
    if (c.synchronized) {
      synchronized_jacobian(x, c, v, out, gamma_grad, beta_grad, tangent);
      return;
    }
    const index_t C = features_, N = x.dim(0), S = spatial_size(x.shape());
    const accumulator M = static_cast<accumulator>(N * S);
    const bool batch = c.batch_statistics;
    const T* xs = x.data();
    const T* vs = v.data();
    const T* mean = c.mean.data();
    const T* inv_std = c.inv_std.data();
    const T* gamma = affine_ ? weight_.data() : nullptr;
    if (!batch && !gamma_grad) {
      // Running statistics and no parameter gradients (an attack's or a
      // power iteration's backward pass): J is a per-channel scale, and x
      // need not be read at all. Rows of S elements, as in normalize.
      if (!out) return;
      backend_ops<Backend>::for_each_index(N * C, [=] OPNORM_HD(index_t r) {
        const index_t ch = r % C;
        const T scale = (gamma ? gamma[ch] : T(1)) * inv_std[ch];
        const T* vr = vs + r * S;
        T* o = out + r * S;
        for (index_t i = 0; i < S; ++i) o[i] = scale * vr[i];
      });
      return;
    }
    backend_ops<Backend>::for_each_segment(C, N * S, [=] OPNORM_HD(index_t ch) {
      const T mu = mean[ch], is = inv_std[ch];
      // sum(v) and sum(xhat * v) over the channel: the batch-statistics
      // correction needs them, and so do the parameter gradients.
      detail::interleaved_sum<accumulator> v_sum, xhat_v_sum;
      if (batch || gamma_grad) {
        for (index_t n = 0; n < N; ++n) {
          const T* xr = xs + (n * C + ch) * S;
          const T* vr = vs + (n * C + ch) * S;
          v_sum.add(S, [=](index_t i) { return static_cast<accumulator>(vr[i]); });
          xhat_v_sum.add(S, [=](index_t i) {
            return static_cast<accumulator>((xr[i] - mu) * is) * vr[i];
          });
        }
      }
      const accumulator sum_v = v_sum.total(), sum_xhat_v = xhat_v_sum.total();
      if (gamma_grad) {
        gamma_grad[ch] += static_cast<T>(sum_xhat_v);
        beta_grad[ch] += static_cast<T>(sum_v);
      }
      if (!out) return;
      const T scale = (gamma ? gamma[ch] : T(1)) * is;
      const T mean_v = batch ? static_cast<T>(sum_v / M) : T(0);
      const T mean_xhat_v = batch ? static_cast<T>(sum_xhat_v / M) : T(0);
      for (index_t n = 0; n < N; ++n) {
        const T* xr = xs + (n * C + ch) * S;
        const T* vr = vs + (n * C + ch) * S;
        T* o = out + (n * C + ch) * S;
        for (index_t i = 0; i < S; ++i) {
          const T xhat = (xr[i] - mu) * is;
          o[i] = scale * (vr[i] - mean_v - xhat * mean_xhat_v);
        }
      }
    });
  }

  // Synchronized statistics (see the top of the file). The per-channel
  // work on the shard runs on the backend; the 2 C + 1 numbers per call are
  // combined on the host, where the reducer works.

  // sums[ch] = sum of x over this shard's elements of channel ch, or of
  // (x - centers[ch])^2 when centers is given; both on the backend.
  void shard_channel_sums(const tensor<T, Backend>& x, const double* centers, double* sums) const {
    const index_t C = features_, N = x.dim(0), S = spatial_size(x.shape());
    const T* xs = x.data();
    backend_ops<Backend>::for_each_segment(C, N * S, [=] OPNORM_HD(index_t ch) {
      detail::interleaved_sum<double> sum;
      for (index_t n = 0; n < N; ++n) {
        const T* row = xs + (n * C + ch) * S;
        if (centers) {
          const double center = centers[ch];
          sum.add(S, [=](index_t i) {
            const double d = static_cast<double>(row[i]) - center;
            return d * d;
          });
        } else {
          sum.add(S, [=](index_t i) { return static_cast<double>(row[i]); });
        }
      }
      sums[ch] = sum.total();
    });
  }

  // The train-mode statistics of the global batch: mean, then squared
  // deviations about it (two passes, as the per-rank path), each summed over
  // ranks; then the running statistics move as in the per-rank path, with
  // the global count in the unbiased variance.
  void synchronized_statistics(const tensor<T, Backend>& x, cache& c) {
    const index_t C = features_, M = x.dim(0) * spatial_size(x.shape());
    shard_sums_.resize({C + 1});
    shard_channel_sums(x, nullptr, shard_sums_.data());
    std::vector<double> host(static_cast<std::size_t>(C + 1));
    backend_ops<Backend>::copy_to_host(shard_sums_.data(), C, host.data());
    host[static_cast<std::size_t>(C)] = static_cast<double>(M);
    reducer_->sum(host.data(), C + 1);
    const double global = host[static_cast<std::size_t>(C)];
    require_shape(global > 1, "batch_norm",
                  "train mode needs more than one value per channel in the global batch, got " +
                      std::to_string(static_cast<long long>(global)));
    std::vector<double> mu(host.begin(), host.begin() + C);
    for (double& m : mu) m /= global;
    centers_.resize({C});
    backend_ops<Backend>::copy_from_host(mu.data(), C, centers_.data());
    shard_channel_sums(x, centers_.data(), shard_sums_.data());
    std::vector<double> squares(static_cast<std::size_t>(C));
    backend_ops<Backend>::copy_to_host(shard_sums_.data(), C, squares.data());
    reducer_->sum(squares.data(), C);

    std::vector<T> mean(static_cast<std::size_t>(C)), inv_std(static_cast<std::size_t>(C));
    std::vector<T> rm = running_mean_.to_vector(), rv = running_var_.to_vector();
    for (std::size_t ch = 0; ch < mean.size(); ++ch) {
      mean[ch] = static_cast<T>(mu[ch]);
      inv_std[ch] = static_cast<T>(1 / std::sqrt(squares[ch] / global + eps_));
      rm[ch] = static_cast<T>((1 - momentum_) * static_cast<double>(rm[ch]) + momentum_ * mu[ch]);
      rv[ch] = static_cast<T>((1 - momentum_) * static_cast<double>(rv[ch]) + momentum_ * squares[ch] / (global - 1));
    }
    backend_ops<Backend>::copy_from_host(mean.data(), C, c.mean.data());
    backend_ops<Backend>::copy_from_host(inv_std.data(), C, c.inv_std.data());
    backend_ops<Backend>::copy_from_host(rm.data(), C, running_mean_.data());
    backend_ops<Backend>::copy_from_host(rv.data(), C, running_var_.data());
    ++num_batches_tracked_;
    c.global_count = global;
    c.share = static_cast<double>(M) / global;
  }

  // apply_jacobian with the global batch's statistics: the shard's sums of
  // v and xhat * v go into the parameter gradients as they are (the driver
  // averages those), and into the correction summed over ranks. A gradient
  // is a share c_r of the global loss's (scaled by c_r going in, by 1 / c_r
  // coming out); a tangent is not scaled.
  void synchronized_jacobian(const tensor<T, Backend>& x, const cache& c, const tensor<T, Backend>& v, T* out,
                             T* gamma_grad, T* beta_grad, bool tangent) const {
    const index_t C = features_, N = x.dim(0), S = spatial_size(x.shape());
    const T* xs = x.data();
    const T* vs = v.data();
    const T* mean = c.mean.data();
    const T* inv_std = c.inv_std.data();
    shard_sums_.resize({2 * C});
    double* sums = shard_sums_.data();
    backend_ops<Backend>::for_each_segment(C, N * S, [=] OPNORM_HD(index_t ch) {
      const T mu = mean[ch], is = inv_std[ch];
      detail::interleaved_sum<double> v_sum, xhat_v_sum;
      for (index_t n = 0; n < N; ++n) {
        const T* xr = xs + (n * C + ch) * S;
        const T* vr = vs + (n * C + ch) * S;
        v_sum.add(S, [=](index_t i) { return static_cast<double>(vr[i]); });
        xhat_v_sum.add(S, [=](index_t i) { return static_cast<double>((xr[i] - mu) * is) * vr[i]; });
      }
      sums[ch] = v_sum.total();
      sums[C + ch] = xhat_v_sum.total();
    });
    if (gamma_grad) {
      backend_ops<Backend>::for_each_index(C, [=] OPNORM_HD(index_t ch) {
        gamma_grad[ch] += static_cast<T>(sums[C + ch]);
        beta_grad[ch] += static_cast<T>(sums[ch]);
      });
    }
    if (!out) return;
    std::vector<double> host(static_cast<std::size_t>(2 * C));
    backend_ops<Backend>::copy_to_host(sums, 2 * C, host.data());
    const double weight = tangent ? 1.0 : c.share;
    for (double& h : host) h *= weight;
    reducer_->sum(host.data(), 2 * C);
    std::vector<T> means(host.size());
    for (std::size_t i = 0; i < host.size(); ++i) means[i] = static_cast<T>(host[i] / weight / c.global_count);
    correction_means_.resize({2 * C});
    backend_ops<Backend>::copy_from_host(means.data(), 2 * C, correction_means_.data());
    const T* corrections = correction_means_.data();
    const T* gamma = affine_ ? weight_.data() : nullptr;
    backend_ops<Backend>::for_each_index(N * C, [=] OPNORM_HD(index_t r) {
      const index_t ch = r % C;
      const T mu = mean[ch], is = inv_std[ch];
      const T scale = (gamma ? gamma[ch] : T(1)) * is;
      const T mean_v = corrections[ch], mean_xhat_v = corrections[C + ch];
      const T* vr = vs + r * S;
      const T* xr = xs + r * S;
      T* o = out + r * S;
      for (index_t i = 0; i < S; ++i) o[i] = scale * (vr[i] - mean_v - (xr[i] - mu) * is * mean_xhat_v);
    });
  }

  // The gradient that borrowing passes left for this pass's statistics,
  // which are the global batch's: summed over ranks as shares of the global
  // loss, like synchronized_jacobian's sums.
  void reduce_statistics_gradient(const cache& c) const {
    const index_t C = features_;
    std::vector<double> host(static_cast<std::size_t>(2 * C));
    const std::vector<T> mean_gradient = c.mean_gradient.to_vector(), inv_std_gradient = c.inv_std_gradient.to_vector();
    for (index_t ch = 0; ch < C; ++ch) {
      host[static_cast<std::size_t>(ch)] = c.share * static_cast<double>(mean_gradient[static_cast<std::size_t>(ch)]);
      host[static_cast<std::size_t>(C + ch)] =
          c.share * static_cast<double>(inv_std_gradient[static_cast<std::size_t>(ch)]);
    }
    reducer_->sum(host.data(), 2 * C);
    std::vector<T> reduced(host.size());
    for (std::size_t i = 0; i < host.size(); ++i) reduced[i] = static_cast<T>(host[i] / c.share);
    backend_ops<Backend>::copy_from_host(reduced.data(), C, c.mean_gradient.data());
    backend_ops<Backend>::copy_from_host(reduced.data() + C, C, c.inv_std_gradient.data());
  }

 private:
  // The checks that must precede the allocation of the per-feature tensors.
  static index_t checked_features(index_t features, double momentum, double eps) {
    require_shape(features > 0, "batch_norm", "the number of features must be positive");
    require_shape(momentum >= 0 && momentum <= 1, "batch_norm", "momentum must lie in [0, 1]");
    require_shape(eps > 0, "batch_norm", "eps must be positive");
    return features;
  }

  index_t features_;
  bool affine_;
  double momentum_, eps_;
  tensor<T, Backend> running_mean_, running_var_;
  std::int64_t num_batches_tracked_ = 0;
  distributed::statistics_reducer* reducer_ = nullptr;  // null: per-rank statistics
  // Scratch of the synchronized paths: per-channel sums of the shard, the
  // global means they are centred on, the correction terms of the backward.
  mutable tensor<double, Backend> shard_sums_, centers_;
  mutable tensor<T, Backend> correction_means_;
};

/// torch.nn.BatchNorm1d and BatchNorm2d are the same computation here; the
/// aliases only say at the declaration which input the network feeds.
template <class T = float, class Backend = backend::cpu>
using batch_norm1d = batch_norm<T, Backend>;
template <class T = float, class Backend = backend::cpu>
using batch_norm2d = batch_norm<T, Backend>;

}  // namespace opnorm
