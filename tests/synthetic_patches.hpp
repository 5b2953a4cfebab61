#pragma once
// A small classification problem for training tests: three classes of 6x6
// images, a bright 2x2 patch at a class-specific place on a noisy
// background, so a small network separates them in a few epochs. The same
// (n, seed) gives the same dataset in every test program.
#include <cstdint>
#include <random>

#include <opnorm/data/dataset.hpp>

template <class T>
opnorm::dataset<T> synthetic(opnorm::index_t n, std::uint64_t seed) {
  using opnorm::index_t;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> noise(0.0, 0.4);
  opnorm::dataset<T> d;
  d.images = opnorm::tensor<T>({n, 1, 6, 6});
  d.labels = opnorm::label_tensor<>({n});
  d.classes = 3;
  d.name = "synthetic";
  const index_t corner[3][2] = {{0, 0}, {2, 3}, {4, 1}};
  for (index_t i = 0; i < n; ++i) {
    const auto c = static_cast<std::int32_t>(rng() % 3);
    d.labels[i] = c;
    for (index_t p = 0; p < 36; ++p) d.images[i * 36 + p] = static_cast<T>(noise(rng));
    for (index_t dy = 0; dy < 2; ++dy)
      for (index_t dx = 0; dx < 2; ++dx)
        d.images[i * 36 + (corner[c][0] + dy) * 6 + corner[c][1] + dx] = static_cast<T>(0.6 + noise(rng));
  }
  return d;
}
