#pragma once
// Small helpers shared by the unit tests: fixture paths, temporary folders, bundle copies.

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "tve/input_spec.hpp"

namespace tve::test {

namespace fs = std::filesystem;

// A 32 x 32 input (the tiny bundles' size), stretched, mean 0.5 and std 0.25 per channel.
inline InputSpec spec32() {
  InputSpec spec;
  spec.height = spec.width = 32;
  spec.mean = {0.5f, 0.5f, 0.5f};
  spec.std = {0.25f, 0.25f, 0.25f};
  return spec;
}

inline fs::path fixtures() { return TVE_TEST_FIXTURES_DIR; }
inline fs::path image_fixture(const std::string& name) { return fixtures() / "images" / name; }
inline fs::path bundle_part(const std::string& name) { return fixtures() / "bundle_parts" / name; }
inline fs::path shipped_bundle(const std::string& name) { return fs::path(TVE_TEST_MODELS_DIR) / name; }

// A fresh folder under the system temp dir, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    std::random_device seed;
    path_ = fs::temp_directory_path() / ("tve-test-" + std::to_string(seed()) + std::to_string(seed()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

inline nlohmann::json read_json(const fs::path& file) {
  std::ifstream in(file);
  return nlohmann::json::parse(in);
}

inline void write_text(const fs::path& file, const std::string& text) {
  fs::create_directories(file.parent_path());
  std::ofstream(file, std::ios::binary) << text;
}

// Copies a shipped bundle into `dir`/name and applies `edit` to its manifest.
inline fs::path copy_bundle(const std::string& name, const fs::path& dir,
                            const std::function<void(nlohmann::json&)>& edit = {}) {
  const fs::path copy = dir / name;
  fs::copy(shipped_bundle(name), copy, fs::copy_options::recursive);
  if (edit) {
    auto manifest = read_json(copy / "manifest.json");
    edit(manifest);
    write_text(copy / "manifest.json", manifest.dump(2));
  }
  return copy;
}

// Expects `fn` to throw exception type E whose message contains every one of `fragments`.
template <typename E, typename Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> fragments) {
  try {
    fn();
    ADD_FAILURE() << "expected an exception containing '" << *fragments.begin() << "'";
  } catch (const E& e) {
    const std::string message = e.what();
    for (const auto& fragment : fragments) {
      EXPECT_NE(message.find(fragment), std::string::npos) << "message: " << message << "\nmissing: " << fragment;
    }
  }
}

}  // namespace tve::test
