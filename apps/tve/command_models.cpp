// tve models: the bundles found, as a table or JSON lines; --check loads each one fully.

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli.hpp"
#include "tve/log.hpp"
#include "tve/model_paths.hpp"

namespace tve::cli {
namespace {

struct ModelsCliOptions {
  bool json = false;
  bool check = false;
  std::vector<std::string> models;  // only these bundles (names or folders); empty: all found
};

// "explainer fidelity 0.812 (Spearman vs exact occlusion, 20 held-out images); best baseline centre
// 0.640, gain +0.172": what scripts/train_explainer.py measured on the user's held-out images, next
// to the trivial maps it must beat (docs/own-model.md). Empty when the bundle has no such report.
std::string fidelity_summary(const nlohmann::json& provenance) {
  if (!provenance.is_object() || !provenance.contains("explainer")) return {};
  const auto& fidelity = provenance["explainer"].value("fidelity", nlohmann::json::object());
  const auto& gain = fidelity.value("gain_over_baselines", nlohmann::json::object());
  if (!gain.is_object() || !gain.contains("tve") || !gain.contains("gain")) return {};
  char line[256];
  std::snprintf(line, sizeof line,
                "  explainer fidelity %.3f (Spearman vs exact occlusion, %d held-out images); best baseline %s %.3f, "
                "gain %+.3f%s\n",
                gain.value("tve", 0.0), fidelity.value("held_out_images", 0),
                gain.value("best_baseline", std::string("?")).c_str(), gain.value("best_baseline_spearman", 0.0),
                gain.value("gain", 0.0), gain.value("gain", 0.0) <= 0.05 ? "  (NOT clearly better than the baseline)" : "");
  return line;
}

void print_row(const BundleListing& listing) {
  if (!listing.manifest) {
    std::printf("%-16s INVALID: %s\n", listing.dir.filename().string().c_str(), listing.error.c_str());
    return;
  }
  const auto& m = *listing.manifest;
  std::string heads;
  for (const auto& head : m.heads) heads += (heads.empty() ? "" : ",") + head.name;
  std::printf("%-16s %-7s %4dx%-4d grid %2dx%-2d %4zu classes  explainer %-3s  heads %s%s\n  %s\n", m.name.c_str(),
              m.architecture.c_str(), m.input.width, m.input.height, m.grid, m.grid, m.target.labels.size(),
              m.explainer ? "yes" : "no", heads.empty() ? "-" : heads.c_str(), listing.shadowed ? "  (shadowed)" : "",
              listing.dir.string().c_str());
  std::fputs(fidelity_summary(m.provenance).c_str(), stdout);
}

int run(const CommonOptions& common, const ModelsCliOptions& options) {
  const auto dirs = model_search_dirs(as_path(common.models_dir));
  std::vector<BundleListing> listings;
  if (options.models.empty()) {
    listings = list_bundles(dirs);
  } else {
    // A bundle asked for by name must exist: resolve_bundle's error (folders searched, names
    // found) is the answer to a typo, and a missing folder is a failed check, not an empty list.
    for (const auto& name : options.models) listings.push_back(list_bundle(resolve_bundle(name, dirs)));
  }
  bool all_valid = true;
  for (auto listing : listings) {
    if (options.check && listing.manifest) {
      try {
        Bundle::load(listing.dir, torch::kCPU);
      } catch (const Error& e) {
        listing.error = e.what();
        listing.manifest.reset();
      }
    }
    all_valid = all_valid && listing.manifest.has_value();
    if (options.json) {
      print_json_line(to_json(listing));
    } else {
      print_row(listing);
    }
  }
  if (listings.empty()) {
    std::string searched;
    for (const auto& dir : dirs) searched += " " + dir.string();
    logger().warn("no bundles found (searched:{})", searched.empty() ? " nothing: no models folder exists" : searched);
  }
  return all_valid ? kSuccess : kBundleError;
}

}  // namespace

Command add_models_command(CLI::App& tve, CommonOptions& common) {
  auto options = std::make_shared<ModelsCliOptions>();
  auto* command = tve.add_subcommand("models", "List the model bundles found");
  command->add_flag("--json", options->json, "One JSON line per bundle");
  command->add_flag("--check", options->check, "Load each bundle fully (hashes, shapes) instead of reading manifests");
  command->add_option("-m,--model", options->models, "Only this bundle (name or folder; repeatable), e.g. one made by scripts/make_bundle.py");
  add_common_options(command, common);
  return {command, [&common, options] { return run(common, *options); }, /*runs_models=*/false};
}

}  // namespace tve::cli
