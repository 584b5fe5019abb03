#include "cli.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>

#include "tve/atomic_file.hpp"
#include "tve/image.hpp"
#include "tve/log.hpp"
#include "tve/methods.hpp"
#include "tve/model_paths.hpp"
#include "tve/runtime.hpp"

namespace fs = std::filesystem;

namespace tve::cli {

int exit_code_for_error(const Error& error) {
  if (dynamic_cast<const BundleError*>(&error)) return kBundleError;
  if (dynamic_cast<const DeviceError*>(&error)) return kDeviceError;
  if (dynamic_cast<const InvalidArgument*>(&error)) return kUsage;
  if (dynamic_cast<const ImageError*>(&error)) return kNoInputSucceeded;
  if (dynamic_cast<const OutputError*>(&error)) return kOutputError;
  return kInternalError;
}

int exit_code_for(size_t succeeded, size_t failed) {
  if (succeeded + failed == 0) return kNoInputSucceeded;
  if (failed == 0) return kSuccess;
  return succeeded == 0 ? kNoInputSucceeded : kSomeInputsFailed;
}

const CLI::Validator kFinite(
    [](const std::string& text) {
      double value = 0;
      if (!CLI::detail::lexical_cast(text, value) || !std::isfinite(value)) return "must be a finite number, got " + text;
      return std::string();
    },
    "FINITE");

const CLI::Validator kDeviceName(
    [](const std::string& text) {
      // The form only; whether the device exists is select_device's question (exit 5, not 2).
      const std::string prefix = "cuda:";
      const bool indexed = text.size() > prefix.size() && text.size() <= prefix.size() + 3 &&
                           text.compare(0, prefix.size(), prefix) == 0 &&
                           text.find_first_not_of("0123456789", prefix.size()) == std::string::npos;
      if (text == "auto" || text == "cpu" || text == "cuda" || indexed) return std::string();
      return "expected auto, cpu, cuda or cuda:N (N = 0, 1, ...), got '" + text + "'";
    },
    "DEVICE");

void add_common_options(CLI::App* command, CommonOptions& common) {
  command->add_option("--models-dir", common.models_dir, "Folder of model bundles searched first");
  command->add_option("--device", common.device, "auto (a GPU when this build and machine have one), cpu, cuda or cuda:N")
      ->check(kDeviceName)
      ->capture_default_str();
  command->add_option("--precision", common.precision,
                      "Number type of the model's passes: fp32, bf16 (fast on CPUs with AVX-512 BF16 and on GPUs) or "
                      "fp16 (GPUs only); maps and scores stay fp32 (docs/performance.md, \"Precision\")")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}))
      ->capture_default_str();
  command->add_option("--threads", common.threads, "Threads for LibTorch and BLAS (default: measured at start)")
      ->check(CLI::Range(1, 1024));
  command->add_flag("-v,--verbose", common.verbose, "More diagnostics on stderr");
  command->add_flag("-q,--quiet", common.quiet, "Only errors on stderr");
}

void add_lanes_option(CLI::App* command, CommonOptions& common) {
  command->add_option("--lanes", common.lanes,
                      "Batches computed side by side on the CPU, each on --threads threads (default: measured at start "
                      "for 32 images or more: one lane, or one lane per core up to 8)")
      ->check(CLI::Range(1, 1024));
}

void add_model_option(CLI::App* command, std::string& model) {
  command->add_option("-m,--model", model, "Bundle name or folder (default: models/DEFAULT)");
}

void add_batch_size_option(CLI::App* command, int& batch_size) {
  command->add_option("--batch-size", batch_size, "Images per forward pass")->check(CLI::Range(1, 4096))->capture_default_str();
}

void add_max_pixels_option(CLI::App* command, int64_t& max_pixels) {
  command->add_option("--max-pixels", max_pixels, "Refuse larger images before decoding")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
}

void add_head_options(CLI::App* command, HeadChoice& choice) {
  auto* head_option = command->add_option("--head", choice.name, "Head to explain: target or a downstream task of the bundle")
                          ->capture_default_str();
  command->add_option("--head-file", choice.file, "A TorchScript linear head on the bundle's encoder (e.g. from fit-head)")
      ->excludes(head_option);
  command->add_option("--labels", choice.labels_file, "Labels of --head-file, one per line (if the head has none inside)");
}

Head& choose_head(Bundle& bundle, HeadChoice& choice) {
  if (!choice.file) return bundle.head(choice.name);
  std::optional<std::vector<std::string>> labels;
  if (choice.labels_file) labels = read_labels_file(*choice.labels_file);
  choice.external = bundle.load_external_head(*choice.file, labels);
  return *choice.external;
}

std::string methods_help(const std::string& lead) {
  std::string help = lead + " (docs/methods.md):";
  for (const auto& entry : attribution_methods()) help += std::string("\n  ") + entry.name + ": " + entry.summary;
  return help;
}

void add_method_option(CLI::App* command, std::string& method) {
  command->add_option("--method", method, methods_help("Attribution method"))
      ->check(CLI::IsMember(method_names()))
      ->capture_default_str();
}

void add_method_settings(CLI::App* command, MethodSettings& settings) {
  command->add_option("--lambda-pos", settings.lambda_pos, "tve, occlusion: weight of the region-alone term (default: the bundle's)")
      ->check(kFinite);
  command->add_option("--lambda-neg", settings.lambda_neg, "tve, occlusion: weight of the region-removed term (default: the bundle's)")
      ->check(kFinite);
  // A flag function, not add_flag on the optional: CLI11 sets an optional<bool> flag to false even
  // when neither flag is given, which hid the bundle's own default.
  command->add_flag_function(
      "--smooth,!--no-smooth", [&settings](int64_t count) { settings.smooth = count > 0; },
      "tve: mean filter over the perturbation window (default: the bundle's)");
  command->add_option("--radius", settings.radius, "occlusion: window radius in cells (default: the bundle's)")
      ->check(CLI::Range(0, 128));
  command->add_option("--steps", settings.steps, "ig: quadrature points (default 32)")->check(CLI::Range(1, 1024));
  command->add_option("--samples", settings.samples, "smoothgrad, rise, kernelshap: random draws per image (defaults 25, 4000, 2000)")
      ->check(CLI::Range(1, 1000000));
  command->add_option("--seed", settings.seed, "smoothgrad, rise, kernelshap: random seed (default 0)");
  command->add_option("--rise-cells", settings.rise_cells, "rise: side of the coarse mask grid (default ceil(G/2))")
      ->check(CLI::Range(1, 1024));
}

void add_progress_option(CLI::App* command, std::string& mode) {
  command->add_option("--progress", mode, "Progress bar on stderr: auto (when a terminal), always, never")
      ->check(CLI::IsMember({"auto", "always", "never"}))
      ->capture_default_str();
}

void add_inputs_option(CLI::App* command, std::vector<std::string>& inputs, bool required) {
  auto* option = command->add_option("inputs", inputs, "Image files, folders (recursive), or - for paths on stdin");
  if (required) option->required();
}

std::optional<fs::path> as_path(const std::optional<std::string>& text) {
  return text ? std::optional<fs::path>(*text) : std::nullopt;
}

void print_json_line(const nlohmann::json& record) {
  // Past the stream buffers, in one piece: a full disk cuts no line (write_line_whole).
  std::cout.flush();
  std::fflush(stdout);
  write_line_whole(STDOUT_FILENO, record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n", "stdout");
}

namespace {

// The batch the thread measurement times: the thread split that wins on it wins on larger
// batches too (docs/performance.md), and the measurement's cost must not grow with --batch-size.
constexpr int kMeasureThreadsBatch = 8;

}  // namespace

Bundle load_bundle_for_run(const CommonOptions& common, const std::string& model, int batch_size, size_t images,
                           bool runs_in_lanes) {
  const torch::Device device = select_device(common.device);
  const Precision precision = parse_precision(common.precision);
  check_precision(device, precision);
  const auto search_dirs = model_search_dirs(as_path(common.models_dir));
  const fs::path dir = resolve_bundle(model.empty() ? default_model_name(search_dirs) : model, search_dirs);
  logger().debug("loading bundle {}", dir.string());
  Bundle bundle = Bundle::load(dir, device, precision);
  if (device.is_cpu()) {
    const auto blas = detect_blas();
    if (!blas.is_openblas) logger().warn("BLAS is {}", blas.description);
    if (const auto better = better_openblas_core(blas)) {
      // Only when the user asked for these kernels or the restart failed (main.cpp).
      // Measured cost: Prescott 4x, Haswell 1.5-2x on AVX-512 CPUs (docs/performance.md).
      logger().warn("OpenBLAS runs its {} kernels on a CPU that runs its {} ones: matrix multiplies are "
                    "slower (Prescott up to 4x, Haswell 1.5-2x); set {}={}",
                    blas.core, *better, kOpenBlasCoreVariable, *better);
    }
    const auto& input = bundle.manifest().input;
    auto sample = torch::zeros({std::min(batch_size, kMeasureThreadsBatch), 3, input.height, input.width});
    const bool measure = images >= kMeasureThreadsFromImages;
    const ThreadRequest request{common.threads, common.lanes, runs_in_lanes};
    const auto choice = measure ? choose_threads(
                                      [&] {
                                        torch::InferenceMode no_autograd;
                                        bundle.logits(sample);
                                      },
                                      request)
                                : default_threads(request);
    logger().info("threads: {} ({}{}); {}, {} kernels", to_string(choice.settings), choice.reason,
                  measure && !common.threads && !common.lanes ? ", on a batch of " + std::to_string(sample.size(0)) : "",
                  blas.description, blas.core.empty() ? "unknown" : blas.core);
  }
  logger().info("model {} ({}, {}x{} input) on {} in {} ({})", bundle.manifest().name, bundle.manifest().architecture,
                bundle.manifest().input.width, bundle.manifest().input.height, device.str(), to_string(precision),
                build_description());
  return bundle;
}

ProgressBar::ProgressBar(const std::string& mode) : enabled_(mode == "always" || (mode == "auto" && isatty(STDERR_FILENO))) {}

ProgressBar::~ProgressBar() {
  if (enabled_ && drawn_) std::fputc('\n', stderr);
}

void ProgressBar::update(size_t done, size_t total) {
  if (!enabled_ || total == 0) return;
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(kWidth * done / total);
  const double seconds = clock_.seconds();
  std::fprintf(stderr, "\r[%s%s] %zu/%zu images, %.1f images/s ", std::string(static_cast<size_t>(filled), '#').c_str(),
               std::string(static_cast<size_t>(kWidth - filled), ' ').c_str(), done, total,
               seconds > 0 ? static_cast<double>(done) / seconds : 0.0);
  std::fflush(stderr);
  drawn_ = true;
}

}  // namespace tve::cli
