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
#include "../../detail/simd.hpp"
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
/// g (3 values) -> G g (4 values), for a pack of filters at once
/// (transform_filter).
template <class T>
OPNORM_HD inline void filter_1d(const simd::pack<T>* g, index_t g_step, simd::pack<T>* u, index_t u_step) {
  const simd::pack<T> g0 = g[0], g1 = g[g_step], g2 = g[2 * g_step];
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

/// U[xi][o][c] = (G g_{o,c} G^T)[xi] for an OIHW 3x3 weight, for a pack of
/// (o, c) pairs at a time: position xi's results for consecutive pairs are
/// consecutive in U, so each position is one store. (One pair at a time,
/// the 16 stores went to 16 streams, and transforming fmnist_cnn's filters
/// took 7% of a batch-1 Jacobian.)
template <class B, class T>
void transform_filter(const T* weight, index_t out, index_t in, T* u) {
  constexpr index_t L = simd::lanes<T>;
  const index_t pairs = out * in, blocks = (pairs + L - 1) / L;
  backend_ops<B>::for_each_index(blocks, [=] OPNORM_HD(index_t block) {
    const index_t first = block * L, valid = pairs - first < L ? pairs - first : L;
    simd::pack<T> g[9], half[12], full[16];  // g, G g (4 x 3), then (G g) G^T (4 x 4)
    for (index_t k = 0; k < 9; ++k) {
      T taps[L];  // tap k of the block's pairs; zero past the last pair
      for (index_t i = 0; i < L; ++i) taps[i] = i < valid ? weight[(first + i) * 9 + k] : T(0);
      g[k] = simd::load(taps);
    }
    for (index_t col = 0; col < 3; ++col) filter_1d<T>(g + col, 3, half + col, 3);
    for (index_t row = 0; row < 4; ++row) filter_1d<T>(half + row * 3, 1, full + row * 4, 1);
    for (index_t xi = 0; xi < positions; ++xi) {
      if (valid == L) {
        simd::store(u + xi * pairs + first, full[xi]);
      } else {
        T values[L];
        simd::store(values, full[xi]);
        simd::copy_short(u + xi * pairs + first, values, valid);
      }
    }
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

// The four tile transforms below work in blocks of block_tiles<T> tiles of
// one tile row, one simd pack (detail/simd.hpp) per position of the 4x4
// tile: 8 tiles in float, 4 in double. A block's 16 packs go to (or come
// from) the 16 position streams of V, M, dV or dM with one store (or load)
// each. (Transforming tile by tile instead gathers 16 scattered values per
// tile and costs several times more; loops over the tiles of a row stayed
// scalar on short rows and cost twice what packs do.)
//
// Lanes past the row's end. A block always computes a whole pack, even
// where the row has fewer tiles left (fmnist_cnn's rows have 14 and 7). Its
// lanes past the row's end then hold the first tiles of the next row, and a
// block writes them as a whole only where that next row is written later by
// the same task (block_fits): the next row overwrites them. At the plane's
// end only the valid lanes move, so no task touches another's plane and
// nothing outside the buffers is read or written.
//
// Windows. The input transform reads the image, and the input adjoint adds
// into it, through a window: a zero-padded copy of the rows and columns a
// band of tile rows reads (or writes), held in a local array of
// window_values entries. The padding is then data, and every block reads
// its window rows at fixed offsets. (The output adjoint reads dY in place:
// it has no padding.)
template <class T>
constexpr index_t block_tiles = simd::lanes<T>;
/// Values a buffer of V, M, dV or dM must hold past its last stream, which
/// a block at the end of the last plane reads (and masks off).
template <class T>
constexpr index_t stream_slack = block_tiles<T>;
constexpr index_t window_values = 4096;
constexpr index_t band_max_cols = 64;  // tile columns per band: at least 14 tile rows fit any band

/// dst[s] = row[first + s] for s in [0, span), zero outside [0, width) and
/// everywhere when the row itself lies outside the image, a pack at a time:
/// packs wholly inside are copied, packs wholly outside zeroed, and the (at
/// most two) packs across an edge are zeroed, then get their valid values.
/// It writes up to span rounded up to a whole pack. (As separate zero fills
/// and copy, the loops became memset and memcpy calls; as one loop with a
/// condition per value, masked loads 3x slower.)
template <class T>
OPNORM_HD inline void load_padded(const T* row, bool row_inside, index_t first, index_t width, index_t span,
                                  T* dst) {
  constexpr index_t L = simd::lanes<T>;
  index_t begin = first < 0 ? -first : 0, end = width - first;
  if (end > span) end = span;
  if (!row_inside || end < begin) end = begin = span;  // also when [first, first + span) misses the row
  for (index_t s = 0; s < span; s += L) {
    if (s >= begin && s + L <= end) {
      simd::store(dst + s, simd::load(row + first + s));
    } else if (s >= end || s + L <= begin) {
      simd::store(dst + s, simd::zero<T>());
    } else {
      const index_t from = s > begin ? s : begin, to = s + L < end ? s + L : end;
      simd::store(dst + s, simd::zero<T>());
      simd::copy_short(dst + from, row + first + from, to - from);
    }
  }
}

// Where the `count` examples of a chunk, `channels` planes each, keep their
// tiles in V, M, dV or dM: plane (n, c)'s tiles start at offset(plane) in
// position 0's stream, and each position's stream lies `stride` after the
// previous one. The four transforms below share it, so that they cannot
// disagree on where a tile lives.
struct tile_streams {
  index_t channels, tiles, row_length, stride;
  tile_streams(const tiling& geo, index_t channels_, index_t count)
      : channels(channels_), tiles(geo.tiles()), row_length(count * tiles), stride(channels * row_length) {}
  OPNORM_HD index_t offset(index_t plane) const {
    return (plane % channels) * row_length + (plane / channels) * tiles;
  }
};

/// How a plane is cut into bands for its window: `rows` tile rows by `cols`
/// tile columns (a multiple of the block), whose 2 rows + 2 image rows of
/// 2 cols + 2 values (`width`), and a pack more, fit in window_values.
struct band_plan {
  index_t rows, cols, width;
  bool single_column;  // one band spans each tile row
};

template <class T>
OPNORM_HD inline band_plan plan_bands(const tiling& geo) {
  constexpr index_t L = block_tiles<T>;
  band_plan p;
  const index_t padded_cols = (geo.tile_cols() + L - 1) / L * L;
  p.cols = padded_cols < band_max_cols ? padded_cols : band_max_cols;
  p.width = 2 * p.cols + 2;
  const index_t rows = ((window_values - L) / p.width - 2) / 2;  // load_padded writes up to a pack past a row
  p.rows = rows < geo.tile_rows() ? rows : geo.tile_rows();
  p.single_column = p.cols >= geo.tile_cols();
  return p;
}

/// f(ti0, nr, tj0, nc) for each band: tile rows [ti0, ti0 + nr) by tile
/// columns [tj0, tj0 + nc), in order.
template <class F>
OPNORM_HD inline void for_each_band(const tiling& geo, const band_plan& p, F f) {
  const index_t rows = geo.tile_rows(), cols = geo.tile_cols();
  for (index_t ti0 = 0; ti0 < rows; ti0 += p.rows)
    for (index_t tj0 = 0; tj0 < cols; tj0 += p.cols)
      f(ti0, rows - ti0 < p.rows ? rows - ti0 : p.rows, tj0, cols - tj0 < p.cols ? cols - tj0 : p.cols);
}

/// Whether a block may move all its lanes: those past the valid ones lie in
/// the same plane and are written later by the same task (module comment).
/// rows_in_order: the task writes the plane's tile rows whole and in order
/// (one band spans each row), so the next row's first tiles come later.
template <class T>
OPNORM_HD inline bool block_fits(const tiling& geo, bool rows_in_order, index_t first, index_t valid) {
  return valid == block_tiles<T> || (rows_in_order && first + block_tiles<T> <= geo.tiles());
}

/// The 16 packs of a block into their streams: out[xi * stream + j].
template <class T>
OPNORM_HD inline void store_block(const simd::pack<T> (&o)[positions], T* out, index_t stream, index_t valid,
                                  bool fits) {
  constexpr index_t L = block_tiles<T>;
  if (fits) {
    for (index_t xi = 0; xi < positions; ++xi) simd::store(out + xi * stream, o[xi]);
    return;
  }
  T lanes[L];
  for (index_t xi = 0; xi < positions; ++xi) {
    simd::store(lanes, o[xi]);
    simd::copy_short(out + xi * stream, lanes, valid);
  }
}

/// The 16 packs of a block from their streams, lanes past `valid` zero.
/// It reads whole packs: the lanes past the plane's tiles belong to the
/// next plane or, past the last stream, to the stream_slack<T> values every
/// buffer of M or dV holds after its streams.
template <class T>
OPNORM_HD inline void load_block(const T* in, index_t stream, index_t valid, simd::pack<T> (&v)[positions]) {
  for (index_t xi = 0; xi < positions; ++xi) v[xi] = simd::load(in + xi * stream);
  if (valid < block_tiles<T>)
    for (index_t xi = 0; xi < positions; ++xi) v[xi] = simd::keep_first<T>(v[xi], valid);
}

/// d B along one window row for a block of tiles: tile j of the block reads
/// the row's values 2j .. 2j + 3, whose even and odd entries start at 0
/// and at 2: (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
template <class T>
OPNORM_HD inline void input_row_1d(const T* row, simd::pack<T> (&t)[4]) {
  constexpr index_t L = block_tiles<T>;
  const simd::pack<T> a = simd::load(row), b = simd::load(row + L), c = simd::load(row + 2),
                      e = simd::load(row + L + 2);
  const simd::pack<T> d0 = simd::evens<T>(a, b), d1 = simd::odds<T>(a, b), d2 = simd::evens<T>(c, e),
                      d3 = simd::odds<T>(c, e);
  t[0] = d0 - d2;
  t[1] = d1 + d2;
  t[2] = d2 - d1;
  t[3] = d1 - d3;
}

/// V[xi][c][n * tiles + t] = (B^T d B)[xi] for the `count` examples of x
/// (NCHW, `channels` channels). One task per input plane (n, c).
///
/// Tile row ti reads window rows 2ti .. 2ti + 3, so consecutive tile rows
/// share two window rows, and the row transforms (d B) of those two are
/// kept for the next tile row rather than computed again: two row
/// transforms per block instead of four. (Measured: the row transforms'
/// shuffles and the spills around them were most of the transform's time.)
template <class B, class T>
void transform_input(const tiling& geo, const T* x, index_t channels, index_t count, T* v) {
  using pack = simd::pack<T>;
  constexpr index_t L = block_tiles<T>;
  constexpr index_t band_blocks = band_max_cols / L;
  const tile_streams ts(geo, channels, count);
  const band_plan bands = plan_bands<T>(geo);
  backend_ops<B>::for_each_segment(count * channels, geo.height * geo.width, [=] OPNORM_HD(index_t plane) {
    const index_t H = geo.height, W = geo.width, cols = geo.tile_cols(), stream = ts.stride, ww = bands.width;
    const T* in = x + plane * H * W;
    T* dst = v + ts.offset(plane);
    T window[window_values];
    pack shared[band_blocks][2][4];  // per block: d B of the tile row's bottom two window rows
    for_each_band(geo, bands, [&](index_t ti0, index_t nr, index_t tj0, index_t nc) {
      const index_t top = 2 * ti0 - geo.padding, left = 2 * tj0 - geo.padding;
      for (index_t r = 0; r < 2 * nr + 2; ++r) {
        const index_t h = top + r;
        load_padded(in + h * W, h >= 0 && h < H, left, W, ww, window + r * ww);
      }
      for (index_t q = 0; q < nc; q += L)  // the first tile row's top two rows, seen as the bottom of a row before it
        for (index_t r = 0; r < 2; ++r) input_row_1d(window + r * ww + 2 * q, shared[q / L][r]);
      for (index_t ti = ti0; ti < ti0 + nr; ++ti)
        for (index_t q = 0; q < nc; q += L) {
          const T* w = window + 2 * (ti - ti0) * ww + 2 * q;
          pack(&kept)[2][4] = shared[q / L];
          pack t2[4], t3[4];
          input_row_1d(w + 2 * ww, t2);
          input_row_1d(w + 3 * ww, t3);
          pack o[positions];
          for (index_t k = 0; k < 4; ++k) {  // B^T (d B), down each column
            o[k] = kept[0][k] - t2[k];
            o[4 + k] = kept[1][k] + t2[k];
            o[8 + k] = t2[k] - kept[1][k];
            o[12 + k] = kept[1][k] - t3[k];
            kept[0][k] = t2[k];
            kept[1][k] = t3[k];
          }
          const index_t first = ti * cols + tj0 + q, valid = nc - q < L ? nc - q : L;
          store_block(o, dst + first, stream, valid, block_fits<T>(geo, bands.single_column, first, valid));
        }
    });
  });
}

/// gx[n][c] = sum over tiles of (B dV B^T), the adjoint of transform_input:
/// each 4x4 patch is added back where transform_input read it, dropping
/// what falls on the padding. The patches of a band are summed in its
/// window, and the window is then added to the plane. One task per input
/// plane, tiles in a fixed order: no atomics, the same bits on every run.
template <class B, class T>
void transform_input_adjoint(const tiling& geo, const T* dv, index_t channels, index_t count, T* gx) {
  using pack = simd::pack<T>;
  constexpr index_t L = block_tiles<T>;
  const tile_streams ts(geo, channels, count);
  const band_plan bands = plan_bands<T>(geo);
  backend_ops<B>::for_each_segment(count * channels, geo.height * geo.width, [=] OPNORM_HD(index_t plane) {
    const index_t H = geo.height, W = geo.width, cols = geo.tile_cols(), stream = ts.stride,
                  ww = bands.width;
    T* out = gx + plane * H * W;
    // One band covers the whole plane, and its window then is the plane's
    // result: copied rather than added to a zeroed plane.
    const bool one_band = bands.single_column && bands.rows >= geo.tile_rows();
    if (!one_band)
      for (index_t i = 0; i < H * W; ++i) out[i] = T(0);
    const T* src = dv + ts.offset(plane);
    T window[window_values];
    for_each_band(geo, bands, [&](index_t ti0, index_t nr, index_t tj0, index_t nc) {
      const index_t rows = 2 * nr + 2, top = 2 * ti0 - geo.padding, left = 2 * tj0 - geo.padding;
      for (index_t i = 0; i < rows * ww; ++i) window[i] = T(0);
      for (index_t ti = ti0; ti < ti0 + nr; ++ti) {
        // Along a window row, tile j adds its patch row (p0, p1, p2, p3) to
        // columns 2j .. 2j+3: column 2j gets p0 of tile j and p2 of tile
        // j - 1, column 2j + 1 gets p1 of tile j and p3 of tile j - 1. The
        // last tile's p2 and p3 carry over to the next block.
        T carry[4][2] = {};
        for (index_t q = 0; q < nc; q += L) {
          const index_t first = ti * cols + tj0 + q, valid = nc - q < L ? nc - q : L;
          pack v[positions];
          load_block(src + first, stream, valid, v);
          pack t[4][4];
          for (index_t r = 0; r < 4; ++r) {  // along each row of dV: B (v0, v1, v2, v3) = (v0, v1 - v2 + v3, v1 + v2 - v0, -v3)
            const pack v0 = v[4 * r], v1 = v[4 * r + 1], v2 = v[4 * r + 2], v3 = v[4 * r + 3];
            t[r][0] = v0;
            t[r][1] = v1 - v2 + v3;
            t[r][2] = v1 + v2 - v0;
            t[r][3] = -v3;
          }
          for (index_t a = 0; a < 4; ++a) {  // down each column: patch row a
            pack p[4];
            for (index_t k = 0; k < 4; ++k)
              p[k] = a == 0 ? t[0][k] : a == 1 ? t[1][k] - t[2][k] + t[3][k] : a == 2 ? t[1][k] + t[2][k] - t[0][k] : -t[3][k];
            const pack even = p[0] + simd::shift_in(p[2], carry[a][0]);
            const pack odd = p[1] + simd::shift_in(p[3], carry[a][1]);
            carry[a][0] = simd::last<T>(p[2]);
            carry[a][1] = simd::last<T>(p[3]);
            T* row = window + (2 * (ti - ti0) + a) * ww + 2 * q;
            simd::store(row, simd::load(row) + simd::interleave_low<T>(even, odd));
            simd::store(row + L, simd::load(row + L) + simd::interleave_high<T>(even, odd));
          }
        }
        const index_t end = 2 * ((nc + L - 1) / L * L);  // the column after the last block
        for (index_t a = 0; a < 4; ++a) {
          T* row = window + (2 * (ti - ti0) + a) * ww + end;
          row[0] += carry[a][0];
          row[1] += carry[a][1];
        }
      }
      // The window onto the plane, dropping what falls on the padding.
      const index_t begin = left < 0 ? -left : 0, end = W - left < ww ? W - left : ww;
      for (index_t r = 0; r < rows; ++r) {
        const index_t h = top + r;
        if (h < 0 || h >= H) continue;
        T* target = out + h * W + left;
        const T* row = window + r * ww;
        if (one_band)
          for (index_t s = begin; s < end; ++s) target[s] = row[s];
        else
          for (index_t s = begin; s < end; ++s) target[s] += row[s];
      }
    });
  });
}

/// y[n][o] = A^T M A + bias[o] for every tile (no bias: a null pointer),
/// keeping the outputs inside the (out_height x out_width) plane. One task
/// per output plane.
///
/// The bias is added here rather than written into y first: that was a pass
/// of its own over y, and the transform then had to read y back. A block
/// whose row ends inside the block (a partial last block, or an odd width)
/// still stores whole packs where what lies past the row's end is written
/// later by the same task: from a tile row's second output row (the next
/// tile row follows), or from its first when the block is the row's only
/// one (the second row follows). The others, and the plane's last row, go
/// through a copy of their valid values.
template <class B, class T>
void transform_output(const tiling& geo, const T* m, index_t channels, index_t count, const T* bias, T* y) {
  using pack = simd::pack<T>;
  constexpr index_t L = block_tiles<T>;
  const tile_streams ts(geo, channels, count);
  backend_ops<B>::for_each_segment(count * channels, geo.out_height * geo.out_width, [=] OPNORM_HD(index_t plane) {
    const index_t Ho = geo.out_height, Wo = geo.out_width, cols = geo.tile_cols(),
                  stream = ts.stride;
    T* out = y + plane * Ho * Wo;
    const T* src = m + ts.offset(plane);
    // Without a bias nothing is added: r + 0 would turn a -0 into +0.
    const pack shift = simd::broadcast<T>(bias ? bias[plane % channels] : T(0));
    for (index_t ti = 0; ti < geo.tile_rows(); ++ti)
      for (index_t tj = 0; tj < cols; tj += L) {
        const index_t first = ti * cols + tj, valid = cols - tj < L ? cols - tj : L;
        pack v[positions];
        load_block(src + first, stream, valid, v);
        pack half[2][4];
        for (index_t k = 0; k < 4; ++k) {  // A^T M, down each column
          half[0][k] = v[k] + v[4 + k] + v[8 + k];
          half[1][k] = v[4 + k] - v[8 + k] - v[12 + k];
        }
        const index_t left = 2 * tj, width = Wo - left < 2 * valid ? Wo - left : 2 * valid;
        for (index_t r = 0; r < 2; ++r) {  // (A^T M) A, along each row
          const index_t h = 2 * ti + r;
          if (h >= Ho) continue;
          pack even = half[r][0] + half[r][1] + half[r][2], odd = half[r][1] - half[r][2] - half[r][3];
          if (bias) {
            even = even + shift;
            odd = odd + shift;
          }
          const pack low = simd::interleave_low<T>(even, odd), high = simd::interleave_high<T>(even, odd);
          T* target = out + h * Wo + left;
          if (width == 2 * L || ((r == 1 || tj == 0) && h * Wo + left + 2 * L <= Ho * Wo)) {
            simd::store(target, low);
            simd::store(target + L, high);
            continue;
          }
          T result[2 * L];
          simd::store(result, low);
          simd::store(result + L, high);
          simd::copy_short(target, result, width);
        }
      }
  });
}

/// dM[xi][o][n * tiles + t] = (A dY A^T)[xi], the adjoint of
/// transform_output: outputs beyond the plane (a partial last tile) count
/// as zero. A block reads its two rows of dY where they lie: with an even
/// plane every valid lane's 2x2 tile is inside it, and the invalid lanes
/// read whatever follows in the plane. Only blocks whose reads would leave
/// the plane, and planes of odd size, go through a zero-padded copy.
template <class B, class T>
void transform_output_adjoint(const tiling& geo, const T* gy, index_t channels, index_t count, T* dm) {
  using pack = simd::pack<T>;
  constexpr index_t L = block_tiles<T>;
  const tile_streams ts(geo, channels, count);
  backend_ops<B>::for_each_segment(count * channels, geo.out_height * geo.out_width, [=] OPNORM_HD(index_t plane) {
    const index_t Ho = geo.out_height, Wo = geo.out_width, cols = geo.tile_cols(), stream = ts.stride;
    const bool even = Ho % 2 == 0 && Wo % 2 == 0;
    const T* in = gy + plane * Ho * Wo;
    T* dst = dm + ts.offset(plane);
    T padded[2][2 * L];
    for (index_t ti = 0; ti < geo.tile_rows(); ++ti)
      for (index_t tj = 0; tj < cols; tj += L) {
        const T* rows[2] = {in + 2 * ti * Wo + 2 * tj, in + (2 * ti + 1) * Wo + 2 * tj};
        if (!even || (2 * ti + 1) * Wo + 2 * tj + 2 * L > Ho * Wo) {
          for (index_t r = 0; r < 2; ++r) {
            const index_t h = 2 * ti + r;
            load_padded(in + h * Wo, h < Ho, 2 * tj, Wo, 2 * L, padded[r]);
            rows[r] = padded[r];
          }
        }
        pack half[2][4];
        for (index_t r = 0; r < 2; ++r) {  // dY A^T, along each row: A (y0, y1) = (y0, y0 + y1, y0 - y1, -y1)
          const pack a = simd::load(rows[r]), b = simd::load(rows[r] + L);
          const pack y0 = simd::evens<T>(a, b), y1 = simd::odds<T>(a, b);
          half[r][0] = y0;
          half[r][1] = y0 + y1;
          half[r][2] = y0 - y1;
          half[r][3] = -y1;
        }
        pack o[positions];
        for (index_t k = 0; k < 4; ++k) {  // A (dY A^T), down each column
          o[k] = half[0][k];
          o[4 + k] = half[0][k] + half[1][k];
          o[8 + k] = half[0][k] - half[1][k];
          o[12 + k] = -half[1][k];
        }
        const index_t first = ti * cols + tj, valid = cols - tj < L ? cols - tj : L;
        store_block(o, dst + first, stream, valid, block_fits<T>(geo, true, first, valid));
      }
  });
}

}  // namespace opnorm::detail::winograd
