#pragma once
// pad_crop_flip: the standard CIFAR augmentation (zero-pad by p, take a
// random HxW crop of the padded image, mirror it left-right with
// probability 1/2), per example, seeded.
//
// The crop of a zero-padded image is the image shifted by (dy - p, dx - p)
// with zeros shifted in; computing it that way needs no padded copy. Output
// values are input values or zero, so data in [0, 1] stays in [0, 1].
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../core/tensor.hpp"
#include "shuffle.hpp"

namespace opnorm {

/// The random choices for one example: the crop's top-left corner in the
/// padded image, each in [0, 2p], and whether to mirror.
struct crop_and_flip {
  index_t top = 0;
  index_t left = 0;
  bool flip = false;
};

class pad_crop_flip {
 public:
  explicit pad_crop_flip(index_t padding = 4, bool random_flip = true) : padding_(padding), random_flip_(random_flip) {
    if (padding < 0) throw std::invalid_argument("opnorm::pad_crop_flip: negative padding " + std::to_string(padding));
  }

  index_t padding() const { return padding_; }
  bool random_flip() const { return random_flip_; }

  /// One example's choices, drawn in a fixed order (top, left, flip) with
  /// the portable uniform_below, so a seed gives the same crops everywhere.
  template <class Engine>
  crop_and_flip draw(Engine& rng) const {
    crop_and_flip c;
    const auto positions = static_cast<std::uint64_t>(2 * padding_ + 1);
    c.top = static_cast<index_t>(uniform_below(rng, positions));
    c.left = static_cast<index_t>(uniform_below(rng, positions));
    c.flip = random_flip_ && uniform_below(rng, 2) == 1;
    return c;
  }

  /// dst = crop_and_flip applied to one (C, H, W) example; src and dst must
  /// not overlap.
  template <class T>
  void apply(const T* src, T* dst, index_t channels, index_t height, index_t width, const crop_and_flip& c) const {
    const index_t dy = c.top - padding_, dx = c.left - padding_;  // output (y, x) reads input (y + dy, x + dx)
    for (index_t ch = 0; ch < channels; ++ch) {
      const T* in = src + ch * height * width;
      T* out = dst + ch * height * width;
      for (index_t y = 0; y < height; ++y) {
        T* row = out + y * width;
        const index_t sy = y + dy;
        if (sy < 0 || sy >= height) {
          std::fill_n(row, width, T(0));
          continue;
        }
        // Columns whose source x + dx lies inside the image.
        const index_t begin = std::clamp<index_t>(-dx, 0, width), end = std::clamp<index_t>(width - dx, 0, width);
        std::fill_n(row, begin, T(0));
        if (begin < end) std::copy(in + sy * width + begin + dx, in + sy * width + end + dx, row + begin);
        std::fill(row + end, row + width, T(0));
        if (c.flip) std::reverse(row, row + width);  // flipping the crop, as torchvision's order does
      }
    }
  }

  /// out = the augmented batch (N, C, H, W); the choices are drawn from
  /// `rng` example by example, in batch order.
  template <class T, class Engine>
  void operator()(const tensor<T, backend::cpu>& in, tensor<T, backend::cpu>& out, Engine& rng) const {
    if (&in == &out) {  // same tensor: the in-place path makes the same draws
      (*this)(out, rng);
      return;
    }
    check_rank(in);
    out.resize(in.shape());
    const index_t e = in.example_size();
    for (index_t i = 0; i < in.dim(0); ++i)
      apply(in.data() + i * e, out.data() + i * e, in.dim(1), in.dim(2), in.dim(3), draw(rng));
  }

  /// Augments `batch` (N, C, H, W) in place.
  template <class T, class Engine>
  void operator()(tensor<T, backend::cpu>& batch, Engine& rng) const {
    check_rank(batch);
    const index_t e = batch.example_size();
    std::vector<T> example(static_cast<std::size_t>(e));  // one example of scratch, not a batch
    for (index_t i = 0; i < batch.dim(0); ++i) {
      T* x = batch.data() + i * e;
      std::copy_n(x, e, example.data());
      apply(example.data(), x, batch.dim(1), batch.dim(2), batch.dim(3), draw(rng));
    }
  }

 private:
  template <class T>
  static void check_rank(const tensor<T, backend::cpu>& x) {
    if (x.rank() != 4)
      throw std::invalid_argument("opnorm::pad_crop_flip: expects a batch (N, C, H, W), got " + shape_string(x.shape()));
  }

  index_t padding_;
  bool random_flip_;
};

}  // namespace opnorm
