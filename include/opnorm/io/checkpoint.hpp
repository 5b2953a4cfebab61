#pragma once
// Model checkpoints: a network's state() as a safetensors file whose tensor
// names, dtypes and layouts are those of PyTorch's state_dict for the same
// nn.Sequential ("0.weight" (out, in) or OIHW, "1.running_mean",
// "1.num_batches_tracked" as an int64 scalar of shape []). A float model
// writes F32 and a double model F64, so
//     torch.nn.Sequential(...).load_state_dict(tensors_read_from_the_file)
// works without conversion code, and so does the opposite direction.
//
// Loading is strict, like load_state_dict(strict=True): every tensor of the
// model must be present with its exact shape, and names the model does not
// have are refused (unless the caller asks for them as extras). The whole file
// is read, validated and converted into staging buffers before the first
// byte of the model changes, so a failed load leaves the model as it was.
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "../core/state.hpp"
#include "safetensors.hpp"

namespace opnorm {

namespace detail {

/// Checks that entries hold every tensor and counter of s, named prefix +
/// name, with the right shapes and dtypes, and converts them into staging
/// buffers; commit() then writes them into s. A model load and a training
/// checkpoint's optimizer and method state go through this one routine, so
/// both refuse a file the same way before anything changes. Problems are
/// collected, not thrown, so one message can list all of them; owner ("model",
/// "optimizer", "method") names what expects the tensors in them. Every name
/// looked up is added to used.
template <class T, class B>
class staged_state {
 public:
  staged_state(const std::string& owner, const std::string& prefix, const state_list<T, B>& s,
               const safetensors::tensor_map& entries, std::vector<std::string>& problems,
               std::vector<std::string>& used) {
    auto stage = [&](const named_tensor<T, B>& t) {
      const std::string name = prefix + t.name;
      used.push_back(name);
      const auto found = entries.find(name);
      if (found == entries.end()) {
        problems.push_back("missing tensor '" + name + "' of shape " + shape_string(t.value->shape()));
        return;
      }
      const safetensors::entry& e = found->second;
      if (!safetensors::readable_as<T>(e.type)) {
        problems.push_back("tensor '" + name + "' has dtype " + safetensors::dtype_name(e.type) + ", but " + owner +
                           " tensors are read from F32 or F64");
        return;
      }
      if (e.shape != t.value->shape()) {
        problems.push_back("tensor '" + name + "' has shape " + shape_string(e.shape) + " in the file, but the " +
                           owner + " expects " + shape_string(t.value->shape()));
        return;
      }
      std::vector<T> values = safetensors::decode<T>(e, "tensor '" + name + "'");
      const std::string non_finite = safetensors::first_non_finite(values, e.shape);
      if (!non_finite.empty()) {
        problems.push_back("tensor '" + name + "' " + non_finite);
        return;
      }
      tensors_.push_back({t.value, std::move(values)});
    };
    for (const auto& p : s.parameters) stage(p);
    for (const auto& b : s.buffers) stage(b);
    for (const auto& c : s.counters) {
      const std::string name = prefix + c.name;
      used.push_back(name);
      const auto found = entries.find(name);
      if (found == entries.end()) {
        problems.push_back("missing counter '" + name + "' (an I64 scalar of shape ())");
        continue;
      }
      const safetensors::entry& e = found->second;
      if (e.type != safetensors::dtype::I64 || !e.shape.empty()) {
        problems.push_back("counter '" + name + "' is " + safetensors::dtype_name(e.type) + " of shape " +
                           shape_string(e.shape) + " in the file, but the " + owner + " expects I64 of shape ()");
        continue;
      }
      counters_.emplace_back(c.value, safetensors::decode<std::int64_t>(e, "counter '" + name + "'")[0]);
    }
  }

  void commit() {
    for (auto& t : tensors_) backend_ops<B>::copy_from_host(t.values.data(), t.target->size(), t.target->data());
    for (const auto& [target, value] : counters_) *target = value;
  }

 private:
  struct staged_tensor {
    tensor<T, B>* target;
    std::vector<T> values;
  };
  std::vector<staged_tensor> tensors_;
  std::vector<std::pair<std::int64_t*, std::int64_t>> counters_;
};

}  // namespace detail

/// Saves model.state() (parameters, buffers, counters) to path atomically:
/// an existing checkpoint is replaced only by a complete new one.
///
/// metadata is stored in the header's "__metadata__" (epoch, method, ...;
/// read it back with read_checkpoint_metadata or load_checkpoint's result);
/// "format": "pt" is added unless given, which is how Hugging Face tools
/// recognize a PyTorch-layout file. extra holds further tensors saved in the
/// same file, e.g. optimizer state named "optimizer.<parameter>.momentum",
/// so a resumable snapshot is one atomic write; their names must not collide
/// with the model's.
template <class Model>
void save_checkpoint(Model& model, const std::filesystem::path& path,
                     const safetensors::metadata_map& metadata = {},
                     const safetensors::tensor_map& extra = {}) {
  auto state = model.state();
  safetensors::tensor_map entries;
  auto add = [&](const std::string& name, safetensors::entry e, const char* kind) {
    if (!entries.emplace(name, std::move(e)).second)
      throw checkpoint_error("opnorm::save_checkpoint: " + safetensors::detail::quoted(path) + ": " + kind +
                             " '" + name + "' has the name of another tensor of the checkpoint");
  };
  for (const auto& p : state.parameters) add(p.name, safetensors::to_entry(*p.value), "parameter");
  for (const auto& b : state.buffers) add(b.name, safetensors::to_entry(*b.value), "buffer");
  for (const auto& c : state.counters) add(c.name, safetensors::scalar_entry<std::int64_t>(*c.value), "counter");
  for (const auto& [name, e] : extra) add(name, e, "extra tensor");
  safetensors::metadata_map header_metadata = metadata;
  header_metadata.emplace("format", "pt");  // keeps a caller's own "format"
  safetensors::write(path, entries, header_metadata, safetensors::checksums::crc32);
}

/// Loads a checkpoint written by save_checkpoint (or from a PyTorch
/// state_dict) into model and returns its metadata. F32 and F64 files load
/// into float and double models alike (converted); counters must be I64
/// scalars. Throws checkpoint_error naming the file and every mismatching
/// tensor (missing, unexpected, wrong shape with both shapes, wrong dtype)
/// and leaves the model unchanged on any failure.
///
/// With extra == nullptr tensors the model does not have are refused; with
/// extra given they are returned there instead (e.g. optimizer state).
template <class Model>
safetensors::metadata_map load_checkpoint(Model& model, const std::filesystem::path& path,
                                          safetensors::tensor_map* extra = nullptr) {
  using T = typename Model::scalar;
  using B = typename Model::backend_type;
  safetensors::contents file = safetensors::read(path);  // validates the file itself
  std::vector<std::string> problems, used;
  detail::staged_state<T, B> staged("model", "", model.state(), file.tensors, problems, used);
  const std::set<std::string> model_names(used.begin(), used.end());

  if (!extra)
    for (const auto& [name, e] : file.tensors)
      if (!model_names.count(name))
        problems.push_back("unexpected tensor '" + name + "' of shape " + shape_string(e.shape) +
                           " (the model has no such tensor)");

  if (!problems.empty()) {
    std::string message = "opnorm::load_checkpoint: " + safetensors::detail::quoted(path) +
                          " cannot be loaded into the model, which was left unchanged: ";
    for (std::size_t i = 0; i < problems.size(); ++i) message += (i ? "; " : "") + problems[i];
    throw checkpoint_error(message);
  }

  // Everything validated: only now does the model change.
  staged.commit();
  if (extra) {
    extra->clear();
    for (auto& [name, e] : file.tensors)
      if (!model_names.count(name)) extra->emplace(name, std::move(e));
  }
  return std::move(file.metadata);
}

/// The "__metadata__" of a checkpoint, reading only its (validated) header.
inline safetensors::metadata_map read_checkpoint_metadata(const std::filesystem::path& path) {
  return safetensors::read_metadata(path);
}

}  // namespace opnorm
