#pragma once
// Atomic file replacement, shared by every writer of the project
// (checkpoints, logs, JSON results): a reader, or a run resumed after a
// crash at any moment, sees either the old file or the complete new one.
//
// The bytes go to "<path>.tmp" in the same directory (same file system, so
// the rename is atomic), which is flushed and fsynced before it is renamed
// over path, and the directory is fsynced after the rename so that the new
// name itself survives a power loss.
//
// The temporary name is fixed, not random, so that nothing is ever orphaned:
// a process killed mid-write leaves "<path>.tmp" behind, and the next write
// of the same path reuses (truncates) exactly that file. Two processes
// writing the same path at once are serialized by an exclusive flock on the
// temporary file; a writer that waited re-checks that the name still refers
// to the file it locked (the other writer may have renamed it away) and
// starts over if not.
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#define OPNORM_POSIX_FILES 1
#else
#include <cstdio>
#define OPNORM_POSIX_FILES 0
#endif

namespace opnorm {

/// A file could not be written; the message names it and says why. The
/// destination was not changed.
class file_write_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// One contiguous piece of the bytes to write.
struct byte_range {
  const void* data;
  std::size_t size;
};

/// The temporary file a write of path goes through (and a crash leaves).
inline std::filesystem::path temporary_file_for(const std::filesystem::path& path) {
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  return tmp;
}

namespace detail {

inline std::string quoted_path(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

[[noreturn]] inline void fail_write(const std::filesystem::path& path, const std::string& why) {
  throw file_write_error("cannot write " + quoted_path(path) + ": " + why + " (the destination was not changed)");
}

#if OPNORM_POSIX_FILES
/// Opens and exclusively locks path's temporary file (see the top of the file).
inline int open_locked_temporary(const std::filesystem::path& path, const std::filesystem::path& tmp) {
  for (;;) {
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) fail_write(path, "cannot create the temporary file " + quoted_path(tmp) + ": " + std::strerror(errno));
    int locked;
    do locked = ::flock(fd, LOCK_EX);
    while (locked != 0 && errno == EINTR);
    if (locked != 0) {
      const int e = errno;
      ::close(fd);
      fail_write(path, "cannot lock " + quoted_path(tmp) + ": " + std::strerror(e));
    }
    struct stat opened {}, named {};
    if (::fstat(fd, &opened) == 0 && ::stat(tmp.c_str(), &named) == 0 && opened.st_dev == named.st_dev &&
        opened.st_ino == named.st_ino)
      return fd;
    ::close(fd);  // renamed away by the writer we waited for: take the new name
  }
}

inline void write_all(int fd, const void* data, std::size_t size, std::string& failure) {
  const char* p = static_cast<const char*>(data);
  while (size > 0 && failure.empty()) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      failure = std::string("writing failed: ") + (n < 0 ? std::strerror(errno) : "no progress");
      return;
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

/// fsync of the directory holding path, so the rename is durable.
inline void sync_directory_of(const std::filesystem::path& path) {
  std::filesystem::path dir = path.parent_path();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // the data is in place; durability of the name is best effort
  ::fsync(fd);
  ::close(fd);
}
#endif

}  // namespace detail

/// Replaces path with the pieces, in order, atomically (see the top of the
/// file). Throws file_write_error, leaving path as it was, if anything fails.
inline void write_file_atomically(const std::filesystem::path& path, const std::vector<byte_range>& pieces) {
  const std::filesystem::path tmp = temporary_file_for(path);
#if OPNORM_POSIX_FILES
  const int fd = detail::open_locked_temporary(path, tmp);
  std::string failure;
  if (::ftruncate(fd, 0) != 0) failure = std::string("truncating the temporary file failed: ") + std::strerror(errno);
  for (const auto& piece : pieces)
    if (piece.size) detail::write_all(fd, piece.data, piece.size, failure);
  // Without fsync a crash shortly after the rename can leave an empty file
  // under the new name on some file systems.
  if (failure.empty() && ::fsync(fd) != 0) failure = std::string("fsync failed: ") + std::strerror(errno);
  if (failure.empty() && ::rename(tmp.c_str(), path.c_str()) != 0)
    failure = "cannot rename " + detail::quoted_path(tmp) + " over it: " + std::strerror(errno);
  if (!failure.empty()) {
    ::unlink(tmp.c_str());  // still ours: we hold the lock
    ::close(fd);
    detail::fail_write(path, failure);
  }
  detail::sync_directory_of(path);
  ::close(fd);  // releases the lock, now on the file under its new name
#else
  std::FILE* f = std::fopen(tmp.string().c_str(), "wb");
  if (!f) detail::fail_write(path, "cannot create the temporary file " + detail::quoted_path(tmp) + ": " + std::strerror(errno));
  std::string failure;
  for (const auto& piece : pieces)
    if (piece.size && std::fwrite(piece.data, 1, piece.size, f) != piece.size) failure = "writing failed";
  if (std::fclose(f) != 0 && failure.empty()) failure = "closing failed";
  std::error_code ec;
  if (failure.empty()) {
    std::filesystem::rename(tmp, path, ec);
    if (ec) failure = "cannot rename " + detail::quoted_path(tmp) + " over it: " + ec.message();
  }
  if (!failure.empty()) {
    std::filesystem::remove(tmp, ec);
    detail::fail_write(path, failure);
  }
#endif
}

/// write_file_atomically for one string.
inline void write_file_atomically(const std::filesystem::path& path, const std::string& text) {
  write_file_atomically(path, {byte_range{text.data(), text.size()}});
}

}  // namespace opnorm
