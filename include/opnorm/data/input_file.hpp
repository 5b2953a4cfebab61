#pragma once
// input_file: reads a data file as bytes, gzip-compressed or plain, and turns
// every way the read can go wrong into a data_error that names the file.
//
// Both kinds go through zlib's gzFile interface (plain files in its
// "transparent" mode), so there is one read path to get right. The size of
// a gzip stream's content is unknown until it has been inflated, so callers
// never allocate from a header's promise: they read what the header promises
// in bounded chunks and then ask expect_end() whether anything is left.
//
// Bytes after the end of a complete gzip stream that are not another gzip
// member are ignored by zlib, as gzip(1) ignores them; extra bytes inside
// the compressed content are caught by expect_end().
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "error.hpp"

namespace opnorm::detail {

enum class compression {
  none,  ///< the file must hold the data itself
  gzip,  ///< the file must be a gzip stream
};

/// The compression a file's name announces: ".gz" means gzip.
inline compression compression_of(const std::filesystem::path& path) {
  return path.extension() == ".gz" ? compression::gzip : compression::none;
}

class input_file {
 public:
  input_file(std::filesystem::path path, compression kind) : path_(std::move(path)) {
    std::error_code ec;
    const auto status = std::filesystem::status(path_, ec);
    if (!std::filesystem::exists(status)) fail("file not found");
    if (std::filesystem::is_directory(status)) fail("is a directory, not a file");
    if (!std::filesystem::is_regular_file(status)) fail("is not a regular file");
    // Checked here because zlib cannot tell an empty file's compression.
    if (std::filesystem::file_size(path_, ec) == 0 && !ec) fail("empty file");
    errno = 0;
    file_.reset(gzopen(path_.string().c_str(), "rb"));
    if (!file_) fail(std::string("cannot open: ") + (errno ? std::strerror(errno) : "out of memory"));
    gzbuffer(file_.get(), 1u << 17);  // fewer system calls than zlib's 8 KiB default
    // gzdirect() peeks at the first bytes: 1 means no gzip header was found.
    const bool is_gzip = gzdirect(file_.get()) == 0;
    if (kind == compression::gzip && !is_gzip)
      fail("corrupt gzip stream: the file does not start with the gzip magic bytes 1f 8b");
    if (kind == compression::none && is_gzip)
      fail("is gzip-compressed but its name does not end in .gz; rename it or decompress it");
  }
  const std::filesystem::path& path() const { return path_; }
  /// Bytes of content (after decompression) read so far.
  std::uint64_t position() const { return position_; }

  /// Reads up to n bytes; fewer only where the content ends.
  std::size_t read_some(void* destination, std::size_t n) {
    auto* out = static_cast<unsigned char*>(destination);
    std::size_t done = 0;
    while (done < n) {
      // gzread counts in unsigned and answers in int: stay below INT_MAX.
      const unsigned ask = static_cast<unsigned>(std::min<std::size_t>(n - done, 1u << 30));
      const int got = gzread(file_.get(), out + done, ask);
      if (got < 0) {
        check_zlib_error();
        fail("read error");  // gzread failed without recording why
      }
      done += static_cast<std::size_t>(got);
      position_ += static_cast<std::uint64_t>(got);
      if (static_cast<unsigned>(got) < ask) {
        // A short read is the end of the content, or a gzip stream cut short.
        check_zlib_error();
        break;
      }
    }
    return done;
  }

  /// Reads exactly n bytes, or throws "truncated: ..." with `what` saying
  /// what the bytes were supposed to be.
  void read_exact(void* destination, std::size_t n, const std::string& what) {
    const std::uint64_t start = position_;
    const std::size_t got = read_some(destination, n);
    if (got < n)
      fail("truncated: expected " + std::to_string(n) + " bytes of " + what + " at byte offset " +
           std::to_string(start) + ", but only " + std::to_string(got) + " are there");
  }

  /// Reads n bytes into a vector that grows with the data actually read, so
  /// a header that promises terabytes costs no more memory than the file
  /// holds. `what` describes the promise for the truncation message.
  std::vector<unsigned char> read_promised(std::uint64_t n, const std::string& what) {
    constexpr std::size_t chunk = std::size_t{1} << 22;
    std::vector<unsigned char> bytes;
    const std::uint64_t start = position_;
    while (bytes.size() < n) {
      const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, n - bytes.size()));
      const std::size_t old = bytes.size();
      bytes.resize(old + want);  // geometric growth: amortized linear
      const std::size_t got = read_some(bytes.data() + old, want);
      if (got < want)
        fail("truncated: " + what + " (" + std::to_string(n) + " bytes from byte offset " + std::to_string(start) +
             "), but only " + std::to_string(old + got) + " of them are there");
    }
    return bytes;
  }

  /// Throws "trailing data: ..." unless the content ends here; `accounted`
  /// says what the bytes read so far were.
  void expect_end(const std::string& accounted) {
    // Count what is left, up to a bound, so the message can say how much
    // (a wrong header and a concatenated file look different), without
    // inflating an arbitrarily large remainder.
    constexpr std::uint64_t counted_at_most = std::uint64_t{1} << 20;
    const std::uint64_t end = position_;
    unsigned char scratch[4096];
    std::uint64_t extra = 0;
    while (extra <= counted_at_most) {
      const std::size_t got = read_some(scratch, sizeof scratch);
      extra += got;
      if (got < sizeof scratch) break;
    }
    if (extra == 0) return;
    fail("trailing data: the file continues after the " + std::to_string(end) + " bytes that " + accounted +
         " account for (" + (extra > counted_at_most ? "more than " + std::to_string(counted_at_most) : std::to_string(extra)) +
         (extra == 1 ? " extra byte)" : " extra bytes)"));
  }

  [[noreturn]] void fail(const std::string& problem) const { throw data_error(path_, problem); }

 private:
  // After gzread returned less than asked: the end of the content (fine),
  // or an error zlib recorded (not fine).
  void check_zlib_error() {
    int code = Z_OK;
    const char* message = gzerror(file_.get(), &code);
    if (code == Z_OK || code == Z_STREAM_END) return;
    std::string detail = message && *message ? message : "unknown error";
    const std::string own_prefix = path_.string() + ": ";  // zlib repeats the path we already print
    if (detail.compare(0, own_prefix.size(), own_prefix) == 0) detail.erase(0, own_prefix.size());
    if (code == Z_ERRNO) fail("read error (" + detail + ")");
    if (code == Z_BUF_ERROR)  // zlib's "unexpected end of file"
      fail("corrupt gzip stream: it ends before its end marker (truncated .gz file?) (zlib: " + detail + ")");
    fail("corrupt gzip stream (zlib: " + detail + ")");
  }

  // Owned by a unique_ptr so a constructor that throws after gzopen still
  // closes the file.
  struct closer {
    void operator()(gzFile f) const { gzclose_r(f); }
  };
  std::filesystem::path path_;
  std::unique_ptr<std::remove_pointer_t<gzFile>, closer> file_;
  std::uint64_t position_ = 0;
};

}  // namespace opnorm::detail
