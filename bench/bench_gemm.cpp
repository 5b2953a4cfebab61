// bench_gemm: the SGEMM limit of this machine for opnorm's GEMM, and how close
// fmnist_cnn's convolution GEMMs come to it.
//
//   sgemm_limit/N     C = A B with N x N x N floats through the GEMM the cpu
//                     backend calls (backend_ops<cpu>::gemm, Eigen), threaded
//                     the way a single large product is (Eigen's own OpenMP
//                     split over OMP_NUM_THREADS threads). The largest N that
//                     still fits the caches' blocking well is the "limit".
//   conv_gemm/<pass>/<layer>
//                     one chunk of the batched GEMMs conv2d issues for a batch
//                     of 128, with the shapes of fmnist_cnn's four
//                     convolutions: forward (W col_n), weight gradient
//                     (sum_n gy_n col_n^T), input gradient (W^T gy_n). Hot
//                     cache: the operands are the same every iteration.
//
// Every benchmark reports GFLOP/s (2 m n k per product) as the counter
// "GFLOPS". docs/performance.md compares the conv shapes with the limit.
//
//   OMP_NUM_THREADS=2 build/bench/bench_gemm --benchmark_counters_tabular=true
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include <opnorm/backend/cpu.hpp>
#include <opnorm/layers/conv2d.hpp>

namespace {

using namespace opnorm;
using ops = backend_ops<backend::cpu>;

std::vector<float> random_floats(index_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = u(rng);
  return v;
}

void report_flops(benchmark::State& state, double flops_per_iteration) {
  state.counters["GFLOPS"] =
      benchmark::Counter(flops_per_iteration * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void sgemm_limit(benchmark::State& state) {
  const index_t n = state.range(0);
  const auto a = random_floats(n * n, 1), b = random_floats(n * n, 2);
  std::vector<float> c(static_cast<std::size_t>(n * n));
  for (auto _ : state) {
    ops::gemm(false, false, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, 2.0 * n * n * n);
}
BENCHMARK(sgemm_limit)->Arg(512)->Arg(1024)->Arg(2048)->UseRealTime()->Unit(benchmark::kMillisecond);

// fmnist_cnn's convolutions at batch 128: (Cin, Cout, spatial size).
struct conv_layer {
  const char* name;
  index_t in, out, size;
};
constexpr conv_layer conv_layers[] = {{"conv1", 1, 32, 28}, {"conv2", 32, 32, 28}, {"conv3", 32, 64, 14},
                                      {"conv4", 64, 64, 14}};
constexpr index_t batch = 128;

enum class pass { forward, weight_gradient, input_gradient };

// The chunk conv2d uses for this layer (its im2col budget).
index_t chunk_of(const conv_layer& l) {
  const index_t column_size = l.in * 9 * l.size * l.size;
  return std::max<index_t>(1, std::min<index_t>(batch, conv2d<float>::column_budget / column_size));
}

void conv_gemm(benchmark::State& state, conv_layer l, pass p) {
  const index_t k_rows = l.in * 9, plane = l.size * l.size, count = chunk_of(l);
  const auto weight = random_floats(l.out * k_rows, 3);
  const auto columns = random_floats(count * k_rows * plane, 4);
  const auto gy = random_floats(count * l.out * plane, 5);
  std::vector<float> out(static_cast<std::size_t>(count * std::max(k_rows, l.out) * plane));
  std::vector<float> weight_grad(static_cast<std::size_t>(l.out * k_rows));
  for (auto _ : state) {
    switch (p) {
      case pass::forward:  // y_n (Cout x P) = W (Cout x K) col_n (K x P)
        ops::gemm_batched(false, false, l.out, plane, k_rows, 1.f, weight.data(), k_rows, index_t{0}, columns.data(),
                          plane, k_rows * plane, 0.f, out.data(), plane, l.out * plane, count);
        break;
      case pass::weight_gradient:  // dW (Cout x K) += sum_n gy_n (Cout x P) col_n^T (P x K)
        ops::gemm_batched_sum(false, true, l.out, k_rows, plane, 1.f, gy.data(), plane, l.out * plane, columns.data(),
                              plane, k_rows * plane, 1.f, weight_grad.data(), k_rows, count);
        break;
      case pass::input_gradient:  // (K x P) = W^T (K x Cout) gy_n (Cout x P)
        ops::gemm_batched(true, false, k_rows, plane, l.out, 1.f, weight.data(), k_rows, index_t{0}, gy.data(), plane,
                          l.out * plane, 0.f, out.data(), plane, k_rows * plane, count);
        break;
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::DoNotOptimize(weight_grad.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, 2.0 * l.out * k_rows * plane * count);
  state.counters["examples"] = static_cast<double>(count);
}

const int registered = [] {
  const std::pair<pass, const char*> passes[] = {
      {pass::forward, "forward"}, {pass::weight_gradient, "weight_gradient"}, {pass::input_gradient, "input_gradient"}};
  for (const auto& [p, pass_name] : passes)
    for (const auto& l : conv_layers)
      benchmark::RegisterBenchmark((std::string("conv_gemm/") + pass_name + "/" + l.name).c_str(), conv_gemm, l, p)
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
  return 0;
}();

}  // namespace

BENCHMARK_MAIN();
