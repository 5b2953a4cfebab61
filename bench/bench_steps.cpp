// bench_steps: time per step of the workloads of DESIGN.md section 4 on
// fmnist_cnn<float>, batch 128 unless the name says otherwise.
//
//   standard        train-mode forward, cross-entropy, backward, SGD-momentum update
//   pga10           10 l2-PGA iterations (eps 1.75, alpha = 2 eps / 10, eval mode),
//                   then a training step on x_adv (adversarial_only objective)
//   ddsnr10         10 finite-difference power iterations (eps 1.75), then the
//                   step on CE + lambda/2 ||f(x + eps v) - f(x)||^2 (lambda 0.03)
//   gsnr1           standard step + one power iteration per weight matrix
//   infer1000       eval-mode forward of 1000 images
//   jac_svd         exact 10 x 784 input Jacobian of one image + its SVD
//   pga10_b1024     pga10 at batch 1024 (a GPU needs large batches to fill up)
//   ddsnr10_b1024   ddsnr10 at batch 1024
//
// One source, two programs. The host build (bench_steps) measures the cpu
// backend; the nvcc build (cuda_bench_steps, OPNORM_CUDA=ON) measures
// backend::thrust<cuda>. Work on the GPU is asynchronous: a step returns once
// its kernels are queued. So every timed iteration ends with the stream
// synchronized (finish<B>), or an iteration would measure the time to queue
// work, not to do it. On the cpu backend finish<B> does nothing.
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
//
// Timing harness. With Google Benchmark found at build time
// (OPNORM_BENCH_GOOGLE_BENCHMARK=1) the program is a Google Benchmark
// program. Without it (the GPU machine has no libbenchmark) a small built-in
// harness takes its place: it accepts the flags bench/compare.py passes
// (--benchmark_filter, _repetitions, _min_time, _min_warmup_time,
// _report_aggregates_only, _format=json|console, _list_tests), times with the
// scheme of bench/torch_steps.py (warm-up, grow the iteration count until a
// block lasts min_time, repetitions blocks, median) and prints Google
// Benchmark's JSON layout, so compare.py reads either program the same way.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <memory>
#include <random>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/SVD>
#if OPNORM_BENCH_GOOGLE_BENCHMARK
#include <benchmark/benchmark.h>
#endif

#include <opnorm/nn/networks.hpp>  // first: it brings the layer vocabulary the method headers use
#include <opnorm/analysis/jacobian.hpp>
#include <opnorm/methods/adversarial.hpp>
#include <opnorm/methods/data_dependent_snr.hpp>
#include <opnorm/methods/global_snr.hpp>
#include <opnorm/methods/standard.hpp>
#include <opnorm/train/optimizers.hpp>

#if defined(__CUDACC__)
#include <cuda_runtime.h>

#include <opnorm/backend/thrust.hpp>
#elif defined(OPNORM_BENCH_CPU_BLAS)
#include <opnorm/backend/cpu_blas.hpp>
#endif

namespace {

using namespace opnorm;
using T = float;

#if defined(__CUDACC__)
using bench_backend = backend::thrust_cuda;
constexpr const char* backend_name = "thrust<cuda>";
#elif defined(OPNORM_BENCH_CPU_BLAS)
using bench_backend = backend::cpu_blas;  // bench_steps_blas (OPNORM_BLAS=ON)
constexpr const char* backend_name = "cpu_blas";
#else
using bench_backend = backend::cpu;
constexpr const char* backend_name = "cpu";
#endif

constexpr index_t batch_size = 128;
constexpr index_t large_batch_size = 1024;
constexpr double eps = 1.75;  // pixel units
constexpr double ddsnr_lambda = 0.03;
constexpr double gsnr_lambda = 3e-4;
// Untimed time before the first measurement (default of
// --benchmark_min_warmup_time): first-touch page faults, tape and workspace
// allocations, OpenMP thread start-up, CUDA module loading.
constexpr double warm_up_seconds = 0.5;

/// Waits until the backend has finished all work queued so far. The cpu
/// backend works synchronously; thrust<cuda> queues kernels on the calling
/// thread's stream (backend/thrust.hpp), which is the only stream opnorm uses.
template <class B>
void finish() {}
#if defined(__CUDACC__)
template <>
void finish<backend::thrust_cuda>() {
  const cudaError_t e = cudaStreamSynchronize(backend_ops<backend::thrust_cuda>::stream());
  if (e != cudaSuccess) throw std::runtime_error(std::string("cudaStreamSynchronize: ") + cudaGetErrorString(e));
}
#endif

/// Keeps a result alive so that the compiler cannot drop the work behind it
/// (benchmark::DoNotOptimize where Google Benchmark is not linked).
volatile double result_sink = 0;
template <class V>
void keep(const V& value) {
#if OPNORM_BENCH_GOOGLE_BENCHMARK
  benchmark::DoNotOptimize(value);
#else
  result_sink = static_cast<double>(value);
#endif
}

template <class B>
tensor<T, B> random_images(index_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<T> pixel(T(0), T(1));
  std::vector<T> v(static_cast<std::size_t>(n * 28 * 28));
  for (auto& e : v) e = pixel(rng);
  return tensor<T, B>::from_vector({n, 1, 28, 28}, v);
}

template <class B>
label_tensor<B> random_labels(index_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int32_t> label(0, 9);
  std::vector<std::int32_t> v(static_cast<std::size_t>(n));
  for (auto& e : v) e = label(rng);
  return label_tensor<B>::from_vector({n}, v);
}

/// A model, its optimizer, a tape and one batch: everything a training step
/// touches besides the method. Built once and never moved (the optimizer
/// holds the model's parameters).
template <class B>
struct training_setup {
  using network = fmnist_cnn<T, B>;
  network model = make_fmnist_cnn<T, B>(0);
  sgd<T, B> optimizer{model, sgd_options{/*learning_rate=*/0.01, /*momentum=*/0.9}};
  typename network::tape tape;
  tensor<T, B> x;
  label_tensor<B> y;

  explicit training_setup(index_t batch) : x(random_images<B>(batch, 1)), y(random_labels<B>(batch, 2)) {}
  training_setup(const training_setup&) = delete;
  training_setup& operator=(const training_setup&) = delete;

  /// One full step of a training loop: zero the gradients, let the method
  /// fill them, update, and wait for the device.
  template <class Method>
  void step(Method& method) {
    model.zero_grad();
    const batch_result r = method.accumulate_gradients(model, tape, x, y);
    keep(r.loss);
    optimizer.step(model);
    finish<B>();
  }
};

/// A step of a benchmark, with whatever state it needs, built on first use
/// (only the benchmarks that run are set up: a GPU build should not fill
/// device memory with models it never times).
using step_function = std::function<void()>;

/// A training step with Method: the setup and the method live as long as
/// the returned function, so every repetition measures the same steady state.
template <class B, class Method, class MakeMethod>
step_function training_step(index_t batch, MakeMethod make_method) {
  auto setup = std::make_shared<training_setup<B>>(batch);
  auto method = std::make_shared<Method>(make_method(*setup));
  return [setup, method] { setup->step(*method); };
}

template <class B>
step_function make_standard(index_t batch) {
  return training_step<B, standard>(batch, [](training_setup<B>&) { return standard{}; });
}

template <class B>
step_function make_pga10(index_t batch) {
  return training_step<B, adversarial<l2>>(batch, [](training_setup<B>&) {
    adversarial<l2> m;
    m.eps = eps;
    m.iterations = 10;  // alpha 0: 2 eps / iterations
    m.form = adversarial<l2>::objective::adversarial_only;
    return m;
  });
}

template <class B>
step_function make_ddsnr10(index_t batch) {
  return training_step<B, data_dependent_snr<l2>>(batch, [](training_setup<B>&) {
    data_dependent_snr<l2> m;
    m.eps = eps;
    m.lambda = ddsnr_lambda;
    m.iterations = 10;
    return m;
  });
}

template <class B>
step_function make_gsnr1(index_t batch) {
  return training_step<B, global_snr<T, B>>(batch, [](training_setup<B>& s) {
    return global_snr<T, B>(s.model, gsnr_lambda, /*iterations=*/1);
  });
}

template <class B>
step_function make_infer1000() {
  struct state {
    fmnist_cnn<T, B> model = make_fmnist_cnn<T, B>(0);
    typename fmnist_cnn<T, B>::tape tape;
    tensor<T, B> x = random_images<B>(1000, 3);
  };
  auto s = std::make_shared<state>();
  return [s] {
    keep(reinterpret_cast<std::uintptr_t>(s->model.forward(s->x, s->tape, mode::eval).data()));
    finish<B>();
  };
}

template <class B>
step_function make_jac_svd() {
  struct state {
    fmnist_cnn<T, B> model = make_fmnist_cnn<T, B>(0);
    tensor<T, B> x = random_images<B>(1, 4);
  };
  auto s = std::make_shared<state>();
  return [s] {
    // One 10 x 784 matrix, on the host (jacobian_by_vjp copies each row back).
    const auto jacobians = analysis::jacobian_by_vjp(s->model, s->x);
    // The whole spectrum with both sets of singular vectors (thin V: 784 x 10).
    Eigen::JacobiSVD<analysis::matrix<T>> svd(jacobians.front(), Eigen::ComputeThinU | Eigen::ComputeThinV);
    keep(svd.singularValues()(0));
    finish<B>();
  };
}

struct bench_case {
  std::string name;
  index_t items;  // examples per step, for items_per_second
  std::function<step_function()> make;
};

std::vector<bench_case> cases() {
  using B = bench_backend;
  return {
      {"standard", batch_size, [] { return make_standard<B>(batch_size); }},
      {"pga10", batch_size, [] { return make_pga10<B>(batch_size); }},
      {"ddsnr10", batch_size, [] { return make_ddsnr10<B>(batch_size); }},
      {"gsnr1", batch_size, [] { return make_gsnr1<B>(batch_size); }},
      {"infer1000", 1000, [] { return make_infer1000<B>(); }},
      {"jac_svd", 1, [] { return make_jac_svd<B>(); }},
      {"pga10_b1024", large_batch_size, [] { return make_pga10<B>(large_batch_size); }},
      {"ddsnr10_b1024", large_batch_size, [] { return make_ddsnr10<B>(large_batch_size); }},
  };
}

/// The accelerator this program measures, for the report ("" on the cpu build).
std::string device_description() {
#if defined(__CUDACC__)
  int device = 0;
  cudaDeviceProp p{};
  if (cudaGetDevice(&device) != cudaSuccess || cudaGetDeviceProperties(&p, device) != cudaSuccess) return "unknown";
  return std::string(p.name) + ", compute capability " + std::to_string(p.major) + "." + std::to_string(p.minor);
#else
  return "";
#endif
}

/// Whether the program can run at all: the cuda build needs a device.
bool device_available() {
#if defined(__CUDACC__)
  int devices = 0;
  return cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
#else
  return true;
#endif
}

#if !OPNORM_BENCH_GOOGLE_BENCHMARK
// ---------------------------------------------------------------------------
// The built-in harness (no Google Benchmark).

struct options {
  std::string filter = ".";
  int repetitions = 1;
  double min_time = 0.5;
  double warm_up = warm_up_seconds;
  bool aggregates_only = false;
  bool json = false;
  bool list = false;
};

// Google Benchmark's names for these benchmarks carry their settings
// (MeasureProcessCPUTime, UseRealTime); the built-in harness reports the
// same names so that filters and compare.py work unchanged.
std::string full_name(const std::string& name) { return name + "/process_time/real_time"; }

bool flag_value(const std::string& arg, const std::string& flag, std::string& value) {
  const std::string prefix = "--" + flag + "=";
  if (arg.compare(0, prefix.size(), prefix) != 0) return false;
  value = arg.substr(prefix.size());
  return true;
}

// Google Benchmark accepts a bare number of seconds or, since 1.8, "0.5s".
double seconds(const std::string& value) {
  std::string v = value;
  if (!v.empty() && v.back() == 's') v.pop_back();
  return std::stod(v);
}

bool truth(const std::string& value) { return value == "true" || value == "1" || value == "yes"; }

double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}
double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct block {
  double wall, cpu;  // seconds for the whole block
};

block timed_block(const step_function& step, std::int64_t iterations) {
  const double wall = wall_seconds(), cpu = process_cpu_seconds();
  for (std::int64_t i = 0; i < iterations; ++i) step();
  return {wall_seconds() - wall, process_cpu_seconds() - cpu};
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
double mean(const std::vector<double>& v) {
  double s = 0;
  for (double e : v) s += e;
  return s / double(v.size());
}
double stddev(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean(v);
  double s = 0;
  for (double e : v) s += (e - m) * (e - m);
  return std::sqrt(s / double(v.size() - 1));
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

struct result {
  std::string name;
  std::int64_t iterations;
  index_t items;
  std::vector<double> wall_ms, cpu_ms;  // per repetition, per step
};

void print_entry(std::FILE* out, bool& first, const std::string& name, const std::string& run_type,
                 const std::string& aggregate, int repetition, std::int64_t iterations, double wall_ms,
                 double cpu_ms, index_t items) {
  std::fprintf(out, "%s    {\n", first ? "" : ",\n");
  first = false;
  std::fprintf(out, "      \"name\": \"%s%s\",\n", json_escape(name).c_str(),
               aggregate.empty() ? "" : ("_" + aggregate).c_str());
  std::fprintf(out, "      \"run_name\": \"%s\",\n      \"run_type\": \"%s\",\n", json_escape(name).c_str(),
               run_type.c_str());
  if (!aggregate.empty()) std::fprintf(out, "      \"aggregate_name\": \"%s\",\n", aggregate.c_str());
  else std::fprintf(out, "      \"repetition_index\": %d,\n", repetition);
  std::fprintf(out, "      \"iterations\": %lld,\n", static_cast<long long>(iterations));
  std::fprintf(out, "      \"real_time\": %.9g,\n      \"cpu_time\": %.9g,\n      \"time_unit\": \"ms\"", wall_ms,
               cpu_ms);
  if (aggregate.empty() || aggregate == "mean" || aggregate == "median")
    std::fprintf(out, ",\n      \"items_per_second\": %.9g", double(items) / (wall_ms * 1e-3));
  std::fprintf(out, "\n    }");
}

int run_builtin(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    std::string v;
    if (flag_value(arg, "benchmark_filter", v)) o.filter = v;
    else if (flag_value(arg, "benchmark_repetitions", v)) o.repetitions = std::max(1, std::stoi(v));
    else if (flag_value(arg, "benchmark_min_time", v)) o.min_time = seconds(v);
    else if (flag_value(arg, "benchmark_min_warmup_time", v)) o.warm_up = seconds(v);
    else if (flag_value(arg, "benchmark_report_aggregates_only", v)) o.aggregates_only = truth(v);
    else if (flag_value(arg, "benchmark_display_aggregates_only", v)) o.aggregates_only = truth(v);
    else if (flag_value(arg, "benchmark_format", v)) {
      if (v != "json" && v != "console") {
        std::fprintf(stderr, "%s: --benchmark_format=%s: only json and console are supported\n", argv[0], v.c_str());
        return 1;
      }
      o.json = v == "json";
    } else if (flag_value(arg, "benchmark_list_tests", v)) o.list = truth(v);
    else if (arg == "--help" || arg == "-h") {
      std::printf("%s: built-in timing harness (Google Benchmark was not found at build time).\n"
                  "  --benchmark_filter=REGEX --benchmark_repetitions=N --benchmark_min_time=SECONDS\n"
                  "  --benchmark_min_warmup_time=SECONDS --benchmark_report_aggregates_only=true\n"
                  "  --benchmark_format=json|console --benchmark_list_tests=true\n",
                  argv[0]);
      return 0;
    } else {
      std::fprintf(stderr, "%s: unrecognized command-line flag: %s\n", argv[0], arg.c_str());
      return 1;
    }
  }

  const std::regex filter(o.filter);
  std::vector<bench_case> selected;
  for (auto& c : cases())
    if (std::regex_search(full_name(c.name), filter)) selected.push_back(c);
  if (o.list) {
    for (auto& c : selected) std::printf("%s\n", full_name(c.name).c_str());
    return 0;
  }
  if (selected.empty()) {
    std::fprintf(stderr, "%s: no benchmark matches '%s'\n", argv[0], o.filter.c_str());
    return 1;
  }
  if (!device_available()) {
    std::fprintf(stderr, "%s: no CUDA device: nothing to measure\n", argv[0]);
    return 77;
  }

  std::vector<result> results;
  for (auto& c : selected) {
    const step_function step = c.make();
    // Untimed warm-up: at least one step, and at least warm_up seconds.
    const double start = wall_seconds();
    do step();
    while (wall_seconds() - start < o.warm_up);
    // Grow the block until it lasts min_time; that block is the first
    // repetition, and the others use its iteration count (torch_steps.py's
    // measure() does the same).
    std::int64_t iterations = 1;
    block b{};
    for (;;) {
      b = timed_block(step, iterations);
      if (b.wall >= o.min_time) break;
      const double factor = std::min(10.0, 1.4 * o.min_time / std::max(b.wall, 1e-9));
      iterations = std::max(iterations + 1, static_cast<std::int64_t>(double(iterations) * factor));
    }
    result r{c.name, iterations, c.items, {}, {}};
    for (int rep = 0; rep < o.repetitions; ++rep) {
      if (rep > 0) b = timed_block(step, iterations);
      r.wall_ms.push_back(b.wall / double(iterations) * 1e3);
      r.cpu_ms.push_back(b.cpu / double(iterations) * 1e3);
    }
    if (!o.json)
      std::printf("%-36s %10.3f ms wall (median) %10.3f ms CPU %8lld iterations x %d\n", full_name(c.name).c_str(),
                  median(r.wall_ms), median(r.cpu_ms), static_cast<long long>(iterations), o.repetitions);
    std::fflush(stdout);
    results.push_back(std::move(r));
  }
  if (!o.json) return 0;

  std::FILE* out = stdout;
  std::fprintf(out, "{\n  \"context\": {\n");
  std::fprintf(out, "    \"executable\": \"%s\",\n", json_escape(argv[0]).c_str());
  std::fprintf(out, "    \"harness\": \"built-in (Google Benchmark not found at build time)\",\n");
  std::fprintf(out, "    \"backend\": \"%s\",\n", backend_name);
  std::fprintf(out, "    \"device\": \"%s\",\n", json_escape(device_description()).c_str());
  const char* threads = std::getenv("OMP_NUM_THREADS");
  std::fprintf(out, "    \"omp_num_threads\": \"%s\",\n", threads ? threads : "");
  std::fprintf(out, "    \"library_build_type\": \"release\"\n  },\n  \"benchmarks\": [\n");
  bool first = true;
  for (const auto& r : results) {
    const std::string name = full_name(r.name);
    if (!o.aggregates_only)
      for (std::size_t i = 0; i < r.wall_ms.size(); ++i)
        print_entry(out, first, name, "iteration", "", int(i), r.iterations, r.wall_ms[i], r.cpu_ms[i], r.items);
    if (o.repetitions > 1 || o.aggregates_only) {
      print_entry(out, first, name, "aggregate", "mean", 0, r.iterations, mean(r.wall_ms), mean(r.cpu_ms), r.items);
      print_entry(out, first, name, "aggregate", "median", 0, r.iterations, median(r.wall_ms), median(r.cpu_ms),
                  r.items);
      print_entry(out, first, name, "aggregate", "stddev", 0, r.iterations, stddev(r.wall_ms), stddev(r.cpu_ms),
                  r.items);
    }
  }
  std::fprintf(out, "\n  ]\n}\n");
  return 0;
}
#endif  // !OPNORM_BENCH_GOOGLE_BENCHMARK

}  // namespace

#if OPNORM_BENCH_GOOGLE_BENCHMARK
// Google Benchmark calls a benchmark function once per repetition; the step
// (setup and method) is built on the first call and kept, so that every
// repetition measures the same steady state.
int main(int argc, char** argv) {
  for (const auto& c : cases()) {
    auto step = std::make_shared<step_function>();
    benchmark::RegisterBenchmark(c.name.c_str(),
                                 [c, step](benchmark::State& state) {
                                   if (!*step) *step = c.make();
                                   for (auto _ : state) (*step)();
                                   state.SetItemsProcessed(state.iterations() * c.items);
                                 })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->MeasureProcessCPUTime();
  }
  // BENCHMARK_MAIN, with a warm-up by default: the flag is put first, so a
  // --benchmark_min_warmup_time on the command line (later in argv) wins.
  bool listing = false;  // listing the benchmarks needs no device
  for (int i = 1; i < argc; ++i) listing = listing || std::strstr(argv[i], "--benchmark_list_tests") != nullptr;
  std::string warm_up = "--benchmark_min_warmup_time=" + std::to_string(warm_up_seconds);
  std::vector<char*> args{argv[0], warm_up.data()};
  args.insert(args.end(), argv + 1, argv + argc);
  int count = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&count, args.data());
  if (benchmark::ReportUnrecognizedArguments(count, args.data())) return 1;
  if (!listing && !device_available()) {
    std::fprintf(stderr, "%s: no CUDA device: nothing to measure\n", argv[0]);
    return 77;
  }
  benchmark::AddCustomContext("backend", backend_name);
  if (!listing && !device_description().empty()) benchmark::AddCustomContext("device", device_description());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
#else
int main(int argc, char** argv) {
  try {
    return run_builtin(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
    return 1;
  }
}
#endif
