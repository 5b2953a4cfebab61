#pragma once
// IDX files (the format of MNIST and Fashion-MNIST), plain or gzip-compressed.
//
// An IDX file is a 4-byte magic number {0, 0, type, rank}, then `rank`
// big-endian uint32 dimensions, then the values in row-major order. MNIST
// uses type 0x08 (unsigned byte): images have rank 3 (count, rows, cols),
// labels rank 1 (count). The readers check every field before trusting it
// and never allocate more than the file actually holds.
#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "dataset.hpp"
#include "input_file.hpp"

namespace opnorm {

/// Bounds on what an IDX header may claim. They are far beyond any real
/// data set and keep every size product inside 64 bits (even in bytes of
/// double), which the static_assert below proves.
struct idx_limits {
  static constexpr std::uint64_t max_items = 100'000'000;
  static constexpr std::uint64_t max_side = 4096;
};
static_assert(idx_limits::max_items * idx_limits::max_side * idx_limits::max_side * sizeof(double) <
                  (std::uint64_t{1} << 62),
              "idx_limits must keep every size product inside index_t");

namespace detail {

inline constexpr std::uint8_t idx_unsigned_byte = 0x08;

inline const char* idx_type_name(std::uint8_t type) {
  switch (type) {
    case 0x08: return "unsigned byte";
    case 0x09: return "signed byte";
    case 0x0B: return "int16";
    case 0x0C: return "int32";
    case 0x0D: return "float32";
    case 0x0E: return "float64";
    default: return "not an IDX type";
  }
}

inline std::string idx_hex(std::uint32_t value, int digits) {
  static const char* const symbols = "0123456789abcdef";
  std::string s = "0x";
  for (int d = digits - 1; d >= 0; --d) s += symbols[(value >> (4 * d)) & 0xF];
  return s;
}

/// Reads and checks the magic number and dimensions of an IDX file of
/// unsigned bytes with the given rank; `kind` ("images" or "labels") names
/// what the caller expects, for the messages.
inline std::vector<std::uint64_t> read_idx_header(input_file& file, std::uint8_t rank, const char* kind) {
  unsigned char magic[4];
  file.read_exact(magic, 4, "IDX magic number");
  const std::uint32_t found = (std::uint32_t{magic[0]} << 24) | (std::uint32_t{magic[1]} << 16) |
                              (std::uint32_t{magic[2]} << 8) | std::uint32_t{magic[3]};
  const std::uint32_t expected = (std::uint32_t{idx_unsigned_byte} << 8) | rank;
  const std::string expectation = "expected " + idx_hex(expected, 8) + ", an IDX " + kind + " file";
  if (magic[0] != 0 || magic[1] != 0)
    file.fail("wrong magic number " + idx_hex(found, 8) + " (" + expectation + "; an IDX file starts with two zero bytes)");
  if (magic[2] != idx_unsigned_byte)
    file.fail("wrong data type byte " + idx_hex(magic[2], 2) + " (" + idx_type_name(magic[2]) + "); " + kind +
              " must be 0x08 (unsigned byte)");
  if (magic[3] != rank) {
    const char* guess = magic[3] == 1 ? "; this looks like a labels file" : magic[3] == 3 ? "; this looks like an images file" : "";
    file.fail("wrong magic number " + idx_hex(found, 8) + " (" + expectation + " with " + std::to_string(rank) +
              " dimension" + (rank == 1 ? "" : "s") + guess + ")");
  }
  std::vector<std::uint64_t> dims(rank);
  for (auto& d : dims) {
    unsigned char b[4];
    file.read_exact(b, 4, "IDX header dimensions");
    d = (std::uint64_t{b[0]} << 24) | (std::uint64_t{b[1]} << 16) | (std::uint64_t{b[2]} << 8) | b[3];
  }
  if (dims[0] == 0 || dims[0] > idx_limits::max_items)
    file.fail("implausible dimensions in header: " + std::to_string(dims[0]) + " " + kind + " (allowed 1 to " +
              std::to_string(idx_limits::max_items) + ")");
  if (rank == 3 && (dims[1] == 0 || dims[1] > idx_limits::max_side || dims[2] == 0 || dims[2] > idx_limits::max_side))
    file.fail(std::string("implausible dimensions in header: ") + kind + " of " + std::to_string(dims[1]) + "x" +
              std::to_string(dims[2]) + " pixels (allowed 1 to " + std::to_string(idx_limits::max_side) +
              " per side)");
  return dims;
}

}  // namespace detail

/// Reads an IDX images file (rank 3, unsigned bytes) into an (N, 1, rows,
/// cols) tensor with pixels scaled to [0, 1]. A name ending in .gz is read as
/// gzip. Throws data_error naming the file for anything malformed.
template <class T = float>
tensor<T, backend::cpu> load_idx_images(const std::filesystem::path& path) {
  static_assert(std::is_floating_point<T>::value, "pixels are loaded as floating-point values in [0, 1]");
  detail::input_file file(path, detail::compression_of(path));
  const auto dims = detail::read_idx_header(file, 3, "images");
  const std::uint64_t count = dims[0], rows = dims[1], cols = dims[2];
  const std::string promise = std::to_string(count) + " images of " + std::to_string(rows) + "x" +
                              std::to_string(cols) + " pixels";
  const std::vector<unsigned char> bytes = file.read_promised(count * rows * cols, "the header promises " + promise);
  file.expect_end("the header and its " + promise);

  tensor<T, backend::cpu> images({static_cast<index_t>(count), 1, static_cast<index_t>(rows), static_cast<index_t>(cols)});
  const auto table = detail::byte_to_unit_table<T>();
  T* x = images.data();
  for (std::size_t i = 0; i < bytes.size(); ++i) x[i] = table[bytes[i]];
  return images;
}

/// Reads an IDX labels file (rank 1, unsigned bytes). Every label must be
/// below `classes` (256 accepts any byte). A name ending in .gz is read as
/// gzip. Throws data_error naming the file for anything malformed.
inline label_tensor<backend::cpu> load_idx_labels(const std::filesystem::path& path, index_t classes = 256) {
  detail::input_file file(path, detail::compression_of(path));
  const auto dims = detail::read_idx_header(file, 1, "labels");
  const std::string promise = std::to_string(dims[0]) + " labels";
  const std::vector<unsigned char> bytes = file.read_promised(dims[0], "the header promises " + promise);
  file.expect_end("the header and its " + promise);

  label_tensor<backend::cpu> labels({static_cast<index_t>(dims[0])});
  std::int32_t* y = labels.data();
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] >= classes)
      file.fail("label " + std::to_string(bytes[i]) + " at index " + std::to_string(i) + " is out of range for " +
                std::to_string(classes) + " classes");
    y[i] = bytes[i];
  }
  return labels;
}

namespace detail {

/// The standard file of an IDX data set: `<stem>.gz` if present, else the
/// uncompressed `<stem>`.
inline std::filesystem::path find_idx_file(const std::filesystem::path& dir, const std::string& stem) {
  const auto gz = dir / (stem + ".gz");
  const auto plain = dir / stem;
  std::error_code ec;
  if (std::filesystem::exists(gz, ec)) return gz;
  if (std::filesystem::exists(plain, ec)) return plain;
  throw data_error(gz, "file not found (nor its uncompressed form " + plain.filename().string() + ")");
}

/// The four-file layout shared by MNIST and Fashion-MNIST.
template <class T>
dataset<T> load_idx_dataset(const std::filesystem::path& dir, split s, const std::string& name,
                            std::vector<std::string> class_names) {
  const std::string prefix = s == split::train ? "train" : "t10k";
  const auto images_path = find_idx_file(dir, prefix + "-images-idx3-ubyte");
  const auto labels_path = find_idx_file(dir, prefix + "-labels-idx1-ubyte");
  dataset<T> data;
  data.classes = static_cast<index_t>(class_names.size());
  // Labels first: the small file fails fast when the folder is wrong.
  data.labels = load_idx_labels(labels_path, data.classes);
  data.images = load_idx_images<T>(images_path);
  if (data.images.dim(0) != data.labels.dim(0))
    throw data_error(labels_path, "image/label count mismatch: " + std::to_string(data.labels.dim(0)) +
                                      " labels, but " + images_path.string() + " holds " +
                                      std::to_string(data.images.dim(0)) + " images");
  data.class_names = std::move(class_names);
  data.name = name + "/" + split_name(s);
  return data;
}

}  // namespace detail

/// MNIST handwritten digits from `dir`, which holds the standard files
/// `{train,t10k}-{images-idx3,labels-idx1}-ubyte`, each optionally `.gz`
/// (preferred when both exist). Images (N, 1, 28, 28) in [0, 1], 10 classes.
template <class T = float>
dataset<T> load_mnist(const std::filesystem::path& dir, split s) {
  return detail::load_idx_dataset<T>(dir, s, "mnist", {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"});
}

/// Fashion-MNIST: the same file layout as load_mnist, ten clothing classes.
template <class T = float>
dataset<T> load_fashion_mnist(const std::filesystem::path& dir, split s) {
  return detail::load_idx_dataset<T>(dir, s, "fashion-mnist",
                                     {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                      "Sneaker", "Bag", "Ankle boot"});
}

}  // namespace opnorm
