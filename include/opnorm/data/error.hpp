#pragma once
// data_error: the one exception every reader of the data layer throws for a
// file it cannot trust (missing, wrong format, truncated, inconsistent).
//
// The message always starts with the file's path, then says what is wrong,
// so a user who points a loader at the wrong folder or at a half-downloaded
// archive learns which file to fix without a debugger.
#include <filesystem>
#include <stdexcept>
#include <string>

namespace opnorm {

class data_error : public std::runtime_error {
 public:
  data_error(const std::filesystem::path& file, const std::string& problem)
      : std::runtime_error("opnorm: " + file.string() + ": " + problem) {}
};

}  // namespace opnorm
