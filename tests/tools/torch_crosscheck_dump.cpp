// Writes what tests/torch_crosscheck.py recomputes with PyTorch for the
// reference network fmnist_cnn<float>.
//
// Usage: torch_crosscheck_dump <output directory>
//
// A separate program rather than a doctest case because ctest runs it as the
// setup step of a fixture: this writes, the Python script (standard library +
// torch only) reads. It writes
//
//   fmnist_cnn.safetensors   save_checkpoint of the model in the state every
//                            quantity below starts from: BatchNorm with
//                            non-trivial gamma, beta and running statistics
//   after_train.safetensors  save_checkpoint after the one train-mode pass on
//                            the probe batch (running statistics moved once more)
//   probe.safetensors        input (16, 1, 28, 28) in [0, 1] and labels (16),
//                            stored as F32 integers, and
//                              eval_logits, eval_input_grad,
//                              eval_grad.<state_dict name>       (mode::eval)
//                              train_logits, train_input_grad,
//                              grad.<state_dict name>            (mode::train)
//                            for the mean softmax cross-entropy; then the
//                            kernel's results, all in mode::eval:
//                              power_input (2 examples), power_sigma, power_v
//                                exact-JVP power method, 200 iterations
//                              fgm_adversarial
//                                make_fgm<l2>(model, 1.0) on the whole batch
//
// Order matters because a train-mode pass moves BatchNorm's running
// statistics: the checkpoint is saved first, every eval-mode quantity is
// computed next (eval mode changes nothing), and the train-mode pass comes
// last. The script follows the same order on its side.
#include <cstdint>
#include <exception>
#include <filesystem>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <opnorm/kernel/attacks.hpp>
#include <opnorm/io/checkpoint.hpp>
#include <opnorm/io/safetensors.hpp>
#include <opnorm/nn/losses.hpp>
#include <opnorm/nn/networks.hpp>
#include <opnorm/kernel/power_iteration.hpp>

namespace {

using namespace opnorm;
using model_type = fmnist_cnn<float>;

constexpr std::uint64_t model_seed = 20240611;
constexpr index_t batch_size = 16;
constexpr int warmup_batches = 3;
constexpr index_t power_examples = 2;
constexpr int power_iterations = 200;
constexpr float fgm_eps = 1.0f;

tensor<float> random_images(index_t n, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> pixel(0.0f, 1.0f);
  tensor<float> x({n, 1, 28, 28});
  for (index_t i = 0; i < x.size(); ++i) x[i] = pixel(rng);
  return x;
}

// PyTorch initializes gamma = 1 and beta = 0, under which a wrong use of
// either would go unnoticed; values away from 1 and 0 make them count.
void randomize_affine(batch_norm<float>& bn, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> gamma(0.5f, 1.5f), beta(-0.3f, 0.3f);
  for (index_t c = 0; c < bn.features(); ++c) {
    bn.weight()[c] = gamma(rng);
    bn.bias()[c] = beta(rng);
  }
}

// The input rows [0, n) of x.
tensor<float> first_examples(const tensor<float>& x, index_t n) {
  const std::vector<float> all = x.to_vector();
  shape_t shape = x.shape();
  shape[0] = n;
  return tensor<float>::from_vector(
      shape, std::vector<float>(all.begin(), all.begin() + n * x.example_size()));
}

void write_files(const std::filesystem::path& dir) {
  model_type model = make_fmnist_cnn<float>(model_seed);
  std::mt19937_64 rng(model_seed + 1);
  randomize_affine(model.layer<2>(), rng);
  randomize_affine(model.layer<5>(), rng);
  randomize_affine(model.layer<9>(), rng);
  randomize_affine(model.layer<12>(), rng);
  {  // a few train-mode passes: running statistics away from (0, 1), counters at 3
    model_type::tape warmup;
    for (int b = 0; b < warmup_batches; ++b) model.forward(random_images(batch_size, rng), warmup, mode::train);
  }
  save_checkpoint(model, dir / "fmnist_cnn.safetensors");

  const tensor<float> x = random_images(batch_size, rng);
  std::uniform_int_distribution<std::int32_t> label(0, 9);
  std::vector<std::int32_t> y(batch_size);
  for (auto& l : y) l = label(rng);
  const label_tensor<> labels = label_tensor<>::from_vector({batch_size}, y);

  std::map<std::string, tensor<float>> out;
  out["input"] = x;
  out["labels"] = tensor<float>::from_vector({batch_size}, std::vector<float>(y.begin(), y.end()));

  // Eval mode: logits, input and parameter gradients of the mean
  // cross-entropy. In train mode the gradient of a convolution's bias is
  // exactly zero (the BatchNorm after it subtracts every per-channel
  // constant), so these are the ones that test the bias path.
  {
    model.zero_grad();
    model_type::tape t;
    out["eval_logits"] = model.forward(x, t, mode::eval);
    tensor<float> gy, gx;
    softmax_cross_entropy::evaluate(out["eval_logits"], labels, &gy, reduction::mean);
    model.vjp(t, gy, &gx, /*parameter_gradients=*/true);
    out["eval_input_grad"] = gx;
    for (const auto& p : model.state().parameters) out["eval_grad." + p.name] = *p.grad;
  }

  // The kernel as the exact power method on J_f(x) for two examples.
  {
    const tensor<float> x2 = first_examples(x, power_examples);
    iteration_options<float> o;
    o.iterations = power_iterations;
    o.seed = 5;
    const auto pairs = power_iteration<jacobian_operator<exact_jvp>, l2, no_step>{}.run(model, x2, nullptr, o);
    out["power_input"] = x2;
    out["power_sigma"] = pairs.sigma;
    out["power_v"] = pairs.v;
  }

  // The kernel as an attack: one l2 step of length eps from x, no random start.
  out["fgm_adversarial"] = make_fgm<l2>(model, fgm_eps)(x, labels).adversarial;

  // Train mode last: batch statistics, parameter and input gradients.
  {
    model.zero_grad();
    model_type::tape t;
    out["train_logits"] = model.forward(x, t, mode::train);
    tensor<float> gy, gx;
    softmax_cross_entropy::evaluate(out["train_logits"], labels, &gy, reduction::mean);
    model.vjp(t, gy, &gx, /*parameter_gradients=*/true);
    out["train_input_grad"] = gx;
    for (const auto& p : model.state().parameters) out["grad." + p.name] = *p.grad;
  }
  save_checkpoint(model, dir / "after_train.safetensors");

  safetensors::save_tensors(dir / "probe.safetensors", out,
                            {{"power_iterations", std::to_string(power_iterations)},
                             {"fgm_eps", std::to_string(fgm_eps)}});
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
    write_files(dir);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
