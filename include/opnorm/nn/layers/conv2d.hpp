#pragma once
// conv2d: 2-d cross-correlation over NCHW input, as torch.nn.Conv2d with a
// square kernel, zero padding, dilation 1 and groups 1. The weight is OIHW.
//
// Every pass is lowered to GEMMs on an im2col matrix: for one example,
// col (Cin*k*k x Ho*Wo) holds in row (c, kh, kw) the input pixels that tap
// (kh, kw) of channel c sees at each output position, so that
//
//   forward / jvp : y_n  = W col_n               (Cout x Cin*k*k)(Cin*k*k x Ho*Wo)
//   weight grad   : dW  += sum_n gy_n col_n^T     (one deterministic batched sum)
//   input grad    : gx_n = col2im(W^T gy_n)
//
// col2im is written in gather form (each input plane is produced by exactly
// one task, which adds its contributions in a fixed order), so it needs no
// atomics and gives the same bits on every run.
//
// 3x3 convolutions with stride 1 and enough input channels take another
// route to the same result: Winograd's F(2x2, 3x3) (layers/winograd.hpp),
// which needs 16 multiplications per 2x2 output tile where im2col's GEMM
// needs 36, and lowers every pass to 16 GEMMs over the tiles of a chunk.
// conv_algorithm below chooses; `automatic` takes Winograd where it applies
// and the input has at least winograd_min_in_channels channels (with fewer,
// the GEMMs are too thin to pay for the transforms).
//
// The batch is processed in chunks whose im2col matrices fit in a fixed
// budget (column_budget elements): small enough that the matrix is still in
// cache when the GEMMs read it back (larger chunks measured up to 25% slower
// on fmnist_cnn) and that the scratch does not grow with the batch, large
// enough to give every thread of a batched GEMM examples to work on. The
// scratch lives in the cache object, so steady-state passes do not allocate.
#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "../../detail/interleaved_sum.hpp"
#include "layer.hpp"
#include "winograd.hpp"

namespace opnorm {

namespace detail {

/// The output positions o in [begin, end) whose tap reads input position
/// o * stride - padding + tap inside [0, in_size). Positions outside that
/// range read zero padding.
struct tap_range {
  index_t begin, end;
};

OPNORM_HD inline tap_range valid_outputs(index_t in_size, index_t out_size, index_t stride,
                                         index_t padding, index_t tap) {
  const index_t lead = padding - tap;  // o * stride >= lead
  index_t begin = lead <= 0 ? 0 : (lead + stride - 1) / stride;
  const index_t last = in_size - 1 + padding - tap;  // o * stride <= last
  index_t end = last < 0 ? 0 : last / stride + 1;
  begin = begin < out_size ? begin : out_size;
  end = end < out_size ? end : out_size;
  end = end > begin ? end : begin;
  return {begin, end};
}

}  // namespace detail

/// How conv2d lowers its passes to GEMMs (see the head of this file).
enum class conv_algorithm {
  automatic,  ///< winograd where it applies and pays, im2col elsewhere
  im2col,     ///< every kernel size and stride
  winograd,   ///< F(2x2, 3x3): 3x3 kernels with stride 1 only
};

template <class T = float, class Backend = backend::cpu>
class conv2d : public detail::weight_and_bias<T, Backend> {
  using base = detail::weight_and_bias<T, Backend>;
  using base::weight_, base::weight_grad_, base::bias_, base::bias_grad_;

 public:
  // scalar, backend_type, has_parameters (trainable weight and bias;
  // jvp_parameter_vjp below serves Eq. 8) and the accessors come from the base.

  /// im2col scratch, reused across passes. vjp and jvp receive the cache as
  /// const (it describes the forward point), but the scratch is not part of
  /// that description, hence mutable.
  struct cache {
    mutable tensor<T, Backend> columns;
    // Winograd's transformed filter U (16 x Cout x Cin) of the weights at
    // the forward pass, the workers' weight gradients dU (same shape each),
    // and the transformed tiles of a chunk: V or dV (16 x Cin x tiles) and
    // M or dM (16 x Cout x tiles).
    mutable tensor<T, Backend> filter, filter_grad, tiles_in, tiles_out;
  };

  /// Elements of im2col scratch a chunk of the batch may use (4 MiB in float).
  static constexpr index_t column_budget = index_t{1} << 20;
  /// Elements of transformed tiles (V or M) a Winograd chunk may use. On
  /// the host a chunk is one thread's task, and smaller is faster as long as
  /// the GEMMs stay wide (measured on fmnist_cnn: 2^16, one example per
  /// chunk, beat 2^18 and 2^20 by 20-30%; docs/performance.md); a device
  /// wants wide batched GEMMs instead.
  static constexpr index_t tile_budget = index_t{1} << 16;
  static constexpr index_t device_tile_budget = index_t{1} << 22;
  /// automatic uses Winograd from this many input channels on.
  static constexpr index_t winograd_min_in_channels = 8;

  conv2d(index_t in_channels, index_t out_channels, index_t kernel_size, index_t stride = 1,
         index_t padding = 0, bool bias = true)
      : base(true, checked_weight_shape(in_channels, out_channels, kernel_size, stride, padding), T(0),
             bias ? out_channels : 0),
        in_(in_channels), out_(out_channels), k_(kernel_size), stride_(stride), pad_(padding) {}

  /// The same layer on another backend: configuration, parameters and
  /// gradients copied through the host (opnorm::to in transfer.hpp moves a
  /// whole network this way).
  template <class B2>
  explicit conv2d(const conv2d<T, B2>& other)
      : conv2d(other.in_channels(), other.out_channels(), other.kernel_size(), other.stride(), other.padding(),
               other.has_bias()) {
    this->copy_parameters(other);
    algorithm_ = other.algorithm();
  }

  index_t in_channels() const { return in_; }
  index_t out_channels() const { return out_; }
  index_t kernel_size() const { return k_; }
  index_t stride() const { return stride_; }
  index_t padding() const { return pad_; }

  /// The requested lowering; winograd is refused for a layer it cannot run.
  conv_algorithm algorithm() const { return algorithm_; }
  void set_algorithm(conv_algorithm a) {
    require_shape(a != conv_algorithm::winograd || winograd_applies(), "conv2d",
                  "the winograd algorithm needs a 3x3 kernel with stride 1, got " + std::to_string(k_) + "x" +
                      std::to_string(k_) + " with stride " + std::to_string(stride_));
    algorithm_ = a;
  }
  /// Whether the passes run as Winograd F(2x2, 3x3) (else im2col).
  bool uses_winograd() const {
    if (algorithm_ == conv_algorithm::automatic) return winograd_applies() && in_ >= winograd_min_in_channels;
    return algorithm_ == conv_algorithm::winograd;
  }
  bool winograd_applies() const { return k_ == 3 && stride_ == 1; }

  /// Examples per chunk for a batch of this input shape, whichever algorithm runs.
  index_t examples_per_chunk(const shape_t& in) const {
    const geometry g = geometry_of(in);
    return uses_winograd() ? winograd_chunk(g) : chunk_size(g);
  }

  /// (N, Cin, H, W) -> (N, Cout, (H + 2p - k) / s + 1, (W + 2p - k) / s + 1).
  shape_t output_shape(const shape_t& in) const {
    require_shape(in.size() == 4 && in[1] == in_, "conv2d",
                  "expects input (batch, " + std::to_string(in_) + ", height, width), got " +
                      shape_string(in));
    require_shape(in[2] + 2 * pad_ >= k_ && in[3] + 2 * pad_ >= k_, "conv2d",
                  "input " + shape_string(in) + " is smaller than the " + std::to_string(k_) + "x" +
                      std::to_string(k_) + " kernel with padding " + std::to_string(pad_));
    return {in[0], out_, (in[2] + 2 * pad_ - k_) / stride_ + 1, (in[3] + 2 * pad_ - k_) / stride_ + 1};
  }

  void forward(const tensor<T, Backend>& x, tensor<T, Backend>& y, cache& c, mode) {
    y.resize(output_shape(x.shape()));
    if (uses_winograd()) {  // the output transform adds the bias
      convolve_winograd(x, y, c, this->has_bias() ? bias_.data() : nullptr, /*fresh_filter=*/true);
      return;
    }
    if (this->has_bias()) {
      // The GEMMs accumulate onto the bias, which saves a pass over y.
      const T* b = bias_.data();
      T* ys = y.data();
      const index_t out = out_, plane = y.dim(2) * y.dim(3);
      backend_ops<Backend>::for_each_index(y.dim(0) * out, [=] OPNORM_HD(index_t r) {
        const T v = b[r % out];
        T* row = ys + r * plane;
        for (index_t i = 0; i < plane; ++i) row[i] = v;
      });
    }
    convolve_im2col(x, y, c, this->has_bias() ? T(1) : T(0));
  }

  void vjp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache& c,
           const tensor<T, Backend>& gy, tensor<T, Backend>* gx, bool parameter_gradients) {
    const geometry g = geometry_of(x.shape());
    if (gx) gx->resize(x.shape());
    if (!gx && !parameter_gradients) return;
    if (uses_winograd())
      winograd_vjp(g, x, c, gy, gx, parameter_gradients);
    else
      im2col_vjp(g, x, c, gy, gx, parameter_gradients);
    if (parameter_gradients && this->has_bias()) {
      const T* gs = gy.data();
      T* bg = bias_grad_.data();
      const index_t out = out_, batch = g.batch, plane = g.plane_out();
      // One task per output channel sums its rows in a fixed order, in at
      // least double precision (a channel of a 128 x 28 x 28 batch has
      // 100352 terms).
      backend_ops<Backend>::for_each_segment(out, batch * plane, [=] OPNORM_HD(index_t o) {
        detail::interleaved_sum<detail::accumulator_t<T>> sum;
        for (index_t n = 0; n < batch; ++n) {
          const T* row = gs + (n * out + o) * plane;
          sum.add(plane, [=](index_t i) { return static_cast<detail::accumulator_t<T>>(row[i]); });
        }
        bg[o] += static_cast<T>(sum.total());
      });
    }
  }

  /// Accumulates d<g, J dx>/dW into the weight gradient: the weight
  /// gradient of the convolution evaluated at the tangent dx instead of the
  /// input (J dx is the bias-free convolution of dx, linear in W).
  void jvp_parameter_vjp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache& c,
                         const tensor<T, Backend>& dx, const tensor<T, Backend>& g) {
    // The weight gradient of the VJP with dx in place of the input and g in
    // place of the output gradient, without the input gradient.
    const geometry geo = geometry_of(x.shape());
    if (uses_winograd())
      winograd_vjp(geo, dx, c, g, nullptr, true);
    else
      im2col_vjp(geo, dx, c, g, nullptr, true);
  }

  /// The convolution is linear in its input; the bias does not depend on it.
  void jvp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache& c,
           const tensor<T, Backend>& dx, tensor<T, Backend>& dy) const {
    dy.resize(output_shape(x.shape()));
    if (uses_winograd())
      convolve_winograd(dx, dy, c, nullptr, /*fresh_filter=*/false);
    else
      convolve_im2col(dx, dy, c, T(0));
  }

  void collect_state(state_list<T, Backend>& s, const std::string& prefix) { this->collect_parameters(s, prefix); }

  /// The kernel (out, in, k, k) is the layer's one weight matrix, read as
  /// (out, in * k * k), for the global spectral norm regularizer
  /// (sequential::weight_matrices).
  void collect_weight_matrices(std::vector<named_tensor<T, Backend>>& out, const std::string& prefix) {
    out.push_back({prefix + "weight", &weight_, &weight_grad_});
  }

  /// PyTorch's default: kaiming_uniform(a = sqrt(5)) for the weight, which is
  /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias,
  /// with fan_in = Cin * k * k.
  void initialize(std::mt19937_64& rng) {
    this->fill_uniform_parameters(rng, 1.0 / std::sqrt(static_cast<double>(in_ * k_ * k_)));
  }

  // The helpers below launch OPNORM_HD kernels, and nvcc rejects an extended
  // lambda inside a private or protected member function, so they are
  // public; they are not part of the interface.
 public:
  struct geometry {
    index_t batch, channels, height, width, out_height, out_width, k_rows;
    index_t plane_in() const { return height * width; }
    index_t plane_out() const { return out_height * out_width; }
    index_t column_size() const { return k_rows * plane_out(); }  // per example
  };

  geometry geometry_of(const shape_t& in) const {
    const shape_t out = output_shape(in);
    return {in[0], in_, in[2], in[3], out[2], out[3], in_ * k_ * k_};
  }

  index_t chunk_size(const geometry& g) const {
    return std::max<index_t>(1, std::min<index_t>(g.batch, column_budget / g.column_size()));
  }

  index_t winograd_chunk(const geometry& g) const {
    const index_t per_example = detail::winograd::positions * std::max(in_, out_) * winograd_tiling(g).tiles();
    const index_t budget = backend_ops<Backend>::host_accessible ? tile_budget : device_tile_budget;
    return std::max<index_t>(1, std::min<index_t>(g.batch, budget / per_example));
  }
  detail::winograd::tiling winograd_tiling(const geometry& g) const {
    return {g.height, g.width, g.out_height, g.out_width, pad_};
  }

  // Input gradient and/or weight gradient of the im2col lowering.
  void im2col_vjp(const geometry& g, const tensor<T, Backend>& x, const cache& c, const tensor<T, Backend>& gy,
                  tensor<T, Backend>* gx, bool parameter_gradients) {
    const index_t chunk = chunk_size(g);
    c.columns.resize({chunk * g.column_size()});
    T* col = c.columns.data();
    for (index_t n0 = 0; n0 < g.batch; n0 += chunk) {
      const index_t count = std::min(chunk, g.batch - n0);
      const T* gy_chunk = gy.data() + n0 * out_ * g.plane_out();
      if (parameter_gradients) {
        im2col(g, x.data() + n0 * in_ * g.plane_in(), col, count);
        // dW (Cout x K) += sum_n gy_n (Cout x P) col_n^T (P x K)
        backend_ops<Backend>::gemm_batched_sum(false, true, out_, g.k_rows, g.plane_out(), T(1),
                                  gy_chunk, g.plane_out(), out_ * g.plane_out(), col, g.plane_out(),
                                  g.column_size(), T(1), weight_grad_.data(), g.k_rows, count);
      }
      if (gx) {
        // The columns are no longer needed: reuse them for W^T gy_n (K x P).
        backend_ops<Backend>::gemm_batched(true, false, g.k_rows, g.plane_out(), out_, T(1),
                              weight_.data(), g.k_rows, index_t{0}, gy_chunk, g.plane_out(),
                              out_ * g.plane_out(), T(0), col, g.plane_out(), g.column_size(), count);
        col2im(g, col, gx->data() + n0 * in_ * g.plane_in(), count);
      }
    }
  }

  // The same with Winograd (layers/winograd.hpp), one host task per chunk:
  // dM = out^T(gy); the weight gradient accumulates dU_xi += dM_xi V_xi^T
  // into the task's worker's own dU, and the workers' dU are mapped back to
  // 3x3 and added in worker order (the same bits for a given thread count,
  // as gemm_batched_sum); the input gradient is in^T(U_xi^T dM_xi).
  // jvp_parameter_vjp calls this with (dx, g) in place of (x, gy).
  void winograd_vjp(const geometry& g, const tensor<T, Backend>& x, const cache& c, const tensor<T, Backend>& gy,
                    tensor<T, Backend>* gx, bool parameter_gradients) {
    namespace wino = detail::winograd;
    using ops = backend_ops<Backend>;
    const winograd_plan plan = plan_winograd(g, c);
    const wino::tiling& geo = plan.geo;
    const index_t chunk = plan.chunk, workers = plan.workers, in_size = plan.in_size, out_size = plan.out_size;
    const index_t filter_size = wino::positions * out_ * in_;
    if (gx) prepare_filter(c, false);
    if (parameter_gradients) {
      c.filter_grad.resize({workers * filter_size});
      ops::fill(c.filter_grad.data(), workers * filter_size, T(0));
    }
    ops::for_each_task(plan.chunks, [&](index_t task, int worker) {
      const index_t n0 = task * chunk, count = std::min(chunk, g.batch - n0), columns = count * geo.tiles();
      T *v = c.tiles_in.data() + worker * in_size, *m = c.tiles_out.data() + worker * out_size;
      wino::transform_output_adjoint<Backend>(geo, gy.data() + n0 * out_ * g.plane_out(), out_, count, m);
      if (parameter_gradients) {
        wino::transform_input<Backend>(geo, x.data() + n0 * in_ * g.plane_in(), in_, count, v);
        // dU_xi (Cout x Cin) += dM_xi (Cout x tiles) V_xi^T (tiles x Cin)
        ops::gemm_batched(false, true, out_, in_, columns, T(1), m, columns, out_ * columns, v, columns,
                          in_ * columns, T(1), c.filter_grad.data() + worker * filter_size, in_, out_ * in_,
                          wino::positions);
      }
      if (gx) {
        // dV_xi (Cin x tiles) = U_xi^T (Cin x Cout) dM_xi (Cout x tiles), into V's storage.
        ops::gemm_batched(true, false, in_, columns, out_, T(1), c.filter.data(), in_, out_ * in_, m, columns,
                          out_ * columns, T(0), v, columns, in_ * columns, wino::positions);
        wino::transform_input_adjoint<Backend>(geo, v, in_, count, gx->data() + n0 * in_ * g.plane_in());
      }
    });
    if (parameter_gradients)
      for (index_t w = 0; w < workers; ++w)
        wino::add_filter_adjoint<Backend>(c.filter_grad.data() + w * filter_size, out_, in_, weight_grad_.data());
  }

  // y_n = conv(x_n) + beta y_n for every example, chunk by chunk, through im2col.
  void convolve_im2col(const tensor<T, Backend>& x, tensor<T, Backend>& y, const cache& c, T beta) const {
    const geometry g = geometry_of(x.shape());
    const index_t chunk = chunk_size(g);
    c.columns.resize({chunk * g.column_size()});
    T* col = c.columns.data();
    for (index_t n0 = 0; n0 < g.batch; n0 += chunk) {
      const index_t count = std::min(chunk, g.batch - n0);
      im2col(g, x.data() + n0 * in_ * g.plane_in(), col, count);
      backend_ops<Backend>::gemm_batched(false, false, out_, g.plane_out(), g.k_rows, T(1),
                            weight_.data(), g.k_rows, index_t{0}, col, g.plane_out(),
                            g.column_size(), beta, y.data() + n0 * out_ * g.plane_out(),
                            g.plane_out(), out_ * g.plane_out(), count);
    }
  }

  // How a Winograd pass cuts the batch: examples per chunk, chunks, the
  // workers that run them, and each worker's share of the tile scratch (V
  // or dV, M or dM), which is sized here.
  struct winograd_plan {
    detail::winograd::tiling geo;
    index_t chunk, chunks, workers, in_size, out_size;
  };
  winograd_plan plan_winograd(const geometry& g, const cache& c) const {
    winograd_plan p;
    p.geo = winograd_tiling(g);
    p.chunk = winograd_chunk(g);
    p.chunks = (g.batch + p.chunk - 1) / p.chunk;
    p.workers = std::min<index_t>(backend_ops<Backend>::task_workers(), p.chunks);
    // Each worker's share ends in stream_slack values: the transforms read
    // whole packs past a plane's last tile (and mask them off), and the
    // slack keeps those reads inside the worker's own share.
    p.in_size = detail::winograd::positions * in_ * p.chunk * p.geo.tiles() + detail::winograd::stream_slack<T>;
    p.out_size = detail::winograd::positions * out_ * p.chunk * p.geo.tiles() + detail::winograd::stream_slack<T>;
    c.tiles_in.resize({p.workers * p.in_size});
    c.tiles_out.resize({p.workers * p.out_size});
    return p;
  }

  // U = G W G^T into the cache: by the forward pass (fresh), and by a JVP or
  // VJP only when the cache has none (they describe the forward point, whose
  // weights are the ones transformed then; a batch-1 Jacobian runs 10 VJPs
  // per forward, and transforming 64 x 64 filters each time cost 20% of it).
  void prepare_filter(const cache& c, bool fresh) const {
    const index_t size = detail::winograd::positions * out_ * in_;
    if (!fresh && c.filter.size() == size) return;
    c.filter.resize({size});
    detail::winograd::transform_filter<Backend>(weight_.data(), out_, in_, c.filter.data());
  }

  // V = in(x); M_xi = U_xi V_xi; y = out(M) + bias (none: null), one host
  // task per chunk. fresh_filter: the forward pass (re)transforms the
  // weights; the JVP reuses what that forward pass left in the cache.
  void convolve_winograd(const tensor<T, Backend>& x, tensor<T, Backend>& y, const cache& c, const T* bias,
                         bool fresh_filter) const {
    namespace wino = detail::winograd;
    using ops = backend_ops<Backend>;
    const geometry g = geometry_of(x.shape());
    const winograd_plan plan = plan_winograd(g, c);
    const wino::tiling& geo = plan.geo;
    const index_t chunk = plan.chunk, in_size = plan.in_size, out_size = plan.out_size;
    prepare_filter(c, fresh_filter);
    ops::for_each_task(plan.chunks, [&](index_t task, int worker) {
      const index_t n0 = task * chunk, count = std::min(chunk, g.batch - n0), columns = count * geo.tiles();
      T *v = c.tiles_in.data() + worker * in_size, *m = c.tiles_out.data() + worker * out_size;
      wino::transform_input<Backend>(geo, x.data() + n0 * in_ * g.plane_in(), in_, count, v);
      // M_xi (Cout x tiles) = U_xi (Cout x Cin) V_xi (Cin x tiles)
      ops::gemm_batched(false, false, out_, columns, in_, T(1), c.filter.data(), in_, out_ * in_, v, columns,
                        in_ * columns, T(0), m, columns, out_ * columns, wino::positions);
      wino::transform_output<Backend>(geo, m, out_, count, bias, y.data() + n0 * out_ * g.plane_out());
    });
  }

  // col[n][(c, kh, kw)][oh][ow] = x[n][c][oh*s - p + kh][ow*s - p + kw], zero
  // outside the image. One task fills the Ho x Wo plane of one (n, c, kh, kw):
  // per-row work is only Wo elements, too little to pay for index arithmetic
  // and a task of its own. Because n and c are the outer indices of both x
  // and col, the task index (n*C + c)*k*k + kh*k + kw splits into the input
  // plane n*C + c and the tap with two divisions.
  void im2col(const geometry& g, const T* x, T* col, index_t count) const {
    const index_t k = k_, s = stride_, p = pad_, H = g.height, W = g.width, Ho = g.out_height,
                  Wo = g.out_width;
    backend_ops<Backend>::for_each_segment(count * g.k_rows, Ho * Wo, [=] OPNORM_HD(index_t tap) {
      const index_t kw = tap % k, kh = (tap / k) % k, plane = tap / (k * k);
      const index_t shift = kw - p;  // input column = ow * s + shift
      T* dst = col + tap * Ho * Wo;
      const detail::tap_range rows = detail::valid_outputs(H, Ho, s, p, kh);
      const detail::tap_range cols = detail::valid_outputs(W, Wo, s, p, kw);
      for (index_t i = 0; i < rows.begin * Wo; ++i) dst[i] = T(0);
      for (index_t oh = rows.begin; oh < rows.end; ++oh) {
        T* out = dst + oh * Wo;
        const T* in = x + (plane * H + oh * s - p + kh) * W;
        for (index_t ow = 0; ow < cols.begin; ++ow) out[ow] = T(0);
        if (s == 1)
          for (index_t ow = cols.begin; ow < cols.end; ++ow) out[ow] = in[ow + shift];
        else
          for (index_t ow = cols.begin; ow < cols.end; ++ow) out[ow] = in[ow * s + shift];
        for (index_t ow = cols.end; ow < Wo; ++ow) out[ow] = T(0);
      }
      for (index_t i = rows.end * Wo; i < Ho * Wo; ++i) dst[i] = T(0);
    });
  }

  // The adjoint of im2col: gx[n][c][h][w] = sum of the column entries that
  // im2col copied from (h, w). One task owns one input plane (n, c) and adds
  // the contributions of its k*k column planes in a fixed order.
  void col2im(const geometry& g, const T* col, T* gx, index_t count) const {
    const index_t k = k_, s = stride_, p = pad_, H = g.height, W = g.width, Ho = g.out_height,
                  Wo = g.out_width;
    backend_ops<Backend>::for_each_segment(count * g.channels, H * W, [=] OPNORM_HD(index_t plane) {
      T* dst = gx + plane * H * W;
      for (index_t i = 0; i < H * W; ++i) dst[i] = T(0);
      for (index_t kh = 0; kh < k; ++kh) {
        const detail::tap_range rows = detail::valid_outputs(H, Ho, s, p, kh);
        for (index_t kw = 0; kw < k; ++kw) {
          const detail::tap_range cols = detail::valid_outputs(W, Wo, s, p, kw);
          const T* src = col + ((plane * k + kh) * k + kw) * Ho * Wo;
          const index_t shift = kw - p;  // input column = ow * s + shift
          for (index_t oh = rows.begin; oh < rows.end; ++oh) {
            const T* in = src + oh * Wo;
            T* out = dst + (oh * s - p + kh) * W;
            if (s == 1)
              for (index_t ow = cols.begin; ow < cols.end; ++ow) out[ow + shift] += in[ow];
            else
              for (index_t ow = cols.begin; ow < cols.end; ++ow) out[ow * s + shift] += in[ow];
          }
        }
      }
    });
  }

 private:
  // The shape of the kernel, after the checks that must precede its allocation.
  static shape_t checked_weight_shape(index_t in_channels, index_t out_channels, index_t kernel_size, index_t stride,
                                      index_t padding) {
    require_shape(in_channels > 0 && out_channels > 0, "conv2d", "channel counts must be positive");
    require_shape(kernel_size > 0, "conv2d", "kernel_size must be positive");
    require_shape(stride > 0, "conv2d", "stride must be positive");
    require_shape(padding >= 0, "conv2d", "padding must not be negative");
    return {out_channels, in_channels, kernel_size, kernel_size};
  }

  index_t in_, out_, k_, stride_, pad_;
  conv_algorithm algorithm_ = conv_algorithm::automatic;
};

}  // namespace opnorm
