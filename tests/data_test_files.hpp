#pragma once
// Helpers for the data-layer tests: a scratch folder that cleans up after
// itself, and writers for files in the real on-disk formats (plain and gzip).
#include <zlib.h>

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include <opnorm/data/error.hpp>

namespace opnorm::testing {

using bytes = std::vector<unsigned char>;

/// A fresh folder under the system temp directory, removed with everything
/// in it when the object goes out of scope.
class scratch_folder {
 public:
  scratch_folder() {
    static int counter = 0;
    const auto ticks = std::chrono::steady_clock::now().time_since_epoch().count();
    path_ = std::filesystem::temp_directory_path() /
            ("opnorm-test-" + std::to_string(::getpid()) + "-" + std::to_string(ticks) + "-" + std::to_string(counter++));
    std::filesystem::create_directories(path_);
  }
  ~scratch_folder() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  scratch_folder(const scratch_folder&) = delete;
  scratch_folder& operator=(const scratch_folder&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::filesystem::path& path, const bytes& content) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(content.data()), static_cast<std::streamsize>(content.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

inline bytes read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// Writes `content` gzip-compressed, the way gzip(1) would.
inline void write_gzip_file(const std::filesystem::path& path, const bytes& content) {
  gzFile f = gzopen(path.string().c_str(), "wb9");
  if (!f) throw std::runtime_error("cannot open " + path.string());
  const int written = content.empty() ? 0 : gzwrite(f, content.data(), static_cast<unsigned>(content.size()));
  const int closed = gzclose(f);
  if (written != static_cast<int>(content.size()) || closed != Z_OK)
    throw std::runtime_error("cannot write " + path.string());
}

/// Writes to `path`, gzip-compressed when its name ends in .gz.
inline void write_data_file(const std::filesystem::path& path, const bytes& content) {
  if (path.extension() == ".gz")
    write_gzip_file(path, content);
  else
    write_file(path, content);
}

inline void append_big_endian(bytes& out, std::uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<unsigned char>(value >> shift));
}

/// An IDX file: magic {0, 0, type, rank}, big-endian dimensions, payload.
inline bytes idx_file(const std::vector<std::uint32_t>& dims, const bytes& payload, unsigned char type = 0x08) {
  bytes out{0, 0, type, static_cast<unsigned char>(dims.size())};
  for (std::uint32_t d : dims) append_big_endian(out, d);
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

/// n distinct-looking bytes, reproducible, covering 0 and 255.
inline bytes pattern(std::size_t n, unsigned seed = 0) {
  bytes out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<unsigned char>((i * 37 + seed * 101 + (i >> 8) * 13) & 0xFF);
  return out;
}

}  // namespace opnorm::testing

/// Checks that `expr` throws opnorm::data_error whose message names `file`
/// and contains `phrase`.
#define CHECK_DATA_ERROR(expr, file, phrase)                                                        \
  do {                                                                                              \
    CHECK_THROWS_WITH_AS(expr, doctest::Contains(std::string(file).c_str()), opnorm::data_error);           \
    CHECK_THROWS_WITH_AS(expr, doctest::Contains(std::string(phrase).c_str()), opnorm::data_error);         \
  } while (false)
