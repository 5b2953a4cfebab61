// nccl_communicator on one GPU (tests/distributed.cmake builds it with nvcc
// when the CUDA build finds NCCL; cuda_test_main.cpp skips it without a
// device). One rank is what a single-GPU machine can run; the checks go
// through every NCCL path all the same:
//  * host- and device-memory collectives over one rank are the identity;
//  * the gradient averager, on thrust<cuda> gradients in device memory,
//    scales by the rank's share in one or many buckets;
//  * SyncBatchNorm over one rank (global batch = local batch) gives the
//    per-rank layer's outputs and gradients.
#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <vector>

#include <opnorm/backend/thrust.hpp>
#include <opnorm/distributed/data_parallel.hpp>
#include <opnorm/distributed/nccl.hpp>
#include <opnorm/methods/standard.hpp>
#include <opnorm/nn/layers/batch_norm.hpp>
#include <opnorm/nn/layers/conv2d.hpp>
#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/flatten.hpp>
#include <opnorm/nn/layers/relu.hpp>
#include <opnorm/nn/sequential.hpp>

using namespace opnorm;
using gpu = backend::thrust<backend::system::cuda>;
using T = double;

namespace {
distributed::nccl_communicator& one_gpu() {
  static distributed::nccl_communicator communicator = distributed::nccl_communicator::single_device(0);
  return communicator;
}

using net = sequential<conv2d<T, gpu>, batch_norm<T, gpu>, relu<T, gpu>, flatten<T, gpu>, dense<T, gpu>>;
net make_net() {
  net model(conv2d<T, gpu>(1, 3, 3, 1, 1), batch_norm<T, gpu>(3), relu<T, gpu>{}, flatten<T, gpu>{},
            dense<T, gpu>(3 * 5 * 5, 4));
  model.initialize(17);
  return model;
}

void batch(tensor<T, gpu>& x, label_tensor<gpu>& y) {
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<T> xs(8 * 25);
  for (T& v : xs) v = u(rng);
  std::vector<std::int32_t> ys(8);
  for (std::size_t i = 0; i < ys.size(); ++i) ys[i] = static_cast<std::int32_t>(i % 4);
  x = tensor<T, gpu>::from_vector({8, 1, 5, 5}, xs);
  y = label_tensor<gpu>::from_vector({8}, ys);
}

std::vector<std::vector<T>> gradients(net& model) {
  std::vector<std::vector<T>> g;
  for (auto& p : model.state().parameters) g.push_back(p.grad->to_vector());
  return g;
}
}  // namespace

TEST_CASE("a one-rank NCCL communicator's collectives are the identity on host and device memory") {
  auto& comm = one_gpu();
  CHECK(comm.rank() == 0);
  CHECK(comm.size() == 1);
  std::vector<double> d = {1.5, -2.25, 3e10};
  comm.all_reduce_sum(d.data(), 3);
  CHECK(d == std::vector<double>{1.5, -2.25, 3e10});
  std::vector<float> f = {0.5f, 7.0f};
  comm.all_reduce_sum(f.data(), 2);
  CHECK(f == std::vector<float>{0.5f, 7.0f});
  std::vector<std::int64_t> i = {-3, 1LL << 40};
  comm.all_reduce_sum(i.data(), 2);
  CHECK(i == std::vector<std::int64_t>{-3, 1LL << 40});
  unsigned char bytes[5] = {1, 2, 3, 4, 5};
  comm.broadcast(bytes, 5, 0);
  CHECK(bytes[4] == 5);
  auto on_device = tensor<float, gpu>::from_vector({3}, {1.0f, 2.0f, 3.0f});
  comm.all_reduce_sum_on_device(on_device.data(), 3);
  CHECK(on_device.to_vector() == std::vector<float>{1.0f, 2.0f, 3.0f});
  comm.barrier();
}

TEST_CASE("the gradient averager scales thrust<cuda> gradients by the rank's share through NCCL, in one bucket or many") {
  auto& comm = one_gpu();
  net model = make_net();
  tensor<T, gpu> x;
  label_tensor<gpu> y;
  batch(x, y);
  net::tape tape;
  for (std::size_t bucket_bytes : {std::size_t(4) << 20, std::size_t(64)}) {
    model.zero_grad();
    standard{}.accumulate_gradients(model, tape, x, y);
    const auto before = gradients(model);
    distributed::gradient_averager<T, gpu> averager(bucket_bytes);
    averager.average(comm, model.state(), 0.25);
    const auto after = gradients(model);
    for (std::size_t p = 0; p < before.size(); ++p)
      for (std::size_t k = 0; k < before[p].size(); ++k) CHECK(after[p][k] == 0.25 * before[p][k]);
    CHECK(averager.messages() == (bucket_bytes > 64 ? 1 : 5));
  }
}

TEST_CASE("SyncBatchNorm over one NCCL rank gives the per-rank layer's outputs and gradients") {
  auto& comm = one_gpu();
  distributed::communicator_statistics_reducer<distributed::nccl_communicator> reducer(comm);
  net plain = make_net(), synchronized = make_net();
  CHECK(distributed::synchronize_batch_norm(synchronized, &reducer) == 1);
  tensor<T, gpu> x;
  label_tensor<gpu> y;
  batch(x, y);
  net::tape tp, ts;
  plain.zero_grad();
  synchronized.zero_grad();
  const auto rp = standard{}.accumulate_gradients(plain, tp, x, y);
  const auto rs = standard{}.accumulate_gradients(synchronized, ts, x, y);
  CHECK(rs.loss == doctest::Approx(rp.loss).epsilon(1e-13));
  const auto gp = gradients(plain), gs = gradients(synchronized);
  for (std::size_t p = 0; p < gp.size(); ++p)
    for (std::size_t k = 0; k < gp[p].size(); ++k) CHECK(gs[p][k] == doctest::Approx(gp[p][k]).epsilon(1e-11));
  const auto mp = plain.layer<1>().running_mean().to_vector(), ms = synchronized.layer<1>().running_mean().to_vector();
  for (std::size_t c = 0; c < mp.size(); ++c) CHECK(ms[c] == doctest::Approx(mp[c]).epsilon(1e-13));
}
