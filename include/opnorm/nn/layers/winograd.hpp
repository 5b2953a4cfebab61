#pragma once
// Winograd's minimal filtering F(2x2, 3x3) for conv2d's 3x3, stride-1 case:
// the transforms, their adjoints, and the tiling they share.
//
// The output is cut into 2x2 tiles; tile (i, j) reads the 4x4 input patch
// whose top-left corner is (2i - padding, 2j - padding), zero outside the
// image. For one input channel c, one output channel o and one tile,
//
//   Y = A^T [ (G g G^T) .* (B^T d B) ] A          (Lavin & Gray, 2016)
//
// with g the 3x3 kernel, d the 4x4 patch, and
//
//   B^T = [1  0 -1  0]    G = [ 1    0    0 ]    A^T = [1  1  1  0]
//         [0  1  1  0]        [1/2  1/2  1/2]          [0  1 -1 -1]
//         [0 -1  1  0]        [1/2 -1/2  1/2]
//         [0  1  0 -1]        [ 0    0    1 ]
//
// which is the cross-correlation sum_{r,s} d[i+r][j+s] g[r][s] exactly, in
// 16 multiplications per tile instead of 36. Summed over input channels, the
// products become 16 independent GEMMs, one per position xi of the 4x4
// transformed tile:
//
//   M_xi (Cout x tiles) = U_xi (Cout x Cin) V_xi (Cin x tiles)
//
// with U = G g G^T and V = B^T d B. Every pass of conv2d is this computation
// or its exact adjoint (the transposes of the same linear maps), so forward,
// JVP, VJP and the weight gradient stay mutually consistent to rounding:
//
//   forward / jvp  : V = in(x); M_xi = U_xi V_xi;            y = out(M)
//   input grad     : dM = out^T(gy); dV_xi = U_xi^T dM_xi;    gx = in^T(dV)
//   weight grad    : dU_xi += dM_xi V_xi^T;                   dW += filter^T(dU)
//
// The transform matrices hold only 0, +-1 and +-1/2, so in float the result
// differs from the direct sum by a few units in the last place of the
// largest terms (measured in tests/test_layer_conv2d.cpp).
//
// Layouts: U and dU are (16, Cout, Cin); V and dV are (16, Cin, tiles) and M
// and dM (16, Cout, tiles), where "tiles" runs over the examples of a chunk
// and, within an example, over tile rows then tile columns.
//
// The 1-d transforms are written out rather than stored as matrices: device
// code cannot index a host array, and unrolled they are a handful of adds.
#include <cstring>

#include "../../backend/backend.hpp"
#include "../../core/tensor.hpp"

namespace opnorm::detail::winograd {

/// Positions of a transformed tile (4 x 4).
constexpr index_t positions = 16;

/// The tiling of one convolution: input and output sizes and padding.
struct tiling {
  index_t height, width, out_height, out_width, padding;
  OPNORM_HD index_t tile_rows() const { return (out_height + 1) / 2; }
  OPNORM_HD index_t tile_cols() const { return (out_width + 1) / 2; }
  OPNORM_HD index_t tiles() const { return tile_rows() * tile_cols(); }  // per example
};

// 1-d transforms on 4 (or 3, or 2) values at stride `step`, in place where
// the size does not change. Each adjoint is the transpose of its map.

/// d -> B^T d.
template <class T>
OPNORM_HD inline void input_1d(T* v, index_t step) {
  const T d0 = v[0], d1 = v[step], d2 = v[2 * step], d3 = v[3 * step];
  v[0] = d0 - d2;
  v[step] = d1 + d2;
  v[2 * step] = d2 - d1;
  v[3 * step] = d1 - d3;
}
/// v -> B v (the adjoint of input_1d).
template <class T>
OPNORM_HD inline void input_adjoint_1d(T* v, index_t step) {
  const T v0 = v[0], v1 = v[step], v2 = v[2 * step], v3 = v[3 * step];
  v[0] = v0;
  v[step] = v1 - v2 + v3;
  v[2 * step] = v1 + v2 - v0;
  v[3 * step] = -v3;
}
/// g (3 values) -> G g (4 values).
template <class T>
OPNORM_HD inline void filter_1d(const T* g, index_t g_step, T* u, index_t u_step) {
  const T g0 = g[0], g1 = g[g_step], g2 = g[2 * g_step];
  u[0] = g0;
  u[u_step] = T(0.5) * (g0 + g1 + g2);
  u[2 * u_step] = T(0.5) * (g0 - g1 + g2);
  u[3 * u_step] = g2;
}
/// u (4 values) -> G^T u (3 values), the adjoint of filter_1d.
template <class T>
OPNORM_HD inline void filter_adjoint_1d(const T* u, index_t u_step, T* g, index_t g_step) {
  const T u0 = u[0], u1 = u[u_step], u2 = u[2 * u_step], u3 = u[3 * u_step];
  g[0] = u0 + T(0.5) * (u1 + u2);
  g[g_step] = T(0.5) * (u1 - u2);
  g[2 * g_step] = T(0.5) * (u1 + u2) + u3;
}
/// m (4 values) -> A^T m (2 values).
template <class T>
OPNORM_HD inline void output_1d(const T* m, index_t m_step, T* y, index_t y_step) {
  const T m0 = m[0], m1 = m[m_step], m2 = m[2 * m_step], m3 = m[3 * m_step];
  y[0] = m0 + m1 + m2;
  y[y_step] = m1 - m2 - m3;
}
/// y (2 values) -> A y (4 values), the adjoint of output_1d.
template <class T>
OPNORM_HD inline void output_adjoint_1d(const T* y, index_t y_step, T* m, index_t m_step) {
  const T y0 = y[0], y1 = y[y_step];
  m[0] = y0;
  m[m_step] = y0 + y1;
  m[2 * m_step] = y0 - y1;
  m[3 * m_step] = -y1;
}

/// U[xi][o][c] = (G g_{o,c} G^T)[xi] for an OIHW 3x3 weight.
template <class B, class T>
void transform_filter(const T* weight, index_t out, index_t in, T* u) {
  const index_t pairs = out * in;
  backend_ops<B>::for_each_index(pairs, [=] OPNORM_HD(index_t pair) {
    const T* g = weight + pair * 9;
    T half[12], full[16];  // G g (4 x 3), then (G g) G^T (4 x 4)
    for (index_t col = 0; col < 3; ++col) filter_1d(g + col, 3, half + col, 3);
    for (index_t row = 0; row < 4; ++row) filter_1d(half + row * 3, 1, full + row * 4, 1);
    for (index_t xi = 0; xi < positions; ++xi) u[xi * pairs + pair] = full[xi];
  });
}

/// weight_grad[o][c] += G^T dU_{o,c} G: the adjoint of transform_filter,
/// added to the gradient.
template <class B, class T>
void add_filter_adjoint(const T* du, index_t out, index_t in, T* weight_grad) {
  const index_t pairs = out * in;
  backend_ops<B>::for_each_index(pairs, [=] OPNORM_HD(index_t pair) {
    T full[16], half[12], g[9];
    for (index_t xi = 0; xi < positions; ++xi) full[xi] = du[xi * pairs + pair];
    for (index_t row = 0; row < 4; ++row) filter_adjoint_1d(full + row * 4, 1, half + row * 3, 1);
    for (index_t col = 0; col < 3; ++col) filter_adjoint_1d(half + col, 3, g + col, 3);
    T* dw = weight_grad + pair * 9;
    for (index_t i = 0; i < 9; ++i) dw[i] += g[i];
  });
}

// The four tile transforms below work on one row of tiles at a time, in
// blocks of up to block_tiles tiles: the rows of the block's input (or
// output) are copied into a small zero-padded buffer, the transform runs
// along rows and along columns as straight loops over the block (which the
// compiler vectorizes), and each of the 16 positions is a contiguous run in
// its own stream of V, M, dV or dM. (Transforming tile by tile instead
// gathers 16 scattered values per tile and costs several times more.)
constexpr index_t block_tiles = 32;
constexpr index_t block_span = 2 * block_tiles + 2;  // input columns a block of tiles reads

/// dst[0, n) = src[0, n) for the short runs the transforms move (a row of
/// a block, at most block_span values), as fixed-size copies. A plain copy
/// loop is recognized as memcpy and compiled into `rep movsq`, whose
/// start-up cost on runs this short took a third of
/// transform_output_adjoint's time (docs/performance.md, change 10).
template <class T>
OPNORM_HD inline void copy_short(T* dst, const T* src, index_t n) {
  index_t s = 0;
  for (; s + 8 <= n; s += 8) std::memcpy(dst + s, src + s, 8 * sizeof(T));
  if (s + 4 <= n) {
    std::memcpy(dst + s, src + s, 4 * sizeof(T));
    s += 4;
  }
  if (s + 2 <= n) {
    std::memcpy(dst + s, src + s, 2 * sizeof(T));
    s += 2;
  }
  if (s < n) dst[s] = src[s];
}

/// dst[s] = row[first + s] for s in [0, span), zero outside [0, width) and
/// everywhere when the row itself lies outside the image.
/// Separate zero fills and copy rather than one loop with a condition: the
/// compiler turns the conditional copy into masked loads, which measured 3x
/// slower.
template <class T>
OPNORM_HD inline void load_padded(const T* row, bool row_inside, index_t first, index_t width, index_t span,
                                  T* dst) {
  index_t begin = first < 0 ? -first : 0, end = width - first;
  if (end > span) end = span;
  if (!row_inside || end < begin) end = begin = span;  // also when [first, first + span) misses the row
  for (index_t s = 0; s < begin; ++s) dst[s] = T(0);
  copy_short(dst + begin, row + first + begin, end - begin);
  for (index_t s = end; s < span; ++s) dst[s] = T(0);
}

// Where the `count` examples of a chunk, `channels` planes each, keep their
// tiles in V, M, dV or dM: plane (n, c)'s tiles start at offset(plane) in
// position 0's stream, and each position's stream lies `stride` after the
// previous one. The four transforms below share it and for_each_block, so
// that they cannot disagree on where a tile lives.
struct tile_streams {
  index_t channels, tiles, row_length, stride;
  tile_streams(const tiling& geo, index_t channels_, index_t count)
      : channels(channels_), tiles(geo.tiles()), row_length(count * tiles), stride(channels * row_length) {}
  OPNORM_HD index_t offset(index_t plane) const {
    return (plane % channels) * row_length + (plane / channels) * tiles;
  }
};

/// f(ti, tj0, nt) for each block of a plane: tile row ti, tiles tj0 ..
/// tj0 + nt - 1 of that row, nt <= block_tiles.
template <class F>
OPNORM_HD inline void for_each_block(const tiling& geo, F f) {
  const index_t cols = geo.tile_cols();
  for (index_t ti = 0; ti < geo.tile_rows(); ++ti)
    for (index_t tj0 = 0; tj0 < cols; tj0 += block_tiles)
      f(ti, tj0, cols - tj0 < block_tiles ? cols - tj0 : block_tiles);
}

/// V[xi][c][n * tiles + t] = (B^T d B)[xi] for the `count` examples of x
/// (NCHW, `channels` channels). One task per input plane (n, c).
template <class B, class T>
void transform_input(const tiling& geo, const T* x, index_t channels, index_t count, T* v) {
  const tile_streams ts(geo, channels, count);
  backend_ops<B>::for_each_segment(count * channels, geo.height * geo.width, [=] OPNORM_HD(index_t plane) {
    const index_t H = geo.height, W = geo.width, cols = geo.tile_cols(), stream = ts.stride;
    const T* in = x + plane * H * W;
    T* dst = v + ts.offset(plane);
    T d[4][block_span], t[4][block_span];
    for_each_block(geo, [&](index_t ti, index_t tj0, index_t nt) {
      const index_t span = 2 * nt + 2, top = 2 * ti - geo.padding, left = 2 * tj0 - geo.padding;
      for (index_t r = 0; r < 4; ++r) {
        const index_t h = top + r;
        load_padded(in + h * W, h >= 0 && h < H, left, W, span, d[r]);
      }
      for (index_t s = 0; s < span; ++s) {  // B^T d, down each column
        t[0][s] = d[0][s] - d[2][s];
        t[1][s] = d[1][s] + d[2][s];
        t[2][s] = d[2][s] - d[1][s];
        t[3][s] = d[1][s] - d[3][s];
      }
      T* out = dst + ti * cols + tj0;
      for (index_t r = 0; r < 4; ++r) {  // (B^T d) B, along each row, tile j at columns 2j .. 2j+3
        const T* row = t[r];
        T *o0 = out + (4 * r) * stream, *o1 = o0 + stream, *o2 = o1 + stream, *o3 = o2 + stream;
        for (index_t j = 0; j < nt; ++j) {
          o0[j] = row[2 * j] - row[2 * j + 2];
          o1[j] = row[2 * j + 1] + row[2 * j + 2];
          o2[j] = row[2 * j + 2] - row[2 * j + 1];
          o3[j] = row[2 * j + 1] - row[2 * j + 3];
        }
      }
    });
  });
}

/// gx[n][c] = sum over tiles of (B dV B^T), the adjoint of transform_input:
/// each 4x4 patch is added back where transform_input read it, dropping
/// what falls on the padding. One task per input plane, tiles in a fixed
/// order: no atomics, the same bits on every run.
template <class B, class T>
void transform_input_adjoint(const tiling& geo, const T* dv, index_t channels, index_t count, T* gx) {
  const tile_streams ts(geo, channels, count);
  backend_ops<B>::for_each_segment(count * channels, geo.height * geo.width, [=] OPNORM_HD(index_t plane) {
    const index_t H = geo.height, W = geo.width, cols = geo.tile_cols(), stream = ts.stride;
    T* out = gx + plane * H * W;
    for (index_t i = 0; i < H * W; ++i) out[i] = T(0);
    const T* src = dv + ts.offset(plane);
    T t[4][block_span];
    for_each_block(geo, [&](index_t ti, index_t tj0, index_t nt) {
      const index_t span = 2 * nt + 2, top = 2 * ti - geo.padding, left = 2 * tj0 - geo.padding;
      const T* in = src + ti * cols + tj0;
      for (index_t r = 0; r < 4; ++r) {
        // Along the row: tile j adds B (v0, v1, v2, v3) = (v0, v1 - v2 + v3,
        // v1 + v2 - v0, -v3) to columns 2j .. 2j+3. Gathered per column
        // pair: column 2j gets tile j's first and tile j-1's third entry,
        // column 2j+1 tile j's second and tile j-1's fourth.
        const T *v0 = in + (4 * r) * stream, *v1 = v0 + stream, *v2 = v1 + stream, *v3 = v2 + stream;
        T* row = t[r];
        row[0] = v0[0];
        row[1] = v1[0] - v2[0] + v3[0];
        for (index_t j = 1; j < nt; ++j) {
          row[2 * j] = v0[j] + (v1[j - 1] + v2[j - 1] - v0[j - 1]);
          row[2 * j + 1] = (v1[j] - v2[j] + v3[j]) - v3[j - 1];
        }
        row[2 * nt] = v1[nt - 1] + v2[nt - 1] - v0[nt - 1];
        row[2 * nt + 1] = -v3[nt - 1];
      }
      // Down the columns: B applied to the four rows, added to the plane.
      for (index_t r = 0; r < 4; ++r) {
        const index_t h = top + r;
        if (h < 0 || h >= H) continue;
        T* target = out + h * W;
        const index_t begin = left < 0 ? -left : 0, end = W - left < span ? W - left : span;
        for (index_t s = begin; s < end; ++s) {
          const T a0 = t[0][s], a1 = t[1][s], a2 = t[2][s], a3 = t[3][s];
          const T value = r == 0 ? a0 : r == 1 ? a1 - a2 + a3 : r == 2 ? a1 + a2 - a0 : -a3;
          target[left + s] += value;
        }
      }
    });
  });
}

/// y[n][o] = A^T M A + beta y[n][o] for every tile, keeping the outputs
/// inside the (out_height x out_width) plane. One task per output plane.
template <class B, class T>
void transform_output(const tiling& geo, const T* m, index_t channels, index_t count, T beta, T* y) {
  const tile_streams ts(geo, channels, count);
  backend_ops<B>::for_each_segment(count * channels, geo.out_height * geo.out_width, [=] OPNORM_HD(index_t plane) {
    const index_t Ho = geo.out_height, Wo = geo.out_width, cols = geo.tile_cols(), stream = ts.stride;
    T* out = y + plane * Ho * Wo;
    const T* src = m + ts.offset(plane);
    T half[2][4][block_tiles], result[2][2 * block_tiles];
    for_each_block(geo, [&](index_t ti, index_t tj0, index_t nt) {
      const T* in = src + ti * cols + tj0;
      for (index_t s = 0; s < 4; ++s) {  // A^T M, down each column s of the tile
        const T *m0 = in + s * stream, *m1 = m0 + 4 * stream, *m2 = m1 + 4 * stream, *m3 = m2 + 4 * stream;
        for (index_t j = 0; j < nt; ++j) {
          half[0][s][j] = m0[j] + m1[j] + m2[j];
          half[1][s][j] = m1[j] - m2[j] - m3[j];
        }
      }
      for (index_t r = 0; r < 2; ++r)  // (A^T M) A, along each row
        for (index_t j = 0; j < nt; ++j) {
          result[r][2 * j] = half[r][0][j] + half[r][1][j] + half[r][2][j];
          result[r][2 * j + 1] = half[r][1][j] - half[r][2][j] - half[r][3][j];
        }
      const index_t left = 2 * tj0, width = Wo - left < 2 * nt ? Wo - left : 2 * nt;
      for (index_t r = 0; r < 2; ++r) {
        const index_t h = 2 * ti + r;
        if (h >= Ho) continue;
        T* target = out + h * Wo + left;
        if (beta == T(0))
          copy_short(target, result[r], width);
        else
          for (index_t s = 0; s < width; ++s) target[s] = beta * target[s] + result[r][s];
      }
    });
  });
}

/// dM[xi][o][n * tiles + t] = (A dY A^T)[xi], the adjoint of
/// transform_output: outputs beyond the plane (a partial last tile) count
/// as zero.
template <class B, class T>
void transform_output_adjoint(const tiling& geo, const T* gy, index_t channels, index_t count, T* dm) {
  const tile_streams ts(geo, channels, count);
  backend_ops<B>::for_each_segment(count * channels, geo.out_height * geo.out_width, [=] OPNORM_HD(index_t plane) {
    const index_t Ho = geo.out_height, Wo = geo.out_width, cols = geo.tile_cols(), stream = ts.stride;
    const T* in = gy + plane * Ho * Wo;
    T* dst = dm + ts.offset(plane);
    T g[2][2 * block_tiles], half[2][4][block_tiles];
    for_each_block(geo, [&](index_t ti, index_t tj0, index_t nt) {
      const index_t left = 2 * tj0;
      for (index_t r = 0; r < 2; ++r) {
        const index_t h = 2 * ti + r;
        load_padded(in + h * Wo, h < Ho, left, Wo, 2 * nt, g[r]);
      }
      for (index_t r = 0; r < 2; ++r)  // dY A^T, along each row: A (y0, y1) = (y0, y0 + y1, y0 - y1, -y1)
        for (index_t j = 0; j < nt; ++j) {
          const T y0 = g[r][2 * j], y1 = g[r][2 * j + 1];
          half[r][0][j] = y0;
          half[r][1][j] = y0 + y1;
          half[r][2][j] = y0 - y1;
          half[r][3][j] = -y1;
        }
      T* out = dst + ti * cols + tj0;
      for (index_t s = 0; s < 4; ++s) {  // A (dY A^T), down each column s
        T *o0 = out + s * stream, *o1 = o0 + 4 * stream, *o2 = o1 + 4 * stream, *o3 = o2 + 4 * stream;
        for (index_t j = 0; j < nt; ++j) {
          const T y0 = half[0][s][j], y1 = half[1][s][j];
          o0[j] = y0;
          o1[j] = y0 + y1;
          o2[j] = y0 - y1;
          o3[j] = -y1;
        }
      }
    });
  });
}

}  // namespace opnorm::detail::winograd
