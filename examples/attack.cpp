// attack: loads a trained fmnist_cnn checkpoint and attacks it with l2- or
// linf-PGA, printing clean accuracy and robust accuracy for each eps.
//
//   attack --checkpoint out/final.safetensors --norm l2 --eps 0.5,1,1.5,2 --examples 1000
//
// eps is in [0, 1] pixel units (standardization is inside the model).
// --backend chooses where the model and the attack run; the checkpoint may
// come from any backend.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#if OPNORM_HAVE_THRUST || defined(__CUDACC__)
#include <opnorm/backend/thrust.hpp>
#endif
// The host build offers the Thrust host systems; the nvcc build (cuda_<name>)
// offers cuda in their place, which halves what nvcc compiles: the host
// systems are one program away, in the host build.
#if defined(__CUDACC__)
#define OPNORM_EXAMPLE_HOST_THRUST 0
#else
#define OPNORM_EXAMPLE_HOST_THRUST OPNORM_HAVE_THRUST
#endif
#include <opnorm/attacks.hpp>
#include <opnorm/data/data.hpp>
#include <opnorm/io/checkpoint.hpp>
#include <opnorm/networks.hpp>
#include <opnorm/transfer.hpp>

using namespace opnorm;

namespace {

struct settings {
  std::string checkpoint, norm = "l2", data_dir = "/usr/share/datasets/fashion-mnist", backend = "cpu";
  std::vector<float> eps_list = {0.5f, 1.0f, 1.5f, 2.0f};
  int iterations = 10, restarts = 1;
  index_t examples = 1000, first = 0;
  std::uint64_t seed = 0;
};

/// The --backend values this build offers (cuda only when compiled by nvcc).
const std::vector<std::string> backend_names = {
    "cpu",
#if OPNORM_EXAMPLE_HOST_THRUST
    "thrust-omp", "thrust-cpp",
#endif
#if defined(__CUDACC__)
    "cuda",
#endif
};

/// Loads the model onto backend B and attacks it there; the test images are
/// read on the host and copied over once.
template <class B>
void attack_on(const settings& s) {
  auto model = make_fmnist_cnn<float, B>();
  load_checkpoint(model, s.checkpoint);
  const auto test = load_fashion_mnist<float>(s.data_dir, split::test);
  const index_t n = std::min(s.examples, test.size() - s.first);
  const auto part = subset(test, s.first, n);
  const auto images = to<B>(part.images);
  const auto labels = to<B>(part.labels);
  attack_options<float> base;
  base.iterations = s.iterations;
  base.restarts = s.restarts;
  base.seed = s.seed;
  const auto start = std::chrono::steady_clock::now();
  const auto accuracy = s.norm == "l2" ? robust_accuracy<l2>(model, base, images, labels, s.eps_list)
                                       : robust_accuracy<linf>(model, base, images, labels, s.eps_list);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto clean = robust_accuracy<l2>(model, base, images, labels, {0.0f}).front();
  std::printf("%s, %s-PGA-%d, %d restart(s), %lld test images, eps in [0,1] pixel units, backend %s\n",
              s.checkpoint.c_str(), s.norm.c_str(), s.iterations, s.restarts, static_cast<long long>(n),
              s.backend.c_str());
  std::printf("clean accuracy: %.2f%%\n", 100 * clean);
  for (std::size_t k = 0; k < s.eps_list.size(); ++k)
    std::printf("eps %-6g robust accuracy %.2f%%\n", static_cast<double>(s.eps_list[k]), 100 * accuracy[k]);
  std::printf("(%.0f s)\n", seconds);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Attacks a trained fmnist_cnn with PGA and prints robust accuracy against eps.", "attack"};
  settings s;
  // A bad option is one line, like the program's other errors.
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return std::string("attack: error: ") + e.what() + " (see --help)\n";
  });
  app.add_option("--checkpoint", s.checkpoint, "model checkpoint (safetensors) of an fmnist_cnn")->required();
  app.add_option("--norm", s.norm, "l2 or linf")->check(CLI::IsMember({"l2", "linf"}))->capture_default_str();
  app.add_option("--eps", s.eps_list, "radii in [0, 1] pixel units")->delimiter(',')->capture_default_str();
  app.add_option("--iterations", s.iterations, "PGA iterations (step 2 eps / iterations)")->capture_default_str();
  app.add_option("--restarts", s.restarts, "random restarts; the worst case per example is kept")->capture_default_str();
  app.add_option("--examples", s.examples, "test images attacked (from --first)")->capture_default_str();
  app.add_option("--first", s.first, "index of the first test image")->capture_default_str();
  app.add_option("--data-dir", s.data_dir, "Fashion-MNIST folder")->capture_default_str();
  app.add_option("--seed", s.seed, "random starts")->capture_default_str();
  app.add_option("--backend", s.backend,
#if defined(__CUDACC__)
                 "where the attack runs: cpu or cuda (this is the nvcc build; the host build offers thrust-omp and "
                 "thrust-cpp)"
#else
                 "where the attack runs: cpu, thrust-omp or thrust-cpp (Thrust's host systems; the nvcc build "
                 "cuda_<program> offers cuda)"
#endif
                 "; the checkpoint may come from any backend")
      ->check(CLI::IsMember(backend_names))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints --help, or the one-line error
    return code == 0 ? 0 : 1;
  }
  try {
    // The one place a backend is chosen.
    if (s.backend == "cpu") attack_on<backend::cpu>(s);
#if OPNORM_EXAMPLE_HOST_THRUST
    else if (s.backend == "thrust-omp") attack_on<backend::thrust_omp>(s);
    else if (s.backend == "thrust-cpp") attack_on<backend::thrust_cpp>(s);
#endif
#if defined(__CUDACC__)
    else if (s.backend == "cuda") attack_on<backend::thrust_cuda>(s);
#endif
    else throw std::logic_error("--backend " + s.backend + " is accepted but not dispatched");
  } catch (const std::exception& e) {
    std::cerr << "attack: error: " << e.what() << '\n';
    return 1;
  }
}
