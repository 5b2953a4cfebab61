// train: trains fmnist_cnn on Fashion-MNIST or cnn7 on CIFAR-10 with a
// chosen training method, optimizer and schedule, and prints the test
// accuracy. Run `train --help` for the options.
//
// The output folder receives
//   log.csv            one row per epoch (losses, accuracies, learning rate, seconds)
//   last.safetensors   a resumable checkpoint, rewritten after every epoch
//                      (and every --checkpoint-every steps, if given)
//   final.safetensors  the trained model alone (PyTorch state_dict layout)
//
// `train --resume out/last.safetensors` continues a run: options not given
// on the command line are taken from the checkpoint, options given must
// match it (except --epochs, which may shorten or extend the run), and the
// continued run is bit-identical to an uninterrupted one (with the same
// thread count and --epochs).
//
// --backend chooses where the model, the method, the optimizer and the
// trainer run (cpu, Thrust's omp or cpp host systems, and cuda in a build
// compiled by nvcc); the data stay in host memory and each batch is copied
// over by the trainer. Checkpoints are backend-neutral: a run written by one
// backend resumes on any other (equivalent, not bit-identical, since the
// backends round differently).
//
// --distributed (a build with OPNORM_MPI=ON) trains data-parallel on the
// ranks of an MPI job:
//   mpirun -np 2 build/examples/train --distributed --method adversarial
// Every rank reads the data and (with --resume) the checkpoint; rank 0's
// state is broadcast, each rank trains on its shard of every global batch,
// gradients are averaged, and only rank 0 prints and writes files. BatchNorm
// uses the global batch's statistics (--batch-norm synchronized, the
// default: the run trains what one process would) or each rank's own
// (per-rank, as PyTorch DDP does by default; cheaper, a different model).
// An error on any rank ends the whole job (MPI_Abort) with its message.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

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
#include <opnorm/data/data.hpp>
#include <opnorm/io/checkpoint.hpp>
#include <opnorm/methods/adversarial.hpp>
#include <opnorm/methods/data_dependent_snr.hpp>
#include <opnorm/methods/global_snr.hpp>
#include <opnorm/methods/standard.hpp>
#include <opnorm/nn/networks.hpp>
#include <opnorm/train/train.hpp>

#include <opnorm/distributed/communicator.hpp>
#include <opnorm/distributed/data_parallel.hpp>

#include "command_line.hpp"
#include "distributed_job.hpp"

namespace fs = std::filesystem;
namespace cl = opnorm::command_line;
using namespace opnorm;

namespace {

struct config {
  std::string dataset = "fashion-mnist";
  std::string data_dir;
  std::string method = "standard";
  std::string optimizer = "sgd";
  std::string schedule = "cosine";
  index_t epochs = 10;
  index_t batch_size = 128;
  double lr = 0.05;
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 5e-4;
  index_t warmup_epochs = 0;
  index_t step_epochs = 0;  // 0: a third of the epochs
  double gamma = 0.1;
  std::uint64_t seed = 0;
  index_t limit_train = 0;  // 0: the whole training set
  index_t limit_test = 0;   // 0: the whole test set; not a trajectory setting (evaluation does not steer training)
  bool augment = false;
  int threads = 0;          // 0: OpenMP's default
  std::string out = "out";
  std::string resume;
  std::string init;         // start from this model checkpoint (fine-tuning)
  index_t progress_every = 50;
  index_t checkpoint_every = 0;  // steps; 0: at the end of every epoch only
  // Robust training methods (eps in [0, 1] pixel units, l2).
  double eps = 0.875;        // the paper's 1.75 on [-1, 1] images
  double alpha = 0;         // adversarial: 0 means 2 eps / iterations
  int iterations = 10;      // PGA or power iterations per step (global_snr: per weight)
  double lambda = -1;       // < 0: the method's default
  std::string objective = "eq10";      // adversarial: eq10 (clean + lambda adversarial) or madry
  std::string regularizer = "sum_of_squares";  // data_dependent_snr: sum_of_squares (Eq. 9) or jacobian (Eq. 8)
  std::string batch_statistics = "clean_batch";  // data_dependent_snr: clean_batch, independent_batches or running
  std::string backend = "cpu";  // not a trajectory setting: a checkpoint resumes on any backend
  bool distributed = false;     // not a trajectory setting either: a run resumes on any number of ranks
  std::string batch_norm = "synchronized";  // --distributed: synchronized or per-rank statistics
};

/// The --backend values this build offers: cuda only when nvcc compiled it
/// (the backend needs device code), the Thrust host systems when the CCCL
/// headers were found.
const std::vector<std::string> backend_names = {
    "cpu",
#if OPNORM_EXAMPLE_HOST_THRUST
    "thrust-omp", "thrust-cpp",
#endif
#if defined(__CUDACC__)
    "cuda",
#endif
};

const char* const default_fashion_mnist_dir = "/usr/share/datasets/fashion-mnist";

/// The shortest decimal that reads back as exactly v ("0.05", not
/// "0.050000000000000003"), so stored settings compare exactly and read well.
std::string number(double v) {
  char text[64];
  for (int digits = 6; digits <= 17; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, v);
    if (std::strtod(text, nullptr) == v) break;
  }
  return text;
}

/// The settings that decide a run's trajectory. They are stored in every
/// checkpoint as "config.<flag>" and compared or restored on --resume;
/// restored values go through the option's own command-line checks.
struct setting {
  std::string flag;
  std::function<std::string()> get;
};

std::vector<setting> trajectory_settings(config& c) {
  auto text = [](std::string& field) { return std::function<std::string()>([&field] { return field; }); };
  auto integer = [](auto& field) { return std::function<std::string()>([&field] { return std::to_string(field); }); };
  auto real = [](double& field) { return std::function<std::string()>([&field] { return number(field); }); };
  auto flag = [](bool& field) {
    return std::function<std::string()>([&field] { return std::string(field ? "true" : "false"); });
  };
  return {
      {"--dataset", text(c.dataset)},         {"--method", text(c.method)},
      {"--optimizer", text(c.optimizer)},     {"--schedule", text(c.schedule)},
      {"--epochs", integer(c.epochs)},        {"--batch-size", integer(c.batch_size)},
      {"--lr", real(c.lr)},                   {"--momentum", real(c.momentum)},
      {"--nesterov", flag(c.nesterov)},       {"--weight-decay", real(c.weight_decay)},
      {"--warmup-epochs", integer(c.warmup_epochs)}, {"--step-epochs", integer(c.step_epochs)},
      {"--gamma", real(c.gamma)},             {"--limit-train", integer(c.limit_train)},
      {"--augment", flag(c.augment)},
      {"--eps", real(c.eps)},                 {"--alpha", real(c.alpha)},
      {"--iterations", integer(c.iterations)},
      {"--lambda", real(c.lambda)},           {"--objective", text(c.objective)},
      {"--regularizer", text(c.regularizer)}, {"--batch-statistics", text(c.batch_statistics)},
      {"--seed", integer(c.seed)},
  };
}

/// --lambda's stored value when it was not given (the method's default).
const std::string default_lambda = "-1";

safetensors::metadata_map config_metadata(config& c) {
  safetensors::metadata_map m;
  for (const auto& s : trajectory_settings(c)) m["config." + s.flag] = s.get();
  m["backend"] = c.backend;  // for the record; resuming on another backend is allowed
#ifdef _OPENMP
  m["threads"] = std::to_string(omp_get_max_threads());
#endif
  return m;
}

/// Options not given on the command line are taken from the checkpoint;
/// options given must agree with it, or the resumed run would not be the
/// run that wrote it. The one exception is --epochs, so that a run can be
/// shortened or extended: that changes the schedule from here on, and the
/// user is told so.
void merge_resumed_config(config& c, CLI::App& app, const safetensors::metadata_map& stored,
                          const fs::path& path) {
  // A value from the checkpoint is handed to the option as if it had been
  // typed, so it passes the same checks and conversion as a typed one.
  auto restore = [&](const std::string& flag, const std::string& value) {
    CLI::Option* option = app.get_option(flag);
    try {
      option->add_result(value);
      option->run_callback();
    } catch (const CLI::Error& e) {
      throw std::runtime_error("--resume: '" + path.string() + "' stores " + flag + " '" + value +
                               "', which this program refuses (" + e.what() + "); the file is damaged or was "
                               "written by another program");
    }
  };
  std::string conflicts;
  for (const auto& s : trajectory_settings(c)) {
    const auto found = stored.find("config." + s.flag);
    // Checkpoints written before --batch-statistics existed trained
    // data-dependent SNR with independent train-mode passes.
    if (found == stored.end() && s.flag == "--batch-statistics") {
      if (app.count(s.flag) == 0) restore(s.flag, "independent_batches");
      continue;
    }
    if (found == stored.end())
      throw std::runtime_error("--resume: '" + path.string() + "' has no '" + s.flag +
                               "' setting; it was not written by this program");
    if (app.count(s.flag) == 0) {
      // The method's default lambda is stored as -1, which is not a value
      // one can type: it stays the default.
      if (!(s.flag == "--lambda" && found->second == default_lambda)) restore(s.flag, found->second);
    } else if (s.get() == found->second)
      continue;
    else if (s.flag == "--epochs")
      std::cerr << "note: --epochs " << s.get() << " replaces the checkpoint's " << found->second
                << "; schedules that depend on the length of the run (cosine, step with the default "
                   "--step-epochs) continue from the new length, so this is not the run the checkpoint "
                   "came from\n";
    else
      conflicts += "\n  " + s.flag + " " + s.get() + " here, " + found->second + " in the checkpoint";
  }
  if (!conflicts.empty())
    throw std::runtime_error("--resume: the options given differ from the run that wrote '" + path.string() +
                             "':" + conflicts + "\nleave them out (they are taken from the checkpoint) or "
                             "start a new run");
  const auto backend = stored.find("backend");
  if (backend != stored.end() && backend->second != c.backend)
    std::cerr << "note: the checkpoint was written on the " << backend->second << " backend and this run uses "
              << c.backend << "; the continued run is equivalent but not bit-identical\n";
#ifdef _OPENMP
  const auto threads = stored.find("threads");
  if (threads != stored.end() && threads->second != std::to_string(omp_get_max_threads()))
    std::cerr << "note: the checkpoint was written with " << threads->second << " threads and this run uses "
              << omp_get_max_threads() << "; the continued run is equivalent but not bit-identical\n";
#endif
}

std::function<double(index_t, index_t, index_t)> make_schedule(const config& c) {
  if (c.schedule == "cosine") return cosine_schedule(c.lr, c.epochs, c.warmup_epochs);
  if (c.schedule == "step")
    return step_decay_schedule(c.lr, c.step_epochs > 0 ? c.step_epochs : std::max<index_t>(1, c.epochs / 3), c.gamma);
  return constant_schedule(c.lr);
}

/// Calls f with the training method named by c.method, configured from the
/// command line. New methods are added here and to method_names.
const std::vector<std::string> method_names = {"standard", "adversarial", "global_snr", "data_dependent_snr"};
template <class Model, class F>
void with_method(const config& c, Model& model, F&& f) {
  if (c.method == "standard") {
    standard method;
    f(method);
  } else if (c.method == "adversarial") {
    adversarial<l2> method;
    method.eps = c.eps;
    method.alpha = c.alpha;
    method.iterations = c.iterations;
    if (c.lambda >= 0) method.lambda = c.lambda;
    method.form = c.objective == "madry" ? adversarial<l2>::objective::adversarial_only
                                         : adversarial<l2>::objective::clean_plus_adversarial;
    method.seed = c.seed;
    f(method);
  } else if (c.method == "global_snr") {
    global_snr<typename Model::scalar, typename Model::backend_type> method(model, c.lambda >= 0 ? c.lambda : 3e-4,
                                                                            c.iterations, c.seed);
    f(method);
  } else if (c.method == "data_dependent_snr") {
    data_dependent_snr<l2> method;
    method.eps = c.eps;
    method.iterations = c.iterations;
    // The default lambda is a sum-of-squares weight; the Jacobian form needs
    // eps^2 times it for the same penalty (docs/batch-statistics.md).
    if (c.lambda >= 0)
      method.lambda = c.lambda;
    else if (c.regularizer == "jacobian")
      method.lambda *= c.eps * c.eps;
    method.regularizer = c.regularizer == "jacobian" ? data_dependent_snr<l2>::form::jacobian
                                                     : data_dependent_snr<l2>::form::sum_of_squares;
    using statistics = typename data_dependent_snr<l2>::statistics;
    method.batch_statistics = c.batch_statistics == "independent_batches" ? statistics::independent_batches
                              : c.batch_statistics == "running"           ? statistics::running
                                                                          : statistics::clean_batch;
    method.seed = c.seed;
    f(method);
  } else {
    std::string known;
    for (const auto& m : method_names) known += (known.empty() ? "" : ", ") + m;
    throw std::runtime_error("unknown training method '" + c.method + "' (known: " + known + ")");
  }
}

template <class Communicator, class Model>
void train_model(Communicator& comm, Model& model, const char* model_name, config c, const dataset<float>& train_full,
                 const dataset<float>& test_full) {
  const bool root = comm.rank() == 0;
  distributed::communicator_statistics_reducer<Communicator> reducer(comm);
  if (comm.size() > 1 && c.batch_norm == "synchronized") distributed::synchronize_batch_norm(model, &reducer);
  const dataset<float> train =
      c.limit_train > 0 && c.limit_train < train_full.size() ? subset(train_full, 0, c.limit_train) : train_full;
  const dataset<float> test =
      c.limit_test > 0 && c.limit_test < test_full.size() ? subset(test_full, 0, c.limit_test) : test_full;
  if (!c.init.empty()) {
    load_checkpoint(model, c.init);
    if (root) std::cerr << "initialized from " << c.init << '\n';
  }
  with_method(c, model, [&](auto& method) {
    auto run = [&](auto& optimizer) {
      fit_options options;
      options.epochs = c.epochs;
      options.batch_size = c.batch_size;
      options.seed = c.seed;
      if (c.augment) options.augmentation = pad_crop_flip(c.dataset == "cifar10" ? 4 : 2);

      if (!c.resume.empty()) {
        const training_checkpoint restored = load_training_checkpoint(c.resume, model, method, optimizer);
        const bool inside_epoch = restored.progress.steps_completed > 0;
        if (restored.epochs_completed > c.epochs || (inside_epoch && restored.epochs_completed == c.epochs))
          throw cl::usage_error("--epochs " + std::to_string(c.epochs) + ": the run in '" + c.resume +
                                "' has already completed " + std::to_string(restored.epochs_completed) +
                                " epochs" + (inside_epoch ? " and part of the next" : ""));
        options.start_epoch = restored.epochs_completed;
        options.start_progress = restored.progress;
        if (!root) {
        } else if (inside_epoch)
          std::cerr << "resumed from " << c.resume << " at step " << restored.progress.steps_completed
                    << " of epoch " << restored.epochs_completed + 1 << '\n';
        else
          std::cerr << "resumed from " << c.resume << " after epoch " << restored.epochs_completed << '\n';
      }
      // A run that fails before writing anything leaves no folder behind.
      // Only rank 0 writes, so only rank 0 makes the folder.
      std::optional<cl::output_folder> folder;
      if (root) folder.emplace(c.out);
      const fs::path out = c.out;
      const safetensors::metadata_map metadata = config_metadata(c);
      if (root) std::cerr << model_name << " on " << train.name << " (" << train.size() << " examples) and " << test.name
                << " (" << test.size() << "), " << method.name << " training, " << optimizer.name << ", "
                << c.schedule << " schedule, lr " << c.lr << ", backend " << c.backend;
#ifdef _OPENMP
      if (root) std::cerr << ", " << omp_get_max_threads() << " threads";
#endif
      if (root && comm.size() > 1)
        std::cerr << ", " << comm.size() << " ranks (BatchNorm statistics " << c.batch_norm << ")";
      if (root) std::cerr << ", output in " << out.string() << '\n';

      // The ranks load the data at their own pace: start together, so the
      // communication measured below is the training's, not the loading's.
      comm.barrier();
      const double collective_seconds_before = comm.collective_seconds();
      const auto start = std::chrono::steady_clock::now();
      const fit_result result =
          fit(comm, model, method, optimizer, make_schedule(c), train, test, options,
              distributed::on_root(comm, progress(std::cerr, c.progress_every)),
              distributed::on_root(comm, csv_log(out / "log.csv")),
              distributed::on_root(comm, checkpoint_each_epoch(out / "last.safetensors", metadata, c.checkpoint_every)));
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

      const double fit_collective_seconds = comm.collective_seconds();
      const evaluation final_test = evaluate(comm, model, test);
      if (comm.size() > 1) {
        // Communication as a share of fit's wall time, per rank
        // (docs/distributed.md); it includes waiting for the slower rank.
        const double own[2] = {fit_collective_seconds - collective_seconds_before,
                               static_cast<double>(comm.collective_bytes())};
        std::vector<double> all(static_cast<std::size_t>(2 * comm.size()), 0.0);
        all[static_cast<std::size_t>(2 * comm.rank())] = own[0];
        all[static_cast<std::size_t>(2 * comm.rank() + 1)] = own[1];
        comm.all_reduce_sum(all.data(), static_cast<index_t>(all.size()));
        if (root) {
          std::fprintf(stderr, "communication: %lld collective calls per rank, %.1f MB reduced or broadcast per rank\n",
                       static_cast<long long>(comm.collective_calls()), all[1] / 1e6);
          for (int r = 0; r < comm.size(); ++r)
            std::fprintf(stderr, "rank %d: %.2f s of %.2f s in collectives (%.1f%%)\n", r,
                         all[static_cast<std::size_t>(2 * r)], seconds, 100 * all[static_cast<std::size_t>(2 * r)] / seconds);
        }
      }
      if (!root) return;
      safetensors::metadata_map final_metadata = metadata;
      final_metadata["epochs_completed"] = std::to_string(options.start_epoch + index_t(result.history.size()));
      final_metadata["method"] = method.name;
      final_metadata["test_accuracy"] = number(final_test.accuracy);
      final_metadata["test_loss"] = number(final_test.loss);
      save_checkpoint(model, out / "final.safetensors", final_metadata);
      folder->keep();
      char line[160];
      std::snprintf(line, sizeof line, "test accuracy: %.2f%% (%lld of %lld), test loss %.4f, %.0f s of training\n",
                    100 * final_test.accuracy, static_cast<long long>(final_test.correct),
                    static_cast<long long>(final_test.examples), final_test.loss, seconds);
      std::cout << line;
    };
    if (c.optimizer == "sgd") {
      sgd optimizer(model, sgd_options{c.lr, c.momentum, c.weight_decay, c.nesterov});
      run(optimizer);
    } else {
      adam optimizer(model, adam_options{c.lr, 0.9, 0.999, 1e-8, c.weight_decay});
      run(optimizer);
    }
  });
}

/// The whole run on backend B: the network is built there, and the method,
/// optimizer and trainer follow it. The data sets stay on the host.
template <class B, class Communicator>
void train_on(Communicator& comm, const config& c, const std::string& dir) {
  if (c.dataset == "fashion-mnist") {
    const auto train = load_fashion_mnist<float>(dir, split::train);
    const auto test = load_fashion_mnist<float>(dir, split::test);
    auto model = make_fmnist_cnn<float, B>(c.seed);
    train_model(comm, model, "fmnist_cnn", c, train, test);
    return;
  }
  const auto train = load_cifar10<float>(dir, split::train);
  const auto test = load_cifar10<float>(dir, split::test);
  auto model = make_cnn7<float, B>(c.seed);
  train_model(comm, model, "cnn7", c, train, test);
}

// The backend chosen by name; everything below it is generic.
template <class Communicator>
void dispatch_backend(Communicator& comm, const config& c, const std::string& dir) {
  if (c.backend == "cpu") train_on<backend::cpu>(comm, c, dir);
#if OPNORM_EXAMPLE_HOST_THRUST
  else if (c.backend == "thrust-omp") train_on<backend::thrust_omp>(comm, c, dir);
  else if (c.backend == "thrust-cpp") train_on<backend::thrust_cpp>(comm, c, dir);
#endif
#if defined(__CUDACC__)
  else if (c.backend == "cuda") train_on<backend::thrust_cuda>(comm, c, dir);
#endif
  else throw std::logic_error("--backend " + c.backend + " is accepted but not dispatched");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Trains fmnist_cnn on Fashion-MNIST or cnn7 on CIFAR-10 and prints the test accuracy.\n"
      "Writes log.csv, last.safetensors (resumable, after every epoch) and final.safetensors (the model) "
      "to the output folder.",
      "train"};
  cl::one_line_errors(app, "train");
  config c;
  app.add_option("--dataset", c.dataset, "fashion-mnist (network fmnist_cnn) or cifar10 (network cnn7)")
      ->check(CLI::IsMember({"fashion-mnist", "cifar10"}))
      ->capture_default_str();
  app.add_option("--data-dir", c.data_dir,
                 std::string("folder of the data set files (default for fashion-mnist: ") +
                     default_fashion_mnist_dir + "; cifar10 needs it: the cifar-10-batches-bin folder or its parent)");
  app.add_option("--method", c.method, "training method: standard, adversarial, global_snr or data_dependent_snr")
      ->check(CLI::IsMember(method_names))
      ->capture_default_str();
  app.add_option("--eps", c.eps, "adversarial and data_dependent_snr: l2 radius in [0, 1] pixel units")
      ->check(cl::real_in(detail::at_least(0)))
      ->capture_default_str();
  app.add_option("--alpha", c.alpha, "adversarial: PGA step size (0: 2 eps / iterations)")
      ->check(cl::real_in(detail::at_least(0)))
      ->capture_default_str();
  app.add_option("--iterations", c.iterations, "PGA or power iterations per step")
      ->check(cl::whole_number_at_least(1))
      ->capture_default_str();
  app.add_option("--lambda", c.lambda,
                 "regularization weight (default: adversarial 1, global_snr 3e-4, data_dependent_snr 0.03 in the "
                 "sum_of_squares form and 0.03 eps^2 in the jacobian form, the same penalty to first order)")
      ->check(cl::real_in(detail::at_least(0)));
  app.add_option("--objective", c.objective, "adversarial: eq10 (clean + lambda adversarial loss) or madry")
      ->check(CLI::IsMember({"eq10", "madry"}))
      ->capture_default_str();
  app.add_option("--regularizer", c.regularizer,
                 "data_dependent_snr: sum_of_squares (Eq. 9) or jacobian (Eq. 8)")
      ->check(CLI::IsMember({"sum_of_squares", "jacobian"}))
      ->capture_default_str();
  app.add_option("--batch-statistics", c.batch_statistics,
                 "data_dependent_snr, sum_of_squares form: the BatchNorm statistics of the penalty's passes: "
                 "clean_batch (the perturbed pass uses the clean batch's), independent_batches (each pass its own, "
                 "as the authors' code) or running (eval mode)")
      ->check(CLI::IsMember({"clean_batch", "independent_batches", "running"}))
      ->capture_default_str();
  app.add_option("--init", c.init, "start from the model in this checkpoint (fine-tuning, as the paper does)");
  app.add_option("--optimizer", c.optimizer, "sgd or adam")->check(CLI::IsMember({"sgd", "adam"}))->capture_default_str();
  app.add_option("--schedule", c.schedule, "learning-rate schedule: cosine, step or constant")
      ->check(CLI::IsMember({"cosine", "step", "constant"}))
      ->capture_default_str();
  app.add_option("--epochs", c.epochs, "epochs in total")->check(cl::whole_number_at_least(1))->capture_default_str();
  app.add_option("--batch-size", c.batch_size, "examples per step")
      ->check(cl::whole_number_at_least(1))
      ->capture_default_str();
  app.add_option("--lr", c.lr, "peak learning rate")->check(cl::real_in(detail::at_least(0)))->capture_default_str();
  app.add_option("--momentum", c.momentum, "SGD momentum, in [0, 1)")
      ->check(cl::real_in(detail::half_open_interval(0, 1)))
      ->capture_default_str();
  app.add_flag("--nesterov", c.nesterov, "Nesterov momentum (SGD)");
  app.add_option("--weight-decay", c.weight_decay, "coupled weight decay (added to the gradient, as in PyTorch)")
      ->check(cl::real_in(detail::at_least(0)))
      ->capture_default_str();
  app.add_option("--warmup-epochs", c.warmup_epochs, "cosine schedule: epochs of linear warmup")
      ->check(cl::whole_number_at_least(0))
      ->capture_default_str();
  app.add_option("--step-epochs", c.step_epochs, "step schedule: multiply by --gamma every this many epochs (0: epochs/3)")
      ->check(cl::whole_number_at_least(0))
      ->capture_default_str();
  app.add_option("--gamma", c.gamma, "step schedule: the factor")
      ->check(cl::real_in(detail::greater_than(0)))
      ->capture_default_str();
  app.add_option("--seed", c.seed, "seeds the initialization, the data order and the augmentation")
      ->capture_default_str();
  app.add_option("--limit-train", c.limit_train, "train on the first N examples only (0: all)")
      ->check(cl::whole_number_at_least(0))
      ->capture_default_str();
  app.add_option("--limit-test", c.limit_test,
                 "evaluate on the first N test examples only, after every epoch and at the end (0: all)")
      ->check(cl::whole_number_at_least(0))
      ->capture_default_str();
  app.add_flag("--augment", c.augment, "random crops (padding 4 on CIFAR-10, 2 on Fashion-MNIST) and flips");
  app.add_option("--threads", c.threads, "OpenMP threads (default: OMP_NUM_THREADS or all cores)")
      ->check(cl::whole_number_at_least(1));
  app.add_option("--out", c.out, "output folder")->capture_default_str();
  app.add_option("--resume", c.resume,
                 "continue the run saved in this checkpoint (a last.safetensors); other options default to the "
                 "checkpoint's and must match it, except --epochs");
  app.add_option("--backend", c.backend,
#if defined(__CUDACC__)
                 "where the model trains: cpu or cuda (this is the nvcc build; the host build offers thrust-omp and "
                 "thrust-cpp)"
#else
                 "where the model trains: cpu, thrust-omp or thrust-cpp (Thrust's host systems; the nvcc build "
                 "cuda_<program> offers cuda)"
#endif
                 "; checkpoints load on any backend")
      ->check(CLI::IsMember(backend_names))
      ->capture_default_str();
  app.add_flag("--distributed", c.distributed,
               "train data-parallel on the ranks of an MPI job (mpirun -np N train --distributed ...); needs a "
               "build with OPNORM_MPI=ON");
  app.add_option("--batch-norm", c.batch_norm,
                 "--distributed: BatchNorm statistics of the global batch (synchronized: the model one process "
                 "would train) or of each rank's shard (per-rank, PyTorch DDP's default)")
      ->check(CLI::IsMember({"synchronized", "per-rank"}))
      ->capture_default_str();
  app.add_option("--progress-every", c.progress_every, "print a status line every N steps")
      ->check(cl::whole_number_at_least(1))
      ->capture_default_str();
  app.add_option("--checkpoint-every", c.checkpoint_every,
                 "also write last.safetensors every N steps, so a crash loses at most N steps (0: at the end of "
                 "every epoch only); a run resumed from it is bit-identical to an unbroken one")
      ->check(cl::whole_number_at_least(0))
      ->capture_default_str();

  if (const int code = cl::parse_or_exit_code(app, argc, argv); code >= 0) return code;

  try {
#ifdef _OPENMP
    if (c.threads > 0) omp_set_num_threads(c.threads);
#endif
    if (!c.resume.empty()) merge_resumed_config(c, app, read_checkpoint_metadata(c.resume), c.resume);
    if (c.schedule == "cosine" && c.warmup_epochs >= c.epochs)
      throw cl::usage_error("--warmup-epochs must be smaller than --epochs");
    if (c.optimizer == "adam" && app.count("--momentum") > 0)
      throw cl::usage_error("--momentum applies to sgd; adam uses its betas (0.9, 0.999)");
    if (c.optimizer == "adam" && c.nesterov) throw cl::usage_error("--nesterov applies to sgd only");
    if (c.nesterov && c.momentum == 0) throw cl::usage_error("--nesterov needs --momentum > 0");
    if (!c.init.empty() && !c.resume.empty())
      throw cl::usage_error("--init starts a new run and --resume continues one: give one of them");

    std::string dir = c.data_dir;
    if (dir.empty()) {
      if (c.dataset == "cifar10")
        throw cl::usage_error("--dataset cifar10 needs --data-dir (the cifar-10-batches-bin folder or its parent)");
      dir = default_fashion_mnist_dir;
    }
    cl::run_job(c.distributed, argc, argv, "train", [&](auto& comm) { dispatch_backend(comm, c, dir); });
    return cl::exit_success;
  } catch (const cl::usage_error& e) {
    std::cerr << "train: error: " << e.what() << " (see --help)\n";
    return cl::exit_usage;
  } catch (const std::exception& e) {
    std::cerr << "train: error: " << e.what() << '\n';
    return cl::exit_failure;
  }
}
