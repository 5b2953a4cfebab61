#pragma once
// Shared by the libFuzzer targets in this folder (built by scripts/fuzz.sh).
//
// Every reader of the library takes a path, so each target writes the fuzzer's
// input to a file first. The files live in one folder per process under
// $TMPDIR (or /tmp), reused for every input, so a run does not litter the
// file system with one file per execution; fuzz.sh points TMPDIR at a
// tmpfs when there is one, because the safetensors writer fsyncs.
//
// A target catches only the exception type the reader documents for bad
// input. Anything else - another exception type, a crash, a leak, undefined
// behaviour, a failed consistency check (fail() below) - ends the process
// abnormally, which libFuzzer reports as a finding and saves the input for.
#include <unistd.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

#include <opnorm/backend/cpu.hpp>
#include <opnorm/io/safetensors.hpp>
#include <opnorm/nn/layers/layer.hpp>

namespace opnorm_fuzz {

/// Reports a broken promise of the library and aborts, so libFuzzer keeps the input.
[[noreturn]] inline void fail(const char* format, ...) {
  std::fputs("opnorm fuzz target: ", stderr);
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fputc('\n', stderr);
  std::abort();
}

/// This process's scratch folder, created on first use and removed at exit.
inline const std::filesystem::path& scratch() {
  struct folder {
    std::filesystem::path path;
    folder() {
      const char* base = std::getenv("TMPDIR");
      path = std::filesystem::path(base && *base ? base : "/tmp") /
             ("opnorm-fuzz-" + std::to_string(static_cast<long long>(::getpid())));
      std::error_code ec;
      std::filesystem::create_directories(path, ec);
      if (ec) fail("cannot create the scratch folder %s: %s", path.c_str(), ec.message().c_str());
    }
    ~folder() {
      std::error_code ignored;
      std::filesystem::remove_all(path, ignored);
    }
  };
  static const folder f;
  return f.path;
}

/// scratch()/name, holding exactly the given bytes.
inline std::filesystem::path write_input(const std::string& name, const void* data, std::size_t size) {
  const std::filesystem::path path = scratch() / name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) fail("cannot write %s: %s", path.c_str(), std::strerror(errno));
  const bool ok = (size == 0 || std::fwrite(data, 1, size, f) == size);
  if (std::fclose(f) != 0 || !ok) fail("cannot write %s", path.c_str());
  return path;
}

/// The bytes of every tensor and the value of every counter of a state_list,
/// to prove that a failed load left a model (or optimizer) as it was. Bytes,
/// not values, so that NaN compares equal to itself.
struct state_snapshot {
  std::vector<std::string> names;
  std::vector<std::vector<unsigned char>> bytes;

  template <class T, class B>
  static state_snapshot of(const opnorm::state_list<T, B>& s) {
    state_snapshot out;
    static_assert(std::is_same_v<B, opnorm::backend::cpu>, "snapshots read host memory");
    auto add_tensor = [&](const opnorm::named_tensor<T, B>& t) {
      // A memcpy, not to_vector: the fuzzer's comparison tracing makes an
      // instrumented element loop over the model's 870k parameters the
      // slowest part of an execution.
      std::vector<unsigned char> b(static_cast<std::size_t>(t.value->size()) * sizeof(T));
      if (!b.empty()) std::memcpy(b.data(), t.value->data(), b.size());
      out.names.push_back(t.name);
      out.bytes.push_back(std::move(b));
    };
    for (const auto& p : s.parameters) add_tensor(p);
    for (const auto& b : s.buffers) add_tensor(b);
    for (const auto& c : s.counters) {
      std::vector<unsigned char> b(sizeof(std::int64_t));
      std::memcpy(b.data(), c.value, sizeof(std::int64_t));
      out.names.push_back(c.name);
      out.bytes.push_back(std::move(b));
    }
    return out;
  }

  /// Aborts naming the first entry that differs from `before`.
  void expect_same_as(const state_snapshot& before, const char* what) const {
    if (names != before.names) fail("%s: the state's names changed", what);
    for (std::size_t i = 0; i < bytes.size(); ++i)
      if (bytes[i] != before.bytes[i]) fail("%s: '%s' changed", what, names[i].c_str());
  }
};

/// Whether t holds exactly the values stored in e (F32 or F64), compared
/// bit for bit after converting as the loader promises (F64 to T by a cast).
template <class T>
bool holds(const opnorm::tensor<T, opnorm::backend::cpu>& t, const opnorm::safetensors::entry& e) {
  namespace st = opnorm::safetensors;
  const std::size_t n = static_cast<std::size_t>(t.size());
  if (e.shape != t.shape()) return false;
  if (e.type == st::dtype_of<T>()) return e.bytes.size() == n * sizeof(T) && (n == 0 || std::memcmp(e.bytes.data(), t.data(), e.bytes.size()) == 0);
  if (e.type != st::dtype::F32 && e.type != st::dtype::F64) return false;
  const std::size_t size = e.type == st::dtype::F32 ? 4 : 8;
  if (e.bytes.size() != n * size) return false;
  for (std::size_t i = 0; i < n; ++i) {
    T expected;
    if (size == 4) {
      float v;
      std::memcpy(&v, e.bytes.data() + i * 4, 4);
      expected = static_cast<T>(v);
    } else {
      double v;
      std::memcpy(&v, e.bytes.data() + i * 8, 8);
      expected = static_cast<T>(v);
    }
    if (std::memcmp(&expected, t.data() + i, sizeof(T)) != 0) return false;
  }
  return true;
}

}  // namespace opnorm_fuzz
