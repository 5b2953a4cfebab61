#pragma once
// CIFAR-10, binary version (cifar-10-binary.tar.gz, extracted).
//
// Each file is a sequence of 3073-byte records: one label byte (0..9), then
// 3072 pixel bytes, 1024 red, 1024 green, 1024 blue, each 32x32 row-major.
// That is already the (C, H, W) layout the library uses. The official files
// hold 10000 records each; the reader accepts any positive number, so
// subsets and test fixtures work the same way.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "dataset.hpp"
#include "input_file.hpp"

namespace opnorm {

struct cifar10_format {
  static constexpr index_t channels = 3, height = 32, width = 32;
  static constexpr index_t pixels = channels * height * width;  // 3072
  static constexpr index_t record = 1 + pixels;                 // 3073
  static constexpr index_t classes = 10;
};

namespace detail {

/// `dir` may be the extracted folder `cifar-10-batches-bin` or its parent.
inline std::filesystem::path cifar10_folder(const std::filesystem::path& dir) {
  std::error_code ec;
  const auto nested = dir / "cifar-10-batches-bin";
  if (!std::filesystem::exists(dir / "test_batch.bin", ec) && std::filesystem::is_directory(nested, ec)) return nested;
  return dir;
}

/// Number of records in a CIFAR-10 batch file, from its size on disk, so the
/// whole split is allocated once before any pixel is read.
inline index_t cifar10_record_count(const std::filesystem::path& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status)) throw data_error(path, "file not found");
  if (!std::filesystem::is_regular_file(status)) throw data_error(path, "is not a regular file");
  const std::uintmax_t bytes = std::filesystem::file_size(path, ec);
  if (ec) throw data_error(path, "cannot read the file size: " + ec.message());
  if (bytes == 0) throw data_error(path, "empty file");
  if (bytes % cifar10_format::record != 0)
    throw data_error(path, "size " + std::to_string(bytes) +
                               " bytes is not a multiple of 3073 (a CIFAR-10 binary record is 1 label byte and "
                               "3072 pixel bytes); truncated or not a CIFAR-10 batch file");
  return static_cast<index_t>(bytes / cifar10_format::record);
}

}  // namespace detail

/// Loads the training split (data_batch_1.bin .. data_batch_5.bin, in that
/// order) or the test split (test_batch.bin) from `dir`. Images (N, 3, 32,
/// 32) in [0, 1], 10 classes. Throws data_error naming the file for a
/// missing file, a size that is not a whole number of records, or a label
/// byte above 9.
template <class T = float>
dataset<T> load_cifar10(const std::filesystem::path& dir, split s) {
  static_assert(std::is_floating_point<T>::value, "pixels are loaded as floating-point values in [0, 1]");
  using format = cifar10_format;
  const auto folder = detail::cifar10_folder(dir);
  std::vector<std::filesystem::path> files;
  if (s == split::train)
    for (int b = 1; b <= 5; ++b) files.push_back(folder / ("data_batch_" + std::to_string(b) + ".bin"));
  else
    files.push_back(folder / "test_batch.bin");

  std::vector<index_t> counts;
  index_t total = 0;
  for (const auto& f : files) total += counts.emplace_back(detail::cifar10_record_count(f));

  dataset<T> data;
  data.images.resize({total, format::channels, format::height, format::width});
  data.labels.resize({total});
  data.classes = format::classes;
  data.class_names = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
  data.name = std::string("cifar10/") + split_name(s);

  const auto table = detail::byte_to_unit_table<T>();
  constexpr index_t records_per_read = 1024;  // 3 MiB of bytes at a time
  std::vector<unsigned char> buffer(static_cast<std::size_t>(records_per_read * format::record));
  index_t next = 0;  // first example of the current file in the split
  for (std::size_t f = 0; f < files.size(); ++f) {
    detail::input_file file(files[f], detail::compression::none);
    for (index_t first = 0; first < counts[f]; first += records_per_read) {
      const index_t n = std::min(records_per_read, counts[f] - first);
      file.read_exact(buffer.data(), static_cast<std::size_t>(n * format::record),
                      "records " + std::to_string(first) + " to " + std::to_string(first + n - 1));
      for (index_t r = 0; r < n; ++r) {
        const unsigned char* record = buffer.data() + r * format::record;
        if (record[0] >= format::classes)
          file.fail("label byte " + std::to_string(record[0]) + " in record " + std::to_string(first + r) +
                    " (byte offset " + std::to_string((first + r) * format::record) +
                    ") is not a CIFAR-10 class (0 to 9)");
        const index_t example = next + first + r;
        data.labels[example] = record[0];
        T* x = data.images.data() + example * format::pixels;
        for (index_t i = 0; i < format::pixels; ++i) x[i] = table[record[1 + i]];
      }
    }
    // The size was checked before reading; this catches a file that grew
    // while it was being read.
    file.expect_end(std::to_string(counts[f]) + " records");
    next += counts[f];
  }
  return data;
}

}  // namespace opnorm
