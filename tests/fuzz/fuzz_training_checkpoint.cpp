// libFuzzer target: opnorm::load_training_checkpoint, the way examples/train
// resumes a run: the Fashion-MNIST CNN, the `standard` method and SGD with
// momentum (so the file holds momentum buffers and the optimizer's step
// counter besides the model). It covers the training-checkpoint metadata
// ("method", "optimizer", "epochs_completed", "seed") and the staging of the
// prefixed optimizer state.
//
// Bad input must end in opnorm::checkpoint_error with nothing changed: the
// model and the optimizer state are compared with snapshots taken before the
// call. An accepted file must have had the right method and optimizer names
// and the integers the result reports.
#include <opnorm/methods/standard.hpp>
#include <opnorm/nn/networks.hpp>
#include <opnorm/train/optimizers.hpp>
#include <opnorm/train/training_checkpoint.hpp>

#include "fuzz_common.hpp"

namespace {

using opnorm_fuzz::fail;
using opnorm_fuzz::state_snapshot;
using model_type = opnorm::fmnist_cnn<float, opnorm::backend::cpu>;
using optimizer_type = opnorm::sgd<float, opnorm::backend::cpu>;

struct run {
  model_type model = opnorm::make_fmnist_cnn<float, opnorm::backend::cpu>(1);
  opnorm::standard method;
  optimizer_type optimizer{model, opnorm::sgd_options{0.01, 0.9, 5e-4, false}};
};

run& the_run() {
  static run r;
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = opnorm_fuzz::write_input("training.safetensors", data, size);
  run& r = the_run();
  const state_snapshot model_before = state_snapshot::of(r.model.state());
  const state_snapshot optimizer_before = state_snapshot::of(r.optimizer.state());
  opnorm::training_checkpoint restored;
  try {
    restored = opnorm::load_training_checkpoint(path, r.model, r.method, r.optimizer);
  } catch (const opnorm::checkpoint_error&) {
    state_snapshot::of(r.model.state()).expect_same_as(model_before, "a failed load_training_checkpoint (model)");
    state_snapshot::of(r.optimizer.state())
        .expect_same_as(optimizer_before, "a failed load_training_checkpoint (optimizer)");
    return 0;
  }
  const auto& m = restored.metadata;
  for (const auto& [key, expected] : {std::pair<const char*, const char*>{"method", "standard"}, {"optimizer", "sgd"}}) {
    const auto found = m.find(key);
    if (found == m.end() || found->second != expected) fail("accepted a file whose '%s' is not '%s'", key, expected);
  }
  if (!m.count("epochs_completed") || !m.count("seed") || restored.epochs_completed < 0)
    fail("accepted a file without a valid epochs_completed and seed");

  // The model holds the file's tensors, the optimizer its "optimizer.<name>" entries.
  opnorm::safetensors::contents file;
  try {
    file = opnorm::safetensors::read(path);
  } catch (const opnorm::checkpoint_error& e) {
    fail("load_training_checkpoint accepted a file that safetensors::read refuses: %s", e.what());
  }
  const auto model_state = r.model.state();
  for (const auto* list : {&model_state.parameters, &model_state.buffers})
    for (const auto& t : *list) {
      const auto found = file.tensors.find(t.name);
      if (found == file.tensors.end() || !opnorm_fuzz::holds(*t.value, found->second))
        fail("model tensor '%s' does not hold the file's values after the load", t.name.c_str());
    }
  const auto state = r.optimizer.state();
  for (const auto& b : state.buffers) {
    const auto found = file.tensors.find("optimizer." + b.name);
    if (found == file.tensors.end()) fail("accepted without 'optimizer.%s'", b.name.c_str());
    if (!opnorm_fuzz::holds(*b.value, found->second))
      fail("optimizer state '%s' does not hold the file's values after the load", b.name.c_str());
  }
  for (const auto& c : state.counters) {
    const auto found = file.tensors.find("optimizer." + c.name);
    if (found == file.tensors.end() ||
        opnorm::safetensors::decode<std::int64_t>(found->second, c.name).at(0) != *c.value)
      fail("optimizer counter '%s' does not hold the file's value after the load", c.name.c_str());
  }
  return 0;
}
