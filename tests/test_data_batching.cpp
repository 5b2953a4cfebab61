#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include <opnorm/data/batching.hpp>

using namespace opnorm;

namespace {

// A dataset whose example i has pixel k equal to (i + k / 100) / n and label
// i % classes, so a batch's contents say where they came from.
dataset<double> numbered_dataset(index_t n, index_t classes = 3) {
  dataset<double> data;
  data.images.resize({n, 2, 3, 2});
  data.labels.resize({n});
  const index_t e = data.images.example_size();
  for (index_t i = 0; i < n; ++i) {
    for (index_t k = 0; k < e; ++k) data.images[i * e + k] = (static_cast<double>(i) + 0.01 * static_cast<double>(k)) / static_cast<double>(n);
    data.labels[i] = static_cast<std::int32_t>(i % classes);
  }
  data.classes = classes;
  data.name = "numbered";
  return data;
}

bool is_permutation_of_iota(std::vector<index_t> v, index_t n) {
  if (static_cast<index_t>(v.size()) != n) return false;
  std::sort(v.begin(), v.end());
  for (index_t i = 0; i < n; ++i)
    if (v[static_cast<std::size_t>(i)] != i) return false;
  return true;
}

}  // namespace

// The expected values below come from an independent implementation of
// mt19937_64, std::seed_seq and the two algorithms in Python (checked
// against the standard's 10000th mt19937_64 output), so they pin the
// algorithm, not just this build's output: any standard library must give
// the same orders.
TEST_CASE("uniform_below and fisher_yates_shuffle give the same numbers on every standard library") {
  std::mt19937_64 rng(42);
  const std::uint64_t bounds[] = {1, 2, 3, 10, 1000, (std::uint64_t{1} << 63) + 1, ~std::uint64_t{0}};
  const std::uint64_t expected[] = {0, 0, 1, 2, 381, 1375579315383837727ULL, 6878563960102566144ULL};
  for (std::size_t i = 0; i < 7; ++i) CHECK(uniform_below(rng, bounds[i]) == expected[i]);

  std::vector<int> values{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  std::mt19937_64 shuffle_rng(42);
  fisher_yates_shuffle(values, shuffle_rng);
  CHECK(values == std::vector<int>{1, 7, 9, 0, 3, 8, 4, 2, 5, 6});

  CHECK(epoch_order(12, batch_order::shuffled, 7, 3) == std::vector<index_t>{7, 2, 0, 4, 9, 1, 10, 6, 3, 5, 8, 11});
  // Seeds and epochs beyond 32 bits use their high halves too.
  CHECK(epoch_order(12, batch_order::shuffled, (std::uint64_t{1} << 40) + 5, (index_t{1} << 33) + 1) ==
        std::vector<index_t>{10, 1, 11, 7, 5, 2, 8, 6, 3, 9, 0, 4});
}

TEST_CASE("uniform_below is unbiased") {
  // Bound 3 is the worst case for a plain `r % bound` on small engines; with
  // 300000 draws each count's standard deviation is about 258, so a bias of
  // even 1% (1000) would be far outside the 5-sigma band checked here.
  std::mt19937_64 rng(1);
  for (std::uint64_t bound : {3u, 7u, 10u}) {
    CAPTURE(bound);
    std::vector<double> counts(bound, 0.0);
    const int draws = 300000;
    for (int i = 0; i < draws; ++i) {
      const std::uint64_t r = uniform_below(rng, bound);
      REQUIRE(r < bound);
      counts[r] += 1;
    }
    const double p = 1.0 / static_cast<double>(bound), mean = draws * p, sd = std::sqrt(draws * p * (1 - p));
    for (double c : counts) CHECK(std::abs(c - mean) < 5 * sd);
  }
  // A bound just above 2^63 rejects almost half the draws: still in range.
  const std::uint64_t big = (std::uint64_t{1} << 63) + 12345;
  for (int i = 0; i < 1000; ++i) CHECK(uniform_below(rng, big) < big);
}

TEST_CASE("fisher_yates_shuffle visits every permutation equally often") {
  // 4 elements: 24 permutations, 240000 shuffles, 10000 expected each.
  std::mt19937_64 rng(5);
  std::vector<int> counts(24, 0);
  for (int t = 0; t < 240000; ++t) {
    std::vector<int> v{0, 1, 2, 3};
    fisher_yates_shuffle(v, rng);
    int rank = 0;  // Lehmer code of the permutation
    for (int i = 0; i < 4; ++i) {
      int smaller_after = 0;
      for (int j = i + 1; j < 4; ++j) smaller_after += v[static_cast<std::size_t>(j)] < v[static_cast<std::size_t>(i)];
      rank = rank * (4 - i) + smaller_after;
    }
    ++counts[static_cast<std::size_t>(rank)];
  }
  const double sd = std::sqrt(240000.0 / 24 * (1 - 1.0 / 24));
  for (int c : counts) CHECK(std::abs(c - 10000) < 5 * sd);
}

TEST_CASE("epoch_order: seeded, a permutation, different across seeds and epochs") {
  const index_t n = 1000;
  const auto a = epoch_order(n, batch_order::shuffled, 11, 0);
  CHECK(is_permutation_of_iota(a, n));
  CHECK(a == epoch_order(n, batch_order::shuffled, 11, 0));
  CHECK(a != epoch_order(n, batch_order::shuffled, 12, 0));
  CHECK(a != epoch_order(n, batch_order::shuffled, 11, 1));
  const auto sequential = epoch_order(n, batch_order::sequential, 11, 5);
  CHECK(is_permutation_of_iota(sequential, n));
  CHECK(std::is_sorted(sequential.begin(), sequential.end()));
  CHECK(epoch_order(0, batch_order::shuffled, 1, 0).empty());
  CHECK(epoch_order(1, batch_order::shuffled, 1, 0) == std::vector<index_t>{0});
}

TEST_CASE("gather_batch copies the examples at the given indices") {
  const dataset<double> data = numbered_dataset(10);
  tensor<double> x;
  label_tensor<> y;
  const std::vector<index_t> indices{7, 0, 7, 3};
  gather_batch(data, indices, x, y);
  REQUIRE(x.shape() == shape_t{4, 2, 3, 2});
  REQUIRE(y.shape() == shape_t{4});
  const index_t e = data.images.example_size();
  for (index_t k = 0; k < 4; ++k) {
    const index_t i = indices[static_cast<std::size_t>(k)];
    CHECK(y[k] == data.labels[i]);
    for (index_t j = 0; j < e; ++j) CHECK(x[k * e + j] == data.images[i * e + j]);
  }
  const double* storage = x.data();
  gather_batch(data, std::vector<index_t>{1, 2, 3, 4}, x, y);
  CHECK(x.data() == storage);  // same size: the tensor is reused, not reallocated
  CHECK_THROWS_AS(gather_batch(data, std::vector<index_t>{1, 10}, x, y), std::out_of_range);
  CHECK_THROWS_AS(gather_batch(data, std::vector<index_t>{-1}, x, y), std::out_of_range);
}

TEST_CASE("batch_loader: every example once per epoch, contents from the source, partial batch kept") {
  const dataset<double> data = numbered_dataset(10);
  batch_loader<double> loader(data, 4, batch_order::shuffled, last_batch::keep, 99);
  CHECK(loader.batches_per_epoch() == 3);
  tensor<double> x;
  label_tensor<> y;
  const index_t e = data.images.example_size();
  for (index_t epoch = 0; epoch < 3; ++epoch) {
    CAPTURE(epoch);
    loader.start_epoch(epoch);
    std::vector<index_t> seen;
    std::vector<index_t> sizes;
    while (loader.next(x, y)) {
      const auto& indices = loader.batch_indices();
      sizes.push_back(x.dim(0));
      REQUIRE(static_cast<index_t>(indices.size()) == x.dim(0));
      for (index_t k = 0; k < x.dim(0); ++k) {
        const index_t i = indices[static_cast<std::size_t>(k)];
        CHECK(y[k] == data.labels[i]);
        for (index_t j = 0; j < e; ++j) REQUIRE(x[k * e + j] == data.images[i * e + j]);
      }
      seen.insert(seen.end(), indices.begin(), indices.end());
    }
    CHECK(sizes == std::vector<index_t>{4, 4, 2});
    CHECK(is_permutation_of_iota(seen, 10));
    CHECK(seen == loader.order());
    CHECK(seen == epoch_order(10, batch_order::shuffled, 99, epoch));
    CHECK_FALSE(loader.next(x, y));  // stays exhausted
  }
}

TEST_CASE("batch_loader: the partial last batch can be dropped") {
  const dataset<double> data = numbered_dataset(10);
  batch_loader<double> loader(data, 4, batch_order::sequential, last_batch::drop);
  CHECK(loader.batches_per_epoch() == 2);
  tensor<double> x;
  label_tensor<> y;
  std::vector<index_t> seen;
  while (loader.next(x, y)) {
    CHECK(x.dim(0) == 4);
    seen.insert(seen.end(), loader.batch_indices().begin(), loader.batch_indices().end());
  }
  CHECK(seen == std::vector<index_t>{0, 1, 2, 3, 4, 5, 6, 7});

  // A batch size that divides the data: nothing to drop.
  batch_loader<double> exact(data, 5, batch_order::shuffled, last_batch::drop, 3);
  CHECK(exact.batches_per_epoch() == 2);
  // Larger than the data set: one partial batch, or none.
  batch_loader<double> keep_all(data, 64, batch_order::shuffled, last_batch::keep, 3);
  CHECK(keep_all.batches_per_epoch() == 1);
  REQUIRE(keep_all.next(x, y));
  CHECK(x.dim(0) == 10);
  batch_loader<double> drop_all(data, 64, batch_order::shuffled, last_batch::drop, 3);
  CHECK(drop_all.batches_per_epoch() == 0);
  CHECK_FALSE(drop_all.next(x, y));
}

TEST_CASE("batch_loader: same seed, same batches; another seed, another order; resuming an epoch") {
  const dataset<double> data = numbered_dataset(50);
  auto epoch_batches = [&](std::uint64_t seed, index_t epoch) {
    batch_loader<double> loader(data, 8, batch_order::shuffled, last_batch::keep, seed);
    loader.start_epoch(epoch);  // a fresh loader at epoch e: what a resumed run does
    tensor<double> x;
    label_tensor<> y;
    std::vector<std::vector<double>> batches;
    while (loader.next(x, y)) batches.push_back(x.to_vector());
    return batches;
  };
  CHECK(epoch_batches(4, 2) == epoch_batches(4, 2));
  CHECK(epoch_batches(4, 2) != epoch_batches(5, 2));

  // Running epochs 0, 1, 2 in one loader equals starting at epoch 2.
  batch_loader<double> loader(data, 8, batch_order::shuffled, last_batch::keep, 4);
  tensor<double> x;
  label_tensor<> y;
  for (index_t epoch = 0; epoch < 2; ++epoch) {
    loader.start_epoch(epoch);
    while (loader.next(x, y)) {
    }
  }
  loader.start_epoch(2);
  std::vector<std::vector<double>> batches;
  while (loader.next(x, y)) batches.push_back(x.to_vector());
  CHECK(batches == epoch_batches(4, 2));
}

TEST_CASE("batch_loader rejects a batch size below 1 and an inconsistent dataset") {
  dataset<double> data = numbered_dataset(5);
  CHECK_THROWS_AS(batch_loader<double>(data, 0), std::invalid_argument);
  data.labels.resize({4});
  CHECK_THROWS_AS(batch_loader<double>(data, 2), std::invalid_argument);
}
