// bench_steps: time per step of the workloads of DESIGN.md section 4 on
// fmnist_cnn<float>, batch 128, CPU backend.
//
//   standard   train-mode forward, cross-entropy, backward, SGD-momentum update
//   pga10      10 l2-PGA iterations (eps 1.75, alpha = 2 eps / 10, eval mode),
//              then a training step on x_adv (adversarial_only objective)
//   ddsnr10    10 finite-difference power iterations (eps 1.75), then the
//              step on CE + lambda/2 ||f(x + eps v) - f(x)||^2 (lambda 0.03)
//   gsnr1      standard step + one power iteration per weight matrix
//   infer1000  eval-mode forward of 1000 images
//   jac_svd    exact 10 x 784 input Jacobian of one image + its SVD
//
// Inputs are uniform in [0, 1] and labels uniform in 0..9: the cost of a
// step does not depend on the pixel values. Training steps repeat on the
// same batch with the same model, optimizer and tapes, which is the steady
// state of a training loop (no allocation after the first step).
//
// The reported Time is wall-clock (UseRealTime), the number that matters to a
// user; CPU is the CPU time of the whole process (MeasureProcessCPUTime), all
// OpenMP threads included. With one thread, CPU time is the measure that a
// busy machine disturbs least (time slices lost to other processes do not
// count). Set the thread count with OMP_NUM_THREADS. bench/compare.py runs
// these next to PyTorch and prints medians (docs/performance.md); alone, e.g.
//
//   OMP_NUM_THREADS=2 build/bench/bench_steps --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true     (one command line)
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <Eigen/SVD>
#include <benchmark/benchmark.h>

#include <opnorm/networks.hpp>  // first: it brings the layer vocabulary the method headers use
#include <opnorm/analysis/jacobian.hpp>
#include <opnorm/methods/adversarial.hpp>
#include <opnorm/methods/data_dependent_snr.hpp>
#include <opnorm/methods/global_snr.hpp>
#include <opnorm/methods/standard.hpp>
#include <opnorm/train/optimizers.hpp>

namespace {

using namespace opnorm;
using T = float;
using network = fmnist_cnn<T>;
using images = network::tensor_type;
using labels = label_tensor<backend::cpu>;

constexpr index_t batch_size = 128;
constexpr double eps = 1.75;  // pixel units
constexpr double ddsnr_lambda = 0.03;
constexpr double gsnr_lambda = 3e-4;
// Untimed time before the first measurement (default of
// --benchmark_min_warmup_time): first-touch page faults, tape and workspace
// allocations, OpenMP thread start-up.
constexpr double warm_up_seconds = 0.5;

images random_images(index_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<T> pixel(T(0), T(1));
  std::vector<T> v(static_cast<std::size_t>(n * 28 * 28));
  for (auto& e : v) e = pixel(rng);
  return images::from_vector({n, 1, 28, 28}, v);
}

labels random_labels(index_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int32_t> label(0, 9);
  std::vector<std::int32_t> v(static_cast<std::size_t>(n));
  for (auto& e : v) e = label(rng);
  return labels::from_vector({n}, v);
}

/// A model, its optimizer, a tape and one batch: everything a training step
/// touches besides the method.
struct training_setup {
  network model = make_fmnist_cnn<T>(0);
  sgd<T> optimizer{model, sgd_options{/*learning_rate=*/0.01, /*momentum=*/0.9}};
  network::tape tape;
  images x = random_images(batch_size, 1);
  labels y = random_labels(batch_size, 2);

  /// One full step of a training loop: zero the gradients, let the method
  /// fill them, update.
  template <class Method>
  void step(Method& method) {
    model.zero_grad();
    const batch_result r = method.accumulate_gradients(model, tape, x, y);
    benchmark::DoNotOptimize(r.loss);
    optimizer.step(model);
  }
};

// Google Benchmark calls a benchmark function once per repetition; the setup
// and the method are built once per program (function-local statics) so that
// every repetition measures the same steady state.
template <class Method>
void run_steps(benchmark::State& state, training_setup& setup, Method& method) {
  for (auto _ : state) setup.step(method);
  state.SetItemsProcessed(state.iterations() * batch_size);
}

void standard_step(benchmark::State& state) {
  static training_setup setup;
  static standard method;
  run_steps(state, setup, method);
}

void pga10_step(benchmark::State& state) {
  static training_setup setup;
  static adversarial<l2> method = [] {
    adversarial<l2> m;
    m.eps = eps;
    m.iterations = 10;  // alpha 0: 2 eps / iterations
    m.form = adversarial<l2>::objective::adversarial_only;
    return m;
  }();
  run_steps(state, setup, method);
}

void ddsnr10_step(benchmark::State& state) {
  static training_setup setup;
  static data_dependent_snr<l2> method = [] {
    data_dependent_snr<l2> m;
    m.eps = eps;
    m.lambda = ddsnr_lambda;
    m.iterations = 10;
    return m;
  }();
  run_steps(state, setup, method);
}

void gsnr1_step(benchmark::State& state) {
  static training_setup setup;
  static global_snr<T> method(setup.model, gsnr_lambda, /*iterations=*/1);
  run_steps(state, setup, method);
}

void infer1000(benchmark::State& state) {
  static network model = make_fmnist_cnn<T>(0);
  static network::tape tape;
  static const images x = random_images(1000, 3);
  for (auto _ : state) benchmark::DoNotOptimize(model.forward(x, tape, mode::eval).data());
  state.SetItemsProcessed(state.iterations() * 1000);
}

void jac_svd(benchmark::State& state) {
  static network model = make_fmnist_cnn<T>(0);
  static const images x = random_images(1, 4);
  for (auto _ : state) {
    const auto jacobians = analysis::jacobian_by_vjp(model, x);  // one 10 x 784 matrix
    // The whole spectrum with both sets of singular vectors (thin V: 784 x 10).
    Eigen::JacobiSVD<analysis::matrix<T>> svd(jacobians.front(), Eigen::ComputeThinU | Eigen::ComputeThinV);
    benchmark::DoNotOptimize(svd.singularValues().data());
  }
}

void configure(benchmark::internal::Benchmark* b) {
  b->Unit(benchmark::kMillisecond)->UseRealTime()->MeasureProcessCPUTime();
}

}  // namespace

BENCHMARK(standard_step)->Name("standard")->Apply(configure);
BENCHMARK(pga10_step)->Name("pga10")->Apply(configure);
BENCHMARK(ddsnr10_step)->Name("ddsnr10")->Apply(configure);
BENCHMARK(gsnr1_step)->Name("gsnr1")->Apply(configure);
BENCHMARK(infer1000)->Name("infer1000")->Apply(configure);
BENCHMARK(jac_svd)->Name("jac_svd")->Apply(configure);

// BENCHMARK_MAIN, with a warm-up by default: the flag is put first, so a
// --benchmark_min_warmup_time on the command line (later in argv) wins.
int main(int argc, char** argv) {
  std::string warm_up = "--benchmark_min_warmup_time=" + std::to_string(warm_up_seconds);
  std::vector<char*> args{argv[0], warm_up.data()};
  args.insert(args.end(), argv + 1, argv + argc);
  int count = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&count, args.data());
  if (benchmark::ReportUnrecognizedArguments(count, args.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
