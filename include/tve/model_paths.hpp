#pragma once
// Finding bundles by name: --models-dir, then $TVE_MODELS_DIR, then the shipped bundles: an
// installed binary's <prefix>/share/tve/models (found from the executable's own location,
// <prefix>/bin/tve), else, for a binary in a build folder, the source tree's models/.

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "tve/bundle.hpp"

namespace tve {

inline constexpr const char* kModelsDirEnv = "TVE_MODELS_DIR";

// The shipped bundles' folder: <prefix>/share/tve/models beside the executable (<prefix>/bin/tve)
// when that folder exists; else, for a binary inside the build folder (tve, the unit tests), the
// source tree's models/; else the first, which does not exist. An installed binary never reads the
// source tree.
std::filesystem::path shipped_models_dir();

// The folders searched, in order, that exist. Throws InvalidArgument when `models_dir_option`
// (--models-dir) is not an existing folder; warns when TVE_MODELS_DIR is not one.
std::vector<std::filesystem::path> model_search_dirs(const std::optional<std::filesystem::path>& models_dir_option);

// A path (contains a '/' or names an existing folder) is taken as is; a name is looked up in
// `search_dirs`. Throws BundleError listing the folders searched and the names found there.
std::filesystem::path resolve_bundle(const std::string& name_or_path, const std::vector<std::filesystem::path>& search_dirs);

// The bundle used when --model is not given: the name in the first search folder's DEFAULT file
// (one line), else "vit".
std::string default_model_name(const std::vector<std::filesystem::path>& search_dirs);

struct BundleListing {
  std::filesystem::path dir;
  std::optional<Manifest> manifest;  // empty when the manifest is invalid
  std::string error;                 // why it is invalid
  bool shadowed = false;             // an earlier folder has a bundle of the same name
};

// Every sub-folder with a manifest.json in `search_dirs`, sorted by name within each folder.
std::vector<BundleListing> list_bundles(const std::vector<std::filesystem::path>& search_dirs);

// One bundle folder's listing (its manifest read, or why it is invalid).
BundleListing list_bundle(const std::filesystem::path& bundle_dir);

// The record `tve models --json` prints for a bundle: name, path, architecture, input, grid,
// classes, heads, explainer, provenance; or the error that makes it invalid.
nlohmann::json to_json(const BundleListing& listing);

}  // namespace tve
