#include <doctest/doctest.h>

#include <random>
#include <set>
#include <tuple>
#include <vector>

#include <opnorm/data/augmentation.hpp>

using namespace opnorm;

namespace {

// Pixels in (0, 1], none zero, all distinct: a zero in the output can only
// come from the padding, and a value identifies its source pixel.
tensor<double> distinct_batch(index_t n, index_t c, index_t h, index_t w) {
  tensor<double> x({n, c, h, w});
  for (index_t i = 0; i < x.size(); ++i) x[i] = static_cast<double>(i + 1) / static_cast<double>(x.size());
  return x;
}

// The definition, written independently of the implementation: pad with p
// zeros, crop the HxW window at (top, left) of the padded image, then mirror.
double reference(const tensor<double>& x, index_t i, index_t c, index_t y, index_t xo, index_t p,
                 const crop_and_flip& choice) {
  const index_t h = x.dim(2), w = x.dim(3);
  const index_t crop_x = choice.flip ? w - 1 - xo : xo;
  const index_t sy = y + choice.top - p, sx = crop_x + choice.left - p;
  return sy < 0 || sy >= h || sx < 0 || sx >= w ? 0.0 : x(i, c, sy, sx);
}

bool explains(const tensor<double>& in, const tensor<double>& out, index_t i, index_t p, const crop_and_flip& choice) {
  for (index_t c = 0; c < in.dim(1); ++c)
    for (index_t y = 0; y < in.dim(2); ++y)
      for (index_t x = 0; x < in.dim(3); ++x)
        if (out(i, c, y, x) != reference(in, i, c, y, x, p, choice)) return false;
  return true;
}

}  // namespace

TEST_CASE("pad_crop_flip with no padding and no flip is the identity") {
  const tensor<double> x = distinct_batch(4, 3, 5, 6);
  std::mt19937_64 rng(1);
  const pad_crop_flip none(0, false);
  tensor<double> out;
  none(x, out, rng);
  CHECK(out.to_vector() == x.to_vector());
  tensor<double> in_place = x;
  none(in_place, rng);
  CHECK(in_place.to_vector() == x.to_vector());
}

TEST_CASE("pad_crop_flip: a flip mirrors each row, and a flip of a flip is the identity") {
  const tensor<double> x = distinct_batch(1, 2, 3, 4);
  const pad_crop_flip augment(2);
  const crop_and_flip centered_flip{2, 2, true};  // the window over the original image
  tensor<double> once(x.shape()), twice(x.shape());
  augment.apply(x.data(), once.data(), 2, 3, 4, centered_flip);
  for (index_t c = 0; c < 2; ++c)
    for (index_t y = 0; y < 3; ++y)
      for (index_t xo = 0; xo < 4; ++xo) CHECK(once(0, c, y, xo) == x(0, c, y, 3 - xo));
  augment.apply(once.data(), twice.data(), 2, 3, 4, centered_flip);
  CHECK(twice.to_vector() == x.to_vector());
}

TEST_CASE("pad_crop_flip: every output is the original shifted (and maybe mirrored) with zeros shifted in") {
  const index_t p = 2;
  const tensor<double> x = distinct_batch(400, 2, 5, 4);
  const pad_crop_flip augment(p);
  std::mt19937_64 rng(7);
  tensor<double> out;
  augment(x, out, rng);
  REQUIRE(out.shape() == x.shape());

  // Search all (2p+1)^2 * 2 choices for the one that explains each example.
  std::set<std::tuple<index_t, index_t, bool>> used;
  int flips = 0;
  for (index_t i = 0; i < x.dim(0); ++i) {
    bool found = false;
    for (index_t top = 0; top <= 2 * p && !found; ++top)
      for (index_t left = 0; left <= 2 * p && !found; ++left)
        for (bool flip : {false, true})
          if (!found && explains(x, out, i, p, {top, left, flip})) {
            found = true;
            used.insert({top, left, flip});
            flips += flip;
          }
    CHECK(found);
  }
  // All 50 choices occur among 400 examples (each has probability 1/50), and
  // about half the examples are mirrored (sd 10 around 200).
  CHECK(used.size() == 50);
  CHECK(flips > 150);
  CHECK(flips < 250);

  // The same draws, replayed, give the choices the batch used.
  std::mt19937_64 replay(7);
  for (index_t i = 0; i < x.dim(0); ++i) CHECK(explains(x, out, i, p, augment.draw(replay)));
}

TEST_CASE("pad_crop_flip: same seed same result, another seed another; in place equals out of place") {
  const tensor<double> x = distinct_batch(16, 3, 8, 8);
  const pad_crop_flip augment(4);
  auto run = [&](std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    tensor<double> out;
    augment(x, out, rng);
    return out.to_vector();
  };
  CHECK(run(3) == run(3));
  CHECK(run(3) != run(4));

  tensor<double> in_place = x;
  std::mt19937_64 rng(3);
  augment(in_place, rng);
  CHECK(in_place.to_vector() == run(3));

  tensor<double> aliased = x;  // the same tensor as input and output
  std::mt19937_64 rng_aliased(3);
  augment(aliased, aliased, rng_aliased);
  CHECK(aliased.to_vector() == run(3));
}

TEST_CASE("pad_crop_flip keeps data in [0, 1], even with padding wider than the image") {
  tensor<double> x({8, 1, 3, 3});
  std::mt19937_64 fill(2);
  for (index_t i = 0; i < x.size(); ++i) x[i] = static_cast<double>(uniform_below(fill, 256)) / 255.0;
  for (index_t p : {1, 3, 5}) {
    CAPTURE(p);
    const pad_crop_flip augment(p);
    std::mt19937_64 rng(static_cast<std::uint64_t>(p));
    tensor<double> out;
    augment(x, out, rng);
    for (double v : out.to_vector()) {
      CHECK(v >= 0.0);
      CHECK(v <= 1.0);
    }
    // Windows partly or wholly outside the image still follow the definition.
    std::mt19937_64 replay(static_cast<std::uint64_t>(p));
    for (index_t i = 0; i < x.dim(0); ++i) CHECK(explains(x, out, i, p, augment.draw(replay)));
  }
}

TEST_CASE("pad_crop_flip rejects negative padding and tensors that are not (N, C, H, W)") {
  CHECK_THROWS_AS(pad_crop_flip(-1), std::invalid_argument);
  tensor<double> flat({4, 10});
  std::mt19937_64 rng(1);
  const pad_crop_flip augment(2);
  CHECK_THROWS_AS(augment(flat, rng), std::invalid_argument);
}
