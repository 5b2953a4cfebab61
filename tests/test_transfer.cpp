// Moving networks, optimizers and method state between backends
// (transfer.hpp), and checkpoints written on one backend loaded on another.
// The Thrust host systems stand in for a device: their memory happens to be
// host memory, but transfer.hpp and the checkpoints only use to_vector and
// copy_from_host, the path a CUDA device needs.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include <opnorm/io/checkpoint.hpp>
#include <opnorm/nn/layers/batch_norm.hpp>
#include <opnorm/nn/layers/conv2d.hpp>
#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/flatten.hpp>
#include <opnorm/nn/layers/max_pool2d.hpp>
#include <opnorm/nn/layers/relu.hpp>
#include <opnorm/nn/layers/standardize.hpp>
#include <opnorm/methods/global_snr.hpp>
#include <opnorm/methods/standard.hpp>
#include <opnorm/train/optimizers.hpp>
#include <opnorm/train/training_checkpoint.hpp>
#include <opnorm/nn/transfer.hpp>

#include "test_backends.hpp"

using namespace opnorm;
namespace fs = std::filesystem;
using cpu = backend::cpu;

#define OPNORM_THRUST_HOST_SYSTEMS backend::thrust<backend::system::omp>, backend::thrust<backend::system::cpp>

namespace {

// Every layer type, and each in a configuration that is not the default
// (no bias, no affine BatchNorm, momentum 0.2), so a converting constructor
// that dropped a setting would show.
template <class T, class B>
using small_net = sequential<standardize<T, B>, conv2d<T, B>, batch_norm<T, B>, relu<T, B>, max_pool2d<T, B>,
                             flatten<T, B>, dense<T, B>, batch_norm<T, B>, relu<T, B>, dense<T, B>>;

// Input (N, 1, 8, 8) -> conv (N, 4, 8, 8) -> pool (N, 4, 4, 4) -> 64 -> 8 -> 3.
template <class T, class B = cpu>
small_net<T, B> make_small_net(std::uint64_t seed) {
  small_net<T, B> net(standardize<T, B>({T(0.3)}, {T(0.4)}), conv2d<T, B>(1, 4, 3, 1, 1), batch_norm<T, B>(4),
                      relu<T, B>{}, max_pool2d<T, B>(2), flatten<T, B>{}, dense<T, B>(64, 8, false),
                      batch_norm<T, B>(8, false, 0.2), relu<T, B>{}, dense<T, B>(8, 3));
  net.initialize(seed);
  return net;
}

struct batch {
  std::vector<double> pixels;
  std::vector<std::int32_t> labels;
};

batch make_batch(std::uint64_t seed, index_t n = 6) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> pixel(0.0, 1.0);
  batch b;
  for (index_t i = 0; i < n * 64; ++i) b.pixels.push_back(pixel(rng));
  for (index_t i = 0; i < n; ++i) b.labels.push_back(static_cast<std::int32_t>(i % 3));
  return b;
}

template <class T, class B>
tensor<T, B> images(const batch& b) {
  std::vector<T> v(b.pixels.begin(), b.pixels.end());
  return tensor<T, B>::from_vector({static_cast<index_t>(b.labels.size()), 1, 8, 8}, v);
}
template <class B>
label_tensor<B> labels(const batch& b) {
  return label_tensor<B>::from_vector({static_cast<index_t>(b.labels.size())}, b.labels);
}

// Leaves fresh parameter gradients of one standard training step in model
// (and moves the BatchNorm statistics and counters, as training does).
template <class Model>
void compute_gradients(Model& model, const batch& b) {
  using T = typename Model::scalar;
  using B = typename Model::backend_type;
  typename Model::tape tape;
  model.zero_grad();
  standard method;
  method.accumulate_gradients(model, tape, images<T, B>(b), labels<B>(b));
}

// The two state lists hold the same names, and the same elements bit for
// bit (gradients too, when asked).
template <class T, class B1, class B2>
void check_same_state(const state_list<T, B1>& a, const state_list<T, B2>& b, bool gradients) {
  auto same_tensors = [](const auto& x, const auto& y, bool with_grads) {
    REQUIRE(x.size() == y.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      CAPTURE(x[i].name);
      REQUIRE(x[i].name == y[i].name);
      REQUIRE(x[i].value->shape() == y[i].value->shape());
      CHECK(x[i].value->to_vector() == y[i].value->to_vector());
      if (with_grads && x[i].grad && y[i].grad) CHECK(x[i].grad->to_vector() == y[i].grad->to_vector());
    }
  };
  same_tensors(a.parameters, b.parameters, gradients);
  same_tensors(a.buffers, b.buffers, false);
  REQUIRE(a.counters.size() == b.counters.size());
  for (std::size_t i = 0; i < a.counters.size(); ++i) {
    CAPTURE(a.counters[i].name);
    CHECK(a.counters[i].name == b.counters[i].name);
    CHECK(*a.counters[i].value == *b.counters[i].value);
  }
}

// Parameters of two copies of a network after the same optimizer step:
// identical in double, within 1e-6 (relative to max(1, |w|)) in float.
template <class T, class B1, class B2>
void check_same_parameters_after_step(const state_list<T, B1>& a, const state_list<T, B2>& b) {
  REQUIRE(a.parameters.size() == b.parameters.size());
  for (std::size_t i = 0; i < a.parameters.size(); ++i) {
    CAPTURE(a.parameters[i].name);
    const std::vector<T> x = a.parameters[i].value->to_vector(), y = b.parameters[i].value->to_vector();
    REQUIRE(x.size() == y.size());
    for (std::size_t k = 0; k < x.size(); ++k) {
      CAPTURE(k);
      if constexpr (std::is_same_v<T, double>)
        CHECK(x[k] == y[k]);
      else
        CHECK(std::abs(x[k] - y[k]) <= 1e-6f * std::max(1.0f, std::abs(x[k])));
    }
  }
}

struct scratch_dir {
  fs::path path;
  scratch_dir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("opnorm_test_transfer_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~scratch_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path operator/(const std::string& name) const { return path / name; }
};

template <class T, class Device>
void check_network_round_trip() {
  auto net = make_small_net<T>(5);
  const batch b = make_batch(1);
  for (int step = 0; step < 3; ++step) compute_gradients(net, b);  // statistics, counters and gradients move
  REQUIRE(net.template layer<2>().num_batches_tracked() == 3);

  auto device = to<Device>(net);
  static_assert(std::is_same_v<typename decltype(device)::backend_type, Device>);
  check_same_state(net.state(), device.state(), true);
  // The configuration came along: a layer built with the defaults instead
  // would have different shapes (caught above) or behave differently here.
  CHECK(device.template layer<1>().padding() == 1);
  CHECK(device.template layer<4>().kernel_size() == 2);
  CHECK_FALSE(device.template layer<6>().has_bias());
  CHECK_FALSE(device.template layer<7>().affine());
  CHECK(device.template layer<7>().momentum() == 0.2);
  CHECK(device.template layer<0>().mean().to_vector() == std::vector<T>{T(0.3)});

  // The moved network computes the same function; the backends' GEMMs may
  // round differently, so not necessarily the same bits.
  const batch test = make_batch(2);
  const std::vector<T> expected = net.predict(images<T, cpu>(test)).to_vector();
  const std::vector<T> on_device = device.predict(images<T, Device>(test)).to_vector();
  REQUIRE(on_device.size() == expected.size());
  const double tolerance = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  for (std::size_t i = 0; i < expected.size(); ++i)
    CHECK(std::abs(double(on_device[i]) - double(expected[i])) <= tolerance * std::max(1.0, std::abs(double(expected[i]))));

  // And back: the member spelling, then the very same network.
  auto back = device.template to<cpu>();
  static_assert(std::is_same_v<decltype(back), small_net<T, cpu>>);
  check_same_state(net.state(), back.state(), true);
  CHECK(back.predict(images<T, cpu>(test)).to_vector() == expected);
}

template <class T, class Device, template <class, class> class Optimizer, class Options>
void check_optimizer_continues(const Options& options) {
  auto net = make_small_net<T>(7);
  Optimizer<T, cpu> optimizer(net, options);
  for (int step = 0; step < 2; ++step) {
    compute_gradients(net, make_batch(10 + step));
    optimizer.step(net);
  }
  compute_gradients(net, make_batch(20));  // the third step's gradients, moved with the network

  auto device = to<Device>(net);
  auto device_optimizer = to<Device>(optimizer, device);
  static_assert(std::is_same_v<decltype(device_optimizer), Optimizer<T, Device>>);
  CHECK(device_optimizer.steps() == 2);
  CHECK(device_optimizer.learning_rate() == optimizer.learning_rate());
  check_same_state(optimizer.state(), device_optimizer.state(), false);

  optimizer.step(net);
  device_optimizer.step(device);
  CHECK(device_optimizer.steps() == 3);
  check_same_parameters_after_step(net.state(), device.state());

  // Moved back, it is the host optimizer again (buffers within rounding of
  // the host's own after the step, exactly equal before it: checked above).
  auto host = to<cpu>(device);
  auto host_optimizer = to<cpu>(device_optimizer, host);
  CHECK(host_optimizer.steps() == 3);
  check_same_state(device_optimizer.state(), host_optimizer.state(), false);
}

}  // namespace

TEST_CASE_TEMPLATE("a network moved cpu -> thrust -> cpu keeps every parameter, buffer, counter and prediction",
                   Device, OPNORM_THRUST_HOST_SYSTEMS) {
  SUBCASE("float") { check_network_round_trip<float, Device>(); }
  SUBCASE("double") { check_network_round_trip<double, Device>(); }
}

TEST_CASE_TEMPLATE("sgd and adam moved with their network take the same next step on the other backend", Device,
                   OPNORM_THRUST_HOST_SYSTEMS) {
  const sgd_options momentum{0.05, 0.9, 5e-4, true};
  const adam_options moments{1e-2, 0.9, 0.999, 1e-8, 1e-4};
  SUBCASE("sgd, float") { check_optimizer_continues<float, Device, sgd>(momentum); }
  SUBCASE("sgd, double") { check_optimizer_continues<double, Device, sgd>(momentum); }
  SUBCASE("adam, float") { check_optimizer_continues<float, Device, adam>(moments); }
  SUBCASE("adam, double") { check_optimizer_continues<double, Device, adam>(moments); }
}

TEST_CASE_TEMPLATE("global_snr's persistent vectors move with the network", Device, OPNORM_THRUST_HOST_SYSTEMS) {
  auto net = make_small_net<double>(3);
  global_snr<double, cpu> method(net, 1e-2, 2, 9);
  typename small_net<double, cpu>::tape tape;
  for (int step = 0; step < 2; ++step) {  // the vectors move away from their random start
    net.zero_grad();
    const batch b = make_batch(30 + step);
    method.accumulate_gradients(net, tape, images<double, cpu>(b), labels<cpu>(b));
  }
  auto device = to<Device>(net);
  auto moved = to<Device>(method, device);
  CHECK(moved.lambda == method.lambda);
  CHECK(moved.iterations == method.iterations);
  REQUIRE(method.state().buffers.size() == 3);  // the conv kernel and the two dense weights
  check_same_state(method.state(), moved.state(), false);
}

TEST_CASE_TEMPLATE("checkpoints written on thrust load on cpu and the reverse, bit-exactly", Device,
                   OPNORM_THRUST_HOST_SYSTEMS) {
  scratch_dir dir;
  SUBCASE("thrust -> cpu") {
    auto device = make_small_net<float, Device>(11);
    for (int step = 0; step < 2; ++step) compute_gradients(device, make_batch(40 + step));
    save_checkpoint(device, dir / "device.safetensors");
    auto host = make_small_net<float, cpu>(12);
    load_checkpoint(host, dir / "device.safetensors");
    check_same_state(device.state(), host.state(), false);
  }
  SUBCASE("cpu -> thrust") {
    auto host = make_small_net<double, cpu>(13);
    for (int step = 0; step < 2; ++step) compute_gradients(host, make_batch(50 + step));
    save_checkpoint(host, dir / "host.safetensors");
    auto device = make_small_net<double, Device>(14);
    load_checkpoint(device, dir / "host.safetensors");
    check_same_state(host.state(), device.state(), false);
  }
}

TEST_CASE_TEMPLATE("training checkpoints (model, optimizer, method) move between cpu and thrust", Device,
                   OPNORM_THRUST_HOST_SYSTEMS) {
  scratch_dir dir;
  // A run on the device: sgd with momentum and global_snr's vectors.
  auto device = make_small_net<float, Device>(21);
  sgd<float, Device> device_sgd(device, sgd_options{0.05, 0.9, 0.0, false});
  global_snr<float, Device> device_snr(device, 1e-2, 1, 4);
  typename small_net<float, Device>::tape tape;
  for (int step = 0; step < 2; ++step) {
    device.zero_grad();
    const batch b = make_batch(60 + step);
    device_snr.accumulate_gradients(device, tape, images<float, Device>(b), labels<Device>(b));
    device_sgd.step(device);
  }
  save_training_checkpoint(dir / "device.safetensors", device, device_snr, device_sgd, 1, 77);

  // ... resumed on the host,
  auto host = make_small_net<float, cpu>(22);
  sgd<float, cpu> host_sgd(host, sgd_options{0.05, 0.9, 0.0, false});
  global_snr<float, cpu> host_snr(host, 1e-2, 1, 5);
  const training_checkpoint restored = load_training_checkpoint(dir / "device.safetensors", host, host_snr, host_sgd);
  CHECK(restored.epochs_completed == 1);
  CHECK(restored.seed == 77);
  check_same_state(device.state(), host.state(), false);
  check_same_state(device_sgd.state(), host_sgd.state(), false);
  check_same_state(device_snr.state(), host_snr.state(), false);

  // ... and written there, resumed on the device again.
  save_training_checkpoint(dir / "host.safetensors", host, host_snr, host_sgd, 2, 77);
  auto device2 = make_small_net<float, Device>(23);
  sgd<float, Device> device2_sgd(device2, sgd_options{0.05, 0.9, 0.0, false});
  global_snr<float, Device> device2_snr(device2, 1e-2, 1, 6);
  CHECK(load_training_checkpoint(dir / "host.safetensors", device2, device2_snr, device2_sgd).epochs_completed == 2);
  check_same_state(host.state(), device2.state(), false);
  check_same_state(host_sgd.state(), device2_sgd.state(), false);
  check_same_state(host_snr.state(), device2_snr.state(), false);
}

TEST_CASE("moving an optimizer onto a network with other parameters is refused") {
  auto net = make_small_net<double>(1);
  adam<double, cpu> optimizer(net, adam_options{});
  // Same layer types, another width of the hidden dense layer.
  small_net<double, backend::thrust_omp> other(
      standardize<double, backend::thrust_omp>({0.3}, {0.4}), conv2d<double, backend::thrust_omp>(1, 4, 3, 1, 1),
      batch_norm<double, backend::thrust_omp>(4), relu<double, backend::thrust_omp>{},
      max_pool2d<double, backend::thrust_omp>(2), flatten<double, backend::thrust_omp>{},
      dense<double, backend::thrust_omp>(64, 5, false), batch_norm<double, backend::thrust_omp>(5, false, 0.2),
      relu<double, backend::thrust_omp>{}, dense<double, backend::thrust_omp>(5, 3));
  CHECK_THROWS_AS(to<backend::thrust_omp>(optimizer, other), std::invalid_argument);
  // And copy_state refuses two different networks before copying anything.
  auto moved = to<backend::thrust_omp>(net);
  const std::vector<double> before = other.layer<9>().weight().to_vector();
  CHECK_THROWS_AS(copy_state(moved.state(), other.state()), std::invalid_argument);
  CHECK(other.layer<9>().weight().to_vector() == before);
}
