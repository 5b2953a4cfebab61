// Crash safety of checkpoint writes: a child process saves checkpoints in a
// loop and is killed with SIGKILL at a random moment, 50 times. After every
// kill the checkpoint must load and be one of the complete checkpoints the
// child wrote, never a torn mixture, and the only other file allowed in
// the folder is the fixed temporary name "<file>.tmp" that the next save
// takes over; after the next save nothing but the checkpoint is left.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <opnorm/io/checkpoint.hpp>
#include <opnorm/io/safetensors.hpp>

using namespace opnorm;
namespace fs = std::filesystem;
namespace st = opnorm::safetensors;

namespace {

/// Two different checkpoints of a few MB each, so that a write takes long
/// enough for a kill to land inside it.
st::tensor_map checkpoint_contents(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1, 1);
  st::tensor_map entries;
  for (const auto& [name, rows, cols] : {std::tuple<const char*, index_t, index_t>{"0.weight", 512, 784},
                                         {"0.bias", 512, 1}, {"2.weight", 10, 512}}) {
    tensor<float> t({rows, cols});
    for (index_t i = 0; i < t.size(); ++i) t[i] = u(rng);
    entries.emplace(name, st::to_entry(t));
  }
  return entries;
}

std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

bool same_tensors(const st::tensor_map& a, const st::tensor_map& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [name, e] : a) {
    const auto found = b.find(name);
    if (found == b.end() || found->second.type != e.type || found->second.shape != e.shape ||
        found->second.bytes != e.bytes)
      return false;
  }
  return true;
}

}  // namespace

TEST_CASE("50 kills in the middle of checkpoint writes leave no orphan temporary file and no corrupt checkpoint") {
  const fs::path dir = fs::temp_directory_path() / ("opnorm_crash_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path file = dir / "last.safetensors";
  const st::tensor_map a = checkpoint_contents(1), b = checkpoint_contents(2);
  st::write(file, a, {{"which", "a"}}, st::checksums::crc32);

  std::mt19937_64 rng(2026);
  std::uniform_int_distribution<int> delay_us(0, 60000);
  int kills_leaving_temporary = 0, kills_after_a_completed_write = 0;
  for (int kill_number = 1; kill_number <= 50; ++kill_number) {
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      // The child writes a, b, a, b, ... until it is killed. Only
      // async-signal-safe exits from here: it never returns to doctest.
      for (std::uint64_t i = 0;; ++i) {
        try {
          st::write(file, i % 2 ? b : a, {{"which", i % 2 ? "b" : "a"}}, st::checksums::crc32);
        } catch (...) {
          ::_exit(3);
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us(rng)));
    REQUIRE(::kill(child, SIGKILL) == 0);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFSIGNALED(status));  // killed while writing, not failed on its own
    CAPTURE(kill_number);

    const auto names = listing(dir);
    const bool temporary_left = names.size() == 2 && names[1] == "last.safetensors.tmp";
    CHECK((names == std::vector<std::string>{"last.safetensors"} || temporary_left));
    kills_leaving_temporary += temporary_left;

    // The checkpoint is complete and is one of the two, checksums included.
    st::contents read_back;
    REQUIRE_NOTHROW(read_back = st::read(file));
    const bool is_a = same_tensors(read_back.tensors, a), is_b = same_tensors(read_back.tensors, b);
    CHECK((is_a || is_b));
    CHECK(read_back.metadata.at("which") == (is_a ? "a" : "b"));
    kills_after_a_completed_write += is_b;
  }
  MESSAGE(kills_leaving_temporary << " of 50 kills landed inside a write and left last.safetensors.tmp; "
                                  << kills_after_a_completed_write << " found checkpoint b in place");

  // The next save takes the leftover over: nothing but the checkpoint stays.
  st::write(file, a, {{"which", "a"}}, st::checksums::crc32);
  CHECK(listing(dir) == std::vector<std::string>{"last.safetensors"});
  fs::remove_all(dir);
}
