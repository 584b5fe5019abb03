// tve bench: explain cost against the model's own forward pass, measured in one process.

#include <iostream>
#include <memory>

#include "cli.hpp"
#include "tve/atomic_file.hpp"
#include "tve/benchmark.hpp"
#include "tve/log.hpp"
#include "tve/methods.hpp"
#include "tve/runtime.hpp"

namespace fs = std::filesystem;

namespace tve::cli {
namespace {

struct BenchCliOptions {
  std::string model;
  std::string method = "tve";
  MethodSettings method_settings;
  std::vector<std::string> inputs;
  size_t count = 0;  // 0: every image found
  int repeats = 20;
  int batch_size = 8;
  std::optional<std::string> out_dir;
  std::string formats = "overlay,npy,json";
};

int run(const CommonOptions& common, const BenchCliOptions& options) {
  // A benchmark always measures its thread counts: that is part of what it reports.
  Bundle bundle = load_bundle_for_run(common, options.model, options.batch_size, kMeasureThreadsFromImages,
                                      /*runs_in_lanes=*/true);
  Head& head = bundle.head("target");
  const auto method = make_method(options.method, bundle, options.method_settings);
  BenchmarkOptions bench;
  bench.repeats = options.repeats;
  bench.batch_size = options.batch_size;
  bench.prefetch = decode_in_parallel(bundle.device(), current_thread_settings());
  bench.decode_threads = decode_threads(bundle.device());
  bench.model_lanes = model_lanes(bundle.device(), current_thread_settings());
  bench.formats = parse_formats(options.formats);
  if (options.out_dir) {
    bench.out = fs::path(*options.out_dir);
    prepare_output_folder(*bench.out);
  }
  bench.files = expand_inputs(options.inputs, std::cin);
  if (options.count > 0 && bench.files.size() > options.count) bench.files.resize(options.count);
  if (!options.inputs.empty() && bench.files.empty()) {
    logger().error("no images found in the inputs given");
    return kNoInputSucceeded;
  }
  logger().info("benchmarking {} with {} ({} image(s) for throughput)", bundle.manifest().name, method->name(),
                bench.files.size());
  print_json_line(run_benchmark(bundle, head, *method, bench));
  return kSuccess;
}

}  // namespace

Command add_bench_command(CLI::App& tve, CommonOptions& common) {
  auto options = std::make_shared<BenchCliOptions>();
  auto* command = tve.add_subcommand("bench", "Measure explain cost against the model's own forward pass (one JSON line)");
  command->add_option("inputs", options->inputs, "Images or folders for the throughput run (optional)");
  add_model_option(command, options->model);
  add_method_option(command, options->method);
  add_method_settings(command, options->method_settings);
  command->add_option("--count", options->count, "Use at most this many images (0: all)")->capture_default_str();
  command->add_option("--repeats", options->repeats, "Timed runs for latency")->check(CLI::Range(1, 100000))->capture_default_str();
  add_batch_size_option(command, options->batch_size);
  command->add_option("-o,--out", options->out_dir, "Write the throughput run's outputs here (default: write nothing)");
  command->add_option("--format", options->formats, "Outputs written with --out")->capture_default_str();
  add_common_options(command, common);
  add_lanes_option(command, common);
  return {command, [&common, options] { return run(common, *options); }, /*runs_models=*/true};
}

}  // namespace tve::cli
