#pragma once
// What the example programs (train, attack, reproduce) share about their
// command lines: the same checks for numbers, the same exit codes, and an
// output folder that a failed run does not leave behind empty.
//
// Exit codes, the same in every program:
//   0  success (and --help)
//   1  the run failed: unreadable or corrupt input, a diverged training,
//      a file that could not be written
//   2  usage error: an unknown option, a value that is not a number, out of
//      range, NaN or infinite, or options that contradict each other
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>

#include <CLI/CLI.hpp>

#include <opnorm/detail/options.hpp>

namespace opnorm::command_line {

inline constexpr int exit_success = 0;
inline constexpr int exit_failure = 1;
inline constexpr int exit_usage = 2;

/// An error in how the program was called (exit 2), found after parsing:
/// options that contradict each other.
class usage_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A CLI11 check that the value is a finite number in r. CLI11's own
/// numeric checks let NaN through (every comparison with NaN is false) and
/// print their bounds with 300 digits; this one names the rule the way the
/// library does ("a finite number >= 0").
inline CLI::Validator real_in(const opnorm::detail::real_interval& r) {
  const std::string rule = "a finite number " + opnorm::detail::describe(r);
  return CLI::Validator(
      [r, rule](std::string& text) -> std::string {
        const char* begin = text.c_str();
        char* end = nullptr;
        errno = 0;
        const double v = std::strtod(begin, &end);
        if (text.empty() || end != begin + text.size() || errno == ERANGE)
          return "'" + text + "' is not a number";
        if (!opnorm::detail::contains(r, v)) return text + " is not " + rule;
        return {};
      },
      rule);
}

/// A CLI11 check that the value is a whole number >= low (and fits 64 bits).
inline CLI::Validator whole_number_at_least(long long low) {
  const std::string rule = "a whole number >= " + std::to_string(low);
  return CLI::Validator(
      [low, rule](std::string& text) -> std::string {
        const char* begin = text.c_str();
        char* end = nullptr;
        errno = 0;
        const long long v = std::strtoll(begin, &end, 10);
        if (text.empty() || end != begin + text.size() || errno == ERANGE)
          return "'" + text + "' is not " + rule;
        if (v < low) return text + " is not " + rule;
        return {};
      },
      rule);
}

/// The one-line message of a command-line error, "<program>: error: ...".
inline void one_line_errors(CLI::App& app, const std::string& program) {
  app.failure_message([program](const CLI::App*, const CLI::Error& e) {
    return program + ": error: " + e.what() + " (see --help)\n";
  });
  app.footer("Exit status: 0 on success, 1 when the run fails (the message says why), 2 for a usage error "
             "(a bad option or value).");
}

/// Parses argv; on an error prints it (or --help) and returns the exit code
/// to leave with, otherwise -1.
inline int parse_or_exit_code(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
    return -1;
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? exit_success : exit_usage;
  }
}

/// The output folder of a run. It is created when the object is, and if the
/// run fails (the object is destroyed without keep()) a folder that this
/// run created is removed again as long as no file was written into it, so
/// that a failed run leaves nothing behind; a folder that existed before,
/// or holds anything, is never touched.
class output_folder {
 public:
  explicit output_folder(std::filesystem::path path) : path_(std::move(path)) {
    std::error_code ec;
    created_ = !std::filesystem::exists(path_, ec);
    std::filesystem::create_directories(path_);
  }
  output_folder(const output_folder&) = delete;
  output_folder& operator=(const output_folder&) = delete;
  ~output_folder() {
    if (kept_ || !created_) return;
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(path_, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec))
      if (!it->is_directory(ec)) return;  // something was written: keep it all
    if (!ec) std::filesystem::remove_all(path_, ec);
  }

  const std::filesystem::path& path() const { return path_; }
  /// The run succeeded (or wrote something worth keeping).
  void keep() { kept_ = true; }

 private:
  std::filesystem::path path_;
  bool created_ = false;
  bool kept_ = false;
};

}  // namespace opnorm::command_line
