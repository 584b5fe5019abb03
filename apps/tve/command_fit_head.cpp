// tve fit-head: a linear head trained on a frozen encoder from a labelled folder, for explaining
// a new task with the bundle's explainer (TVE's transfer).

#include <memory>

#include "cli.hpp"
#include "tve/fit_head.hpp"
#include "tve/log.hpp"
#include "tve/runtime.hpp"

namespace tve::cli {
namespace {

struct FitHeadCliOptions {
  std::string model;  // empty: the shipped default (models/DEFAULT)
  std::string data;
  std::string out;
  double held_out = 0.2;
  int steps = 500;
  uint64_t seed = 0;
  int batch_size = 16;
};

int run(const CommonOptions& common, const FitHeadCliOptions& options) {
  const auto data = scan_labelled_folder(options.data);
  Bundle bundle = load_bundle_for_run(common, options.model, options.batch_size, data.files.size());
  logger().info("fitting a linear head on {} image(s) of {} classes from {}", data.files.size(), data.class_names.size(),
                options.data);
  FitHeadOptions fit;
  fit.held_out_fraction = options.held_out;
  fit.steps = options.steps;
  fit.seed = options.seed;
  fit.batch.batch_size = options.batch_size;
  fit.batch.prefetch = decode_in_parallel(bundle.device(), current_thread_settings());
  fit.batch.decode_threads = decode_threads(bundle.device());
  const Stopwatch stopwatch;
  const auto result = fit_linear_head(bundle, data, fit, [](const std::string& error) { logger().error("{}", error); });
  save_linear_head(options.out, result);
  auto record = fit_head_record(result, options.out, bundle.manifest().name, stopwatch.seconds());
  record["device"] = bundle.device().str();
  record["precision"] = to_string(bundle.precision());
  print_json_line(record);
  logger().info("head written to {}: held-out accuracy {:.1f}% on {} image(s); explain with --head-file {}", options.out,
                100 * result.held_out_accuracy, result.held_out_count, options.out);
  return result.failed_images == 0 ? kSuccess : kSomeInputsFailed;
}

}  // namespace

Command add_fit_head_command(CLI::App& tve, CommonOptions& common) {
  auto options = std::make_shared<FitHeadCliOptions>();
  auto* command = tve.add_subcommand("fit-head", "Train a linear head on a frozen encoder from a labelled folder");
  add_model_option(command, options->model);
  command->add_option("--data", options->data, "Folder with one sub-folder of images per class")->required();
  command->add_option("-o,--out", options->out, "Where to write the head (TorchScript, labels inside)")->required();
  command->add_option("--held-out", options->held_out, "Fraction of each class held out for the accuracy")
      ->check(kFinite & CLI::Range(0.0, 0.9))
      ->capture_default_str();
  command->add_option("--steps", options->steps, "Optimisation steps (full batch)")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  command->add_option("--seed", options->seed, "Seed of the held-out split and initialisation")->capture_default_str();
  add_batch_size_option(command, options->batch_size);
  add_common_options(command, common);
  return {command, [&common, options] { return run(common, *options); }, /*runs_models=*/true};
}

}  // namespace tve::cli
