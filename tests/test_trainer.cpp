// The training loop on a tiny synthetic problem: it learns, it is
// bit-reproducible, resuming is exact, divergence is reported, the
// callbacks write their files, and the loss it relies on is right.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <opnorm/data/dataset.hpp>
#include <opnorm/nn/layers/batch_norm.hpp>
#include <opnorm/nn/layers/conv2d.hpp>
#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/flatten.hpp>
#include <opnorm/nn/layers/max_pool2d.hpp>
#include <opnorm/nn/layers/relu.hpp>
#include <opnorm/nn/losses.hpp>
#include <opnorm/methods/adversarial.hpp>
#include <opnorm/methods/data_dependent_snr.hpp>
#include <opnorm/methods/global_snr.hpp>
#include <opnorm/methods/standard.hpp>
#include <opnorm/nn/sequential.hpp>
#include <opnorm/train/train.hpp>

#include "synthetic_patches.hpp"
#include "test_backends.hpp"

using namespace opnorm;
namespace fs = std::filesystem;

namespace {

template <class T>
using dense_net = sequential<flatten<T>, dense<T>, relu<T>, dense<T>>;
template <class T>
dense_net<T> make_dense_net(std::uint64_t seed) {
  dense_net<T> net(flatten<T>{}, dense<T>(36, 16), relu<T>{}, dense<T>(16, 3));
  net.initialize(seed);
  return net;
}

// Convolution, BatchNorm (running statistics and a counter in the state),
// pooling: the layer kinds of the reference networks.
template <class T>
using conv_net = sequential<conv2d<T>, batch_norm<T>, relu<T>, max_pool2d<T>, flatten<T>, dense<T>>;
template <class T>
conv_net<T> make_conv_net(std::uint64_t seed) {
  conv_net<T> net(conv2d<T>(1, 4, 3, 1, 1), batch_norm<T>(4), relu<T>{}, max_pool2d<T>(2), flatten<T>{},
                  dense<T>(4 * 3 * 3, 3));
  net.initialize(seed);
  return net;
}

// Every byte of the model's state: parameters, buffers and counters.
template <class Model>
std::vector<unsigned char> state_bytes(Model& model) {
  std::vector<unsigned char> bytes;
  auto append = [&](const void* p, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    bytes.insert(bytes.end(), b, b + n);
  };
  auto s = model.state();
  for (auto& p : s.parameters) append(p.value->data(), sizeof(typename Model::scalar) * p.value->size());
  for (auto& b : s.buffers) append(b.value->data(), sizeof(typename Model::scalar) * b.value->size());
  for (auto& c : s.counters) append(c.value, sizeof(*c.value));
  return bytes;
}

template <class Optimizer>
std::vector<unsigned char> optimizer_bytes(Optimizer& optimizer) {
  std::vector<unsigned char> bytes;
  auto s = optimizer.state();
  for (auto& b : s.buffers) {
    const auto* p = reinterpret_cast<const unsigned char*>(b.value->data());
    bytes.insert(bytes.end(), p, p + sizeof(typename Optimizer::scalar) * b.value->size());
  }
  for (auto& c : s.counters) {
    const auto* p = reinterpret_cast<const unsigned char*>(c.value);
    bytes.insert(bytes.end(), p, p + sizeof(*c.value));
  }
  return bytes;
}

// The method's counters (its batch counter, for the methods that seed
// random starts from one); empty for methods without any.
template <class Method>
std::vector<std::int64_t> method_counters(Method& method) {
  std::vector<std::int64_t> values;
  if constexpr (detail::has_counters<Method>::value)
    for (const named_counter& c : method.counters()) values.push_back(*c.value);
  return values;
}

// Every byte of the method's persistent tensors (global SNR's u vectors).
template <class Method>
std::vector<unsigned char> method_tensor_bytes(Method& method) {
  std::vector<unsigned char> bytes;
  if constexpr (detail::has_state<Method>::value)
    for (auto& b : method.state().buffers) {
      const auto* p = reinterpret_cast<const unsigned char*>(b.value->data());
      bytes.insert(bytes.end(), p, p + sizeof(*b.value->data()) * b.value->size());
    }
  return bytes;
}

// Robust methods with two iterations, enough to draw a random start per
// batch and keep the test fast.
adversarial<l2> small_adversarial() {
  adversarial<l2> m;
  m.iterations = 2;
  m.eps = 0.5;
  m.seed = 5;
  return m;
}
data_dependent_snr<l2> small_data_dependent_snr() {
  data_dependent_snr<l2> m;
  m.iterations = 2;
  m.eps = 0.5;
  m.seed = 5;
  return m;
}

// A fresh, empty folder for one test's files.
fs::path scratch_folder(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("opnorm_test_trainer_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string file_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Asks fit to stop after `epochs` epochs, as an interrupted run would.
struct stop_after {
  index_t epochs;
  index_t seen = 0;
  template <class Context>
  void on_epoch_end(const epoch_report&, Context&) { ++seen; }
  bool stop_requested() const { return seen >= epochs; }
};

fit_options small_options(index_t epochs, std::uint64_t seed = 11) {
  fit_options o;
  o.epochs = epochs;
  o.batch_size = 32;
  o.seed = seed;
  o.eval_batch_size = 50;
  return o;
}

// Model, optimizer state and method counters of two runs agree bit for bit.
template <class Model, class Optimizer, class Method>
void check_same_training_state(Model& model_a, Optimizer& optimizer_a, Method& method_a, Model& model_b,
                               Optimizer& optimizer_b, Method& method_b) {
  const auto a = state_bytes(model_a), b = state_bytes(model_b);
  REQUIRE(a.size() == b.size());
  CHECK(std::memcmp(a.data(), b.data(), a.size()) == 0);
  const auto oa = optimizer_bytes(optimizer_a), ob = optimizer_bytes(optimizer_b);
  REQUIRE(oa.size() == ob.size());
  CHECK(std::memcmp(oa.data(), ob.data(), oa.size()) == 0);
  CHECK(method_counters(method_b) == method_counters(method_a));
}

}  // namespace

static_assert(is_training_method_v<standard, conv_net<float>>);
static_assert(!is_training_method_v<int, conv_net<float>>);

TEST_CASE("training lowers the loss and learns the synthetic problem") {
  const auto train = synthetic<double>(384, 1), test = synthetic<double>(150, 2);
  auto model = make_conv_net<double>(3);
  standard method;
  sgd optimizer(model, sgd_options{0.1, 0.9, 5e-4, false});
  const evaluation before = evaluate(model, test);
  const fit_result r =
      fit(model, method, optimizer, cosine_schedule(0.1, 6), train, test, small_options(6));
  REQUIRE(r.history.size() == 6);
  CHECK_FALSE(r.stopped_early);
  CHECK(r.history.back().train_loss < 0.25 * r.history.front().train_loss);
  CHECK(r.history.back().test_loss < 0.25 * before.loss);
  CHECK(r.history.back().test_accuracy >= 0.95);
  CHECK(r.history.back().train_examples == 384);
  // The report's test numbers are evaluate()'s.
  const evaluation after = evaluate(model, test, 7);
  CHECK(after.accuracy == r.history.back().test_accuracy);
  CHECK(after.loss == doctest::Approx(r.history.back().test_loss).epsilon(1e-12));
  CHECK(optimizer.steps() == 6 * 12);
}

TEST_CASE("a seeded run is bit-reproducible, and the seed matters") {
  const auto train = synthetic<float>(200, 4), test = synthetic<float>(60, 5);
  auto run = [&](std::uint64_t data_seed) {
    auto model = make_conv_net<float>(7);
    standard method;
    sgd optimizer(model, sgd_options{0.05, 0.9, 1e-4, true});
    fit_options o = small_options(2, data_seed);
    o.augmentation = pad_crop_flip(1);  // augmentation draws come from the seed too
    fit(model, method, optimizer, cosine_schedule(0.05, 2, 1), train, test, o);
    return state_bytes(model);
  };
  const auto first = run(21), second = run(21), other = run(22);
  REQUIRE(first.size() == second.size());
  CHECK(std::memcmp(first.data(), second.data(), first.size()) == 0);
  CHECK(std::memcmp(first.data(), other.data(), first.size()) != 0);
}

TEST_CASE("resuming from the checkpoint after epoch 1 is bit-identical to an unbroken 2-epoch run") {
  const auto train = synthetic<float>(200, 6), test = synthetic<float>(60, 7);
  const fs::path dir = scratch_folder("resume");
  const fs::path checkpoint = dir / "last.safetensors";

  // make_method(model) builds the method for a model: global SNR draws its
  // vectors for the model's weights; the others ignore the model.
  auto check_resume = [&](auto make_method, auto make_optimizer) {
    fit_options o = small_options(2, 33);
    o.augmentation = pad_crop_flip(1);
    const cosine_schedule schedule(0.05, 2, 1);

    auto unbroken = make_conv_net<float>(8);
    auto m1 = make_method(unbroken);
    auto opt1 = make_optimizer(unbroken);
    fit(unbroken, m1, opt1, schedule, train, test, o);

    // The interrupted run: the same start, stopped after epoch 1.
    auto first_half = make_conv_net<float>(8);
    auto m2 = make_method(first_half);
    auto opt2 = make_optimizer(first_half);
    const fit_result part = fit(first_half, m2, opt2, schedule, train, test, o, checkpoint_each_epoch(checkpoint),
                                stop_after{1});
    CHECK(part.stopped_early);
    REQUIRE(part.history.size() == 1);

    // A new process: a model initialized differently, a fresh method and
    // optimizer, all restored from the file.
    auto resumed = make_conv_net<float>(999);
    auto m3 = make_method(resumed);
    auto opt3 = make_optimizer(resumed);
    const training_checkpoint info = load_training_checkpoint(checkpoint, resumed, m3, opt3);
    CHECK(info.epochs_completed == 1);
    CHECK(info.seed == 33);
    CHECK(opt3.steps() == opt2.steps());
    CHECK(method_counters(m3) == method_counters(m2));
    fit_options ro = o;
    ro.start_epoch = info.epochs_completed;
    const fit_result rest = fit(resumed, m3, opt3, schedule, train, test, ro);
    REQUIRE(rest.history.size() == 1);
    CHECK(rest.history[0].epoch == 1);

    check_same_training_state(unbroken, opt1, m1, resumed, opt3, m3);
    CHECK(method_tensor_bytes(m3) == method_tensor_bytes(m1));
  };
  auto sgd_momentum = [](auto& model) { return sgd(model, sgd_options{0.05, 0.9, 5e-4, false}); };
  SUBCASE("standard, sgd with momentum") {
    check_resume([](auto&) { return standard{}; }, sgd_momentum);
  }
  SUBCASE("standard, adam (its bias correction depends on the restored step count)") {
    check_resume([](auto&) { return standard{}; },
                 [](auto& model) { return adam(model, adam_options{1e-3, 0.9, 0.999, 1e-8, 1e-4}); });
  }
  SUBCASE("adversarial (each batch's random start depends on the restored step counter)") {
    check_resume([](auto&) { return small_adversarial(); }, sgd_momentum);
  }
  SUBCASE("data_dependent_snr (each batch's random start depends on the restored step counter)") {
    check_resume([](auto&) { return small_data_dependent_snr(); }, sgd_momentum);
  }
  SUBCASE("global_snr (its persistent vectors are restored)") {
    check_resume([](auto& model) { return global_snr<float>(model, 0.01, 1, 3); }, sgd_momentum);
  }
}

namespace {
// Simulates a crash: throws from on_step_end after the given step of the
// run (counted across epochs, from 1), after the callbacks before it ran.
struct crash_after_step {
  index_t run_step;
  struct crashed {};
  void on_step_end(const step_report& s) {
    if (s.epoch * s.steps_per_epoch + s.step + 1 == run_step) throw crashed{};
  }
};
}  // namespace

TEST_CASE("resuming from a checkpoint written every 3 steps, inside an epoch, is bit-identical to an unbroken run, "
          "epoch report included") {
  const auto train = synthetic<float>(200, 6), test = synthetic<float>(60, 7);  // 7 steps of 32 per epoch
  const fs::path dir = scratch_folder("resume_inside_epoch");
  const fs::path checkpoint = dir / "last.safetensors";

  auto check_resume = [&](auto make_method, auto make_optimizer) {
    fit_options o = small_options(2, 33);
    o.augmentation = pad_crop_flip(1);  // the resumed epoch must draw the same crops for its remaining batches
    const cosine_schedule schedule(0.05, 2, 1);

    auto unbroken = make_conv_net<float>(8);
    auto m1 = make_method(unbroken);
    auto opt1 = make_optimizer(unbroken);
    const fit_result whole = fit(unbroken, m1, opt1, schedule, train, test, o);
    REQUIRE(whole.history.size() == 2);

    // The crash comes after run step 11 (epoch 2, step 4); the last
    // checkpoint was written after run step 9 (epoch 2, step 2).
    auto crashed = make_conv_net<float>(8);
    auto m2 = make_method(crashed);
    auto opt2 = make_optimizer(crashed);
    CHECK_THROWS_AS(fit(crashed, m2, opt2, schedule, train, test, o, checkpoint_each_epoch(checkpoint, {}, 3),
                        crash_after_step{11}),
                    crash_after_step::crashed);

    auto resumed = make_conv_net<float>(999);
    auto m3 = make_method(resumed);
    auto opt3 = make_optimizer(resumed);
    const training_checkpoint info = load_training_checkpoint(checkpoint, resumed, m3, opt3);
    CHECK(info.epochs_completed == 1);
    CHECK(info.progress.steps_completed == 2);
    CHECK(info.progress.examples == 64);
    CHECK(opt3.steps() == 9);
    fit_options ro = o;
    ro.start_epoch = info.epochs_completed;
    ro.start_progress = info.progress;
    const fit_result rest = fit(resumed, m3, opt3, schedule, train, test, ro);
    REQUIRE(rest.history.size() == 1);

    check_same_training_state(unbroken, opt1, m1, resumed, opt3, m3);
    // The epoch's report covers all of its batches, as in the unbroken run.
    CHECK(rest.history[0].train_loss == whole.history[1].train_loss);
    CHECK(rest.history[0].train_accuracy == whole.history[1].train_accuracy);
    CHECK(rest.history[0].train_examples == whole.history[1].train_examples);
    CHECK(rest.history[0].learning_rate == whole.history[1].learning_rate);
    CHECK(rest.history[0].test_loss == whole.history[1].test_loss);
  };
  auto sgd_momentum = [](auto& model) { return sgd(model, sgd_options{0.05, 0.9, 5e-4, false}); };
  SUBCASE("standard, adam") {
    check_resume([](auto&) { return standard{}; },
                 [](auto& model) { return adam(model, adam_options{1e-3, 0.9, 0.999, 1e-8, 1e-4}); });
  }
  SUBCASE("adversarial (the batch counter that seeds random starts is restored mid-epoch)") {
    check_resume([](auto&) { return small_adversarial(); }, sgd_momentum);
  }
}

TEST_CASE("fit refuses an inconsistent start_progress") {
  const auto train = synthetic<float>(64, 1), test = synthetic<float>(10, 2);
  auto model = make_conv_net<float>(1);
  standard method;
  sgd optimizer(model, sgd_options{0.05, 0.9, 0, false});
  fit_options o = small_options(2);
  o.start_progress = {3, 1.0, 40, 32};  // more correct than examples
  CHECK_THROWS_WITH_AS(fit(model, method, optimizer, constant_schedule(0.05), train, test, o),
                       doctest::Contains("start_progress (3 steps, 40 of 32 correct) is inconsistent"),
                       std::invalid_argument);
  o.start_progress = {3, 1.0, 20, 96};  // 64 examples make 2 steps per epoch
  CHECK_THROWS_WITH_AS(fit(model, method, optimizer, constant_schedule(0.05), train, test, o),
                       "opnorm::fit: start_progress has 3 steps completed, but an epoch has 2", std::invalid_argument);
}

TEST_CASE("a checkpoint without the method's step counter is refused, and changes nothing") {
  const auto train = synthetic<float>(64, 9);
  const fs::path dir = scratch_folder("no_counter");
  const fs::path path = dir / "c.safetensors";
  auto model = make_dense_net<float>(1);
  auto method = small_adversarial();
  sgd optimizer(model, sgd_options{0.05, 0.9, 0.0, false});
  fit(model, method, optimizer, constant_schedule(0.05), train, dataset<float>{}, small_options(1),
      checkpoint_each_epoch(path));

  // The file as a run that did not save the counter would have written it.
  safetensors::contents file = safetensors::read(path);
  REQUIRE(file.tensors.count("method.step") == 1);
  CHECK(safetensors::decode<std::int64_t>(file.tensors.at("method.step"), "method.step")[0] == 2);  // 64 / 32
  file.tensors.erase("method.step");
  safetensors::write(path, file.tensors, file.metadata);

  auto other = make_dense_net<float>(2);
  auto other_method = small_adversarial();
  sgd other_optimizer(other, sgd_options{0.05, 0.9, 0.0, false});
  const auto before = state_bytes(other);
  const auto optimizer_before = optimizer_bytes(other_optimizer);
  CHECK_THROWS_WITH_AS(load_training_checkpoint(path, other, other_method, other_optimizer),
                       doctest::Contains("missing counter 'method.step'"), checkpoint_error);
  CHECK(state_bytes(other) == before);
  CHECK(optimizer_bytes(other_optimizer) == optimizer_before);
  CHECK(method_counters(other_method) == std::vector<std::int64_t>{0});
}

TEST_CASE("a checkpoint refuses to resume a run with another optimizer, and changes nothing") {
  const auto train = synthetic<float>(64, 8);
  const fs::path dir = scratch_folder("mismatch");
  auto model = make_dense_net<float>(1);
  standard method;
  sgd optimizer(model, sgd_options{0.05, 0.9, 0.0, false});
  fit(model, method, optimizer, constant_schedule(0.05), train, dataset<float>{}, small_options(1),
      checkpoint_each_epoch(dir / "c.safetensors"));

  auto other = make_dense_net<float>(2);
  const auto before = state_bytes(other);
  adam wrong(other, adam_options{});
  CHECK_THROWS_WITH_AS(load_training_checkpoint(dir / "c.safetensors", other, method, wrong),
                       doctest::Contains("was written by a run with optimizer 'sgd'; this run uses 'adam'"),
                       checkpoint_error);
  sgd plain(other, sgd_options{0.05, 0.0, 0.0, false});  // no momentum buffers: the file has extra state
  CHECK_THROWS_WITH_AS(load_training_checkpoint(dir / "c.safetensors", other, method, plain),
                       doctest::Contains("unexpected tensor 'optimizer.1.weight.momentum_buffer'"),
                       checkpoint_error);
  CHECK(state_bytes(other) == before);
}

TEST_CASE("a diverging run stops with a clear error and leaves the last checkpoint intact") {
  const auto train = synthetic<float>(128, 9), test = synthetic<float>(40, 10);
  const fs::path dir = scratch_folder("diverge");
  const fs::path checkpoint = dir / "last.safetensors";
  auto model = make_conv_net<float>(4);
  standard method;
  sgd optimizer(model, sgd_options{0.05, 0.9, 0.0, false});
  fit(model, method, optimizer, constant_schedule(0.05), train, test, small_options(1),
      checkpoint_each_epoch(checkpoint));
  const std::string good = file_text(checkpoint);
  REQUIRE(!good.empty());

  SUBCASE("a learning rate of 1e30") {
    fit_options o = small_options(3);
    o.start_epoch = 1;
    try {
      fit(model, method, optimizer, constant_schedule(1e30), train, test, o, checkpoint_each_epoch(checkpoint));
      FAIL("fit should have thrown");
    } catch (const training_diverged& e) {
      const std::string message = e.what();
      CAPTURE(message);
      CHECK(message.find("opnorm::fit: the standard loss is ") == 0);
      CHECK(message.find(" at epoch 2 of 3, step ") != std::string::npos);
      CHECK(message.find("(learning rate 1e+30)") != std::string::npos);
      CHECK(e.epoch() == 1);
      CHECK(e.step() >= 1);  // the first step's loss is finite; the update is what explodes
    }
  }
  SUBCASE("a NaN pixel in the training set") {
    // ReLU and max pooling pass NaN on, as PyTorch's do, so the NaN reaches
    // the loss of the first step whose batch holds it, before any update.
    dataset<float> poisoned = train;
    poisoned.images[5 * 36 + 7] = std::numeric_limits<float>::quiet_NaN();
    fit_options o = small_options(3);
    o.start_epoch = 1;
    CHECK_THROWS_WITH_AS(
        fit(model, method, optimizer, constant_schedule(0.05), poisoned, test, o, checkpoint_each_epoch(checkpoint)),
        doctest::Contains("the standard loss is nan at epoch 2 of 3, step "), training_diverged);
  }
  SUBCASE("an update that overflows on the epoch's last step") {
    // One batch per epoch, so no later loss or gradient sees the update: the
    // end-of-epoch check must. 1e34 * 1e6 * |w| overflows float.
    sgd huge_decay(model, sgd_options{0.0, 0.0, 1e6, false});
    fit_options o = small_options(3);
    o.start_epoch = 1;
    o.batch_size = train.size();
    CHECK_THROWS_WITH_AS(
        fit(model, method, huge_decay, constant_schedule(1e34), train, test, o, checkpoint_each_epoch(checkpoint)),
        doctest::Contains("holds NaN or infinity after epoch 2 of 3 (learning rate 1e+34); the epoch was not reported"),
        training_diverged);
  }
  SUBCASE("a schedule that yields NaN") {
    fit_options o = small_options(3);
    o.start_epoch = 1;
    auto nan_rate = [](index_t, index_t, index_t) { return std::numeric_limits<double>::quiet_NaN(); };
    CHECK_THROWS_WITH_AS(fit(model, method, optimizer, nan_rate, train, test, o, checkpoint_each_epoch(checkpoint)),
                         "opnorm::fit: the schedule gave the learning rate nan for epoch 2, step 1; a learning "
                         "rate must be finite and >= 0",
                         std::invalid_argument);
  }
  CHECK(file_text(checkpoint) == good);
}

TEST_CASE("csv_log and checkpoint_each_epoch write their files; a resumed log keeps its earlier rows") {
  const auto train = synthetic<float>(96, 12), test = synthetic<float>(30, 13);
  const fs::path dir = scratch_folder("callbacks");
  auto model = make_conv_net<float>(5);
  standard method;
  sgd optimizer(model, sgd_options{0.05, 0.9, 0.0, false});
  const fit_result r = fit(model, method, optimizer, step_decay_schedule(0.05, 1, 0.5), train, test,
                           small_options(2), csv_log(dir / "log.csv"),
                           checkpoint_each_epoch(dir / "last.safetensors", {{"note", "test run"}}));

  std::istringstream csv(file_text(dir / "log.csv"));
  std::string line;
  std::getline(csv, line);
  CHECK(line == csv_log::header);
  std::vector<std::string> rows;
  while (std::getline(csv, line)) rows.push_back(line);
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].rfind("1,", 0) == 0);
  CHECK(rows[1].rfind("2,", 0) == 0);
  {
    // epoch 2: train loss, train acc, test loss, test acc, lr = 0.05 * 0.5, seconds
    std::istringstream fields(rows[1]);
    std::vector<double> v;
    std::string field;
    while (std::getline(fields, field, ',')) v.push_back(std::stod(field));
    REQUIRE(v.size() == 7);
    CHECK(v[1] == doctest::Approx(r.history[1].train_loss).epsilon(1e-8));
    CHECK(v[4] == doctest::Approx(r.history[1].test_accuracy).epsilon(1e-8));
    CHECK(v[5] == doctest::Approx(0.025).epsilon(1e-12));
    CHECK(v[6] >= 0);
  }
  CHECK_FALSE(fs::exists(dir / "log.csv.tmp"));

  const auto metadata = read_checkpoint_metadata(dir / "last.safetensors");
  CHECK(metadata.at("epochs_completed") == "2");
  CHECK(metadata.at("seed") == "11");
  CHECK(metadata.at("method") == "standard");
  CHECK(metadata.at("optimizer") == "sgd");
  CHECK(metadata.at("note") == "test run");
  // The model part is an ordinary checkpoint: it loads on its own, with the
  // optimizer state handed back as extra tensors.
  auto copy = make_conv_net<float>(6);
  safetensors::tensor_map extra;
  load_checkpoint(copy, dir / "last.safetensors", &extra);
  CHECK(state_bytes(copy) == state_bytes(model));
  CHECK(extra.count("optimizer.0.weight.momentum_buffer") == 1);
  CHECK(extra.count("optimizer.step") == 1);

  // Resume after epoch 1 into the same folder: row 1 is kept, row 2 rewritten.
  fit_options o = small_options(3);
  o.start_epoch = 1;
  fit(model, method, optimizer, constant_schedule(0.01), train, test, o, csv_log(dir / "log.csv"));
  std::istringstream resumed(file_text(dir / "log.csv"));
  rows.clear();
  std::getline(resumed, line);
  while (std::getline(resumed, line)) rows.push_back(line);
  REQUIRE(rows.size() == 3);
  CHECK(rows[0].rfind("1,", 0) == 0);
  CHECK(rows[1].rfind("2,", 0) == 0);
  CHECK(rows[2].rfind("3,", 0) == 0);
  CHECK(rows[2].find(",0.01,") != std::string::npos);
}

TEST_CASE("progress prints step and epoch lines, with carriage returns only on a terminal") {
  const auto train = synthetic<float>(64, 14), test = synthetic<float>(20, 15);
  auto model = make_dense_net<float>(5);
  standard method;
  sgd optimizer(model, sgd_options{0.05, 0.0, 0.0, false});
  fit_options o = small_options(2);
  o.batch_size = 16;  // 4 steps per epoch

  std::ostringstream log;
  fit(model, method, optimizer, constant_schedule(0.05), train, test, o, progress(log, 2));
  const std::string text = log.str();
  CAPTURE(text);
  CHECK(text.find('\r') == std::string::npos);
  CHECK(text.find("training standard: 64 examples, 4 steps of 16 per epoch, epochs 1-2, seed 11") == 0);
  CHECK(text.find("epoch 1/2  step 2/4  loss ") != std::string::npos);
  CHECK(text.find("epoch 2/2  step 2/4  loss ") != std::string::npos);
  CHECK(text.find(" img/s  ETA ") != std::string::npos);
  CHECK(text.find("epoch 1/2 in ") != std::string::npos);
  CHECK(text.find("test loss ") != std::string::npos);
  CHECK(std::count(text.begin(), text.end(), '\n') == 5);  // header, 2 step lines, 2 epoch lines

  std::ostringstream terminal;
  fit(model, method, optimizer, constant_schedule(0.05), train, test, o, progress(terminal, 2, true));
  const std::string redrawn = terminal.str();
  CHECK(redrawn.find("\repoch 1/2  step 2/4") != std::string::npos);
  CHECK(std::count(redrawn.begin(), redrawn.end(), '\n') == 3);  // header and epoch lines
}

TEST_CASE("early_stop stops when test accuracy stops improving") {
  const auto train = synthetic<float>(64, 16), test = synthetic<float>(20, 17);
  auto model = make_dense_net<float>(6);
  standard method;
  sgd optimizer(model, sgd_options{0.0, 0.0, 0.0, false});
  early_stop stopper(2);
  // A zero learning rate and no BatchNorm: the accuracy never changes.
  const fit_result r =
      fit(model, method, optimizer, constant_schedule(0.0), train, test, small_options(10), stopper);
  CHECK(r.stopped_early);
  CHECK(r.history.size() == 3);  // epoch 1 sets the best, epochs 2 and 3 do not improve it
  CHECK(stopper.best_epoch() == 0);
  CHECK(stopper.best_accuracy() == r.history[0].test_accuracy);
  CHECK_THROWS_WITH_AS(fit(model, method, optimizer, constant_schedule(0.0), train, dataset<float>{},
                           small_options(1), early_stop(2)),
                       doctest::Contains("early_stop: watches test accuracy"), std::invalid_argument);
}

TEST_CASE("fit checks its inputs before the first step") {
  const auto train = synthetic<float>(64, 18);
  auto model = make_dense_net<float>(7);
  standard method;
  sgd optimizer(model, sgd_options{});
  fit_options o = small_options(2);
  o.start_epoch = 3;
  CHECK_THROWS_WITH_AS(fit(model, method, optimizer, constant_schedule(0.1), train, dataset<float>{}, o),
                       "opnorm::fit: start_epoch 3 outside [0, epochs = 2]", std::invalid_argument);
  dataset<float> four_classes = train;
  four_classes.classes = 4;
  CHECK_THROWS_WITH_AS(
      fit(model, method, optimizer, constant_schedule(0.1), four_classes, dataset<float>{}, small_options(1)),
      doctest::Contains("the model maps (1, 1, 6, 6) to (1, 3), but 'synthetic' has 4 classes"),
      std::invalid_argument);
  // A start_epoch equal to epochs is a finished run: nothing to do.
  o.start_epoch = 2;
  CHECK(fit(model, method, optimizer, constant_schedule(0.1), train, dataset<float>{}, o).history.empty());
  CHECK(optimizer.steps() == 0);
}

TEST_CASE("shard_of lays the ranks' shards end to end; in one process join_shards and fractions_over_ranks are "
          "the identity") {
  for (int size : {1, 2, 3, 7}) {
    index_t next = 0;
    for (int rank = 0; rank < size; ++rank) {
      const distributed::shard s = distributed::shard_of(23, rank, size);
      CHECK(s.begin == next);
      CHECK(s.size() >= 23 / size);
      CHECK(s.size() <= 23 / size + 1);
      next = s.end;
    }
    CHECK(next == 23);
  }
  CHECK_THROWS_AS(distributed::shard_of(10, 2, 2), std::invalid_argument);

  distributed::single_process one;
  const distributed::shard all = distributed::shard_of(4, 0, 1);
  const std::vector<std::vector<double>> rows = {{1, 0, 1, 1}, {0.25, -3, 7.5, 1e-300}};
  CHECK(distributed::join_shards(one, all, 4, rows) == rows);
  CHECK(distributed::fractions_over_ranks(one, all, 4, {0.75, 0.25, 0.0}) == std::vector<double>{0.75, 0.25, 0.0});
  CHECK_THROWS_WITH_AS(distributed::join_shards(one, all, 4, {{1, 0, 1}}),
                       doctest::Contains("row 0 has 3 values for a shard of 4 examples"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(distributed::fractions_over_ranks(one, all, 5, {0.5}),
                       doctest::Contains("the shards hold 4 examples, the set 5"), std::runtime_error);
}

TEST_CASE_TEMPLATE("softmax cross-entropy: gradient matches finite differences in double", B, OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(19);
  std::normal_distribution<double> normal(0.0, 3.0);
  tensor<double, B> z({5, 7});
  for (index_t i = 0; i < z.size(); ++i) z[i] = normal(rng);
  const label_tensor<B> y = label_tensor<B>::from_vector({5}, {0, 6, 3, 3, 1});
  for (const reduction r : {reduction::mean, reduction::sum}) {
    tensor<double, B> g;
    softmax_cross_entropy::evaluate(z, y, &g, r);
    tensor<double, B> zp = z;
    const double h = 1e-6;
    double diff = 0, scale = 0;
    for (index_t i = 0; i < z.size(); ++i) {
      zp[i] = z[i] + h;
      const double up = softmax_cross_entropy::evaluate(zp, y, static_cast<tensor<double, B>*>(nullptr), r);
      zp[i] = z[i] - h;
      const double down = softmax_cross_entropy::evaluate(zp, y, static_cast<tensor<double, B>*>(nullptr), r);
      zp[i] = z[i];
      const double fd = (up - down) / (2 * h);
      diff += (fd - g[i]) * (fd - g[i]);
      scale += g[i] * g[i];
    }
    CHECK(std::sqrt(diff / scale) < 1e-8);
  }
}

TEST_CASE_TEMPLATE("softmax cross-entropy is exact and finite for logits around 1e4", B, OPNORM_TEST_BACKENDS) {
  // Naive exp(1e4) overflows; the shifted log-sum-exp gives
  // log(1 + e + e^-2) exactly for logits (1e4, 1e4 + 1, 1e4 - 2), label 0.
  const tensor<double, B> z = tensor<double, B>::from_vector({2, 3}, {1e4, 1e4 + 1, 1e4 - 2, -1e4, 1e4, 0.0});
  const label_tensor<B> y = label_tensor<B>::from_vector({2}, {0, 0});
  tensor<double, B> g, per_example;
  softmax_cross_entropy::evaluate(z, y, &g, reduction::sum, &per_example);
  CHECK(per_example[0] == doctest::Approx(std::log(1 + std::exp(1.0) + std::exp(-2.0))).epsilon(1e-14));
  CHECK(per_example[1] == doctest::Approx(2e4).epsilon(1e-15));  // -log softmax = 1e4 - (-1e4)
  const double s = 1 + std::exp(1.0) + std::exp(-2.0);
  CHECK(g[0] == doctest::Approx(1 / s - 1).epsilon(1e-14));
  CHECK(g[1] == doctest::Approx(std::exp(1.0) / s).epsilon(1e-14));
  CHECK(g[3] == doctest::Approx(-1.0).epsilon(1e-14));
  CHECK(g[4] == doctest::Approx(1.0).epsilon(1e-14));
  for (index_t i = 0; i < g.size(); ++i) CHECK(std::isfinite(g[i]));

  // The same in float, where exp overflows already at 89.
  const tensor<float, B> zf = tensor<float, B>::from_vector({1, 3}, {1e4f, 1e4f + 1, 1e4f - 2});
  const float lf = softmax_cross_entropy::evaluate(zf, label_tensor<B>::from_vector({1}, {0}),
                                                   static_cast<tensor<float, B>*>(nullptr), reduction::mean);
  CHECK(lf == doctest::Approx(std::log(1 + std::exp(1.0) + std::exp(-2.0))).epsilon(1e-6));
}

TEST_CASE_TEMPLATE("count_correct takes the first maximal class and counts NaN rows as wrong", B, OPNORM_TEST_BACKENDS) {
  const tensor<double, B> z = tensor<double, B>::from_vector(
      {3, 3}, {1.0, 1.0, 0.0, 0.0, 2.0, 1.0, 0.0, std::numeric_limits<double>::quiet_NaN(), 1.0});
  CHECK(count_correct(z, label_tensor<B>::from_vector({3}, {0, 1, 2})) == 2);
  CHECK(count_correct(z, label_tensor<B>::from_vector({3}, {1, 1, 2})) == 1);
}
