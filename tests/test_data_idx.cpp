#include <doctest/doctest.h>

#include <array>
#include <filesystem>

#include <opnorm/data/idx.hpp>

#include "data_test_files.hpp"

using namespace opnorm;
using namespace opnorm::testing;

namespace {

// A small split: 5 images of 3x4 pixels whose bytes include 0 and 255.
constexpr std::uint32_t count = 5, rows = 3, cols = 4;
const bytes pixels = [] {
  bytes p = pattern(count * rows * cols);
  p[0] = 0;
  p[1] = 255;
  return p;
}();
const bytes label_bytes{3, 0, 9, 1, 3};

template <class T>
void check_images(const tensor<T>& images, const bytes& expected) {
  REQUIRE(images.shape() == shape_t{count, 1, rows, cols});
  for (std::size_t i = 0; i < expected.size(); ++i)
    REQUIRE(images[static_cast<index_t>(i)] == static_cast<T>(expected[i]) / static_cast<T>(255));
}

void check_labels(const label_tensor<>& labels) {
  REQUIRE(labels.shape() == shape_t{count});
  for (std::size_t i = 0; i < label_bytes.size(); ++i) CHECK(labels[static_cast<index_t>(i)] == label_bytes[i]);
}

}  // namespace

TEST_CASE("idx: plain and gzip files round-trip pixels, labels and shape") {
  scratch_folder dir;
  for (const std::string suffix : {"", ".gz"}) {
    CAPTURE(suffix);
    const auto images_path = dir / ("images-idx3-ubyte" + suffix);
    const auto labels_path = dir / ("labels-idx1-ubyte" + suffix);
    write_data_file(images_path, idx_file({count, rows, cols}, pixels));
    write_data_file(labels_path, idx_file({count}, label_bytes));

    const tensor<float> images = load_idx_images(images_path);
    check_images(images, pixels);
    CHECK(images[0] == 0.0f);
    CHECK(images[1] == 1.0f);
    check_images(load_idx_images<double>(images_path), pixels);
    check_labels(load_idx_labels(labels_path));
  }
}

TEST_CASE("idx: load_mnist and load_fashion_mnist read the standard file names") {
  scratch_folder dir;
  // train as .gz, test uncompressed: both forms are found.
  write_data_file(dir / "train-images-idx3-ubyte.gz", idx_file({count, rows, cols}, pixels));
  write_data_file(dir / "train-labels-idx1-ubyte.gz", idx_file({count}, label_bytes));
  write_data_file(dir / "t10k-images-idx3-ubyte", idx_file({2, rows, cols}, pattern(2 * rows * cols, 7)));
  write_data_file(dir / "t10k-labels-idx1-ubyte", idx_file({2}, {8, 2}));

  const dataset<float> train = load_fashion_mnist(dir.path(), split::train);
  CHECK(train.name == "fashion-mnist/train");
  CHECK(train.classes == 10);
  REQUIRE(train.class_names.size() == 10);
  CHECK(train.class_names[9] == "Ankle boot");
  CHECK(train.size() == count);
  CHECK(train.example_shape() == shape_t{1, rows, cols});
  check_images(train.images, pixels);
  check_labels(train.labels);
  check_dataset(train);

  const dataset<double> test = load_mnist<double>(dir.path(), split::test);
  CHECK(test.name == "mnist/test");
  CHECK(test.images.shape() == shape_t{2, 1, rows, cols});
  CHECK(test.labels.to_vector() == std::vector<std::int32_t>{8, 2});
  CHECK(test.images[5] == static_cast<double>(pattern(2 * rows * cols, 7)[5]) / 255.0);
}

TEST_CASE("idx: the .gz file is preferred when both forms exist") {
  scratch_folder dir;
  const bytes other = pattern(count * rows * cols, 3);
  write_data_file(dir / "t10k-images-idx3-ubyte.gz", idx_file({count, rows, cols}, pixels));
  write_data_file(dir / "t10k-images-idx3-ubyte", idx_file({count, rows, cols}, other));
  write_data_file(dir / "t10k-labels-idx1-ubyte.gz", idx_file({count}, label_bytes));
  write_data_file(dir / "t10k-labels-idx1-ubyte", idx_file({count}, {0, 0, 0, 0, 0}));
  const dataset<float> test = load_mnist(dir.path(), split::test);
  check_images(test.images, pixels);
  check_labels(test.labels);
}

TEST_CASE("idx: missing and unreadable files are reported with their path") {
  scratch_folder dir;
  CHECK_DATA_ERROR(load_idx_images(dir / "nothing-here"), "nothing-here", "file not found");
  CHECK_DATA_ERROR(load_idx_labels(dir.path()), dir.path().string(), "is a directory");
  write_file(dir / "empty", {});
  CHECK_DATA_ERROR(load_idx_images(dir / "empty"), "empty", "empty file");
  // A whole split: the message names the preferred file and its fallback.
  CHECK_DATA_ERROR(load_fashion_mnist(dir.path(), split::train), "train-images-idx3-ubyte.gz", "file not found");
  CHECK_DATA_ERROR(load_fashion_mnist(dir.path(), split::train), "nor its uncompressed form train-images-idx3-ubyte",
                   "file not found");
}

TEST_CASE("idx: malformed headers are rejected, plain and gzip alike") {
  scratch_folder dir;
  for (const std::string suffix : {"", ".gz"}) {
    CAPTURE(suffix);
    auto file = [&](const std::string& name, const bytes& content) {
      const auto path = dir / (name + suffix);
      write_data_file(path, content);
      return path;
    };
    const auto short_magic = file("short-magic", {0, 0});
    CHECK_DATA_ERROR(load_idx_images(short_magic), "short-magic", "truncated");

    bytes not_idx = idx_file({count, rows, cols}, pixels);
    not_idx[0] = 0x12;
    const auto wrong_magic = file("wrong-magic", not_idx);
    CHECK_DATA_ERROR(load_idx_images(wrong_magic), "wrong-magic", "wrong magic number 0x12000803");

    const auto labels = file("labels", idx_file({count}, label_bytes));
    CHECK_DATA_ERROR(load_idx_images(labels), "labels", "wrong magic number 0x00000801");
    CHECK_DATA_ERROR(load_idx_images(labels), "labels", "looks like a labels file");
    const auto images = file("images", idx_file({count, rows, cols}, pixels));
    CHECK_DATA_ERROR(load_idx_labels(images), "images", "looks like an images file");

    const auto floats = file("floats", idx_file({count, rows, cols}, pattern(4 * count * rows * cols), 0x0D));
    CHECK_DATA_ERROR(load_idx_images(floats), "floats", "wrong data type byte 0x0d (float32)");

    bytes short_dims = idx_file({count, rows, cols}, {});
    short_dims.resize(10);
    const auto cut_header = file("cut-header", short_dims);
    CHECK_DATA_ERROR(load_idx_images(cut_header), "cut-header", "truncated");

    const auto no_images = file("no-images", idx_file({0, rows, cols}, {}));
    CHECK_DATA_ERROR(load_idx_images(no_images), "no-images", "implausible dimensions in header: 0 images");
    const auto too_many = file("too-many", idx_file({100'000'001, rows, cols}, pixels));
    CHECK_DATA_ERROR(load_idx_images(too_many), "too-many", "implausible dimensions in header: 100000001 images");
    const auto too_wide = file("too-wide", idx_file({count, rows, 4097}, pixels));
    CHECK_DATA_ERROR(load_idx_images(too_wide), "too-wide", "implausible dimensions in header: images of 3x4097");
    const auto flat = file("flat", idx_file({count, 0, cols}, {}));
    CHECK_DATA_ERROR(load_idx_images(flat), "flat", "implausible dimensions");
    const auto no_labels = file("no-labels", idx_file({0}, {}));
    CHECK_DATA_ERROR(load_idx_labels(no_labels), "no-labels", "implausible dimensions in header: 0 labels");
  }
}

TEST_CASE("idx: a header that promises more than the file holds is caught without allocating the promise") {
  scratch_folder dir;
  for (const std::string suffix : {"", ".gz"}) {
    CAPTURE(suffix);
    // 10^8 images of 4096x4096 are within the per-field limits; believing
    // the header would mean allocating 1.6 petabytes.
    const auto huge = dir / ("huge" + suffix);
    write_data_file(huge, idx_file({100'000'000, 4096, 4096}, pixels));
    CHECK_DATA_ERROR(load_idx_images(huge), "huge", "truncated: the header promises 100000000 images of 4096x4096");

    bytes cut = idx_file({count, rows, cols}, pixels);
    cut.resize(cut.size() - 7);
    const auto short_pixels = dir / ("short-pixels" + suffix);
    write_data_file(short_pixels, cut);
    CHECK_DATA_ERROR(load_idx_images(short_pixels), "short-pixels", "truncated");
    CHECK_DATA_ERROR(load_idx_images(short_pixels), "short-pixels", "but only 53 of them are there");

    const auto short_labels = dir / ("short-labels" + suffix);
    write_data_file(short_labels, idx_file({count + 1}, label_bytes));
    CHECK_DATA_ERROR(load_idx_labels(short_labels), "short-labels", "truncated: the header promises 6 labels");
  }
}

TEST_CASE("idx: bytes after what the header accounts for are rejected") {
  scratch_folder dir;
  for (const std::string suffix : {"", ".gz"}) {
    CAPTURE(suffix);
    bytes longer = idx_file({count, rows, cols}, pixels);
    longer.insert(longer.end(), {1, 2, 3});
    const auto trailing = dir / ("trailing" + suffix);
    write_data_file(trailing, longer);
    CHECK_DATA_ERROR(load_idx_images(trailing), "trailing", "trailing data");
    CHECK_DATA_ERROR(load_idx_images(trailing), "trailing", "after the 76 bytes");
    CHECK_DATA_ERROR(load_idx_images(trailing), "trailing", "(3 extra bytes)");

    // A header that undercounts: one image fewer than the file holds.
    const auto undercount = dir / ("undercount" + suffix);
    write_data_file(undercount, idx_file({count - 1, rows, cols}, pixels));
    CHECK_DATA_ERROR(load_idx_images(undercount), "undercount", "(12 extra bytes)");
    const auto labels = dir / ("labels-trailing" + suffix);
    write_data_file(labels, idx_file({count - 2}, label_bytes));
    CHECK_DATA_ERROR(load_idx_labels(labels), "labels-trailing", "trailing data");
  }
}

TEST_CASE("idx: corrupt gzip streams are rejected") {
  scratch_folder dir;
  const bytes content = idx_file({count, rows, cols}, pixels);
  write_gzip_file(dir / "good.gz", content);
  const bytes compressed = read_file(dir / "good.gz");
  REQUIRE(compressed.size() > 30);

  // The last 8 bytes of a gzip member are its CRC-32 and length.
  bytes bad_crc = compressed;
  bad_crc[bad_crc.size() - 8] ^= 0xFF;
  write_file(dir / "bad-crc.gz", bad_crc);
  CHECK_DATA_ERROR(load_idx_images(dir / "bad-crc.gz"), "bad-crc.gz", "corrupt gzip stream");
  CHECK_DATA_ERROR(load_idx_images(dir / "bad-crc.gz"), "bad-crc.gz", "incorrect data check");

  bytes bad_length = compressed;
  bad_length[bad_length.size() - 1] ^= 0x01;
  write_file(dir / "bad-length.gz", bad_length);
  CHECK_DATA_ERROR(load_idx_images(dir / "bad-length.gz"), "bad-length.gz", "corrupt gzip stream");

  // Byte 10 is the first byte of the deflate data (after the 10-byte
  // header): 0xFF makes it a final block of the reserved type 3.
  bytes bad_block = compressed;
  bad_block[10] = 0xFF;
  write_file(dir / "bad-block.gz", bad_block);
  CHECK_DATA_ERROR(load_idx_images(dir / "bad-block.gz"), "bad-block.gz", "corrupt gzip stream");

  bytes cut = compressed;
  cut.resize(cut.size() - 12);
  write_file(dir / "cut.gz", cut);
  CHECK_DATA_ERROR(load_idx_images(dir / "cut.gz"), "cut.gz", "corrupt gzip stream");
  CHECK_DATA_ERROR(load_idx_images(dir / "cut.gz"), "cut.gz", "truncated .gz file");

  write_file(dir / "plain-named.gz", content);
  CHECK_DATA_ERROR(load_idx_images(dir / "plain-named.gz"), "plain-named.gz", "does not start with the gzip magic");
  write_gzip_file(dir / "compressed-named-plain", content);
  CHECK_DATA_ERROR(load_idx_images(dir / "compressed-named-plain"), "compressed-named-plain", "is gzip-compressed");
}

TEST_CASE("idx: labels outside the classes and image/label count mismatches are rejected") {
  scratch_folder dir;
  write_data_file(dir / "train-images-idx3-ubyte.gz", idx_file({count, rows, cols}, pixels));
  write_data_file(dir / "train-labels-idx1-ubyte.gz", idx_file({count}, {1, 2, 10, 3, 4}));
  CHECK_DATA_ERROR(load_mnist(dir.path(), split::train), "train-labels-idx1-ubyte.gz",
                   "label 10 at index 2 is out of range for 10 classes");

  write_data_file(dir / "train-labels-idx1-ubyte.gz", idx_file({count - 1}, {1, 2, 3, 4}));
  CHECK_DATA_ERROR(load_mnist(dir.path(), split::train), "train-labels-idx1-ubyte.gz",
                   "image/label count mismatch: 4 labels");
  CHECK_DATA_ERROR(load_mnist(dir.path(), split::train), "train-images-idx3-ubyte.gz", "holds 5 images");
}

TEST_CASE("idx: the real Fashion-MNIST test split") {
  const std::filesystem::path dir = "/usr/share/datasets/fashion-mnist";
  if (!std::filesystem::exists(dir / "t10k-images-idx3-ubyte.gz")) {
    MESSAGE("skipped: Fashion-MNIST not found in " << dir.string());
    return;
  }
  const dataset<float> test = load_fashion_mnist(dir, split::test);
  CHECK(test.size() == 10000);
  CHECK(test.images.shape() == shape_t{10000, 1, 28, 28});
  std::array<int, 10> per_class{};
  for (std::int32_t y : test.labels.to_vector()) {
    REQUIRE(y >= 0);
    REQUIRE(y <= 9);
    ++per_class[static_cast<std::size_t>(y)];
  }
  for (int c = 0; c < 10; ++c) CHECK(per_class[static_cast<std::size_t>(c)] == 1000);
  check_dataset(test);  // every pixel in [0, 1]
  // Both ends of the pixel range occur in real images.
  const std::vector<float> x = test.images.to_vector();
  CHECK(*std::min_element(x.begin(), x.end()) == 0.0f);
  CHECK(*std::max_element(x.begin(), x.end()) == 1.0f);
}
