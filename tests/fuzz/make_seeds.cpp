// Writes the seed corpora of the fuzz targets: small valid files of every
// format, written by the library's own writers where it has one, and a few
// damaged variants. scripts/fuzz.sh compiles and runs it, so no binary file
// is committed:
//   make_seeds <folder>   ->  <folder>/{idx,cifar10,safetensors,checkpoint,training_checkpoint}/
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <opnorm/io/checkpoint.hpp>
#include <opnorm/methods/standard.hpp>
#include <opnorm/nn/networks.hpp>
#include <opnorm/train/optimizers.hpp>
#include <opnorm/train/training_checkpoint.hpp>

namespace {

namespace fs = std::filesystem;
namespace st = opnorm::safetensors;
using bytes = std::vector<unsigned char>;

void put(const fs::path& path, const bytes& b) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

bytes get(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  return bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

bytes prefix(unsigned char first, const bytes& b) {
  bytes out{first};
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

bytes head(const bytes& b, std::size_t n) { return bytes(b.begin(), b.begin() + static_cast<long>(std::min(n, b.size()))); }

bytes gzip(const bytes& b) {
  z_stream z{};
  if (deflateInit2(&z, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw std::runtime_error("deflateInit2 failed");
  bytes out(deflateBound(&z, static_cast<uLong>(b.size())) + 32);
  z.next_in = const_cast<Bytef*>(b.data());
  z.avail_in = static_cast<uInt>(b.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) throw std::runtime_error("deflate failed");
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

void put_u32_be(bytes& b, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) b.push_back(static_cast<unsigned char>(v >> shift));
}

bytes idx_images(std::uint32_t n, std::uint32_t rows, std::uint32_t cols) {
  bytes b{0, 0, 0x08, 3};
  put_u32_be(b, n);
  put_u32_be(b, rows);
  put_u32_be(b, cols);
  for (std::uint32_t i = 0; i < n * rows * cols; ++i) b.push_back(static_cast<unsigned char>(i * 37 + 11));
  return b;
}

bytes idx_labels(std::uint32_t n) {
  bytes b{0, 0, 0x08, 1};
  put_u32_be(b, n);
  for (std::uint32_t i = 0; i < n; ++i) b.push_back(static_cast<unsigned char>(i % 10));
  return b;
}

// fuzz_idx's first byte: 0 plain, 1 gzip bytes as given, 2 compressed by the target.
void idx_seeds(const fs::path& dir) {
  const std::vector<std::pair<std::string, bytes>> files = {
      {"images", idx_images(3, 4, 5)}, {"images28", idx_images(2, 28, 28)}, {"labels", idx_labels(7)}};
  for (const auto& [name, b] : files) {
    put(dir / (name + "-plain"), prefix(0, b));
    put(dir / (name + "-gz"), prefix(1, gzip(b)));
    put(dir / (name + "-compressed-by-target"), prefix(2, b));
  }
  const bytes images = idx_images(3, 4, 5);
  const bytes gz = gzip(images);
  put(dir / "images-plain-truncated", prefix(0, head(images, images.size() - 7)));
  put(dir / "images-plain-trailing", prefix(0, [&] { bytes b = images; b.push_back(0); return b; }()));
  put(dir / "images-gz-truncated", prefix(1, head(gz, gz.size() - 5)));
  put(dir / "images-header-only", prefix(0, head(images, 16)));
  // Two gzip members in one file, which zlib reads as one stream.
  bytes two = gzip(head(images, 20));
  const bytes rest = gzip(bytes(images.begin() + 20, images.end()));
  two.insert(two.end(), rest.begin(), rest.end());
  put(dir / "images-gz-two-members", prefix(1, two));
  bytes bad_label = idx_labels(3);
  bad_label.back() = 10;
  put(dir / "labels-out-of-range", prefix(0, bad_label));
}

void cifar10_seeds(const fs::path& dir) {
  bytes batch;
  for (int r = 0; r < 3; ++r) {
    batch.push_back(static_cast<unsigned char>(r * 4));  // labels 0, 4, 8
    for (int i = 0; i < 3072; ++i) batch.push_back(static_cast<unsigned char>(i * 7 + r));
  }
  put(dir / "three-records", batch);
  put(dir / "one-record", head(batch, 3073));
  put(dir / "truncated", head(batch, batch.size() - 1));
  bytes bad = batch;
  bad[3073] = 10;
  put(dir / "label-out-of-range", bad);
}

template <class T>
st::entry entry_of(opnorm::shape_t shape, std::size_t count, T first) {
  st::entry e;
  e.type = st::dtype_of<T>();
  e.shape = std::move(shape);
  for (std::size_t i = 0; i < count; ++i) {
    const T v = static_cast<T>(first + static_cast<T>(i));
    const auto* p = reinterpret_cast<const unsigned char*>(&v);
    e.bytes.insert(e.bytes.end(), p, p + sizeof(T));
  }
  return e;
}

st::entry raw_entry(st::dtype type, opnorm::shape_t shape, std::size_t n_bytes) {
  st::entry e;
  e.type = type;
  e.shape = std::move(shape);
  for (std::size_t i = 0; i < n_bytes; ++i) e.bytes.push_back(static_cast<unsigned char>(i * 29 + 3));
  return e;
}

// fuzz_safetensors's two forms of a file: 0 and the file, or 1, the
// header, a NUL byte and the data.
void put_safetensors_forms(const fs::path& dir, const std::string& name, const bytes& file) {
  put(dir / (name + "-file"), prefix(0, file));
  if (file.size() < 8) return;
  const std::uint64_t n = std::min<std::uint64_t>(st::detail::get_u64_le(file.data()), file.size() - 8);
  bytes split{1};
  split.insert(split.end(), file.begin() + 8, file.begin() + 8 + static_cast<long>(n));
  split.push_back(0);
  split.insert(split.end(), file.begin() + 8 + static_cast<long>(n), file.end());
  put(dir / (name + "-split"), split);
}

void safetensors_files(const fs::path& dir) {
  st::tensor_map many;
  many["weight"] = entry_of<float>({2, 3}, 6, 0.5f);
  many["bias"] = entry_of<double>({2}, 2, -1.0);
  many["num_batches_tracked"] = st::scalar_entry<std::int64_t>(7);  // 0-d
  many["empty"] = entry_of<std::int32_t>({0}, 0, 0);
  many["empty2d"] = raw_entry(st::dtype::F16, {1, 0, 2}, 0);
  many["mask"] = raw_entry(st::dtype::BOOL, {3}, 3);
  many["u8"] = entry_of<std::uint8_t>({4}, 4, 250);
  many["bf16"] = raw_entry(st::dtype::BF16, {2, 2}, 8);
  many["u64"] = entry_of<std::uint64_t>({1}, 1, 1);
  many["f8"] = raw_entry(st::dtype::F8_E4M3, {2}, 2);
  st::write(dir / "many-dtypes", many, {{"format", "pt"}, {"epoch", "3"}, {"note", "caf\xc3\xa9 \xe2\x9c\x93"}});
  st::write(dir / "one-tensor", {{"x", entry_of<float>({1}, 1, 2.0f)}});
  st::write(dir / "no-tensors", {}, {{"only", "metadata"}});
  st::write(dir / "nothing", {});
  st::write(dir / "unicode-name", {{"\xce\xb8.weight", entry_of<double>({1, 1}, 1, 3.0)}});
  const bytes b = get(dir / "many-dtypes");
  put(dir / "many-dtypes-truncated-data", head(b, b.size() - 3));
  put(dir / "many-dtypes-truncated-header", head(b, 40));
  // The same file with its header written by hand: other key order, spaces,
  // escapes; still valid.
  std::string json =
      "{ \"b\" : {\"data_offsets\":[4,8],\"shape\":[1],\"dtype\":\"I32\"},"
      " \"a\": {\"dtype\": \"U8\", \"shape\": [2, 2], \"data_offsets\": [0, 4], \"extra\": null},"
      " \"__metadata__\": {\"k\\u00e9y\": \"v\\n\"}}";
  bytes hand(8);
  st::detail::put_u64_le(json.size(), hand.data());
  hand.insert(hand.end(), json.begin(), json.end());
  for (int i = 0; i < 8; ++i) hand.push_back(static_cast<unsigned char>(i));
  put(dir / "hand-written-header", hand);
}

void safetensors_seeds(const fs::path& dir) {
  const fs::path files = dir / "files";
  fs::create_directories(files);
  safetensors_files(files);
  for (const auto& f : fs::directory_iterator(files)) put_safetensors_forms(dir, f.path().filename().string(), get(f.path()));
  fs::remove_all(files);
}

// The names of a state with every shape made empty: a small file that gets
// past the safetensors checks and fails only in the name/shape matching, so
// the fuzzer can mutate a header without dragging megabytes of data along.
st::tensor_map names_only(const st::tensor_map& full) {
  st::tensor_map out;
  for (const auto& [name, e] : full) {
    st::entry empty;
    empty.type = e.type;
    empty.shape = e.shape.empty() ? opnorm::shape_t{} : opnorm::shape_t{0};
    empty.bytes.resize(e.shape.empty() ? e.bytes.size() : 0);
    out.emplace(name, empty);
  }
  return out;
}

void checkpoint_seeds(const fs::path& dir) {
  auto model = opnorm::make_fmnist_cnn<float, opnorm::backend::cpu>(2);
  const fs::path full = dir / "fmnist-cnn";
  opnorm::save_checkpoint(model, full, {{"epoch", "1"}});
  const bytes b = get(full);
  put(dir / "fmnist-cnn-truncated", head(b, b.size() / 2));
  const st::contents c = st::read(full);
  st::write(dir / "fmnist-cnn-names-only", names_only(c.tensors), c.metadata);
  st::tensor_map with_extra = c.tensors;
  with_extra["optimizer.step"] = st::scalar_entry<std::int64_t>(3);
  st::write(dir / "fmnist-cnn-with-extra", with_extra, c.metadata);
}

void training_checkpoint_seeds(const fs::path& dir) {
  auto model = opnorm::make_fmnist_cnn<float, opnorm::backend::cpu>(3);
  opnorm::standard method;
  opnorm::sgd<float, opnorm::backend::cpu> optimizer(model, opnorm::sgd_options{0.01, 0.9, 5e-4, false});
  const fs::path full = dir / "fmnist-cnn-standard-sgd";
  opnorm::save_training_checkpoint(full, model, method, optimizer, 3, 42, {{"lr", "0.01"}});
  const bytes b = get(full);
  put(dir / "fmnist-cnn-standard-sgd-truncated", head(b, b.size() / 2));
  const st::contents c = st::read(full);
  st::write(dir / "fmnist-cnn-standard-sgd-names-only", names_only(c.tensors), c.metadata);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_seeds <folder>\n";
    return 2;
  }
  const fs::path root = argv[1];
  try {
    for (const char* sub : {"idx", "cifar10", "safetensors", "checkpoint", "training_checkpoint"})
      fs::create_directories(root / sub);
    idx_seeds(root / "idx");
    cifar10_seeds(root / "cifar10");
    safetensors_seeds(root / "safetensors");
    checkpoint_seeds(root / "checkpoint");
    training_checkpoint_seeds(root / "training_checkpoint");
  } catch (const std::exception& e) {
    std::cerr << "make_seeds: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
