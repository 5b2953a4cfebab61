// attack: loads a trained fmnist_cnn checkpoint and attacks it in l2 or
// linf, printing clean accuracy and robust accuracy for each eps.
//
//   attack --checkpoint out/final.safetensors --norm l2 --eps 0.5,1,1.5,2 --examples 1000
//   attack --checkpoint out/final.safetensors --attack ensemble --norm linf --eps 0.05,0.1
//
// --attack chooses the attack:
//   pga        projected gradient ascent (--iterations 10 by default), the paper's evaluation
//   apgd-ce    APGD on cross-entropy (Croce & Hein 2020; 100 iterations by default)
//   apgd-dlr   APGD on the DLR loss
//   ensemble   APGD-CE, then APGD-T (targeted DLR over --target-classes classes) on the
//              examples APGD-CE left: AutoAttack's "standard" ensemble without FAB-T and
//              Square (see include/opnorm/kernel/attacks/ensemble.hpp). An example counts as
//              robust only if both fail.
// eps is in [0, 1] pixel units (standardization is inside the model).
// --backend chooses where the model and the attack run; the checkpoint may
// come from any backend.
//
// --distributed (a build with OPNORM_MPI=ON) splits the test images across
// the ranks of an MPI job (mpirun -np N attack --distributed ...): each rank
// attacks its contiguous shard, and the counts are summed. The attacks are
// per example and their random starts depend on the example only, so the
// numbers are those of one process.
#include <chrono>
#include <cmath>
#include <cstdint>
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
#include <opnorm/kernel/attacks.hpp>
#include <opnorm/data/data.hpp>
#include <opnorm/io/checkpoint.hpp>
#include <opnorm/nn/networks.hpp>
#include <opnorm/nn/transfer.hpp>

#include <opnorm/distributed/communicator.hpp>
#include <opnorm/distributed/data_parallel.hpp>

#include "command_line.hpp"
#include "distributed_job.hpp"

using namespace opnorm;
namespace cl = opnorm::command_line;

namespace {

struct settings {
  std::string checkpoint, norm = "l2", data_dir = "/usr/share/datasets/fashion-mnist", backend = "cpu";
  std::string attack = "pga";
  std::vector<float> eps_list = {0.5f, 1.0f, 1.5f, 2.0f};
  int iterations = 0;  // 0: the attack's default (10 for pga, 100 for the APGDs)
  int restarts = 1, target_classes = 9;
  index_t examples = 1000, first = 0;
  std::uint64_t seed = 0;
  bool distributed = false;
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

/// The attacks --attack names other than pga, for one eps: a list whose
/// worst case is the robust accuracy.
template <class Norm, class Model>
std::vector<attack_function<float, typename Model::backend_type>> apgd_attacks(Model& model, const settings& s,
                                                                               float eps) {
  apgd_options<float> o;
  o.eps = eps;
  o.iterations = s.iterations;
  o.restarts = s.restarts;
  o.target_classes = s.target_classes;
  o.seed = s.seed;
  if (s.attack == "apgd-ce") return {make_apgd<Norm, softmax_cross_entropy>(model, o)};
  if (s.attack == "apgd-dlr") return {make_apgd<Norm, dlr>(model, o)};
  if (s.attack == "ensemble") return make_apgd_ensemble<Norm>(model, o);
  throw std::logic_error("--attack " + s.attack + " is accepted but not dispatched");
}

template <class Norm, class Model>
std::vector<double> robust_accuracies(Model& model, const settings& s, const typename Model::tensor_type& images,
                                      const label_tensor<typename Model::backend_type>& labels) {
  if (s.attack == "pga") {
    attack_options<float> base;
    base.iterations = s.iterations;
    base.restarts = s.restarts;
    base.seed = s.seed;
    return robust_accuracy<Norm>(model, base, images, labels, s.eps_list);
  }
  std::vector<double> accuracy;
  for (float eps : s.eps_list) accuracy.push_back(robust_accuracy(model, apgd_attacks<Norm>(model, s, eps), images, labels));
  return accuracy;
}

std::string attack_name(const settings& s) {
  const std::string its = std::to_string(s.iterations);
  if (s.attack == "pga") return s.norm + "-PGA-" + its;
  if (s.attack == "apgd-ce") return s.norm + "-APGD-CE-" + its;
  if (s.attack == "apgd-dlr") return s.norm + "-APGD-DLR-" + its;
  return s.norm + " ensemble of APGD-CE-" + its + " and APGD-T-" + its + " (" + std::to_string(s.target_classes) +
         " target classes)";
}

/// Loads the model onto backend B and attacks it there; the test images are
/// read on the host and copied over once.
template <class B, class Communicator>
void attack_on(Communicator& comm, const settings& s) {
  auto model = make_fmnist_cnn<float, B>();
  load_checkpoint(model, s.checkpoint);
  const auto test = load_fashion_mnist<float>(s.data_dir, split::test);
  if (s.first >= test.size())
    throw cl::usage_error("--first " + std::to_string(s.first) + ": the test set has " +
                          std::to_string(test.size()) + " images, so there is nothing to attack");
  const index_t n = std::min(s.examples, test.size() - s.first);
  if (n < comm.size())
    throw cl::usage_error("--examples " + std::to_string(n) + " is fewer than the " + std::to_string(comm.size()) +
                          " ranks of the job");
  // This rank's contiguous shard of the n images (all of them in one process).
  const distributed::shard mine = distributed::shard_of(n, comm.rank(), comm.size());
  const auto part = subset(test, s.first + mine.begin, mine.size());
  const auto images = to<B>(part.images);
  const auto labels = to<B>(part.labels);
  const auto start = std::chrono::steady_clock::now();
  std::vector<double> accuracy = s.norm == "l2" ? robust_accuracies<l2>(model, s, images, labels)
                                                : robust_accuracies<linf>(model, s, images, labels);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  accuracy.push_back(robust_accuracy<l2>(model, attack_options<float>{}, images, labels, {0.0f}).front());
  // Fractions of this rank's images back to counts, summed over ranks.
  accuracy = distributed::fractions_over_ranks(comm, mine, n, accuracy);
  const double clean = accuracy.back();
  if (comm.rank() != 0) return;
  std::printf("%s, %s, %d restart(s), %lld test images, eps in [0,1] pixel units, backend %s",
              s.checkpoint.c_str(), attack_name(s).c_str(), s.restarts, static_cast<long long>(n), s.backend.c_str());
  if (comm.size() > 1) std::printf(", %d ranks", comm.size());
  std::printf("\n");
  std::printf("clean accuracy: %.2f%%\n", 100 * clean);
  for (std::size_t k = 0; k < s.eps_list.size(); ++k)
    std::printf("eps %-6g robust accuracy %.2f%%\n", static_cast<double>(s.eps_list[k]), 100 * accuracy[k]);
  std::printf("(%.0f s)\n", seconds);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Attacks a trained fmnist_cnn with PGA, APGD or an APGD ensemble and prints robust accuracy against eps.",
               "attack"};
  settings s;
  cl::one_line_errors(app, "attack");
  app.add_option("--checkpoint", s.checkpoint, "model checkpoint (safetensors) of an fmnist_cnn")->required();
  app.add_option("--norm", s.norm, "l2 or linf")->check(CLI::IsMember({"l2", "linf"}))->capture_default_str();
  app.add_option("--eps", s.eps_list, "radii in [0, 1] pixel units")
      ->delimiter(',')
      ->check(cl::real_in(detail::at_least(0)))
      ->capture_default_str();
  app.add_option("--attack", s.attack,
                 "pga, apgd-ce, apgd-dlr or ensemble (APGD-CE then APGD-T, AutoAttack's standard ensemble without "
                 "FAB-T and Square)")
      ->check(CLI::IsMember({"pga", "apgd-ce", "apgd-dlr", "ensemble"}))
      ->capture_default_str();
  app.add_option("--iterations", s.iterations,
                 "iterations per run (default 10 for pga, with step 2 eps / iterations; 100 for the APGDs)")
      ->check(cl::whole_number_at_least(1));
  app.add_option("--restarts", s.restarts, "random restarts; the worst case per example is kept")
      ->check(cl::whole_number_at_least(1))
      ->capture_default_str();
  app.add_option("--target-classes", s.target_classes,
                 "ensemble: APGD-T's targets, the highest non-true classes at x (at most classes - 1)")
      ->check(cl::whole_number_at_least(1))
      ->capture_default_str();
  app.add_option("--examples", s.examples, "test images attacked (from --first)")
      ->check(cl::whole_number_at_least(1))
      ->capture_default_str();
  app.add_option("--first", s.first, "index of the first test image")
      ->check(cl::whole_number_at_least(0))
      ->capture_default_str();
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
  app.add_flag("--distributed", s.distributed,
               "split the images across the ranks of an MPI job (mpirun -np N attack --distributed ...); needs a "
               "build with OPNORM_MPI=ON");
  if (const int code = cl::parse_or_exit_code(app, argc, argv); code >= 0) return code;
  if (s.iterations == 0) s.iterations = s.attack == "pga" ? 10 : 100;
  // The one place a backend is chosen.
  auto dispatch = [&](auto& comm) {
    if (s.backend == "cpu") attack_on<backend::cpu>(comm, s);
#if OPNORM_EXAMPLE_HOST_THRUST
    else if (s.backend == "thrust-omp") attack_on<backend::thrust_omp>(comm, s);
    else if (s.backend == "thrust-cpp") attack_on<backend::thrust_cpp>(comm, s);
#endif
#if defined(__CUDACC__)
    else if (s.backend == "cuda") attack_on<backend::thrust_cuda>(comm, s);
#endif
    else throw std::logic_error("--backend " + s.backend + " is accepted but not dispatched");
  };
  try {
    cl::run_job(s.distributed, argc, argv, "attack", [&](auto& comm) { dispatch(comm); });
    return cl::exit_success;
  } catch (const cl::usage_error& e) {
    std::cerr << "attack: error: " << e.what() << " (see --help)\n";
    return cl::exit_usage;
  } catch (const std::exception& e) {
    std::cerr << "attack: error: " << e.what() << '\n';
    return cl::exit_failure;
  }
}
