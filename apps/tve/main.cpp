// tve: the command line. It parses options, calls the library and maps errors to exit codes;
// everything else lives in the library (include/tve). Results go to stdout as JSON lines,
// diagnostics to stderr.

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "tve/bundle.hpp"
#include "tve/error.hpp"
#include "tve/log.hpp"
#include "tve/model_paths.hpp"
#include "tve/pipeline.hpp"
#include "tve/predict.hpp"
#include "tve/runtime.hpp"
#include "tve/version.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Documented in README.md, "Exit codes".
enum ExitCode : int {
  kSuccess = 0,
  kSomeInputsFailed = 1,
  kUsage = 2,
  kBundleError = 3,
  kNoInputSucceeded = 4,
  kDeviceError = 5,
  kInternalError = 6,
};

struct CommonOptions {
  std::optional<std::string> models_dir;
  std::string device = "auto";
  std::optional<int> threads;
  bool verbose = false;
  bool quiet = false;
};

struct PredictOptions {
  std::vector<std::string> inputs;
  std::string model = "vit";
  std::string head = "target";
  int top_k = 5;
  int batch_size = 8;
  int64_t max_pixels = tve::ImageLimits{}.max_pixels;
};

struct ModelsOptions {
  bool json = false;
  bool check = false;
};

void print_json_line(const json& record) {
  std::cout << record.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
  std::cout.flush();  // a line at a time, so that `| jq` and progress watchers see results as they come
}

std::optional<fs::path> as_path(const std::optional<std::string>& text) {
  return text ? std::optional<fs::path>(*text) : std::nullopt;
}

// Loads the bundle named by --model on the chosen device and picks thread counts by measurement.
tve::Bundle load_bundle_for_run(const CommonOptions& common, const std::string& model, int batch_size) {
  const torch::Device device = tve::select_device(common.device);
  const fs::path dir = tve::resolve_bundle(model, tve::model_search_dirs(as_path(common.models_dir)));
  tve::logger().debug("loading bundle {}", dir.string());
  tve::Bundle bundle = tve::Bundle::load(dir, device);
  if (device.is_cpu()) {
    const auto blas = tve::detect_blas();
    if (!blas.is_openblas) tve::logger().warn("BLAS is {}", blas.description);
    const auto& input = bundle.manifest().input;
    auto sample = torch::zeros({batch_size, 3, input.height, input.width});
    const auto choice = tve::choose_threads(
        [&] {
          torch::InferenceMode no_autograd;
          bundle.logits(sample);
        },
        common.threads);
    tve::logger().info("threads: {} ({}); {}", tve::to_string(choice.settings), choice.reason, blas.description);
  }
  tve::logger().info("model {} ({}, {}x{} input) on {}", bundle.manifest().name, bundle.manifest().architecture,
                     bundle.manifest().input.width, bundle.manifest().input.height, device.str());
  return bundle;
}

int exit_code_for(size_t succeeded, size_t failed) {
  if (succeeded + failed == 0) return kNoInputSucceeded;
  if (failed == 0) return kSuccess;
  return succeeded == 0 ? kNoInputSucceeded : kSomeInputsFailed;
}

int run_predict(const CommonOptions& common, const PredictOptions& options) {
  tve::Bundle bundle = load_bundle_for_run(common, options.model, options.batch_size);
  tve::Head& head = bundle.head(options.head);
  const auto inputs = tve::expand_inputs(options.inputs, std::cin);
  if (inputs.empty()) {
    tve::logger().error("no images found in the inputs given");
    return kNoInputSucceeded;
  }
  tve::BatchOptions batch_options;
  batch_options.batch_size = options.batch_size;
  batch_options.limits.max_pixels = options.max_pixels;

  size_t succeeded = 0, failed = 0;
  torch::InferenceMode no_autograd;
  tve::read_in_batches(inputs, bundle.manifest().input, batch_options, [&](std::vector<tve::ImageJob>& jobs) {
    const auto start = std::chrono::steady_clock::now();
    const torch::Tensor batch = tve::stack_good(jobs, bundle.device());
    std::vector<std::vector<tve::ClassScore>> scores;
    if (batch.defined()) scores = tve::top_k(head.logits(bundle.embed(batch)), head.spec.labels, options.top_k);
    const double model_ms = 1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    size_t row = 0;
    for (const auto& job : jobs) {
      json record{{"input", job.input.path.string()}, {"model", bundle.manifest().name}, {"head", head.spec.name}};
      if (!job.ok()) {
        ++failed;
        tve::logger().error("{}", job.error);
        record["error"] = job.error;
      } else {
        ++succeeded;
        const auto& best = scores[row++];
        record["class"] = tve::to_json(best.front());
        record["top_k"] = json::array();
        for (const auto& score : best) record["top_k"].push_back(tve::to_json(score));
        record["timings_ms"] = {{"decode", 1e3 * job.decode_seconds},
                                {"model_per_image", model_ms / static_cast<double>(scores.size())}};
      }
      print_json_line(record);
    }
  });
  tve::logger().info("{} image(s) predicted, {} failed", succeeded, failed);
  return exit_code_for(succeeded, failed);
}

json listing_json(const tve::BundleListing& listing) {
  json out{{"path", listing.dir.string()}, {"shadowed", listing.shadowed}};
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
  out["heads"] = json::object();
  for (const auto& head : m.heads) out["heads"][head.name] = {{"task", head.task}, {"classes", head.labels.size()}};
  out["explainer"] = m.explainer.has_value();
  if (!m.provenance.is_null()) out["provenance"] = m.provenance;
  return out;
}

int run_models(const CommonOptions& common, const ModelsOptions& options) {
  const auto dirs = tve::model_search_dirs(as_path(common.models_dir));
  const auto listings = tve::list_bundles(dirs);
  bool all_valid = true;
  for (auto listing : listings) {
    if (options.check && listing.manifest) {
      try {
        tve::Bundle::load(listing.dir, torch::kCPU);
      } catch (const tve::Error& e) {
        listing.error = e.what();
        listing.manifest.reset();
      }
    }
    all_valid = all_valid && listing.manifest.has_value();
    if (options.json) {
      print_json_line(listing_json(listing));
      continue;
    }
    if (!listing.manifest) {
      std::printf("%-16s INVALID: %s\n", listing.dir.filename().string().c_str(), listing.error.c_str());
      continue;
    }
    const auto& m = *listing.manifest;
    std::string heads;
    for (const auto& head : m.heads) heads += (heads.empty() ? "" : ",") + head.name;
    std::printf("%-16s %-7s %4dx%-4d grid %2dx%-2d %4zu classes  explainer %-3s  heads %s%s\n  %s\n", m.name.c_str(),
                m.architecture.c_str(), m.input.width, m.input.height, m.grid, m.grid, m.target.labels.size(),
                m.explainer ? "yes" : "no", heads.empty() ? "-" : heads.c_str(), listing.shadowed ? "  (shadowed)" : "",
                listing.dir.string().c_str());
  }
  if (listings.empty()) {
    std::string searched;
    for (const auto& dir : dirs) searched += " " + dir.string();
    tve::logger().warn("no bundles found (searched:{})", searched.empty() ? " nothing: no models folder exists" : searched);
  }
  return all_valid ? kSuccess : kBundleError;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tve: explain image classifiers with TVE, the Transferable Vision Explainer"};
  app.set_version_flag("--version", std::string("tve ") + tve::kVersion);
  app.require_subcommand(1);
  app.footer(R"(Examples:
  tve models                                   list the model bundles found
  tve predict image.png --model vit            classify one image, one JSON line on stdout
  tve predict photos/ --model vit --top-k 3    every image under a folder
  find . -name '*.jpg' | tve predict - --model resnet

Exit codes: 0 all inputs succeeded, 1 some failed, 2 usage error, 3 bad or missing model bundle,
4 no input succeeded, 5 device unavailable, 6 internal error.
Models are looked up in --models-dir, then $TVE_MODELS_DIR, then the shipped models/ folder.)");

  CommonOptions common;
  auto add_common = [&](CLI::App* command) {
    command->add_option("--models-dir", common.models_dir, "Folder of model bundles searched first");
    command->add_option("--device", common.device, "cpu, cuda or auto")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
    command->add_option("--threads", common.threads, "Threads for LibTorch and BLAS (default: measured at start)")
        ->check(CLI::Range(1, 1024));
    command->add_flag("-v,--verbose", common.verbose, "More diagnostics on stderr");
    command->add_flag("-q,--quiet", common.quiet, "Only errors on stderr");
  };

  PredictOptions predict;
  auto* predict_cmd = app.add_subcommand("predict", "Classify images: one JSON line per image on stdout");
  predict_cmd->add_option("inputs", predict.inputs, "Image files, folders (recursive), or - for paths on stdin")->required();
  predict_cmd->add_option("-m,--model", predict.model, "Bundle name or folder")->capture_default_str();
  predict_cmd->add_option("--head", predict.head, "Head to classify with: target or a downstream task")->capture_default_str();
  predict_cmd->add_option("-k,--top-k", predict.top_k, "Classes reported per image")->check(CLI::Range(1, 100000))->capture_default_str();
  predict_cmd->add_option("--batch-size", predict.batch_size, "Images per forward pass")->check(CLI::Range(1, 4096))->capture_default_str();
  predict_cmd->add_option("--max-pixels", predict.max_pixels, "Refuse larger images before decoding")->check(CLI::PositiveNumber)->capture_default_str();
  add_common(predict_cmd);

  ModelsOptions models;
  auto* models_cmd = app.add_subcommand("models", "List the model bundles found");
  models_cmd->add_flag("--json", models.json, "One JSON line per bundle");
  models_cmd->add_flag("--check", models.check, "Load each bundle fully (hashes, shapes) instead of reading manifests");
  add_common(models_cmd);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? kSuccess : kUsage;
  }
  if (common.quiet) tve::logger().set_level(spdlog::level::err);
  if (common.verbose) tve::logger().set_level(spdlog::level::debug);

  try {
    if (*predict_cmd) return run_predict(common, predict);
    if (*models_cmd) return run_models(common, models);
  } catch (const tve::BundleError& e) {
    tve::logger().error("{}", e.what());
    return kBundleError;
  } catch (const tve::DeviceError& e) {
    tve::logger().error("{}", e.what());
    return kDeviceError;
  } catch (const tve::InvalidArgument& e) {
    tve::logger().error("{}", e.what());
    return kUsage;
  } catch (const std::exception& e) {
    tve::logger().error("internal error: {}", e.what());
    return kInternalError;
  }
  return kUsage;
}
