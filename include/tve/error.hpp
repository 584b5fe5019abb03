#pragma once
// One exception hierarchy for the whole library. Every error names the file it concerns (when
// there is one) and says what was expected, so that a message alone tells a user what to fix.
// The CLI maps each kind to an exit code (see README.md, "Exit codes"); a plain Error is an
// internal failure.

#include <filesystem>
#include <stdexcept>
#include <string>

namespace tve {

class Error : public std::runtime_error {
 public:
  Error(const std::filesystem::path& file, const std::string& what);
  explicit Error(const std::string& what);

  // The file the error concerns; empty when none does.
  const std::filesystem::path& file() const noexcept { return file_; }
  // The message without the file prefix.
  const std::string& detail() const noexcept { return detail_; }

 private:
  std::filesystem::path file_;
  std::string detail_;
};

// A model bundle is missing, malformed, or inconsistent with its manifest.
class BundleError : public Error {
  using Error::Error;
};

// An input image cannot be read, decoded or accepted (size limits).
class ImageError : public Error {
  using Error::Error;
};

// A request the library cannot honour as asked: unknown class label, bad option value, ...
class InvalidArgument : public Error {
  using Error::Error;
};

// The requested device is not available in this build or on this machine.
class DeviceError : public Error {
  using Error::Error;
};

// An output (a file under --out, a head file, stdout) could not be written. Raised before any
// model work when the output folder itself is unusable.
class OutputError : public Error {
  using Error::Error;
};

}  // namespace tve
