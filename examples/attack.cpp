// attack: loads a trained fmnist_cnn checkpoint and attacks it with l2- or
// linf-PGA, printing clean accuracy and robust accuracy for each eps.
//
//   attack --checkpoint out/final.safetensors --norm l2 --eps 0.5,1,1.5,2 --examples 1000
//
// eps is in [0, 1] pixel units (standardization is inside the model).
#include <chrono>
#include <cstdio>
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>

#include <opnorm/attacks.hpp>
#include <opnorm/data/data.hpp>
#include <opnorm/io/checkpoint.hpp>
#include <opnorm/networks.hpp>

using namespace opnorm;

int main(int argc, char** argv) {
  CLI::App app{"Attacks a trained fmnist_cnn with PGA and prints robust accuracy against eps.", "attack"};
  std::string checkpoint, norm = "l2", data_dir = "/usr/share/datasets/fashion-mnist";
  std::vector<float> eps_list = {0.5f, 1.0f, 1.5f, 2.0f};
  int iterations = 10, restarts = 1;
  index_t examples = 1000, first = 0;
  std::uint64_t seed = 0;
  app.add_option("--checkpoint", checkpoint, "model checkpoint (safetensors) of an fmnist_cnn")->required();
  app.add_option("--norm", norm, "l2 or linf")->check(CLI::IsMember({"l2", "linf"}))->capture_default_str();
  app.add_option("--eps", eps_list, "radii in [0, 1] pixel units")->delimiter(',')->capture_default_str();
  app.add_option("--iterations", iterations, "PGA iterations (step 2 eps / iterations)")->capture_default_str();
  app.add_option("--restarts", restarts, "random restarts; the worst case per example is kept")->capture_default_str();
  app.add_option("--examples", examples, "test images attacked (from --first)")->capture_default_str();
  app.add_option("--first", first, "index of the first test image")->capture_default_str();
  app.add_option("--data-dir", data_dir, "Fashion-MNIST folder")->capture_default_str();
  app.add_option("--seed", seed, "random starts")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    auto model = make_fmnist_cnn<float>();
    load_checkpoint(model, checkpoint);
    const auto test = load_fashion_mnist<float>(data_dir, split::test);
    const index_t n = std::min(examples, test.size() - first);
    const auto part = subset(test, first, n);
    attack_options<float> base;
    base.iterations = iterations;
    base.restarts = restarts;
    base.seed = seed;
    const auto start = std::chrono::steady_clock::now();
    const auto accuracy = norm == "l2" ? robust_accuracy<l2>(model, base, part.images, part.labels, eps_list)
                                       : robust_accuracy<linf>(model, base, part.images, part.labels, eps_list);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto clean = robust_accuracy<l2>(model, base, part.images, part.labels, {0.0f}).front();
    std::printf("%s, %s-PGA-%d, %d restart(s), %lld test images, eps in [0,1] pixel units\n", checkpoint.c_str(),
                norm.c_str(), iterations, restarts, static_cast<long long>(n));
    std::printf("clean accuracy: %.2f%%\n", 100 * clean);
    for (std::size_t k = 0; k < eps_list.size(); ++k)
      std::printf("eps %-6g robust accuracy %.2f%%\n", static_cast<double>(eps_list[k]), 100 * accuracy[k]);
    std::printf("(%.0f s)\n", seconds);
  } catch (const std::exception& e) {
    std::cerr << "attack: error: " << e.what() << '\n';
    return 1;
  }
}
