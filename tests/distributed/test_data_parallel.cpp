// Data-parallel training on MPI, run by ctest as `mpirun -np 2` on loopback
// (tests/distributed.cmake). Every rank runs every test case: the
// collectives inside need both. Each rank also trains the single-process
// reference itself, so the comparisons need no files.
//
// What is checked:
//  * with synchronized BatchNorm, 2 ranks x batch 64 reach the parameters,
//    buffers and optimizer state of 1 process x batch 128 after 20 steps, for
//    each of the four methods (standard, adversarial, data-dependent SNR,
//    global SNR), starting from different weights on rank 1 (the broadcast
//    must fix that), with augmentation on. The bound is 1e-10 relative: in
//    double precision the runs differ only in summation order (measured:
//    1e-15), while per-rank statistics would give 1e-2 (measured by
//    leaving synchronize_batch_norm out);
//  * without synchronization, the averaged gradient is the mean of the two
//    shards' gradients, each computed in one process;
//  * the averaged gradient does not depend on the bucket size;
//  * distributed evaluation equals single-process evaluation;
//  * an attack split across the ranks, its per-example results joined
//    (join_shards) and its accuracies summed (fractions_over_ranks), equals
//    the attack in one process on every example: success flags and
//    accuracies to the last bit, the attack loss to 1e-12 relative (a
//    point's arithmetic depends on its batch's size through the GEMM's
//    blocking; measured 2e-16); ranks that pass different numbers of rows
//    are refused on every rank;
//  * callbacks wrapped in on_root act on rank 0 only, and rank 0's request
//    to stop reaches every rank;
//  * a bad batch size is refused on every rank with the same message.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <opnorm/data/augmentation.hpp>
#include <opnorm/data/dataset.hpp>
#include <opnorm/distributed/data_parallel.hpp>
#include <opnorm/distributed/mpi.hpp>
#include <opnorm/methods/adversarial.hpp>
#include <opnorm/methods/data_dependent_snr.hpp>
#include <opnorm/methods/global_snr.hpp>
#include <opnorm/methods/standard.hpp>
#include <opnorm/nn/layers/batch_norm.hpp>
#include <opnorm/nn/layers/conv2d.hpp>
#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/flatten.hpp>
#include <opnorm/nn/layers/max_pool2d.hpp>
#include <opnorm/nn/layers/relu.hpp>
#include <opnorm/nn/sequential.hpp>
#include <opnorm/train/train.hpp>

#include "synthetic_patches.hpp"

using namespace opnorm;
using T = double;

namespace {

distributed::mpi_communicator& world() {
  static distributed::mpi_communicator communicator;
  return communicator;
}

// Convolution, BatchNorm, pooling: every kind of state (parameters, running
// statistics, a counter) and the layer whose statistics must be shared.
using conv_net = sequential<conv2d<T>, batch_norm<T>, relu<T>, max_pool2d<T>, flatten<T>, dense<T>>;
conv_net make_conv_net(std::uint64_t seed) {
  conv_net net(conv2d<T>(1, 4, 3, 1, 1), batch_norm<T>(4), relu<T>{}, max_pool2d<T>(2), flatten<T>{},
               dense<T>(4 * 3 * 3, 3));
  net.initialize(seed);
  return net;
}

// ||a - b|| / ||b|| over every value of two state lists of the same network.
double relative_difference(const state_list<T, backend::cpu>& a, const state_list<T, backend::cpu>& b) {
  double difference = 0, reference = 0;
  auto add = [&](const tensor<T>& x, const tensor<T>& y) {
    REQUIRE(x.shape() == y.shape());
    for (index_t i = 0; i < x.size(); ++i) {
      difference += (x[i] - y[i]) * (x[i] - y[i]);
      reference += y[i] * y[i];
    }
  };
  REQUIRE(a.parameters.size() == b.parameters.size());
  REQUIRE(a.buffers.size() == b.buffers.size());
  for (std::size_t i = 0; i < a.parameters.size(); ++i) add(*a.parameters[i].value, *b.parameters[i].value);
  for (std::size_t i = 0; i < a.buffers.size(); ++i) add(*a.buffers[i].value, *b.buffers[i].value);
  for (std::size_t i = 0; i < a.counters.size(); ++i) CHECK(*a.counters[i].value == *b.counters[i].value);
  return std::sqrt(difference / reference);
}

double gradient_difference(const state_list<T, backend::cpu>& a, const std::vector<std::vector<T>>& expected) {
  double difference = 0, reference = 0;
  REQUIRE(a.parameters.size() == expected.size());
  for (std::size_t p = 0; p < expected.size(); ++p)
    for (index_t i = 0; i < a.parameters[p].grad->size(); ++i) {
      const double e = expected[p][static_cast<std::size_t>(i)];
      difference += ((*a.parameters[p].grad)[i] - e) * ((*a.parameters[p].grad)[i] - e);
      reference += e * e;
    }
  return std::sqrt(difference / reference);
}

std::vector<std::vector<T>> gradients(conv_net& model) {
  std::vector<std::vector<T>> g;
  for (auto& p : model.state().parameters) g.push_back(p.grad->to_vector());
  return g;
}

// 20 steps: 640 examples in batches of 128 for 4 epochs, SGD with momentum
// and weight decay, a schedule that changes the rate every step, and the
// CIFAR augmentation (drawn on the global batch, so the same on every rank).
fit_options twenty_steps() {
  fit_options o;
  o.epochs = 4;
  o.batch_size = 128;
  o.seed = 11;
  o.augmentation = pad_crop_flip(1, true);
  return o;
}
const auto changing_rate = [](index_t epoch, index_t step, index_t steps) {
  return 0.1 / (1.0 + 0.05 * static_cast<double>(epoch * steps + step));
};

// Trains make_method()'s method for 20 steps in one process (batch 128) and
// on the job's ranks (batch 128 split in shards, synchronized BatchNorm,
// rank 1 starting from other weights), and checks that the final model
// states and optimizer states agree to 1e-10 relative.
template <class MakeMethod>
void check_parallel_matches_single(MakeMethod make_method) {
  auto& comm = world();
  const dataset<T> train = synthetic<T>(640, 1), test = synthetic<T>(90, 2);
  const fit_options options = twenty_steps();

  conv_net single = make_conv_net(3);
  auto single_method = make_method(single);
  sgd<T> single_optimizer(single, sgd_options{0.1, 0.9, 5e-4});
  fit(single, single_method, single_optimizer, changing_rate, train, test, options);

  conv_net parallel = make_conv_net(3 + static_cast<std::uint64_t>(comm.rank()) * 1000);
  distributed::communicator_statistics_reducer<distributed::mpi_communicator> reducer(comm);
  CHECK(distributed::synchronize_batch_norm(parallel, &reducer) == 1);
  auto parallel_method = make_method(parallel);
  sgd<T> parallel_optimizer(parallel, sgd_options{0.1, 0.9, 5e-4});
  const fit_result r = fit(comm, parallel, parallel_method, parallel_optimizer, changing_rate, train, test, options);
  CHECK(r.history.size() == 4);
  CHECK(relative_difference(parallel.state(), single.state()) < 1e-10);
  CHECK(relative_difference(parallel_optimizer.state(), single_optimizer.state()) < 1e-10);
}

// Data-dependent SNR with 5 power iterations and the BatchNorm statistics given.
data_dependent_snr<l2> small_data_dependent_snr(data_dependent_snr<l2>::statistics statistics) {
  data_dependent_snr<l2> m;
  m.iterations = 5;
  m.eps = 0.5;
  m.lambda = 0.3;
  m.seed = 5;
  m.batch_statistics = statistics;
  return m;
}

}  // namespace

TEST_CASE("the job has two ranks") {
  REQUIRE(world().size() == 2);
}

TEST_CASE("2 ranks x batch 64 with synchronized BatchNorm reach 1 process x batch 128's parameters after 20 steps") {
  using statistics = data_dependent_snr<l2>::statistics;
  SUBCASE("standard") { check_parallel_matches_single([](conv_net&) { return standard{}; }); }
  SUBCASE("adversarial (l2 PGA, 5 iterations)") {
    check_parallel_matches_single([](conv_net&) {
      adversarial<l2> m;
      m.iterations = 5;
      m.eps = 0.5;
      m.seed = 5;
      return m;
    });
  }
  SUBCASE("data_dependent_snr (sum of squares, clean-batch statistics)") {
    check_parallel_matches_single([](conv_net&) { return small_data_dependent_snr(statistics::clean_batch); });
  }
  SUBCASE("data_dependent_snr (sum of squares, independent batch statistics)") {
    check_parallel_matches_single([](conv_net&) { return small_data_dependent_snr(statistics::independent_batches); });
  }
  SUBCASE("global_snr") {
    check_parallel_matches_single([](conv_net& net) { return global_snr<T>(net, 0.01, 1, 7); });
  }
}

TEST_CASE("without synchronized BatchNorm the averaged gradient is the mean of the shards' gradients") {
  auto& comm = world();
  const dataset<T> data = synthetic<T>(128, 4);
  tensor<T> images;
  label_tensor<> labels;
  std::vector<index_t> all(128);
  for (index_t i = 0; i < 128; ++i) all[static_cast<std::size_t>(i)] = i;

  // One process: the gradient of each half of the batch, in its own model
  // (per-shard BatchNorm statistics), then their mean.
  std::vector<std::vector<T>> expected;
  for (int part = 0; part < 2; ++part) {
    conv_net model = make_conv_net(8);
    const distributed::shard s = distributed::shard_of(128, part, 2);
    gather_batch(data, all.data() + s.begin, s.size(), images, labels);
    conv_net::tape tape;
    model.zero_grad();
    standard{}.accumulate_gradients(model, tape, images, labels);
    const auto g = gradients(model);
    if (expected.empty()) expected.assign(g.size(), {});
    for (std::size_t p = 0; p < g.size(); ++p) {
      expected[p].resize(g[p].size());
      for (std::size_t i = 0; i < g[p].size(); ++i) expected[p][i] += 0.5 * g[p][i];
    }
  }

  // The job: each rank its half, then the averager.
  conv_net model = make_conv_net(8);
  const distributed::shard mine = distributed::shard_of(128, comm.rank(), comm.size());
  gather_batch(data, all.data() + mine.begin, mine.size(), images, labels);
  conv_net::tape tape;
  model.zero_grad();
  standard{}.accumulate_gradients(model, tape, images, labels);
  const auto local = gradients(model);
  CHECK(gradient_difference(model.state(), expected) > 1e-3);  // the local gradient alone is not the mean

  SUBCASE("in one bucket") {
    distributed::gradient_averager<T, backend::cpu> averager;
    averager.average(comm, model.state(), 0.5);
    CHECK(averager.messages() == 1);
    CHECK(gradient_difference(model.state(), expected) < 1e-13);
  }
  SUBCASE("in buckets of 64 bytes, one tensor or more each") {
    distributed::gradient_averager<T, backend::cpu> averager(64);
    averager.average(comm, model.state(), 0.5);
    CHECK(averager.messages() >= 4);  // conv weight, conv bias + BatchNorm, dense weight, dense bias
    CHECK(gradient_difference(model.state(), expected) < 1e-13);
  }
}

TEST_CASE("distributed evaluation equals single-process evaluation") {
  auto& comm = world();
  const dataset<T> data = synthetic<T>(301, 5);  // odd: the shards differ by one
  conv_net model = make_conv_net(9);
  const evaluation single = evaluate(model, data, 64);
  const evaluation parallel = evaluate(comm, model, data, 64);
  CHECK(parallel.examples == 301);
  CHECK(parallel.correct == single.correct);
  CHECK(parallel.loss == doctest::Approx(single.loss).epsilon(1e-13));
}

TEST_CASE("an attack split across the ranks and joined equals the attack in one process") {
  auto& comm = world();
  const index_t n = 37;  // odd: the shards differ by one
  const dataset<T> data = synthetic<T>(n, 12);
  conv_net model = make_conv_net(4);
  attack_options<T> o;
  o.eps = T(2);
  o.iterations = 5;
  o.seed = 77;
  auto attack = make_pga<l2>(model, o);
  const auto whole = attack(data.images, data.labels);

  const distributed::shard mine = distributed::shard_of(n, comm.rank(), comm.size());
  const dataset<T> part = subset(data, mine.begin, mine.size());
  const auto local = attack(part.images, part.labels);
  // Per-example values: success flags, and the attack loss at x*, which
  // differs from point to point by O(1), so a value joined into the wrong
  // place would be far outside the bound.
  std::vector<double> local_success(local.success.begin(), local.success.end());
  std::vector<double> local_loss(local.loss.begin(), local.loss.end());
  const auto joined = distributed::join_shards(comm, mine, n, {local_success, local_loss});
  REQUIRE(joined.size() == 2);
  REQUIRE(joined[0].size() == static_cast<std::size_t>(n));
  REQUIRE(joined[1].size() == static_cast<std::size_t>(n));
  int flag_mismatches = 0, successes = 0;
  double worst_loss_difference = 0;
  for (index_t i = 0; i < n; ++i) {
    const auto k = static_cast<std::size_t>(i);
    if (joined[0][k] != static_cast<double>(whole.success[k])) ++flag_mismatches;
    successes += whole.success[k];
    worst_loss_difference =
        std::max(worst_loss_difference, std::abs(joined[1][k] - whole.loss[k]) / std::abs(whole.loss[k]));
  }
  CHECK(flag_mismatches == 0);
  CHECK(successes > 0);
  CHECK(successes < n);
  MESSAGE("largest relative difference of the joined attack loss: " << worst_loss_difference);
  CHECK(worst_loss_difference <= 1e-12);

  const std::vector<double> one_process = robust_accuracy<l2>(model, o, data.images, data.labels, {T(0), T(2)});
  const std::vector<double> over_ranks = distributed::fractions_over_ranks(
      comm, mine, n, robust_accuracy<l2>(model, o, part.images, part.labels, {T(0), T(2)}));
  REQUIRE(over_ranks.size() == 2);
  CHECK(over_ranks[0] == one_process[0]);
  CHECK(over_ranks[1] == one_process[1]);
  CHECK(over_ranks[1] < over_ranks[0]);  // the attack breaks some points, so the sum is not trivially all or none
}

TEST_CASE("join_shards refuses ranks that measured different numbers of rows, on every rank") {
  auto& comm = world();
  const distributed::shard mine = distributed::shard_of(10, comm.rank(), comm.size());
  const std::vector<double> row(static_cast<std::size_t>(mine.size()), 1.0);
  std::vector<std::vector<double>> rows(comm.rank() == 0 ? 1 : 2, row);
  CHECK_THROWS_WITH_AS(distributed::join_shards(comm, mine, 10, rows),
                       doctest::Contains("the ranks measured different numbers of rows"), std::runtime_error);
}

TEST_CASE("broadcast_state gives every rank rank 0's state") {
  auto& comm = world();
  conv_net model = make_conv_net(20 + static_cast<std::uint64_t>(comm.rank()));
  conv_net reference = make_conv_net(20);
  distributed::broadcast_state(comm, model.state());
  CHECK(relative_difference(model.state(), reference.state()) == 0.0);
}

// Counts the hooks it receives; asks to stop after `stop_after` epochs.
struct counting_callback {
  int began = 0, steps = 0, epochs = 0;
  int stop_after = 1000;
  void on_train_begin(const run_info&) { ++began; }
  void on_step_end(const step_report&) { ++steps; }
  template <class Context>
  void on_epoch_end(const epoch_report&, Context&) { ++epochs; }
  bool stop_requested() const { return epochs >= stop_after; }
};

TEST_CASE("on_root callbacks act on rank 0 only, and every rank stops when rank 0's callback asks") {
  auto& comm = world();
  const dataset<T> train = synthetic<T>(128, 7), test;
  conv_net model = make_conv_net(3);
  standard method;
  sgd<T> optimizer(model, sgd_options{0.1, 0.0, 0.0});
  fit_options o;
  o.epochs = 3;
  o.batch_size = 32;
  counting_callback everywhere;
  auto root_only = distributed::on_root(comm, counting_callback{});
  root_only.callback().stop_after = 2;
  const fit_result r = fit(comm, model, method, optimizer, constant_schedule(0.1), train, test, o, everywhere, root_only);
  // Every rank stops after rank 0's second epoch, although only rank 0's
  // callback could ask.
  CHECK(r.history.size() == 2);
  CHECK(r.stopped_early);
  CHECK(everywhere.epochs == 2);
  CHECK(everywhere.steps == 8);
  if (comm.rank() == 0) {
    CHECK(root_only.callback().began == 1);
    CHECK(root_only.callback().steps == 8);
    CHECK(root_only.callback().epochs == 2);
  } else {
    CHECK(root_only.callback().began == 0);
    CHECK(root_only.callback().steps == 0);
    CHECK(root_only.callback().epochs == 0);
  }
}

TEST_CASE("a batch smaller than the job is refused on every rank") {
  auto& comm = world();
  const dataset<T> train = synthetic<T>(64, 6), test;
  conv_net model = make_conv_net(3);
  standard method;
  sgd<T> optimizer(model, sgd_options{0.1, 0.0, 0.0});
  fit_options o;
  o.epochs = 1;
  o.batch_size = 1;
  CHECK_THROWS_WITH_AS(fit(comm, model, method, optimizer, constant_schedule(0.1), train, test, o),
                       doctest::Contains("batch_size 1 is smaller than the 2 ranks"), std::invalid_argument);
}

int main(int argc, char** argv) {
  distributed::mpi_session session(argc, argv);
  doctest::Context context(argc, argv);
  // Only rank 0 reports; a failure on rank 1 still fails the exit code,
  // which mpirun returns.
  if (world().rank() != 0) context.setOption("out", "/dev/null");
  return context.run();
}
