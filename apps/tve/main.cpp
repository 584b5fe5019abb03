// tve: the command line. It parses options, calls the library and maps errors to exit codes;
// everything else lives in the library (include/tve). Results go to stdout as JSON lines,
// diagnostics to stderr.

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "tve/atomic_file.hpp"
#include "tve/benchmark.hpp"
#include "tve/bundle.hpp"
#include "tve/error.hpp"
#include "tve/explain.hpp"
#include "tve/fit_head.hpp"
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
  kOutputError = 7,
};

int exit_code_for_error(const tve::Error& error) {
  if (dynamic_cast<const tve::BundleError*>(&error)) return kBundleError;
  if (dynamic_cast<const tve::DeviceError*>(&error)) return kDeviceError;
  if (dynamic_cast<const tve::InvalidArgument*>(&error)) return kUsage;
  if (dynamic_cast<const tve::ImageError*>(&error)) return kNoInputSucceeded;
  if (dynamic_cast<const tve::OutputError*>(&error)) return kOutputError;
  return kInternalError;
}

// CLI11's Range lets NaN through (every comparison with NaN is false); a NaN or infinite lambda or
// alpha would only show up later as a map of NaNs.
const CLI::Validator kFinite(
    [](const std::string& text) {
      double value = 0;
      if (!CLI::detail::lexical_cast(text, value) || !std::isfinite(value)) return "must be a finite number, got " + text;
      return std::string();
    },
    "FINITE");

struct CommonOptions {
  std::optional<std::string> models_dir;
  std::string device = "auto";
  std::optional<int> threads;
  bool verbose = false;
  bool quiet = false;
};

struct PredictOptions {
  std::vector<std::string> inputs;
  std::string model;  // empty: the shipped default (models/DEFAULT)
  std::string head = "target";
  int top_k = 5;
  int batch_size = 8;
  int64_t max_pixels = tve::ImageLimits{}.max_pixels;
};

struct ExplainCliOptions {
  std::vector<std::string> inputs;
  std::string model;  // empty: the shipped default (models/DEFAULT)
  std::string head = "target";
  std::optional<std::string> head_file;
  std::optional<std::string> labels_file;
  std::string method = "tve";
  std::optional<std::string> class_spec;
  int top_k = 1;
  std::optional<double> lambda_pos;
  std::optional<double> lambda_neg;
  std::optional<bool> smooth;
  std::optional<std::string> out_dir;
  std::string formats = "overlay,npy,json";
  std::string colormap = "jet";
  double alpha = 0.5;
  int batch_size = 8;
  int64_t max_pixels = tve::ImageLimits{}.max_pixels;
  std::string progress = "auto";
  bool resume = false;
  std::optional<std::string> shard;
};

struct FitHeadCliOptions {
  std::string model;  // empty: the shipped default (models/DEFAULT)
  std::string data;
  std::string out;
  double held_out = 0.2;
  int steps = 500;
  uint64_t seed = 0;
  int batch_size = 16;
};

struct BenchCliOptions {
  std::string model;
  std::string method = "tve";
  std::vector<std::string> inputs;
  size_t count = 0;  // 0: every image found
  int repeats = 20;
  int batch_size = 8;
  std::optional<std::string> out_dir;
  std::string formats = "overlay,npy,json";
};

struct ModelsOptions {
  bool json = false;
  bool check = false;
};

// Results on stdout, a line at a time, so that `| jq` and progress watchers see them as they come.
// A line that cannot be written (full disk, closed pipe reader aside: SIGPIPE ends the process as
// usual) stops the run: a script reading stdout would otherwise get a cut, silent result.
void print_json_line(const json& record) {
  std::cout << record.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
  std::cout.flush();
  if (!std::cout) throw tve::OutputError("stdout", std::string("cannot write results: ") + std::strerror(errno));
}

std::optional<fs::path> as_path(const std::optional<std::string>& text) {
  return text ? std::optional<fs::path>(*text) : std::nullopt;
}

// Measuring thread counts costs about a dozen forward passes: worth it from this many images on.
constexpr size_t kMeasureThreadsFromImages = 32;
// The batch the measurement times: the thread split that wins on it wins on larger batches too
// (docs/performance.md), and the measurement's cost must not grow with --batch-size.
constexpr int kMeasureThreadsBatch = 8;

// Loads the bundle named by --model on the chosen device and picks thread counts, by measurement
// when the run is long enough (`images`) to repay it.
tve::Bundle load_bundle_for_run(const CommonOptions& common, const std::string& model, int batch_size, size_t images) {
  const torch::Device device = tve::select_device(common.device);
  const auto search_dirs = tve::model_search_dirs(as_path(common.models_dir));
  const fs::path dir = tve::resolve_bundle(model.empty() ? tve::default_model_name(search_dirs) : model, search_dirs);
  tve::logger().debug("loading bundle {}", dir.string());
  tve::Bundle bundle = tve::Bundle::load(dir, device);
  if (device.is_cpu()) {
    const auto blas = tve::detect_blas();
    if (!blas.is_openblas) tve::logger().warn("BLAS is {}", blas.description);
    if (const auto better = tve::better_openblas_core(blas)) {
      // Only when the user asked for these kernels or the restart failed (restart_with_better_blas_kernels).
      // Measured cost: Prescott 4x, Haswell 1.5-2x on AVX-512 CPUs (docs/performance.md).
      tve::logger().warn("OpenBLAS runs its {} kernels on a CPU that runs its {} ones: matrix multiplies are "
                         "slower (Prescott up to 4x, Haswell 1.5-2x); set {}={}",
                         blas.core, *better, tve::kOpenBlasCoreVariable, *better);
    }
    const auto& input = bundle.manifest().input;
    auto sample = torch::zeros({std::min(batch_size, kMeasureThreadsBatch), 3, input.height, input.width});
    const auto choice = images < kMeasureThreadsFromImages ? tve::default_threads(common.threads)
                                                           : tve::choose_threads(
                                                                 [&] {
                                                                   torch::InferenceMode no_autograd;
                                                                   bundle.logits(sample);
                                                                 },
                                                                 common.threads);
    tve::logger().info("threads: {} ({}{}); {}, {} kernels", tve::to_string(choice.settings), choice.reason,
                       images < kMeasureThreadsFromImages || common.threads
                           ? ""
                           : ", on a batch of " + std::to_string(sample.size(0)),
                       blas.description, blas.core.empty() ? "unknown" : blas.core);
  }
  tve::logger().info("model {} ({}, {}x{} input) on {}", bundle.manifest().name, bundle.manifest().architecture,
                     bundle.manifest().input.width, bundle.manifest().input.height, device.str());
  return bundle;
}

// OpenBLAS picked its kernels as this process loaded it, before main(). When it fell back to a
// generic set on a CPU with wider vector units (tve::better_openblas_core), runs this program again
// with the right set requested through OPENBLAS_CORETYPE, which it reads only as it loads: one more
// start-up (0.7-1.1 s here) for matrix multiplies up to 4x faster (docs/performance.md). A user's
// own OPENBLAS_CORETYPE is respected. Returns only when nothing was restarted.
void restart_with_better_blas_kernels(char** argv) {
  if (std::getenv(tve::kOpenBlasCoreVariable) != nullptr) return;
  const auto blas = tve::detect_blas();
  const auto better = tve::better_openblas_core(blas);
  if (!better) return;
  tve::logger().debug("OpenBLAS chose its {} kernels on a CPU that runs its {} ones: restarting with {}={}", blas.core,
                      *better, tve::kOpenBlasCoreVariable, *better);
  setenv(tve::kOpenBlasCoreVariable, better->c_str(), 1);
  execv("/proc/self/exe", argv);
  tve::logger().debug("restart failed ({}); carrying on with the {} kernels", std::strerror(errno), blas.core);
  unsetenv(tve::kOpenBlasCoreVariable);
}

int exit_code_for(size_t succeeded, size_t failed) {
  if (succeeded + failed == 0) return kNoInputSucceeded;
  if (failed == 0) return kSuccess;
  return succeeded == 0 ? kNoInputSucceeded : kSomeInputsFailed;
}

int run_predict(const CommonOptions& common, const PredictOptions& options) {
  const auto inputs = tve::expand_inputs(options.inputs, std::cin);
  tve::Bundle bundle = load_bundle_for_run(common, options.model, options.batch_size, inputs.size());
  tve::Head& head = bundle.head(options.head);
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

// A one-line progress bar on stderr, redrawn in place; only when stderr is a terminal (or forced).
class ProgressBar {
 public:
  explicit ProgressBar(const std::string& mode)
      : enabled_(mode == "always" || (mode == "auto" && isatty(STDERR_FILENO))),
        start_(std::chrono::steady_clock::now()) {}
  ~ProgressBar() {
    if (enabled_ && drawn_) std::fputc('\n', stderr);
  }
  void update(size_t done, size_t total) {
    if (!enabled_ || total == 0) return;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(kWidth * done / total);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::fprintf(stderr, "\r[%s%s] %zu/%zu images, %.1f images/s ", std::string(static_cast<size_t>(filled), '#').c_str(),
                 std::string(static_cast<size_t>(kWidth - filled), ' ').c_str(), done, total,
                 seconds > 0 ? static_cast<double>(done) / seconds : 0.0);
    std::fflush(stderr);
    drawn_ = true;
  }

 private:
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
};

std::unique_ptr<tve::AttributionMethod> make_method(const ExplainCliOptions& options, const tve::Bundle& bundle) {
  const tve::Manifest& m = bundle.manifest();
  if (options.method == "tve") {
    if (!bundle.has_explainer()) {
      throw tve::BundleError(m.dir, "bundle has no explainer, so --method tve is unavailable; try --method occlusion");
    }
    tve::TveOptions tve_options = tve::TveMethod::defaults_for(m);
    if (options.lambda_pos) tve_options.lambda_pos = *options.lambda_pos;
    if (options.lambda_neg) tve_options.lambda_neg = *options.lambda_neg;
    if (options.smooth) tve_options.smooth = *options.smooth;
    return std::make_unique<tve::TveMethod>(tve_options);
  }
  // The quantity TVE amortises: the same window and lambdas as the bundle's explainer.
  const tve::TveOptions bundle_defaults = tve::TveMethod::defaults_for(m);
  tve::OcclusionOptions occlusion;
  occlusion.radius = m.radius;
  occlusion.lambda_pos = bundle_defaults.lambda_pos;
  occlusion.lambda_neg = bundle_defaults.lambda_neg;
  if (options.lambda_pos) occlusion.lambda_pos = *options.lambda_pos;
  if (options.lambda_neg) occlusion.lambda_neg = *options.lambda_neg;
  return std::make_unique<tve::WindowedOcclusion>(occlusion);
}

int run_explain(const CommonOptions& common, const ExplainCliOptions& options) {
  tve::ExplainOptions explain;
  explain.formats = tve::parse_formats(options.formats);
  explain.overlay.colormap = tve::parse_colormap(options.colormap);
  explain.overlay.alpha = options.alpha;
  explain.resume = options.resume;
  explain.write_summary = true;
  if (options.shard) explain.shard = tve::parse_shard(*options.shard, [](const char* name) { return std::getenv(name); });
  if (options.out_dir) {
    explain.out_dir = fs::path(*options.out_dir);
    tve::prepare_output_folder(*explain.out_dir);  // an unusable --out is exit 7 before any model work
  }
  const auto found = tve::expand_inputs(options.inputs, std::cin, {explain.out_dir});
  const auto inputs = tve::take_shard(found, explain.shard);
  if (explain.shard.count > 1) {
    tve::logger().info("shard {}/{}: {} of {} input(s)", explain.shard.index, explain.shard.count, inputs.size(), found.size());
  }
  if (found.empty()) {
    tve::logger().error("no images found in the inputs given");
    return kNoInputSucceeded;
  }
  tve::Bundle bundle = load_bundle_for_run(common, options.model, options.batch_size, inputs.size());
  std::optional<tve::Head> external;
  if (options.head_file) {
    std::optional<std::vector<std::string>> labels;
    if (options.labels_file) labels = tve::read_labels_file(*options.labels_file);
    external = bundle.load_external_head(*options.head_file, labels);
  }
  tve::Head& head = external ? *external : bundle.head(options.head);
  auto method = make_method(options, bundle);

  if (options.class_spec) explain.class_index = tve::resolve_class(head, *options.class_spec);
  explain.top_k = options.top_k;
  explain.batch.batch_size = options.batch_size;
  explain.batch.limits.max_pixels = options.max_pixels;
  explain.batch.prefetch = tve::decode_in_parallel(bundle.device(), tve::current_thread_settings());

  tve::logger().info("explaining {} image(s) with {} on head '{}' ({} classes){}", inputs.size(), method->name(),
                     head.spec.name, head.spec.labels.size(),
                     explain.out_dir ? ", writing to " + explain.out_dir->string() : "");
  ProgressBar progress(options.progress);
  const auto summary = tve::run_explain(bundle, head, *method, inputs, explain,
                                        {print_json_line, [&](size_t done, size_t total) { progress.update(done, total); }});
  tve::logger().info("{} image(s) explained{}, {} failed{}; peak memory {:.0f} MiB", summary.succeeded - summary.resumed,
                     summary.resumed ? " (" + std::to_string(summary.resumed) + " more done by an earlier run)" : "",
                     summary.failed, explain.out_dir ? "; outputs in " + explain.out_dir->string() : "",
                     tve::peak_rss_mib());
  if (inputs.empty()) return kSuccess;  // an empty shard of a job array: nothing to do is not a failure
  return exit_code_for(summary.succeeded, summary.failed);
}

int run_fit_head(const CommonOptions& common, const FitHeadCliOptions& options) {
  const auto data = tve::scan_labelled_folder(options.data);
  tve::Bundle bundle = load_bundle_for_run(common, options.model, options.batch_size, data.files.size());
  tve::logger().info("fitting a linear head on {} image(s) of {} classes from {}", data.files.size(),
                     data.class_names.size(), options.data);
  tve::FitHeadOptions fit;
  fit.held_out_fraction = options.held_out;
  fit.steps = options.steps;
  fit.seed = options.seed;
  fit.batch.batch_size = options.batch_size;
  const auto start = std::chrono::steady_clock::now();
  const auto result = tve::fit_linear_head(bundle, data, fit, [](const std::string& error) { tve::logger().error("{}", error); });
  tve::save_linear_head(options.out, result);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  json record{{"head", options.out}, {"model", bundle.manifest().name}, {"classes", result.labels},
              {"train_images", result.train_count}, {"held_out_images", result.held_out_count},
              {"failed_images", result.failed_images}, {"train_accuracy", result.train_accuracy},
              {"seconds", seconds}};
  if (result.held_out_count > 0) record["held_out_accuracy"] = result.held_out_accuracy;
  print_json_line(record);
  tve::logger().info("head written to {}: held-out accuracy {:.1f}% on {} image(s); explain with --head-file {}",
                     options.out, 100 * result.held_out_accuracy, result.held_out_count, options.out);
  return result.failed_images == 0 ? kSuccess : kSomeInputsFailed;
}

int run_bench(const CommonOptions& common, const BenchCliOptions& options) {
  // A benchmark always measures its thread counts: that is part of what it reports.
  tve::Bundle bundle = load_bundle_for_run(common, options.model, options.batch_size, kMeasureThreadsFromImages);
  tve::Head& head = bundle.head("target");
  ExplainCliOptions method_options;
  method_options.method = options.method;
  auto method = make_method(method_options, bundle);
  tve::BenchmarkOptions bench;
  bench.repeats = options.repeats;
  bench.batch_size = options.batch_size;
  bench.prefetch = tve::decode_in_parallel(bundle.device(), tve::current_thread_settings());
  bench.formats = tve::parse_formats(options.formats);
  if (options.out_dir) {
    bench.out = fs::path(*options.out_dir);
    tve::prepare_output_folder(*bench.out);
  }
  bench.files = tve::expand_inputs(options.inputs, std::cin);
  if (options.count > 0 && bench.files.size() > options.count) bench.files.resize(options.count);
  if (!options.inputs.empty() && bench.files.empty()) {
    tve::logger().error("no images found in the inputs given");
    return kNoInputSucceeded;
  }
  tve::logger().info("benchmarking {} with {} ({} image(s) for throughput)", bundle.manifest().name, method->name(),
                     bench.files.size());
  print_json_line(tve::run_benchmark(bundle, head, *method, bench));
  return kSuccess;
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
  tve::keep_freed_memory();  // before the first tensor: see runtime.hpp
  CLI::App app{"tve: explain image classifiers with TVE, the Transferable Vision Explainer"};
  app.set_version_flag("--version", std::string("tve ") + tve::kVersion);
  app.require_subcommand(1);
  app.footer(R"(Examples:
  tve explain image.png --model vit --out out      heatmap overlay, raw map and JSON in out/
  tve explain photos/ --model vit --top-k 3 --out out --format overlay
  tve explain scans/ --model vit --head fashion    a downstream head the explainer never saw
  tve fit-head --model vit --data labelled/ --out my_head.pt
  tve explain labelled/ --model vit --head-file my_head.pt --out out
  tve predict image.png --model vit                classify only, one JSON line per image
  find . -name '*.jpg' | tve explain - --model resnet --out out
  tve models                                       list the model bundles found

Exit codes: 0 all inputs succeeded, 1 some failed, 2 usage error, 3 bad or missing model bundle,
4 no input succeeded, 5 device unavailable, 6 internal error, 7 output could not be written.
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
  predict_cmd->add_option("-m,--model", predict.model, "Bundle name or folder (default: models/DEFAULT)");
  predict_cmd->add_option("--head", predict.head, "Head to classify with: target or a downstream task")->capture_default_str();
  predict_cmd->add_option("-k,--top-k", predict.top_k, "Classes reported per image")->check(CLI::Range(1, 100000))->capture_default_str();
  predict_cmd->add_option("--batch-size", predict.batch_size, "Images per forward pass")->check(CLI::Range(1, 4096))->capture_default_str();
  predict_cmd->add_option("--max-pixels", predict.max_pixels, "Refuse larger images before decoding")->check(CLI::PositiveNumber)->capture_default_str();
  add_common(predict_cmd);

  ExplainCliOptions explain;
  auto* explain_cmd = app.add_subcommand("explain", "Attribution heatmaps: overlays, raw maps and a JSON line per image");
  explain_cmd->add_option("inputs", explain.inputs, "Image files, folders (recursive), or - for paths on stdin")->required();
  explain_cmd->add_option("-m,--model", explain.model, "Bundle name or folder (default: models/DEFAULT)");
  auto* head_option = explain_cmd->add_option("--head", explain.head, "Head to explain: target or a downstream task of the bundle")->capture_default_str();
  explain_cmd->add_option("--head-file", explain.head_file, "A TorchScript linear head on the bundle's encoder (e.g. from fit-head)")
      ->excludes(head_option);
  explain_cmd->add_option("--labels", explain.labels_file, "Labels of --head-file, one per line (if the head has none inside)");
  explain_cmd->add_option("--method", explain.method, "tve (one explainer pass) or occlusion (2*G*G model passes, exact)")
      ->check(CLI::IsMember({"tve", "occlusion"}))->capture_default_str();
  auto* class_option = explain_cmd->add_option("-c,--class", explain.class_spec, "Class to explain, by index or label (default: top-1)");
  explain_cmd->add_option("-k,--top-k", explain.top_k, "Explain the K most likely classes (same forward pass)")
      ->check(CLI::Range(1, 1000))->excludes(class_option)->capture_default_str();
  explain_cmd->add_option("--lambda-pos", explain.lambda_pos, "Weight of the region-alone term (default: the bundle's)")->check(kFinite);
  explain_cmd->add_option("--lambda-neg", explain.lambda_neg, "Weight of the region-removed term (default: the bundle's)")->check(kFinite);
  // A flag function, not add_flag on the optional: CLI11 sets an optional<bool> flag to false even
  // when neither flag is given, which hid the bundle's own default.
  explain_cmd->add_flag_function(
      "--smooth,!--no-smooth", [&explain](int64_t count) { explain.smooth = count > 0; },
      "Mean filter over the perturbation window (default: the bundle's)");
  explain_cmd->add_option("-o,--out", explain.out_dir, "Output folder; mirrors the inputs' paths (nothing written without it)");
  explain_cmd->add_option("--format", explain.formats, "What to write under --out: overlay,npy,json or none")->capture_default_str();
  explain_cmd->add_option("--colormap", explain.colormap, "jet, turbo, inferno or viridis")
      ->check(CLI::IsMember({"jet", "turbo", "inferno", "viridis"}))->capture_default_str();
  explain_cmd->add_option("--alpha", explain.alpha, "Heatmap opacity in overlays")->check(kFinite & CLI::Range(0.0, 1.0))->capture_default_str();
  explain_cmd->add_option("--batch-size", explain.batch_size, "Images per forward pass")->check(CLI::Range(1, 4096))->capture_default_str();
  explain_cmd->add_option("--max-pixels", explain.max_pixels, "Refuse larger images before decoding")->check(CLI::PositiveNumber)->capture_default_str();
  explain_cmd->add_option("--progress", explain.progress, "Progress bar on stderr: auto (when a terminal), always, never")
      ->check(CLI::IsMember({"auto", "always", "never"}))->capture_default_str();
  explain_cmd->add_flag("--resume", explain.resume,
                        "Skip inputs whose outputs under --out an earlier run completed with the same settings");
  explain_cmd->add_option("--shard", explain.shard,
                          "Explain only part K of N of the inputs (K/N, K from 0), split by path; auto or auto/N "
                          "read SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX (docs/cluster.md)");
  add_common(explain_cmd);

  FitHeadCliOptions fit;
  auto* fit_cmd = app.add_subcommand("fit-head", "Train a linear head on a frozen encoder from a labelled folder");
  fit_cmd->add_option("-m,--model", fit.model, "Bundle name or folder (default: models/DEFAULT)");
  fit_cmd->add_option("--data", fit.data, "Folder with one sub-folder of images per class")->required();
  fit_cmd->add_option("-o,--out", fit.out, "Where to write the head (TorchScript, labels inside)")->required();
  fit_cmd->add_option("--held-out", fit.held_out, "Fraction of each class held out for the accuracy")->check(kFinite & CLI::Range(0.0, 0.9))->capture_default_str();
  fit_cmd->add_option("--steps", fit.steps, "Optimisation steps (full batch)")->check(CLI::Range(1, 100000))->capture_default_str();
  fit_cmd->add_option("--seed", fit.seed, "Seed of the held-out split and initialisation")->capture_default_str();
  fit_cmd->add_option("--batch-size", fit.batch_size, "Images per forward pass")->check(CLI::Range(1, 4096))->capture_default_str();
  add_common(fit_cmd);

  BenchCliOptions bench;
  auto* bench_cmd = app.add_subcommand("bench", "Measure explain cost against the model's own forward pass (one JSON line)");
  bench_cmd->add_option("inputs", bench.inputs, "Images or folders for the throughput run (optional)");
  bench_cmd->add_option("-m,--model", bench.model, "Bundle name or folder (default: models/DEFAULT)");
  bench_cmd->add_option("--method", bench.method, "tve or occlusion")->check(CLI::IsMember({"tve", "occlusion"}))->capture_default_str();
  bench_cmd->add_option("--count", bench.count, "Use at most this many images (0: all)")->capture_default_str();
  bench_cmd->add_option("--repeats", bench.repeats, "Timed runs for latency")->check(CLI::Range(1, 100000))->capture_default_str();
  bench_cmd->add_option("--batch-size", bench.batch_size, "Images per forward pass")->check(CLI::Range(1, 4096))->capture_default_str();
  bench_cmd->add_option("-o,--out", bench.out_dir, "Write the throughput run's outputs here (default: write nothing)");
  bench_cmd->add_option("--format", bench.formats, "Outputs written with --out")->capture_default_str();
  add_common(bench_cmd);

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

  const bool may_compute_on_cpu = (*explain_cmd || *fit_cmd || *predict_cmd || *bench_cmd) && common.device != "cuda";
  if (may_compute_on_cpu) restart_with_better_blas_kernels(argv);
  tve::clean_up_temporaries_on_signals();  // Ctrl-C or a scheduler's SIGTERM leaves no temporary file

  int code = kUsage;
  try {
    if (*explain_cmd) code = run_explain(common, explain);
    if (*fit_cmd) code = run_fit_head(common, fit);
    if (*predict_cmd) code = run_predict(common, predict);
    if (*bench_cmd) code = run_bench(common, bench);
    if (*models_cmd) code = run_models(common, models);
  } catch (const tve::Error& e) {
    tve::logger().error("{}", e.what());
    return exit_code_for_error(e);
  } catch (const std::exception& e) {
    tve::logger().error("internal error: {}", e.what());
    return kInternalError;
  }
  // Whatever a command printed must have reached stdout (the listing of `tve models` included).
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
    tve::logger().error("stdout: cannot write results: {}", std::strerror(errno));
    return kOutputError;
  }
  return code;
}
