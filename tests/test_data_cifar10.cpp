#include <doctest/doctest.h>

#include <filesystem>
#include <string>

#include <opnorm/data/cifar10.hpp>

#include "data_test_files.hpp"

using namespace opnorm;
using namespace opnorm::testing;

namespace {

constexpr std::size_t record_size = 3073;

// Record r of a file: label (r * 3 + salt) % 10, pixels from pattern(salt).
bytes cifar_records(std::size_t count, unsigned salt) {
  bytes out;
  for (std::size_t r = 0; r < count; ++r) {
    out.push_back(static_cast<unsigned char>((r * 3 + salt) % 10));
    const bytes pixels = pattern(3072, static_cast<unsigned>(salt * 16 + r));
    out.insert(out.end(), pixels.begin(), pixels.end());
  }
  return out;
}

// Writes a training split of 3, 1, 2, 4, 2 records and a test split of 5,
// each file with its own salt so a mix-up of files or order shows.
void write_cifar10(const std::filesystem::path& dir) {
  const std::size_t counts[5] = {3, 1, 2, 4, 2};
  for (unsigned b = 0; b < 5; ++b)
    write_file(dir / ("data_batch_" + std::to_string(b + 1) + ".bin"), cifar_records(counts[b], b + 1));
  write_file(dir / "test_batch.bin", cifar_records(5, 9));
}

// The examples of `data` from `first` on must be the records of `file`.
template <class T>
void check_examples(const dataset<T>& data, index_t first, const bytes& file) {
  const std::size_t count = file.size() / record_size;
  for (std::size_t r = 0; r < count; ++r) {
    const index_t example = first + static_cast<index_t>(r);
    CHECK(data.labels[example] == file[r * record_size]);
    // (C, H, W): byte 1 + c*1024 + y*32 + x of the record is pixel (c, y, x).
    for (index_t c = 0; c < 3; ++c)
      for (index_t y = 0; y < 32; ++y)
        for (index_t x = 0; x < 32; ++x)
          REQUIRE(data.images(example, c, y, x) ==
                  static_cast<T>(file[r * record_size + 1 + static_cast<std::size_t>(c * 1024 + y * 32 + x)]) /
                      static_cast<T>(255));
  }
}

}  // namespace

TEST_CASE("cifar10: the training split is the five batches in order, the test split test_batch.bin") {
  scratch_folder dir;
  write_cifar10(dir.path());

  const dataset<float> train = load_cifar10(dir.path(), split::train);
  CHECK(train.name == "cifar10/train");
  CHECK(train.classes == 10);
  REQUIRE(train.class_names.size() == 10);
  CHECK(train.class_names[0] == "airplane");
  CHECK(train.class_names[9] == "truck");
  CHECK(train.images.shape() == shape_t{12, 3, 32, 32});
  CHECK(train.labels.shape() == shape_t{12});
  index_t first = 0;
  for (int b = 1; b <= 5; ++b) {
    const bytes file = read_file(dir / ("data_batch_" + std::to_string(b) + ".bin"));
    check_examples(train, first, file);
    first += static_cast<index_t>(file.size() / record_size);
  }
  check_dataset(train);

  const dataset<double> test = load_cifar10<double>(dir.path(), split::test);
  CHECK(test.name == "cifar10/test");
  CHECK(test.images.shape() == shape_t{5, 3, 32, 32});
  check_examples(test, 0, read_file(dir / "test_batch.bin"));
}

TEST_CASE("cifar10: the folder may be cifar-10-batches-bin or its parent") {
  scratch_folder dir;
  std::filesystem::create_directories(dir / "cifar-10-batches-bin");
  write_cifar10(dir / "cifar-10-batches-bin");
  const dataset<float> test = load_cifar10(dir.path(), split::test);
  CHECK(test.size() == 5);
  check_examples(test, 0, read_file(dir / "cifar-10-batches-bin/test_batch.bin"));
}

TEST_CASE("cifar10: pixel bytes 0 and 255 become exactly 0 and 1") {
  scratch_folder dir;
  bytes record(record_size, 0);
  record[0] = 9;
  record[2] = 255;
  write_file(dir / "test_batch.bin", record);
  const dataset<float> test = load_cifar10(dir.path(), split::test);
  CHECK(test.labels[0] == 9);
  CHECK(test.images[0] == 0.0f);
  CHECK(test.images[1] == 1.0f);
}

TEST_CASE("cifar10: malformed files are rejected with their path") {
  scratch_folder dir;
  write_cifar10(dir.path());

  SUBCASE("a missing batch") {
    std::filesystem::remove(dir / "data_batch_3.bin");
    CHECK_DATA_ERROR(load_cifar10(dir.path(), split::train), "data_batch_3.bin", "file not found");
    CHECK_DATA_ERROR(load_cifar10(dir / "no-such-folder", split::test), "test_batch.bin", "file not found");
  }
  SUBCASE("a size that is not a whole number of records") {
    bytes cut = cifar_records(2, 4);
    cut.pop_back();
    write_file(dir / "data_batch_4.bin", cut);
    CHECK_DATA_ERROR(load_cifar10(dir.path(), split::train), "data_batch_4.bin",
                     "size 6145 bytes is not a multiple of 3073");
    bytes longer = cifar_records(5, 9);
    longer.push_back(0);
    write_file(dir / "test_batch.bin", longer);
    CHECK_DATA_ERROR(load_cifar10(dir.path(), split::test), "test_batch.bin", "is not a multiple of 3073");
  }
  SUBCASE("an empty file") {
    write_file(dir / "test_batch.bin", {});
    CHECK_DATA_ERROR(load_cifar10(dir.path(), split::test), "test_batch.bin", "empty file");
  }
  SUBCASE("a label byte above 9") {
    bytes bad = cifar_records(4, 2);
    bad[2 * record_size] = 10;
    write_file(dir / "data_batch_2.bin", bad);
    CHECK_DATA_ERROR(load_cifar10(dir.path(), split::train), "data_batch_2.bin",
                     "label byte 10 in record 2 (byte offset 6146) is not a CIFAR-10 class");
    bad[2 * record_size] = 255;
    write_file(dir / "data_batch_2.bin", bad);
    CHECK_DATA_ERROR(load_cifar10(dir.path(), split::train), "data_batch_2.bin", "label byte 255");
  }
  SUBCASE("a gzip-compressed batch under the plain name") {
    write_gzip_file(dir / "test_batch.bin", bytes(record_size * 400, 0));
    CHECK_DATA_ERROR(load_cifar10(dir.path(), split::test), "test_batch.bin", "is not a multiple of 3073");
    // Of the right size by accident, it is still refused for what it is.
    bytes padded = read_file(dir / "test_batch.bin");
    padded.resize(record_size, 0);
    write_file(dir / "test_batch.bin", padded);
    CHECK_DATA_ERROR(load_cifar10(dir.path(), split::test), "test_batch.bin", "is gzip-compressed");
  }
}
