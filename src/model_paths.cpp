#include "tve/model_paths.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <set>

#include "tve/error.hpp"
#include "tve/log.hpp"

namespace fs = std::filesystem;

namespace tve {
namespace {

fs::path executable_dir() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path();
}

bool is_bundle_dir(const fs::path& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir / "manifest.json", ec);
}

// --model given a model file (a scripted .pt, a .pth of weights) instead of a bundle is the
// commonest first mistake; say what to do rather than "folder does not exist" or "no bundle named".
bool looks_like_model_file(const fs::path& path) {
  static const std::set<std::string> extensions{".pt", ".pth", ".pt2", ".ckpt", ".safetensors", ".onnx", ".bin", ".jit"};
  std::error_code ec;
  return extensions.count(path.extension().string()) > 0 || fs::is_regular_file(path, ec);
}

BundleError model_file_error(const fs::path& path) {
  std::error_code ec;
  return BundleError(path, std::string(fs::exists(path, ec) ? "is a file" : "does not exist") +
                               ", not a bundle; --model takes a bundle folder (with manifest.json) or its name: make "
                               "one from a model or weights file with scripts/make_bundle.py (docs/own-model.md; "
                               "a scripted .pt: its section 'Scripted models')");
}

}  // namespace

fs::path shipped_models_dir() {
  // Relative to the executable, not a prefix compiled in: a prefix moved elsewhere, or a package
  // unpacked into a scratch root (dpkg -x), still finds its own bundles. Only a binary in the build
  // folder reads the source tree's: an installed one must not depend on a folder that may be gone,
  // or hold other bundles than it was installed with.
  const fs::path exe_dir = executable_dir();
  if (exe_dir.empty()) return TVE_SOURCE_MODELS_DIR;  // no /proc: where a build's binary finds them
  const fs::path installed = exe_dir.parent_path() / TVE_INSTALL_MODELS_SUBDIR;
  std::error_code ec;
  if (fs::is_directory(installed, ec)) return installed;
  // The build folder (CMakeLists.txt), as /proc/self/exe spells paths: without symbolic links.
  static const fs::path build_dir = fs::weakly_canonical(TVE_BUILD_DIR, ec);
  if (std::mismatch(build_dir.begin(), build_dir.end(), exe_dir.begin(), exe_dir.end()).first == build_dir.end()) {
    return TVE_SOURCE_MODELS_DIR;
  }
  return installed;
}

std::vector<fs::path> model_search_dirs(const std::optional<fs::path>& models_dir_option) {
  std::vector<fs::path> candidates;
  std::error_code checked;
  if (models_dir_option) {
    // A folder the user names must be there: skipping it would quietly load a bundle of the same
    // name from another folder, or report a name as unknown without saying why.
    if (models_dir_option->empty()) throw InvalidArgument("--models-dir is empty; give a folder of bundles");
    if (!fs::is_directory(*models_dir_option, checked)) {
      throw InvalidArgument("--models-dir " + models_dir_option->string() +
                            (fs::exists(*models_dir_option, checked) ? ": not a folder" : ": folder does not exist"));
    }
    candidates.push_back(*models_dir_option);
  }
  if (const char* env = std::getenv(kModelsDirEnv); env && *env) {
    if (!fs::is_directory(env, checked)) logger().warn("{}={} is not a folder; not searched for bundles", kModelsDirEnv, env);
    candidates.emplace_back(env);
  }
  candidates.push_back(shipped_models_dir());

  std::vector<fs::path> existing;
  for (const auto& dir : candidates) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;
    const fs::path canonical = fs::weakly_canonical(dir, ec);
    if (std::find(existing.begin(), existing.end(), canonical) == existing.end()) existing.push_back(canonical);
  }
  return existing;
}

fs::path resolve_bundle(const std::string& name_or_path, const std::vector<fs::path>& search_dirs) {
  if (name_or_path.empty()) throw BundleError("--model is empty; give a bundle name or a folder");
  const fs::path as_path(name_or_path);
  std::error_code ec;
  if (name_or_path.find('/') != std::string::npos || fs::is_directory(as_path, ec)) {
    if (!fs::is_directory(as_path, ec)) {
      if (looks_like_model_file(as_path)) throw model_file_error(as_path);
      throw BundleError(as_path, "bundle folder does not exist");
    }
    return as_path;
  }
  for (const auto& dir : search_dirs) {
    if (is_bundle_dir(dir / name_or_path)) return dir / name_or_path;
  }
  if (looks_like_model_file(as_path)) throw model_file_error(as_path);  // no bundle of that name either
  std::string searched;
  std::set<std::string> available;
  for (const auto& dir : search_dirs) {
    searched += (searched.empty() ? "" : ", ") + dir.string();
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      if (is_bundle_dir(entry.path())) available.insert(entry.path().filename().string());
    }
  }
  std::string names;
  for (const auto& name : available) names += (names.empty() ? "" : ", ") + name;
  throw BundleError("no bundle named '" + name_or_path + "' in " + (searched.empty() ? "(no models folder found)" : searched) +
                    (names.empty() ? "" : "; available: " + names) + " (set --models-dir or " + kModelsDirEnv + ")");
}

std::string default_model_name(const std::vector<fs::path>& search_dirs) {
  for (const auto& dir : search_dirs) {
    std::ifstream in(dir / "DEFAULT");
    std::string name;
    if (in && std::getline(in, name) && !name.empty()) return name;
  }
  return "vit";
}

std::vector<BundleListing> list_bundles(const std::vector<fs::path>& search_dirs) {
  std::vector<BundleListing> listings;
  std::set<std::string> seen;
  for (const auto& dir : search_dirs) {
    std::vector<fs::path> bundle_dirs;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      if (is_bundle_dir(entry.path())) bundle_dirs.push_back(entry.path());
    }
    std::sort(bundle_dirs.begin(), bundle_dirs.end());
    for (const auto& bundle_dir : bundle_dirs) {
      BundleListing listing = list_bundle(bundle_dir);
      listing.shadowed = !seen.insert(bundle_dir.filename().string()).second;
      listings.push_back(std::move(listing));
    }
  }
  return listings;
}

BundleListing list_bundle(const fs::path& bundle_dir) {
  BundleListing listing{bundle_dir, std::nullopt, "", false};
  try {
    listing.manifest = read_manifest(bundle_dir);
  } catch (const Error& e) {
    listing.error = e.what();
  }
  return listing;
}

nlohmann::json to_json(const BundleListing& listing) {
  nlohmann::json out{{"path", listing.dir.string()}, {"shadowed", listing.shadowed}};
  if (!listing.manifest) {
    out["name"] = listing.dir.filename().string();
    out["error"] = listing.error;
    return out;
  }
  const auto& m = *listing.manifest;
  out["name"] = m.name;
  out["description"] = m.description;
  out["architecture"] = m.architecture;
  out["input"] = {{"width", m.input.width}, {"height", m.input.height}};
  out["grid"] = m.grid;
  out["radius"] = m.radius;
  out["embedding_dim"] = m.embedding_dim;
  out["task"] = m.target.task;
  out["classes"] = m.target.labels.size();
  out["heads"] = nlohmann::json::object();
  for (const auto& head : m.heads) out["heads"][head.name] = {{"task", head.task}, {"classes", head.labels.size()}};
  out["explainer"] = m.explainer.has_value();
  if (!m.provenance.is_null()) out["provenance"] = m.provenance;
  return out;
}

}  // namespace tve
