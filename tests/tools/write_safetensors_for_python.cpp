// Writes the files tests/check_safetensors.py cross-checks against PyTorch.
//
// A separate program rather than a doctest case because ctest runs it as the
// setup step of a fixture: this writes, the Python script (standard library +
// torch only) reads. Usage: write_safetensors_for_python <output directory>.
//
// For float and double it writes
//   dense_relu_dense_<f32|f64>.safetensors  save_checkpoint of
//       sequential<dense(5, 7), relu, dense(7, 3)> with metadata
//   probe_<f32|f64>.safetensors  an input batch, the model's logits for it and
//       an int64 scalar, through the generic save_tensors / write API
// so the script can load the checkpoint into nn.Sequential(nn.Linear(5, 7),
// nn.ReLU(), nn.Linear(7, 3)) with load_state_dict(strict=True) and compare
// its forward pass with ours.
#include <cstdint>
#include <exception>
#include <filesystem>
#include <iostream>
#include <random>
#include <string>

#include <opnorm/io/checkpoint.hpp>
#include <opnorm/io/safetensors.hpp>
#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/relu.hpp>
#include <opnorm/nn/sequential.hpp>

namespace {

template <class T>
void write_files(const std::filesystem::path& dir, const std::string& suffix) {
  using namespace opnorm;
  sequential<dense<T>, relu<T>, dense<T>> model(dense<T>(5, 7), relu<T>(), dense<T>(7, 3));
  model.initialize(2024);
  save_checkpoint(model, dir / ("dense_relu_dense_" + suffix + ".safetensors"),
                  {{"epoch", "3"}, {"method", "standard"}, {"scalar", suffix}});

  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  tensor<T> x({4, 5});
  for (index_t i = 0; i < x.size(); ++i) x[i] = static_cast<T>(u(rng));
  safetensors::tensor_map probe;
  probe["input"] = safetensors::to_entry(x);
  probe["logits"] = safetensors::to_entry(model.predict(x));
  probe["step"] = safetensors::scalar_entry<std::int64_t>(std::int64_t{1} << 40);
  safetensors::write(dir / ("probe_" + suffix + ".safetensors"), probe, {{"what", "input, logits, step"}});
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " <output directory>\n";
    return 2;
  }
  try {
    const std::filesystem::path dir = argv[1];
    std::filesystem::create_directories(dir);
    write_files<float>(dir, "f32");
    write_files<double>(dir, "f64");
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
