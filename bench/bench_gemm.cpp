// bench_gemm: the SGEMM limit of this machine for opnorm's GEMM, and how close
// fmnist_cnn's convolution GEMMs come to it.
//
//   sgemm_limit/N     C = A B with N x N x N floats through the GEMM the cpu
//                     backend calls (backend_ops<cpu>::gemm, Eigen), threaded
//                     the way a single large product is (Eigen's own OpenMP
//                     split over OMP_NUM_THREADS threads). The largest N that
//                     still fits the caches' blocking well is the "limit".
//   conv_gemm/<pass>/<layer>
//                     all the GEMMs conv2d issues for one pass (forward,
//                     weight gradient, input gradient) of fmnist_cnn's four
//                     convolutions over a batch of 128, with the layer's own
//                     lowering (im2col for conv1, Winograd F(2x2, 3x3) for
//                     the others), chunking and threading.
//
// Every benchmark reports GFLOP/s (2 m n k per product, the multiply-adds
// the GEMMs actually do) as the counter "GFLOPS". docs/performance.md
// compares the conv GEMMs with the limit. bench_gemm_blas (OPNORM_BLAS=ON)
// measures the same through backend::cpu_blas, OpenBLAS's GEMMs.
//
//   OMP_NUM_THREADS=2 build/bench/bench_gemm --benchmark_counters_tabular=true
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include <opnorm/backend/cpu.hpp>
#ifdef OPNORM_BENCH_CPU_BLAS
#include <opnorm/backend/cpu_blas.hpp>
#endif
#include <opnorm/nn/layers/conv2d.hpp>

namespace {

using namespace opnorm;
#ifdef OPNORM_BENCH_CPU_BLAS
using bench_backend = backend::cpu_blas;
#else
using bench_backend = backend::cpu;
#endif
using ops = backend_ops<bench_backend>;

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

// The GEMMs conv2d issues for one pass over a batch of 128, with its chunking
// and threading: im2col's per-example GEMMs batched over a chunk (threads
// across the chunk's examples), or Winograd's 16 GEMMs per chunk, one host
// task per chunk (threads across chunks). Hot cache: every chunk reads the
// same operands, so this is the GEMMs' speed without the transforms'
// memory traffic in between.
void conv_gemm(benchmark::State& state, conv_layer l, pass p) {
  const conv2d<float> layer(l.in, l.out, 3, 1, 1);
  const shape_t input{batch, l.in, l.size, l.size};
  const index_t plane = l.size * l.size, chunk = layer.examples_per_chunk(input);
  const index_t chunks = (batch + chunk - 1) / chunk;
  double flops = 0;
  if (!layer.uses_winograd()) {
    const index_t k_rows = l.in * 9;
    const auto weight = random_floats(l.out * k_rows, 3);
    const auto columns = random_floats(chunk * k_rows * plane, 4);
    const auto gy = random_floats(chunk * l.out * plane, 5);
    std::vector<float> out(static_cast<std::size_t>(chunk * std::max(k_rows, l.out) * plane));
    std::vector<float> weight_grad(static_cast<std::size_t>(l.out * k_rows));
    for (auto _ : state) {
      for (index_t c = 0; c < chunks; ++c) {
        const index_t count = std::min(chunk, batch - c * chunk);
        switch (p) {
          case pass::forward:  // y_n (Cout x P) = W (Cout x K) col_n (K x P)
            ops::gemm_batched(false, false, l.out, plane, k_rows, 1.f, weight.data(), k_rows, index_t{0},
                              columns.data(), plane, k_rows * plane, 0.f, out.data(), plane, l.out * plane, count);
            break;
          case pass::weight_gradient:  // dW (Cout x K) += sum_n gy_n (Cout x P) col_n^T (P x K)
            ops::gemm_batched_sum(false, true, l.out, k_rows, plane, 1.f, gy.data(), plane, l.out * plane,
                                  columns.data(), plane, k_rows * plane, 1.f, weight_grad.data(), k_rows, count);
            break;
          case pass::input_gradient:  // (K x P) = W^T (K x Cout) gy_n (Cout x P)
            ops::gemm_batched(true, false, k_rows, plane, l.out, 1.f, weight.data(), k_rows, index_t{0}, gy.data(),
                              plane, l.out * plane, 0.f, out.data(), plane, k_rows * plane, count);
            break;
        }
      }
      benchmark::DoNotOptimize(out.data());
      benchmark::DoNotOptimize(weight_grad.data());
      benchmark::ClobberMemory();
    }
    flops = 2.0 * l.out * k_rows * plane * batch;
  } else {
    constexpr index_t positions = detail::winograd::positions;
    const index_t tiles = ((l.size + 1) / 2) * ((l.size + 1) / 2), columns = chunk * tiles;
    const int workers = static_cast<int>(std::min<index_t>(ops::task_workers(), chunks));
    const auto filter = random_floats(positions * l.out * l.in, 3);
    std::vector<std::vector<float>> tiles_in, tiles_out, filter_grad;
    for (int w = 0; w < workers; ++w) {
      tiles_in.push_back(random_floats(positions * l.in * columns, 4 + w));
      tiles_out.push_back(random_floats(positions * l.out * columns, 40 + w));
      filter_grad.emplace_back(static_cast<std::size_t>(positions * l.out * l.in));
    }
    for (auto _ : state) {
      ops::for_each_task(chunks, [&](index_t, int w) {
        float *v = tiles_in[static_cast<std::size_t>(w)].data(), *m = tiles_out[static_cast<std::size_t>(w)].data();
        switch (p) {
          case pass::forward:  // M_xi = U_xi V_xi
            ops::gemm_batched(false, false, l.out, columns, l.in, 1.f, filter.data(), l.in, l.out * l.in, v, columns,
                              l.in * columns, 0.f, m, columns, l.out * columns, positions);
            break;
          case pass::weight_gradient:  // dU_xi += dM_xi V_xi^T
            ops::gemm_batched(false, true, l.out, l.in, columns, 1.f, m, columns, l.out * columns, v, columns,
                              l.in * columns, 1.f, filter_grad[static_cast<std::size_t>(w)].data(), l.in,
                              l.out * l.in, positions);
            break;
          case pass::input_gradient:  // dV_xi = U_xi^T dM_xi
            ops::gemm_batched(true, false, l.in, columns, l.out, 1.f, filter.data(), l.in, l.out * l.in, m, columns,
                              l.out * columns, 0.f, v, columns, l.in * columns, positions);
            break;
        }
        benchmark::DoNotOptimize(v);
        benchmark::DoNotOptimize(m);
      });
      benchmark::ClobberMemory();
    }
    flops = 2.0 * positions * l.out * l.in * tiles * batch;
  }
  report_flops(state, flops);
  state.counters["examples_per_chunk"] = static_cast<double>(chunk);
  state.counters["winograd"] = layer.uses_winograd() ? 1 : 0;
}

const int registered = [] {
  const std::pair<pass, const char*> passes[] = {
      {pass::forward, "forward"}, {pass::weight_gradient, "weight_gradient"}, {pass::input_gradient, "input_gradient"}};
  for (const auto& [p, pass_name] : passes)
    for (const auto& l : conv_layers)
      benchmark::RegisterBenchmark((std::string("conv_gemm/") + pass_name + "/" + l.name).c_str(), conv_gemm, l, p)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
  return 0;
}();

}  // namespace

BENCHMARK_MAIN();
