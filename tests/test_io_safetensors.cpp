// safetensors files and model checkpoints: the byte layout of the reference
// writer, bit-exact round trips, strict and transactional loading, refusal of
// malformed files, and atomic writes.
#include <doctest/doctest.h>

#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#if defined(__unix__)
#include <sys/resource.h>
#include <unistd.h>
#endif

#include <opnorm/io/checkpoint.hpp>
#include <opnorm/io/safetensors.hpp>
#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/layers/relu.hpp>
#include <opnorm/nn/sequential.hpp>

#if __has_include(<opnorm/nn/networks.hpp>)
#include <opnorm/nn/networks.hpp>
#define OPNORM_TEST_HAVE_NETWORKS 1
#endif

using namespace opnorm;
namespace fs = std::filesystem;
namespace st = opnorm::safetensors;

namespace {

/// A fresh directory under the system temp directory, removed afterwards.
struct scratch_dir {
  fs::path path;
  scratch_dir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("opnorm_test_io_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~scratch_dir() {
    std::error_code ec;
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path, ec);
  }
  fs::path operator/(const std::string& name) const { return path / name; }
};

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string u64_le(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

/// A safetensors file from a header text (not padded) and a data section.
std::string file_bytes(const std::string& header, const std::string& data) {
  return u64_le(header.size()) + header + data;
}

template <class T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

/// The names of files in dir, to prove that no temporary file was left behind.
std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

bool any_temporary(const fs::path& dir) {
  for (const auto& name : listing(dir))
    if (name.size() >= 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) return true;
  return false;
}

/// A stand-in for BatchNorm's state, so checkpoints of buffers and counters
/// are tested without depending on the real layer: an identity map with a
/// "running_mean" buffer and a "num_batches_tracked" counter.
template <class T = float, class Backend = backend::cpu>
class stats_probe {
 public:
  using scalar = T;
  using backend_type = Backend;
  struct cache {};

  explicit stats_probe(index_t features) : running_mean_({features}, T(0)) {}

  shape_t output_shape(const shape_t& in) const { return in; }
  void forward(const tensor<T, Backend>& x, tensor<T, Backend>& y, cache&, mode) {
    y.resize(x.shape());
    backend_ops<Backend>::copy(x.data(), x.size(), y.data());
  }
  void vjp(const tensor<T, Backend>&, const tensor<T, Backend>&, const cache&, const tensor<T, Backend>& gy,
           tensor<T, Backend>* gx, bool) {
    if (gx) *gx = gy;
  }
  void jvp(const tensor<T, Backend>&, const tensor<T, Backend>&, const cache&, const tensor<T, Backend>& dx,
           tensor<T, Backend>& dy) const {
    dy = dx;
  }
  void collect_state(state_list<T, Backend>& s, const std::string& prefix) {
    s.buffers.push_back({prefix + "running_mean", &running_mean_, nullptr});
    s.counters.push_back({prefix + "num_batches_tracked", &batches_});
  }
  void initialize(std::mt19937_64& rng) {
    fill_uniform(running_mean_, rng, 1.0);
    batches_ = static_cast<std::int64_t>(rng() % 1000) + (std::int64_t{1} << 40);  // beyond 32 bits
  }

  tensor<T, Backend>& running_mean() { return running_mean_; }
  std::int64_t& batches() { return batches_; }

 private:
  tensor<T, Backend> running_mean_;
  std::int64_t batches_ = 0;
};

template <class T>
using mlp = sequential<dense<T>, relu<T>, dense<T>>;
template <class T>
mlp<T> make_mlp(index_t in, index_t hidden, index_t out, bool bias = true) {
  return mlp<T>(dense<T>(in, hidden, bias), relu<T>(), dense<T>(hidden, out, bias));
}

template <class T>
using mlp_with_stats = sequential<dense<T>, stats_probe<T>, relu<T>, dense<T>>;
template <class T>
mlp_with_stats<T> make_mlp_with_stats() {
  return mlp_with_stats<T>(dense<T>(4, 6), stats_probe<T>(6), relu<T>(), dense<T>(6, 3));
}

/// Every tensor and counter of a model, as bytes, in state() order.
template <class Model>
std::vector<std::string> state_bytes(Model& model) {
  std::vector<std::string> out;
  auto s = model.state();
  for (const auto& p : s.parameters) out.push_back(raw(p.value->to_vector()));
  for (const auto& b : s.buffers) out.push_back(raw(b.value->to_vector()));
  for (const auto& c : s.counters) out.push_back(raw(std::vector<std::int64_t>{*c.value}));
  return out;
}

/// Saves `saved`, loads the file into `loaded` and compares every byte of the
/// state. Every tensor and counter of `loaded` is shifted first, so that a
/// tensor the load skipped cannot pass unnoticed.
template <class Model>
void check_bit_exact_round_trip(Model& saved, Model& loaded, const fs::path& file) {
  using T = typename Model::scalar;
  auto state = loaded.state();
  auto shift = [](auto& list) {
    for (auto& t : list) {
      std::vector<T> v = t.value->to_vector();
      for (auto& e : v) e += T(1);
      *t.value = tensor<T>::from_vector(t.value->shape(), v);
    }
  };
  shift(state.parameters);
  shift(state.buffers);
  for (auto& c : state.counters) *c.value += 1;
  {
    const auto a = state_bytes(saved), b = state_bytes(loaded);
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(a[i] != b[i]);
  }
  save_checkpoint(saved, file, {{"epoch", "7"}, {"method", "pga"}});
  const auto metadata = load_checkpoint(loaded, file);
  const auto a = state_bytes(saved), b = state_bytes(loaded);
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i].size() == b[i].size());
    CHECK(std::memcmp(a[i].data(), b[i].data(), a[i].size()) == 0);
  }
  CHECK(metadata.at("epoch") == "7");
  CHECK(metadata.at("method") == "pga");
  CHECK(metadata.at("format") == "pt");
}

/// Two instances of one architecture with different weights.
template <class Model>
void check_bit_exact_round_trip(Model saved, Model loaded, std::uint64_t seed, const fs::path& file) {
  saved.initialize(seed);
  loaded.initialize(seed + 1);
  check_bit_exact_round_trip(saved, loaded, file);
}

doctest::Contains contains(const std::string& s) { return doctest::Contains(s.c_str()); }

}  // namespace

// ---------------------------------------------------------------------------
// The byte layout.

TEST_CASE("the writer produces the reference implementation's bytes") {
  scratch_dir dir;
  const fs::path file = dir / "attn.safetensors";

  // One F32 tensor of shape (1, 2, 3) holding 0..5: compact JSON of exactly
  // 64 bytes (no padding needed), then the little-endian floats.
  const std::vector<float> values{0, 1, 2, 3, 4, 5};
  st::tensor_map tensors;
  tensors["attn.0"] = st::to_entry(tensor<float>::from_vector({1, 2, 3}, values));
  st::write(file, tensors);
  const std::string json = R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
  REQUIRE(json.size() == 64);
  CHECK(read_bytes(file) == file_bytes(json, raw(values)));

  // A name one byte shorter and shape (1, 1, 2, 3): 65 bytes of JSON, padded
  // with 7 spaces so the data starts 8-byte aligned.
  tensors.clear();
  tensors["attn0"] = st::to_entry(tensor<float>::from_vector({1, 1, 2, 3}, values));
  st::write(file, tensors);
  const std::string json0 = R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}})";
  REQUIRE(json0.size() == 65);
  CHECK(read_bytes(file) == file_bytes(json0 + std::string(7, ' '), raw(values)));

  // No tensors: "{}" padded to 8; metadata comes first in the header.
  st::write(file, {});
  CHECK(read_bytes(file) == file_bytes("{}      ", ""));
  st::write(file, {}, {{"framework", "pt"}});
  CHECK(read_bytes(file) == file_bytes(R"({"__metadata__":{"framework":"pt"}})" + std::string(5, ' '), ""));
}

TEST_CASE("tensors are stored by descending dtype alignment, then by name") {
  scratch_dir dir;
  const fs::path file = dir / "order.safetensors";
  st::tensor_map tensors;
  tensors["b"] = st::to_entry(tensor<float>({3}, 1.0f));
  tensors["a"] = st::to_entry(tensor<float>({1}, 2.0f));
  tensors["c"] = st::to_entry(tensor<double>({2}, 3.0));
  tensors["d.num_batches_tracked"] = st::scalar_entry<std::int64_t>(5);
  tensors["e"] = st::to_entry(tensor<std::int32_t>({1}, 4));
  st::write(file, tensors);
  const std::string bytes = read_bytes(file);
  const std::uint64_t n = st::detail::get_u64_le(reinterpret_cast<const unsigned char*>(bytes.data()));
  CHECK(n % 8 == 0);
  const std::string header = bytes.substr(8, n);
  CHECK(header ==
        R"({"d.num_batches_tracked":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
        R"("c":{"dtype":"F64","shape":[2],"data_offsets":[8,24]},)"
        R"("a":{"dtype":"F32","shape":[1],"data_offsets":[24,28]},)"
        R"("b":{"dtype":"F32","shape":[3],"data_offsets":[28,40]},)"
        R"("e":{"dtype":"I32","shape":[1],"data_offsets":[40,44]}})" +
            std::string(header.size() - header.find_last_of('}') - 1, ' '));
  CHECK(bytes.size() == 8 + n + 44);

  const st::contents back = st::read(file);
  CHECK(back.tensors.size() == 5);
  CHECK(back.tensors.at("d.num_batches_tracked").shape.empty());
  CHECK(st::decode<std::int64_t>(back.tensors.at("d.num_batches_tracked"), "x") == std::vector<std::int64_t>{5});
  CHECK(st::decode<double>(back.tensors.at("c"), "c") == std::vector<double>{3.0, 3.0});
  CHECK(st::decode<std::int32_t>(back.tensors.at("e"), "e") == std::vector<std::int32_t>{4});
}

TEST_CASE("the reader accepts any key order, zero-size tensors and non-ASCII names") {
  scratch_dir dir;
  const fs::path file = dir / "other_writer.safetensors";
  // Keys in no particular order, metadata last, unpadded header, a zero-size
  // tensor and a UTF-8 name: all valid safetensors.
  const std::string header =
      R"({"z":{"shape":[2],"dtype":"F64","data_offsets":[4,20]},"empty":{"dtype":"F32","shape":[0,3],)"
      R"("data_offsets":[4,4]},"gewicht_\u00e4":{"dtype":"F32","shape":[],"data_offsets":[0,4]},)"
      R"("__metadata__":{"epoch":"3"}})";
  write_bytes(file, file_bytes(header, raw(std::vector<float>{1.5f}) + raw(std::vector<double>{-2, 0.25})));
  const st::contents c = st::read(file);
  CHECK(c.metadata == st::metadata_map{{"epoch", "3"}});
  CHECK(st::decode<double>(c.tensors.at("z"), "z") == std::vector<double>{-2, 0.25});
  CHECK(c.tensors.at("empty").shape == shape_t{0, 3});
  CHECK(st::decode<float>(c.tensors.at("gewicht_\xc3\xa4"), "g") == std::vector<float>{1.5f});
  CHECK(st::read_metadata(file) == st::metadata_map{{"epoch", "3"}});
}

// ---------------------------------------------------------------------------
// Model checkpoints.

TEST_CASE("checkpoint names, dtypes and shapes are PyTorch's state_dict") {
  scratch_dir dir;
  auto model = make_mlp_with_stats<float>();
  save_checkpoint(model, dir / "m.safetensors");
  const st::contents c = st::read(dir / "m.safetensors");
  std::vector<std::string> names;
  for (const auto& kv : c.tensors) names.push_back(kv.first);
  CHECK(names == std::vector<std::string>{"0.bias", "0.weight", "1.num_batches_tracked", "1.running_mean",
                                          "3.bias", "3.weight"});
  CHECK(c.tensors.at("0.weight").shape == shape_t{6, 4});  // (out, in), like nn.Linear
  CHECK(c.tensors.at("0.weight").type == st::dtype::F32);
  CHECK(c.tensors.at("1.running_mean").shape == shape_t{6});
  CHECK(c.tensors.at("1.num_batches_tracked").type == st::dtype::I64);
  CHECK(c.tensors.at("1.num_batches_tracked").shape.empty());
  CHECK(c.tensors.at("3.weight").shape == shape_t{3, 6});

  auto model_d = make_mlp_with_stats<double>();
  save_checkpoint(model_d, dir / "d.safetensors");
  CHECK(st::read(dir / "d.safetensors").tensors.at("3.bias").type == st::dtype::F64);
}

TEST_CASE("dense-relu-dense checkpoints round-trip bit-exactly") {
  scratch_dir dir;
  check_bit_exact_round_trip(make_mlp<float>(5, 7, 3), make_mlp<float>(5, 7, 3), 11, dir / "f.safetensors");
  check_bit_exact_round_trip(make_mlp<double>(5, 7, 3), make_mlp<double>(5, 7, 3), 11, dir / "d.safetensors");
}

TEST_CASE("buffers and int64 counters round-trip bit-exactly") {
  scratch_dir dir;
  check_bit_exact_round_trip(make_mlp_with_stats<float>(), make_mlp_with_stats<float>(), 11,
                             dir / "f.safetensors");
  check_bit_exact_round_trip(make_mlp_with_stats<double>(), make_mlp_with_stats<double>(), 11,
                             dir / "d.safetensors");
}

#ifdef OPNORM_TEST_HAVE_NETWORKS
namespace {
/// A trained-looking fmnist_cnn: train-mode passes move the BatchNorm running
/// statistics and num_batches_tracked away from their initial values.
template <class T>
void check_fmnist_cnn_round_trip(const fs::path& file) {
  auto saved = make_fmnist_cnn<T>(1);
  auto loaded = make_fmnist_cnn<T>(2);
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> pixel(0.0, 1.0);
  tensor<T> x({2, 1, 28, 28});
  for (index_t i = 0; i < x.size(); ++i) x[i] = static_cast<T>(pixel(rng));
  typename fmnist_cnn<T>::tape tape;
  for (int pass = 0; pass < 3; ++pass) saved.forward(x, tape, mode::train);
  loaded.forward(x, tape, mode::train);
  check_bit_exact_round_trip(saved, loaded, file);
  CHECK(saved.template layer<2>().num_batches_tracked() == 3);
  CHECK(loaded.template layer<2>().num_batches_tracked() == 3);

  // The names, dtypes and layouts PyTorch uses for this nn.Sequential.
  const st::contents c = st::read(file);
  CHECK(c.tensors.at("1.weight").shape == shape_t{32, 1, 3, 3});  // OIHW
  CHECK(c.tensors.at("2.running_var").shape == shape_t{32});
  CHECK(c.tensors.at("12.num_batches_tracked").type == st::dtype::I64);
  CHECK(c.tensors.at("12.num_batches_tracked").shape.empty());
  CHECK(c.tensors.at("16.weight").shape == shape_t{256, 3136});
  CHECK(c.tensors.at("18.bias").type == st::dtype_of<T>());
}
}  // namespace

TEST_CASE("fmnist_cnn checkpoints (conv, BatchNorm buffers, num_batches_tracked) round-trip bit-exactly") {
  scratch_dir dir;
  check_fmnist_cnn_round_trip<float>(dir / "f.safetensors");
  check_fmnist_cnn_round_trip<double>(dir / "d.safetensors");
}
#endif

TEST_CASE("float and double models load each other's checkpoints") {
  scratch_dir dir;
  auto d = make_mlp<double>(5, 7, 3);
  d.initialize(3);
  save_checkpoint(d, dir / "d.safetensors");
  auto f = make_mlp<float>(5, 7, 3);
  load_checkpoint(f, dir / "d.safetensors");
  auto w = d.layer<0>().weight().to_vector();
  auto wf = f.layer<0>().weight().to_vector();
  for (std::size_t i = 0; i < w.size(); ++i) CHECK(wf[i] == static_cast<float>(w[i]));

  save_checkpoint(f, dir / "f.safetensors");
  auto d2 = make_mlp<double>(5, 7, 3);
  load_checkpoint(d2, dir / "f.safetensors");
  auto wd = d2.layer<2>().weight().to_vector();
  auto wf2 = f.layer<2>().weight().to_vector();
  for (std::size_t i = 0; i < wd.size(); ++i) CHECK(wd[i] == static_cast<double>(wf2[i]));
}

TEST_CASE("a checkpoint of another architecture is refused, naming file, tensor and both shapes") {
  scratch_dir dir;
  const fs::path file = dir / "wide.safetensors";
  auto wide = make_mlp<float>(5, 8, 3);
  save_checkpoint(wide, file);
  auto model = make_mlp<float>(5, 7, 3);
  const auto before = state_bytes(model);
  CHECK_THROWS_WITH_AS(load_checkpoint(model, file),
                       contains("'" + file.string() + "' cannot be loaded into the model"), checkpoint_error);
  CHECK_THROWS_WITH_AS(load_checkpoint(model, file),
                       doctest::Contains("tensor '0.weight' has shape (8, 5) in the file, but the model expects (7, 5)"),
                       checkpoint_error);
  CHECK_THROWS_WITH_AS(load_checkpoint(model, file),
                       doctest::Contains("tensor '2.weight' has shape (3, 8) in the file, but the model expects (3, 7)"),
                       checkpoint_error);
  // 0.bias (7 vs 8) is wrong too, but 2.bias is not; the model is untouched.
  CHECK(state_bytes(model) == before);
}

TEST_CASE("missing and unexpected tensors are refused, like load_state_dict(strict=True)") {
  scratch_dir dir;
  auto without_bias = make_mlp<float>(5, 7, 3, false);
  auto with_bias = make_mlp<float>(5, 7, 3, true);
  save_checkpoint(without_bias, dir / "nobias.safetensors");
  save_checkpoint(with_bias, dir / "bias.safetensors");

  const auto before = state_bytes(with_bias);
  CHECK_THROWS_WITH_AS(load_checkpoint(with_bias, dir / "nobias.safetensors"),
                       doctest::Contains("missing tensor '0.bias' of shape (7)"), checkpoint_error);
  CHECK_THROWS_WITH_AS(load_checkpoint(with_bias, dir / "nobias.safetensors"),
                       doctest::Contains("missing tensor '2.bias' of shape (3)"), checkpoint_error);
  CHECK(state_bytes(with_bias) == before);

  CHECK_THROWS_WITH_AS(load_checkpoint(without_bias, dir / "bias.safetensors"),
                       doctest::Contains("unexpected tensor '0.bias' of shape (7)"), checkpoint_error);

  auto stats = make_mlp_with_stats<float>();
  save_checkpoint(stats, dir / "s.safetensors");
  st::contents c = st::read(dir / "s.safetensors");
  c.tensors.erase("1.num_batches_tracked");
  st::write(dir / "s.safetensors", c.tensors);
  CHECK_THROWS_WITH_AS(load_checkpoint(stats, dir / "s.safetensors"),
                       doctest::Contains("missing counter '1.num_batches_tracked'"), checkpoint_error);
}

TEST_CASE("tensors of the wrong dtype are refused") {
  scratch_dir dir;
  auto model = make_mlp_with_stats<double>();
  model.initialize(5);
  save_checkpoint(model, dir / "ok.safetensors");
  const auto before = state_bytes(model);

  st::contents c = st::read(dir / "ok.safetensors");
  c.tensors["3.weight"] = st::to_entry(tensor<std::int32_t>({3, 6}, 1));
  st::write(dir / "int_weight.safetensors", c.tensors);
  CHECK_THROWS_WITH_AS(load_checkpoint(model, dir / "int_weight.safetensors"),
                       doctest::Contains("tensor '3.weight' has dtype I32, but model tensors are read from F32 or F64"),
                       checkpoint_error);

  c = st::read(dir / "ok.safetensors");
  c.tensors["1.num_batches_tracked"] = st::scalar_entry<double>(3.0);
  st::write(dir / "float_counter.safetensors", c.tensors);
  CHECK_THROWS_WITH_AS(load_checkpoint(model, dir / "float_counter.safetensors"),
                       doctest::Contains("counter '1.num_batches_tracked' is F64 of shape ()"), checkpoint_error);

  c = st::read(dir / "ok.safetensors");
  c.tensors["1.num_batches_tracked"] = st::to_entry(tensor<std::int64_t>({1}, 3));
  st::write(dir / "vector_counter.safetensors", c.tensors);
  CHECK_THROWS_WITH_AS(load_checkpoint(model, dir / "vector_counter.safetensors"),
                       doctest::Contains("but the model expects I64 of shape ()"), checkpoint_error);
  CHECK(state_bytes(model) == before);
}

TEST_CASE("metadata and extra tensors (optimizer state) travel with a checkpoint") {
  scratch_dir dir;
  const fs::path file = dir / "resume.safetensors";
  auto model = make_mlp<double>(5, 7, 3);
  model.initialize(1);
  st::tensor_map optimizer;
  tensor<double> momentum({7, 5}, 0.0);
  for (index_t i = 0; i < momentum.size(); ++i) momentum[i] = 0.1 * static_cast<double>(i);
  optimizer["optimizer.0.weight.momentum"] = st::to_entry(momentum);
  save_checkpoint(model, file, {{"epoch", "12"}, {"optimizer", "sgd"}, {"format", "opnorm"}}, optimizer);

  CHECK(read_checkpoint_metadata(file) ==
        st::metadata_map{{"epoch", "12"}, {"optimizer", "sgd"}, {"format", "opnorm"}});

  auto resumed = make_mlp<double>(5, 7, 3);
  CHECK_THROWS_WITH_AS(load_checkpoint(resumed, file),
                       doctest::Contains("unexpected tensor 'optimizer.0.weight.momentum' of shape (7, 5)"),
                       checkpoint_error);
  st::tensor_map extra;
  const auto metadata = load_checkpoint(resumed, file, &extra);
  CHECK(metadata.at("epoch") == "12");
  CHECK(state_bytes(resumed) == state_bytes(model));
  REQUIRE(extra.size() == 1);
  CHECK(st::to_tensor<double>(extra.at("optimizer.0.weight.momentum")).to_vector() == momentum.to_vector());

  optimizer["0.weight"] = st::to_entry(momentum);
  CHECK_THROWS_WITH_AS(save_checkpoint(model, file, {}, optimizer),
                       doctest::Contains("extra tensor '0.weight' has the name of another tensor"), checkpoint_error);
  CHECK(read_checkpoint_metadata(file).at("epoch") == "12");  // the failed save changed nothing
}

TEST_CASE("save_tensors and load_tensors keep named tensors and metadata") {
  scratch_dir dir;
  const fs::path file = dir / "opt.safetensors";
  std::map<std::string, tensor<float>> state;
  state["optimizer.0.weight.momentum"] = tensor<float>::from_vector({2, 2}, {1.f, -2.f, 3.5f, 0.f});
  state["optimizer.0.bias.momentum"] = tensor<float>::from_vector({2}, {1e-30f, 7.f});
  st::save_tensors(file, state, {{"step", "100"}});

  st::metadata_map metadata;
  const auto back = st::load_tensors<float>(file, &metadata);
  CHECK(metadata.at("step") == "100");
  REQUIRE(back.size() == 2);
  for (const auto& [name, t] : state) {
    CHECK(back.at(name).shape() == t.shape());
    CHECK(back.at(name).to_vector() == t.to_vector());
  }
  const auto as_double = st::load_tensors<double>(file);
  CHECK(as_double.at("optimizer.0.bias.momentum")[0] == static_cast<double>(1e-30f));

  std::map<std::string, tensor<std::int64_t>> counts;
  counts["steps"] = tensor<std::int64_t>({1}, 4);
  st::save_tensors(dir / "counts.safetensors", counts);
  CHECK_THROWS_WITH_AS(st::load_tensors<double>(dir / "counts.safetensors"),
                       doctest::Contains("tensor 'steps' has dtype I64, which cannot be read as F64"),
                       checkpoint_error);
}

// ---------------------------------------------------------------------------
// Malformed files: each is refused with a message naming the file, and a
// model that tries to load one is left unchanged.

namespace {

void check_refused(const std::string& bytes, const std::string& expected_problem) {
  scratch_dir dir;
  const fs::path file = dir / "bad.safetensors";
  write_bytes(file, bytes);
  CAPTURE(expected_problem);
  CHECK_THROWS_WITH_AS(st::read(file), contains("'" + file.string() + "'"), checkpoint_error);
  CHECK_THROWS_WITH_AS(st::read(file), contains(expected_problem), checkpoint_error);
  CHECK_THROWS_WITH_AS(st::read_metadata(file), contains(expected_problem), checkpoint_error);
  auto model = make_mlp<float>(2, 2, 1);
  model.initialize(9);
  const auto before = state_bytes(model);
  CHECK_THROWS_AS(load_checkpoint(model, file), checkpoint_error);
  CHECK(state_bytes(model) == before);
}

const std::string four_floats = raw(std::vector<float>{1, 2, 3, 4});

std::string one_tensor(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return R"({"w":{"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":)" + offsets + "}}";
}

}  // namespace

TEST_CASE("a valid hand-written file is accepted (the baseline for the refusals below)") {
  scratch_dir dir;
  write_bytes(dir / "ok.safetensors", file_bytes(one_tensor("F32", "[2,2]", "[0,16]"), four_floats));
  CHECK(st::decode<float>(st::read(dir / "ok.safetensors").tensors.at("w"), "w") ==
        std::vector<float>{1, 2, 3, 4});
}

TEST_CASE("truncated and too-short files are refused") {
  const std::string good = file_bytes(one_tensor("F32", "[2,2]", "[0,16]"), four_floats);
  check_refused("", "too short for the 8-byte header length");
  check_refused(good.substr(0, 5), "too short for the 8-byte header length");
  check_refused(good.substr(0, 20), "exceeds the 12 bytes that follow it");
  check_refused(good.substr(0, good.size() - 3), "the tensors cover 16 bytes of data, but the file holds 13");
  check_refused(good + "x", "the tensors cover 16 bytes of data, but the file holds 17");
}

TEST_CASE("absurd header lengths are refused before anything is allocated") {
  check_refused(u64_le(std::uint64_t{1} << 62) + "{}", "exceeds the limit of 100000000 bytes");
  check_refused(u64_le(100'000'001) + "{}", "exceeds the limit of 100000000 bytes");
  check_refused(u64_le(64) + "{}", "the header length 64 exceeds the 2 bytes that follow it");
}

TEST_CASE("headers that are not a JSON object of tensor descriptions are refused") {
  check_refused(file_bytes(R"({"w":{"dtype":"F32",)", ""), "the header is not valid JSON");
  check_refused(file_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} x)", "abcd"),
                "the header is not valid JSON");
  check_refused(file_bytes("[1,2]", ""), "does not start with '{'");
  check_refused(file_bytes(std::string("{\"\xff\":1}"), ""), "the header is not valid JSON");  // not UTF-8
  // A number that overflows a double is nlohmann's out_of_range, not a parse
  // error (a fuzz_safetensors finding): still one refusal naming the file.
  check_refused(file_bytes(R"({"w":{"dtype":"F32","shape":[1e999999],"data_offsets":[0,4]}})", "abcd"),
                "the header is not valid JSON");
  check_refused(file_bytes(R"({"w":[1]})", ""), "tensor 'w' is not described by an object");
  check_refused(file_bytes(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", "abcd"), "tensor 'w' has no dtype");
  check_refused(file_bytes(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", "abcd"), "tensor 'w' has no shape");
  check_refused(file_bytes(R"({"w":{"dtype":"F32","shape":[1]}})", "abcd"), "tensor 'w' has no data_offsets");
  check_refused(file_bytes(R"({"__metadata__":{"epoch":3}})", ""), "'__metadata__' entry 'epoch' is not a string");
  check_refused(file_bytes(R"({"__metadata__":"x"})", ""), "'__metadata__' is not an object");
  check_refused(file_bytes(one_tensor("F32", "[1]", "[0,4]") + "x", "abcd"), "not valid JSON");
  const std::string twice = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                            R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  check_refused(file_bytes(twice, four_floats.substr(0, 8)), "the header names 'w' twice");
}

TEST_CASE("unknown dtypes and bad shapes are refused") {
  check_refused(file_bytes(one_tensor("F128", "[1]", "[0,16]"), four_floats),
                "tensor 'w' has unknown or unsupported dtype 'F128'");
  check_refused(file_bytes(one_tensor("f32", "[4]", "[0,16]"), four_floats), "unsupported dtype 'f32'");
  check_refused(file_bytes(one_tensor("F32", "[-4]", "[0,16]"), four_floats),
                "tensor 'w' has a shape entry that is not a non-negative integer: [-4]");
  check_refused(file_bytes(one_tensor("F32", "[2,-2]", "[0,16]"), four_floats), "not a non-negative integer");
  check_refused(file_bytes(one_tensor("F32", "[4.0]", "[0,16]"), four_floats), "not a non-negative integer");
  check_refused(file_bytes(one_tensor("F32", "[4294967296,4294967296,16]", "[0,16]"), four_floats),
                "has a shape whose size overflows");
}

TEST_CASE("offsets out of range, overlapping, leaving gaps or not matching the shape are refused") {
  check_refused(file_bytes(one_tensor("F32", "[2,2]", "[0,32]"), four_floats),
                "spanning 32 bytes, but shape (2, 2) of F32 needs 16");
  check_refused(file_bytes(one_tensor("F32", "[2,2]", "[16,0]"), four_floats), "end before they begin");
  check_refused(file_bytes(one_tensor("F32", "[2,2]", "[4,20]"), four_floats),
                "tensor 'w' begins at data offset 4, but nothing covers the bytes from 0");
  check_refused(file_bytes(one_tensor("F32", "[2,2]", "[0,16,32]"), four_floats), "not two non-negative integers");
  check_refused(file_bytes(one_tensor("F32", "[2,2]", "[-1,15]"), four_floats), "not two non-negative integers");
  check_refused(file_bytes(one_tensor("F32", "[4,4]", "[0,64]"), four_floats),
                "the tensors cover 64 bytes of data, but the file holds 16");
  const std::string overlapping = R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
  check_refused(file_bytes(overlapping, four_floats),
                "tensor 'b' begins at data offset 8, but the previous tensor ends at 12");
  const std::string gap = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
  check_refused(file_bytes(gap, four_floats), "tensor 'b' begins at data offset 8, but nothing covers the bytes from 4");
}

TEST_CASE("a directory or a missing file is refused by the reader") {
  scratch_dir dir;
  CHECK_THROWS_WITH_AS(st::read(dir.path), doctest::Contains("is a directory"), checkpoint_error);
  CHECK_THROWS_WITH_AS(st::read(dir / "absent.safetensors"), doctest::Contains("cannot open"), checkpoint_error);
}

// ---------------------------------------------------------------------------
// Atomic writes.

TEST_CASE("a successful save replaces the old file and leaves no temporary file") {
  scratch_dir dir;
  const fs::path file = dir / "ckpt.safetensors";
  auto model = make_mlp<float>(5, 7, 3);
  model.initialize(1);
  save_checkpoint(model, file, {{"epoch", "1"}});
  model.initialize(2);
  save_checkpoint(model, file, {{"epoch", "2"}});
  CHECK(read_checkpoint_metadata(file).at("epoch") == "2");
  CHECK(listing(dir.path) == std::vector<std::string>{"ckpt.safetensors"});
}

TEST_CASE("a save that cannot complete leaves the destination untouched and no temporary file") {
  scratch_dir dir;
  auto model = make_mlp<float>(5, 7, 3);

  SUBCASE("the destination is a directory") {
    const fs::path target = dir / "ckpt.safetensors";
    fs::create_directory(target);
    write_bytes(target / "inside", "keep");
    CHECK_THROWS_WITH_AS(save_checkpoint(model, target), contains("'" + target.string() + "'"),
                         checkpoint_error);
    CHECK(fs::is_directory(target));
    CHECK(read_bytes(target / "inside") == "keep");
    CHECK_FALSE(any_temporary(dir.path));
  }

  SUBCASE("the destination directory does not exist") {
    const fs::path target = dir / "no" / "such" / "dir" / "ckpt.safetensors";
    CHECK_THROWS_WITH_AS(save_checkpoint(model, target), doctest::Contains("cannot create the temporary file"),
                         checkpoint_error);
    CHECK_FALSE(fs::exists(dir / "no"));
  }

#if defined(__unix__)
  SUBCASE("the destination directory is not writable") {
    const fs::path sub = dir / "readonly";
    fs::create_directory(sub);
    const fs::path target = sub / "ckpt.safetensors";
    save_checkpoint(model, target, {{"epoch", "old"}});
    const std::string old_bytes = read_bytes(target);
    fs::permissions(sub, fs::perms::owner_read | fs::perms::owner_exec);
    if (::access(sub.c_str(), W_OK) == 0) {
      // Permission bits do not bind a privileged user; the write-failure
      // subcase below covers the same path for everyone.
      MESSAGE("running with privileges that ignore directory permissions; not-writable directory not tested");
    } else {
      model.initialize(4);
      CHECK_THROWS_WITH_AS(save_checkpoint(model, target), doctest::Contains("cannot create the temporary file"),
                           checkpoint_error);
      CHECK(read_bytes(target) == old_bytes);
    }
    fs::permissions(sub, fs::perms::owner_all);
    CHECK(listing(sub) == std::vector<std::string>{"ckpt.safetensors"});
  }

  SUBCASE("writing the data fails midway (file size limit)") {
    // RLIMIT_FSIZE makes write(2) fail with EFBIG once the temporary file
    // reaches 64 bytes (with SIGXFSZ ignored), which exercises the checks
    // after writing, flushing and closing. The old checkpoint must survive.
    const fs::path target = dir / "ckpt.safetensors";
    save_checkpoint(model, target, {{"epoch", "old"}});
    const std::string old_bytes = read_bytes(target);
    model.initialize(5);

    rlimit saved_limit{};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved_limit) == 0);
    const auto saved_handler = std::signal(SIGXFSZ, SIG_IGN);
    rlimit small = saved_limit;
    small.rlim_cur = 64;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
    std::string message;
    try {
      save_checkpoint(model, target);
    } catch (const checkpoint_error& e) {
      message = e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &saved_limit);
    std::signal(SIGXFSZ, saved_handler);

    CHECK(message.find("'" + target.string() + "'") != std::string::npos);
    CHECK(message.find("the destination was not changed") != std::string::npos);
    CHECK(read_bytes(target) == old_bytes);
    CHECK(listing(dir.path) == std::vector<std::string>{"ckpt.safetensors"});
  }
#endif
}

// ---------------------------------------------------------------------------
// Checksums, non-finite values and what a crash leaves behind.

namespace {

/// The length of a file's JSON header, from its first 8 bytes.
std::size_t header_length(const std::string& bytes) {
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  return static_cast<std::size_t>(n);
}

nlohmann::json header_json(const std::string& bytes) { return nlohmann::json::parse(bytes.substr(8, header_length(bytes))); }

/// The [begin, end) of one tensor's bytes in a file, read from its header.
std::pair<std::size_t, std::size_t> tensor_bytes_in_file(const std::string& bytes, const std::string& name) {
  const std::size_t data = 8 + header_length(bytes);
  const auto offsets = header_json(bytes).at(name).at("data_offsets");
  return {data + offsets[0].get<std::size_t>(), data + offsets[1].get<std::size_t>()};
}

}  // namespace

TEST_CASE("a flipped data byte in a checkpoint is refused by its CRC-32, naming the file and the tensor") {
  scratch_dir dir;
  const fs::path file = dir / "ckpt.safetensors";
  auto model = make_mlp<float>(5, 7, 3);
  model.initialize(3);
  save_checkpoint(model, file, {{"epoch", "1"}});
  const std::string good = read_bytes(file);
  // The checksums travel as metadata strings, 8 hex digits per tensor.
  {
    const auto metadata = header_json(good).at("__metadata__");
    REQUIRE(metadata.contains("opnorm.crc32.2.weight"));
    CHECK(metadata.at("opnorm.crc32.2.weight").get<std::string>().size() == 8);
    // ... but they are not part of what the caller reads back.
    CHECK(read_checkpoint_metadata(file) == st::metadata_map{{"epoch", "1"}, {"format", "pt"}});
  }
  for (const std::string name : {"0.weight", "0.bias", "2.weight"}) {
    const auto [begin, end] = tensor_bytes_in_file(good, name);
    for (std::size_t at : {begin, (begin + end) / 2, end - 1}) {
      std::string bad = good;
      bad[at] = static_cast<char>(bad[at] ^ 0x10);  // one bit of one byte
      write_bytes(file, bad);
      auto target = make_mlp<float>(5, 7, 3);
      const auto before = state_bytes(target);
      CAPTURE(name);
      CAPTURE(at);
      CHECK_THROWS_WITH_AS(load_checkpoint(target, file),
                           contains("'" + file.string() + "': tensor '" + name + "' fails its CRC-32 check"),
                           checkpoint_error);
      CHECK(state_bytes(target) == before);
      CHECK_THROWS_WITH_AS(st::read(file), doctest::Contains("fails its CRC-32 check"), checkpoint_error);
    }
  }
  // The intact file loads and round-trips.
  write_bytes(file, good);
  auto loaded = make_mlp<float>(5, 7, 3);
  load_checkpoint(loaded, file);
  CHECK(state_bytes(loaded) == state_bytes(model));
}

TEST_CASE("files without checksums (as PyTorch writes them) load; a file with only some is refused") {
  scratch_dir dir;
  const fs::path file = dir / "plain.safetensors";
  auto model = make_mlp<float>(5, 7, 3);
  model.initialize(4);
  st::tensor_map entries;
  for (const auto& p : model.state().parameters) entries.emplace(p.name, st::to_entry(*p.value));
  st::write(file, entries, {{"format", "pt"}});  // checksums::none: the reference writer's bytes
  auto loaded = make_mlp<float>(5, 7, 3);
  load_checkpoint(loaded, file);
  CHECK(state_bytes(loaded) == state_bytes(model));

  // A checksum for one tensor only: the header was edited or damaged.
  st::metadata_map partial{{"format", "pt"}};
  st::write(file, entries, partial, st::checksums::crc32);
  auto with_all = st::read(file);  // valid: every tensor has one
  CHECK(with_all.metadata == partial);
  const std::string bytes = read_bytes(file);
  auto header = header_json(bytes);
  header["__metadata__"].erase("opnorm.crc32.0.bias");
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  write_bytes(file, u64_le(text.size()) + text + bytes.substr(8 + header_length(bytes)));
  CHECK_THROWS_WITH_AS(st::read(file),
                       doctest::Contains("tensor '0.bias' has no CRC-32 while the file's other tensors have one"),
                       checkpoint_error);

  // Callers cannot forge the reserved keys.
  CHECK_THROWS_WITH_AS(st::write(file, entries, {{"opnorm.crc32.0.bias", "00000000"}}),
                       doctest::Contains("metadata key 'opnorm.crc32.0.bias' is reserved for checksums"),
                       checkpoint_error);
}

TEST_CASE("a checkpoint holding NaN or infinity is refused naming the tensor and the first bad index") {
  scratch_dir dir;
  const fs::path file = dir / "nan.safetensors";
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    auto model = make_mlp<float>(5, 7, 3);
    model.initialize(6);
    // Index 9 of 2.weight (shape (3, 7)), and a later one that must not be
    // the one reported.
    model.layer<2>().weight()[9] = bad;
    model.layer<2>().weight()[15] = bad;
    save_checkpoint(model, file);  // writing is allowed: the checksum then matches the data
    auto target = make_mlp<float>(5, 7, 3);
    const auto before = state_bytes(target);
    const std::string what = std::isnan(bad) ? "nan" : bad > 0 ? "inf" : "-inf";
    CHECK_THROWS_WITH_AS(load_checkpoint(target, file),
                         contains("tensor '2.weight' holds " + what + " at index 9 of shape (3, 7)"),
                         checkpoint_error);
    CHECK(state_bytes(target) == before);
  }
  // A buffer too (BatchNorm's running variance in fmnist_cnn is one).
  auto stats = make_mlp_with_stats<float>();
  auto state = stats.state();
  REQUIRE(!state.buffers.empty());
  (*state.buffers.front().value)[0] = std::numeric_limits<float>::quiet_NaN();
  save_checkpoint(stats, file);
  auto fresh = make_mlp_with_stats<float>();
  CHECK_THROWS_WITH_AS(load_checkpoint(fresh, file),
                       contains("tensor '" + state.buffers.front().name + "' holds nan at index 0"),
                       checkpoint_error);
}

TEST_CASE("a temporary file left by a crash is reused and removed by the next save of the same file") {
  scratch_dir dir;
  const fs::path file = dir / "last.safetensors";
  auto model = make_mlp<float>(5, 7, 3);
  model.initialize(7);
  save_checkpoint(model, file, {{"epoch", "1"}});
  // What a process killed in the middle of write_file_atomically leaves:
  // the fixed temporary name, half written.
  CHECK(temporary_file_for(file) == dir / "last.safetensors.tmp");
  write_bytes(temporary_file_for(file), std::string(1000, 'x'));
  CHECK(listing(dir.path) == std::vector<std::string>{"last.safetensors", "last.safetensors.tmp"});
  // The old checkpoint is intact, and the next save takes the leftover over.
  CHECK(read_checkpoint_metadata(file).at("epoch") == "1");
  save_checkpoint(model, file, {{"epoch", "2"}});
  CHECK(listing(dir.path) == std::vector<std::string>{"last.safetensors"});
  CHECK(read_checkpoint_metadata(file).at("epoch") == "2");
}
