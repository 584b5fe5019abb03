// tve predict: classification only, one JSON line per image.

#include <iostream>
#include <memory>

#include "cli.hpp"
#include "tve/log.hpp"
#include "tve/pipeline.hpp"
#include "tve/predict.hpp"
#include "tve/runtime.hpp"

namespace tve::cli {
namespace {

struct PredictCliOptions {
  std::vector<std::string> inputs;
  std::string model;  // empty: the shipped default (models/DEFAULT)
  std::string head = "target";
  int top_k = 5;
  int batch_size = 8;
  int64_t max_pixels = ImageLimits{}.max_pixels;
};

int run(const CommonOptions& common, const PredictCliOptions& options) {
  const auto inputs = expand_inputs(options.inputs, std::cin);
  Bundle bundle = load_bundle_for_run(common, options.model, options.batch_size, inputs.size());
  Head& head = bundle.head(options.head);
  if (inputs.empty()) {
    logger().error("no images found in the inputs given");
    return kNoInputSucceeded;
  }
  PredictOptions predict;
  predict.top_k = options.top_k;
  predict.batch.batch_size = options.batch_size;
  predict.batch.limits.max_pixels = options.max_pixels;
  predict.batch.prefetch = decode_in_parallel(bundle.device(), current_thread_settings());
  predict.batch.decode_threads = decode_threads(bundle.device());
  const auto summary = run_predict(bundle, head, inputs, predict, print_json_line);
  logger().info("{} image(s) predicted, {} failed", summary.succeeded, summary.failed);
  return exit_code_for(summary.succeeded, summary.failed);
}

}  // namespace

Command add_predict_command(CLI::App& tve, CommonOptions& common) {
  auto options = std::make_shared<PredictCliOptions>();
  auto* command = tve.add_subcommand("predict", "Classify images: one JSON line per image on stdout");
  add_inputs_option(command, options->inputs, /*required=*/true);
  add_model_option(command, options->model);
  command->add_option("--head", options->head, "Head to classify with: target or a downstream task")->capture_default_str();
  command->add_option("-k,--top-k", options->top_k, "Classes reported per image")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  add_batch_size_option(command, options->batch_size);
  add_max_pixels_option(command, options->max_pixels);
  add_common_options(command, common);
  return {command, [&common, options] { return run(common, *options); }, /*runs_models=*/true};
}

}  // namespace tve::cli
