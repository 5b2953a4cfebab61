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

#include "../layers/layer.hpp"
#include "safetensors.hpp"

namespace opnorm {

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
  auto state = model.state();

  struct staged_tensor {
    tensor<T, B>* target;
    std::vector<T> values;
  };
  std::vector<staged_tensor> staged_tensors;
  std::vector<std::pair<std::int64_t*, std::int64_t>> staged_counters;
  std::vector<std::string> problems;
  std::set<std::string> model_names;

  auto stage_tensor = [&](const named_tensor<T, B>& t) {
    model_names.insert(t.name);
    const auto found = file.tensors.find(t.name);
    if (found == file.tensors.end()) {
      problems.push_back("missing tensor '" + t.name + "' of shape " + shape_string(t.value->shape()));
      return;
    }
    const safetensors::entry& e = found->second;
    if (!safetensors::readable_as<T>(e.type)) {
      problems.push_back("tensor '" + t.name + "' has dtype " + safetensors::dtype_name(e.type) +
                         ", but model tensors are read from F32 or F64");
      return;
    }
    if (e.shape != t.value->shape()) {
      problems.push_back("tensor '" + t.name + "' has shape " + shape_string(e.shape) +
                         " in the file, but the model expects " + shape_string(t.value->shape()));
      return;
    }
    std::vector<T> values = safetensors::decode<T>(e, "tensor '" + t.name + "'");
    const std::string non_finite = safetensors::first_non_finite(values, e.shape);
    if (!non_finite.empty()) {
      problems.push_back("tensor '" + t.name + "' " + non_finite);
      return;
    }
    staged_tensors.push_back({t.value, std::move(values)});
  };
  for (const auto& p : state.parameters) stage_tensor(p);
  for (const auto& b : state.buffers) stage_tensor(b);

  for (const auto& c : state.counters) {
    model_names.insert(c.name);
    const auto found = file.tensors.find(c.name);
    if (found == file.tensors.end()) {
      problems.push_back("missing counter '" + c.name + "' (an I64 scalar of shape ())");
      continue;
    }
    const safetensors::entry& e = found->second;
    if (e.type != safetensors::dtype::I64 || !e.shape.empty()) {
      problems.push_back("counter '" + c.name + "' is " + safetensors::dtype_name(e.type) + " of shape " +
                         shape_string(e.shape) + " in the file, but the model expects I64 of shape ()");
      continue;
    }
    staged_counters.emplace_back(c.value, safetensors::decode<std::int64_t>(e, "counter '" + c.name + "'")[0]);
  }

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
  for (auto& s : staged_tensors)
    backend_ops<B>::copy_from_host(s.values.data(), s.target->size(), s.target->data());
  for (const auto& [target, value] : staged_counters) *target = value;
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
