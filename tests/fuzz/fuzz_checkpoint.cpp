// libFuzzer target: opnorm::load_checkpoint into the Fashion-MNIST CNN
// (make_fmnist_cnn<float, backend::cpu>), strict and with extras.
//
// The loader promises: bad input ends in opnorm::checkpoint_error and leaves
// the model exactly as it was (checked against a snapshot taken before the
// call); an accepted file sets every tensor and counter of the model to the
// file's values (checked against an independent read of the file), and with
// extras, returns exactly the file's tensors the model does not have.
#include <set>

#include <opnorm/io/checkpoint.hpp>
#include <opnorm/nn/networks.hpp>

#include "fuzz_common.hpp"

namespace {

using opnorm_fuzz::fail;
using opnorm_fuzz::state_snapshot;
namespace st = opnorm::safetensors;
using model_type = opnorm::fmnist_cnn<float, opnorm::backend::cpu>;

model_type& model() {
  static model_type m = opnorm::make_fmnist_cnn<float, opnorm::backend::cpu>(1);
  return m;
}

// After a successful load: the model holds the file's values.
void expect_loaded(const std::filesystem::path& path, const st::tensor_map* extra) {
  st::contents file;
  try {
    file = st::read(path);
  } catch (const opnorm::checkpoint_error& e) {
    fail("load_checkpoint accepted a file that safetensors::read refuses: %s", e.what());
  }
  auto state = model().state();
  std::set<std::string> names;
  auto check = [&](const opnorm::named_tensor<float, opnorm::backend::cpu>& t) {
    names.insert(t.name);
    const auto found = file.tensors.find(t.name);
    if (found == file.tensors.end()) fail("loaded without tensor '%s'", t.name.c_str());
    if (!opnorm_fuzz::holds(*t.value, found->second))
      fail("tensor '%s' does not hold the file's values after the load", t.name.c_str());
  };
  for (const auto& p : state.parameters) check(p);
  for (const auto& b : state.buffers) check(b);
  for (const auto& c : state.counters) {
    names.insert(c.name);
    const auto found = file.tensors.find(c.name);
    if (found == file.tensors.end()) fail("loaded without counter '%s'", c.name.c_str());
    if (st::decode<std::int64_t>(found->second, c.name).at(0) != *c.value)
      fail("counter '%s' does not hold the file's value after the load", c.name.c_str());
  }
  std::size_t unknown = 0;
  for (const auto& [name, e] : file.tensors) {
    if (names.count(name)) continue;
    ++unknown;
    if (!extra) fail("the strict load accepted the unexpected tensor '%s'", name.c_str());
    const auto found = extra->find(name);
    if (found == extra->end() || found->second.bytes != e.bytes || found->second.shape != e.shape ||
        found->second.type != e.type)
      fail("extra tensor '%s' was not returned as it is in the file", name.c_str());
  }
  if (extra && extra->size() != unknown) fail("extras hold %zu tensors, the file %zu", extra->size(), unknown);
}

void load(const std::filesystem::path& path, st::tensor_map* extra) {
  const state_snapshot before = state_snapshot::of(model().state());
  try {
    opnorm::load_checkpoint(model(), path, extra);
  } catch (const opnorm::checkpoint_error&) {
    state_snapshot::of(model().state()).expect_same_as(before, "a failed load_checkpoint");
    return;
  }
  expect_loaded(path, extra);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = opnorm_fuzz::write_input("checkpoint.safetensors", data, size);
  load(path, nullptr);
  st::tensor_map extra;
  load(path, &extra);
  return 0;
}
