#pragma once
// A training checkpoint: everything needed to continue a run exactly where
// it stopped, in one safetensors file written atomically.
//
//   model tensors      under their PyTorch state_dict names, so the file also
//                      loads into torch.nn.Sequential.load_state_dict after
//                      dropping the prefixed entries below
//   "optimizer.<name>" the optimizer's state(): momentum buffers or Adam's
//                      moments, and "optimizer.step" (I64 scalar)
//   "method.<name>"    the training method's state(), for methods that keep
//                      one (persistent power-iteration vectors), and its
//                      counters(), I64 scalars ("method.step": the batch
//                      counter that seeds adversarial and data-dependent
//                      SNR's random starts)
//   metadata           "epochs_completed", "seed", "method", "optimizer",
//                      plus whatever the caller adds (hyperparameters);
//                      a checkpoint written inside an epoch (epoch
//                      epochs_completed) adds "steps_completed" and the
//                      epoch's running sums "epoch_loss_sum" (a hexadecimal
//                      float, exact), "epoch_correct", "epoch_examples"
//
// Resuming restores all of it; the trainer derives each epoch's data order
// and augmentation from (seed, epoch), so the resumed run takes the same
// steps, bit for bit, as one that never stopped.
//
// Loading is strict: every entry the run has must be in the file and every
// entry of the file must belong to the run, or nothing is loaded. That holds
// for the method's counters too. A file that lacks "method.step" (written
// before methods saved their counters) is refused rather than resumed with
// the counter at 0: a counter at 0 would repeat the first epoch's random
// starts, and the run would silently stop being the one the file promises.
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../io/checkpoint.hpp"
#include "reports.hpp"  // epoch_progress

namespace opnorm {

namespace detail {

template <class T, class = void>
struct has_state : std::false_type {};
template <class T>
struct has_state<T, std::void_t<decltype(std::declval<T&>().state())>> : std::true_type {};

// Counters need no scalar type or backend, so methods that are not
// templated on them (adversarial, data_dependent_snr) can expose theirs as
// `std::vector<named_counter> counters()`.
template <class T, class = void>
struct has_counters : std::false_type {};
template <class T>
struct has_counters<T, std::void_t<decltype(std::declval<T&>().counters())>> : std::true_type {};

// Everything of method that a training checkpoint holds: its state() and its
// counters(), either of which it may lack.
template <class Model, class Method>
state_list<typename Model::scalar, typename Model::backend_type> method_state(Method& method) {
  state_list<typename Model::scalar, typename Model::backend_type> s;
  if constexpr (has_state<Method>::value) s = method.state();
  if constexpr (has_counters<Method>::value)
    for (const named_counter& c : method.counters()) s.counters.push_back(c);
  return s;
}

// Adds every tensor and counter of s to entries, named prefix + name.
template <class T, class B>
void add_state_entries(const std::string& prefix, const state_list<T, B>& s, safetensors::tensor_map& entries) {
  for (const auto& p : s.parameters) entries.emplace(prefix + p.name, safetensors::to_entry(*p.value));
  for (const auto& b : s.buffers) entries.emplace(prefix + b.name, safetensors::to_entry(*b.value));
  for (const auto& c : s.counters) entries.emplace(prefix + c.name, safetensors::scalar_entry<std::int64_t>(*c.value));
}

inline std::int64_t parse_metadata_integer(const safetensors::metadata_map& m, const std::string& key,
                                           const std::filesystem::path& path) {
  const auto found = m.find(key);
  if (found == m.end())
    throw checkpoint_error("opnorm::load_training_checkpoint: '" + path.string() + "' has no '" + key +
                           "' in its metadata; it is not a training checkpoint");
  try {
    std::size_t used = 0;
    const long long v = std::stoll(found->second, &used);
    if (used == found->second.size() && v >= 0) return v;
  } catch (const std::exception&) {
  }
  throw checkpoint_error("opnorm::load_training_checkpoint: '" + path.string() + "': metadata '" + key +
                         "' is '" + found->second + "', not a non-negative integer");
}

inline double parse_metadata_real(const safetensors::metadata_map& m, const std::string& key,
                                  const std::filesystem::path& path) {
  const auto found = m.find(key);
  if (found == m.end())
    throw checkpoint_error("opnorm::load_training_checkpoint: '" + path.string() + "' has no '" + key +
                           "' in its metadata");
  const char* begin = found->second.c_str();
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(begin, &end);
  if (found->second.empty() || end != begin + found->second.size() || errno == ERANGE || !std::isfinite(v))
    throw checkpoint_error("opnorm::load_training_checkpoint: '" + path.string() + "': metadata '" + key +
                           "' is '" + found->second + "', not a finite number");
  return v;
}

}  // namespace detail

/// What load_training_checkpoint found besides the tensors.
struct training_checkpoint {
  index_t epochs_completed = 0;
  epoch_progress progress;  // inside epoch epochs_completed; steps_completed == 0 at an epoch's end
  std::uint64_t seed = 0;
  safetensors::metadata_map metadata;  // everything, including the keys above
};

/// Writes model, optimizer state and method state to path atomically (an
/// existing file is replaced only by a complete new one).
template <class Model, class Method, class Optimizer>
void save_training_checkpoint(const std::filesystem::path& path, Model& model, Method& method,
                              Optimizer& optimizer, index_t epochs_completed, std::uint64_t seed,
                              safetensors::metadata_map metadata = {}, const epoch_progress& progress = {}) {
  safetensors::tensor_map extra;
  detail::add_state_entries("optimizer.", optimizer.state(), extra);
  detail::add_state_entries("method.", detail::method_state<Model>(method), extra);
  metadata["epochs_completed"] = std::to_string(epochs_completed);
  metadata["seed"] = std::to_string(seed);
  metadata["method"] = Method::name;
  metadata["optimizer"] = Optimizer::name;
  if (progress.steps_completed > 0) {
    // Inside an epoch: the running sums go along exactly (the loss sum as a
    // hexadecimal float, which reads back bit for bit).
    char loss_sum[64];
    std::snprintf(loss_sum, sizeof loss_sum, "%a", progress.loss_sum);
    metadata["steps_completed"] = std::to_string(progress.steps_completed);
    metadata["epoch_loss_sum"] = loss_sum;
    metadata["epoch_correct"] = std::to_string(progress.correct);
    metadata["epoch_examples"] = std::to_string(progress.examples);
  }
  save_checkpoint(model, path, metadata, extra);
}

/// Restores model, optimizer and method state from a file written by
/// save_training_checkpoint. The method and optimizer must be of the kinds
/// that wrote it. Throws checkpoint_error listing every problem; on failure
/// nothing is changed (the file is validated completely, then applied).
template <class Model, class Method, class Optimizer>
training_checkpoint load_training_checkpoint(const std::filesystem::path& path, Model& model, Method& method,
                                             Optimizer& optimizer) {
  const std::string where = "opnorm::load_training_checkpoint: '" + path.string() + "'";
  training_checkpoint result;
  result.metadata = read_checkpoint_metadata(path);
  for (const auto& [key, expected] :
       {std::pair<std::string, std::string>{"method", Method::name}, {"optimizer", Optimizer::name}}) {
    const auto found = result.metadata.find(key);
    if (found == result.metadata.end() || found->second != expected)
      throw checkpoint_error(where + " was written by a run with " + key + " '" +
                             (found == result.metadata.end() ? std::string("(none)") : found->second) +
                             "'; this run uses '" + expected + "'");
  }
  result.epochs_completed = detail::parse_metadata_integer(result.metadata, "epochs_completed", path);
  result.seed = static_cast<std::uint64_t>(detail::parse_metadata_integer(result.metadata, "seed", path));
  if (result.metadata.count("steps_completed")) {
    result.progress.steps_completed = detail::parse_metadata_integer(result.metadata, "steps_completed", path);
    result.progress.correct = detail::parse_metadata_integer(result.metadata, "epoch_correct", path);
    result.progress.examples = detail::parse_metadata_integer(result.metadata, "epoch_examples", path);
    result.progress.loss_sum = detail::parse_metadata_real(result.metadata, "epoch_loss_sum", path);
    if (result.progress.correct > result.progress.examples || result.progress.steps_completed == 0 ||
        result.progress.examples == 0)
      throw checkpoint_error(where + ": its position inside the epoch (steps_completed, epoch_correct, "
                             "epoch_examples) is inconsistent");
  }

  // Stage optimizer and method state from a first read, so that a mismatch
  // there is reported before load_checkpoint changes the model; the file is
  // read twice, which costs little next to the run being resumed.
  const safetensors::contents file = safetensors::read(path);
  std::vector<std::string> problems, used;
  auto optimizer_state = optimizer.state();
  detail::staged_state optimizer_staged("optimizer", "optimizer.", optimizer_state, file.tensors, problems, used);
  auto method_state = detail::method_state<Model>(method);
  detail::staged_state method_staged("method", "method.", method_state, file.tensors, problems, used);
  {
    const auto model_state = model.state();
    for (const auto& p : model_state.parameters) used.push_back(p.name);
    for (const auto& b : model_state.buffers) used.push_back(b.name);
    for (const auto& c : model_state.counters) used.push_back(c.name);
  }
  const std::set<std::string> known(used.begin(), used.end());
  for (const auto& [name, e] : file.tensors)
    if (!known.count(name))
      problems.push_back("unexpected tensor '" + name + "' (neither the model nor this run's optimizer and "
                         "method have such a tensor)");
  if (!problems.empty()) {
    std::string message = where + " does not match this run; nothing was changed: ";
    for (std::size_t i = 0; i < problems.size(); ++i) message += (i ? "; " : "") + problems[i];
    throw checkpoint_error(message);
  }

  // Validates the model's own tensors and throws before changing anything;
  // the prefixed entries come back in extra and are applied from the staging.
  safetensors::tensor_map extra;
  load_checkpoint(model, path, &extra);
  optimizer_staged.commit();
  method_staged.commit();
  return result;
}

}  // namespace opnorm
