// tve explain: attribution maps, overlays and a JSON record per image, with any registered method.

#include <cstdlib>
#include <iostream>
#include <iterator>
#include <memory>
#include <utility>

#include "cli.hpp"
#include "tve/atomic_file.hpp"
#include "tve/benchmark.hpp"
#include "tve/explain.hpp"
#include "tve/golden.hpp"
#include "tve/html_report.hpp"
#include "tve/log.hpp"
#include "tve/methods.hpp"
#include "tve/runtime.hpp"

namespace fs = std::filesystem;

namespace tve::cli {
namespace {

struct ExplainCliOptions {
  std::vector<std::string> inputs;
  std::string model;  // empty: the shipped default (models/DEFAULT)
  HeadChoice head;
  std::string method = "tve";
  MethodSettings method_settings;
  std::optional<std::string> class_spec;
  int top_k = 1;
  std::optional<std::string> out_dir;
  std::string formats = "overlay,npy,json";
  std::string colormap = "jet";
  double alpha = 0.5;
  bool formats_given = false;  // --format on the command line, not the default
  int batch_size = 8;
  int64_t max_pixels = ImageLimits{}.max_pixels;
  std::string progress = "auto";
  bool resume = false;
  std::optional<std::string> shard;
  std::optional<std::string> record_file;  // --record: write a golden file
  std::optional<std::string> expect_file;  // --expect: check against one
  std::optional<std::string> junit_file;
  bool report = false;  // --report: report.html under --out, a gallery of the overlays
  GoldenTolerances tolerances;
};

// What a golden file records about the run as a whole: a check names any difference.
nlohmann::json golden_identity(const Bundle& bundle, const Head& head, const AttributionMethod& method, const ExplainOptions& explain) {
  return {{"model", bundle.manifest().name},
          {"target_sha256", bundle.manifest().target.sha256},
          {"head", head.spec.name},
          {"head_sha256", head.spec.sha256},
          {"explainer_sha256",
           bundle.manifest().explainer ? nlohmann::json(bundle.manifest().explainer->sha256) : nlohmann::json(nullptr)},
          {"method", method.name()},
          {"parameters", method.parameters()},
          {"top_k", explain.top_k},
          {"class", explain.class_index ? nlohmann::json(*explain.class_index) : nlohmann::json(nullptr)}};
}

// --expect: the differences on stderr, JUnit XML if asked; exit 8 when any image differs.
int check_expectations(const ExplainCliOptions& options, const nlohmann::json& golden, const nlohmann::json& identity,
                       const std::vector<nlohmann::json>& records) {
  const auto check = check_against_golden(golden, identity, records, options.tolerances);
  for (const auto& note : check.run_notes) logger().warn("expect: {}", note);
  for (const auto& image : check.images) {
    for (const auto& problem : image.problems) logger().error("expect: {}: {}", image.input, problem);
  }
  if (options.junit_file) {
    write_file_atomically(*options.junit_file, junit_xml(check, "tve explain " + identity["model"].get<std::string>() + " " +
                                                                  identity["head"].get<std::string>()));
  }
  logger().info("expect: {} of {} image(s) as recorded in {}", check.images.size() - check.failed(), check.images.size(),
                *options.expect_file);
  return check.failed() ? kExpectationsFailed : kSuccess;
}

// --record, --expect and --junit name three different files, each named: writing one over
// another would lose a golden file or a report. A usage error, before any model work.
void check_golden_file_names(const ExplainCliOptions& options) {
  const std::pair<const char*, const std::optional<std::string>*> named[] = {
      {"--record", &options.record_file}, {"--expect", &options.expect_file}, {"--junit", &options.junit_file}};
  for (const auto& [option, file] : named) {
    if (*file && (*file)->empty()) throw InvalidArgument(std::string(option) + " names no file (an empty path)");
  }
  for (size_t i = 0; i < std::size(named); ++i) {
    for (size_t j = i + 1; j < std::size(named); ++j) {
      const auto &a = *named[i].second, &b = *named[j].second;
      if (a && b && same_file(*a, *b)) {
        throw InvalidArgument(std::string(named[i].first) + " " + *a + " and " + named[j].first + " " + *b +
                              " are the same file: one would overwrite the other");
      }
    }
  }
}

int run(const CommonOptions& common, ExplainCliOptions& options) {
  // Golden files first: one that cannot be used is a usage error, and an output that could not be
  // written (a folder, a pipe, a device, no permission) is exit 7, both before any model work.
  check_golden_file_names(options);
  const auto golden = options.expect_file ? read_golden(*options.expect_file) : nlohmann::json();
  if (options.record_file) prepare_output_file(*options.record_file);
  if (options.junit_file) prepare_output_file(*options.junit_file);
  ExplainOptions explain;
  explain.formats = parse_formats(options.formats);
  if (options.formats_given && !options.out_dir && (explain.formats.overlay || explain.formats.npy || explain.formats.json)) {
    // The files would go nowhere: say so instead of running and writing nothing.
    throw InvalidArgument("--format " + options.formats + " writes files under --out, and no --out was given");
  }
  if (options.report && !(options.out_dir && explain.formats.overlay)) {
    // The report shows the overlays written under --out: without them it would be an empty page.
    throw InvalidArgument("--report shows the overlays under --out: it needs --out and the overlay format");
  }
  explain.overlay.colormap = parse_colormap(options.colormap);
  explain.overlay.alpha = options.alpha;
  explain.resume = options.resume;
  explain.write_summary = true;
  if (options.shard) explain.shard = parse_shard(*options.shard, [](const char* name) { return std::getenv(name); });
  if (options.out_dir) {
    explain.out_dir = fs::path(*options.out_dir);
    prepare_output_folder(*explain.out_dir);  // an unusable --out is exit 7 before any model work
  }
  const auto found = expand_inputs(options.inputs, std::cin, {explain.out_dir, is_explain_output_name});
  const auto inputs = take_shard(found, explain.shard);
  if (explain.shard.count > 1) {
    logger().info("shard {}/{}: {} of {} input(s)", explain.shard.index, explain.shard.count, inputs.size(), found.size());
  }
  if (found.empty()) {
    logger().error("no images found in the inputs given");
    return kNoInputSucceeded;
  }
  Bundle bundle = load_bundle_for_run(common, options.model, options.batch_size, inputs.size(), /*runs_in_lanes=*/true);
  Head& head = choose_head(bundle, options.head);
  const auto method = make_method(options.method, bundle, options.method_settings);
  if (options.expect_file) check_golden_classes(golden, *options.expect_file, head.spec.labels, head.spec.name);

  if (options.class_spec) explain.class_index = resolve_class(head, *options.class_spec);
  explain.top_k = options.top_k;
  explain.batch.batch_size = options.batch_size;
  explain.batch.limits.max_pixels = options.max_pixels;
  explain.batch.prefetch = decode_in_parallel(bundle.device(), current_thread_settings());
  explain.batch.decode_threads = decode_threads(bundle.device());
  explain.batch.model_lanes = model_lanes(bundle.device(), current_thread_settings());

  logger().info("explaining {} image(s) with {} on head '{}' ({} classes){}", inputs.size(), method->name(),
                head.spec.name, head.spec.labels.size(),
                explain.out_dir ? ", writing to " + explain.out_dir->string() : "");
  ProgressBar progress(options.progress);
  std::vector<nlohmann::json> records;  // kept only for --record and --expect
  const bool keep_records = options.record_file || options.expect_file;
  std::vector<GalleryEntry> gallery;  // --report: what each record shows, not the record (its maps)
  const auto summary = run_explain(bundle, head, *method, inputs, explain,
                                   {[&](const nlohmann::json& record) {
                                      print_json_line(record);
                                      if (keep_records) records.push_back(record);
                                      if (options.report) gallery.push_back(explain_gallery_entry(record, *explain.out_dir));
                                    },
                                    [&](size_t done, size_t total) { progress.update(done, total); }});
  logger().info("{} image(s) explained{}, {} failed{}; peak memory {:.0f} MiB", summary.succeeded - summary.resumed,
                summary.resumed ? " (" + std::to_string(summary.resumed) + " more done by an earlier run)" : "",
                summary.failed, explain.out_dir ? "; outputs in " + explain.out_dir->string() : "", peak_rss_mib());
  if (options.report) {
    // Beside the run summary, and like it one per shard, so that the shards of a job array
    // never overwrite each other's.
    const fs::path report_file =
        *explain.out_dir / (explain.shard.count <= 1 ? std::string("report.html")
                                                     : "report.shard-" + std::to_string(explain.shard.index) + "-of-" +
                                                           std::to_string(explain.shard.count) + ".html");
    const nlohmann::json run{{"model", bundle.manifest().name}, {"head", head.spec.name},
                             {"method", method->name()},       {"parameters", method->parameters()},
                             {"inputs", inputs.size()},        {"explained", summary.succeeded - summary.resumed},
                             {"resumed", summary.resumed},     {"failed", summary.failed}};
    write_file_atomically(report_file, explain_report_html(run, gallery));
    logger().info("report: {}", report_file.string());
  }
  const auto identity = golden_identity(bundle, head, *method, explain);
  if (options.record_file && summary.succeeded == 0) {
    logger().error("nothing recorded: no image succeeded ({} left as it was)", *options.record_file);
  } else if (options.record_file) {
    write_file_atomically(*options.record_file, make_golden(identity, records).dump(1) + "\n");
    logger().info("recorded {} image(s) in {}{}", summary.succeeded, *options.record_file,
                  summary.failed ? " (" + std::to_string(summary.failed) + " failed image(s) left out)" : "");
  }
  if (options.expect_file) {
    const int verdict = check_expectations(options, golden, identity, records);
    if (verdict != kSuccess) return verdict;
  }
  if (inputs.empty()) return kSuccess;  // an empty shard of a job array: nothing to do is not a failure
  return exit_code_for(summary.succeeded, summary.failed);
}

}  // namespace

Command add_explain_command(CLI::App& tve, CommonOptions& common) {
  auto options = std::make_shared<ExplainCliOptions>();
  auto& o = *options;
  auto* command = tve.add_subcommand("explain", "Attribution heatmaps: overlays, raw maps and a JSON line per image");
  add_inputs_option(command, o.inputs, /*required=*/true);
  add_model_option(command, o.model);
  add_head_options(command, o.head);
  add_method_option(command, o.method);
  add_method_settings(command, o.method_settings);
  auto* class_option = command->add_option("-c,--class", o.class_spec, "Class to explain, by index or label (default: top-1)");
  command->add_option("-k,--top-k", o.top_k, "Explain the K most likely classes (same forward pass)")
      ->check(CLI::Range(1, 1000))
      ->excludes(class_option)
      ->capture_default_str();
  command->add_option("-o,--out", o.out_dir, "Output folder; mirrors the inputs' paths (nothing written without it)");
  command->add_option("--format", o.formats, "What to write under --out: overlay,npy,json or none")
      ->capture_default_str()
      ->each([&o](const std::string&) { o.formats_given = true; });
  command->add_option("--colormap", o.colormap, "jet, turbo, inferno or viridis")
      ->check(CLI::IsMember({"jet", "turbo", "inferno", "viridis"}))
      ->capture_default_str();
  command->add_option("--alpha", o.alpha, "Heatmap opacity in overlays")->check(kFinite & CLI::Range(0.0, 1.0))->capture_default_str();
  command->add_flag("--report", o.report,
                    "Also write report.html under --out: the overlays with each class's label and probability, "
                    "for a browser");
  add_batch_size_option(command, o.batch_size);
  add_max_pixels_option(command, o.max_pixels);
  add_progress_option(command, o.progress);
  command->add_flag("--resume", o.resume, "Skip inputs whose outputs under --out an earlier run completed with the same settings");
  command->add_option("--shard", o.shard,
                      "Explain only part K of N of the inputs (K/N, K from 0), split by path; auto or auto/N "
                      "read SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX (docs/cluster.md)");
  command->add_option("--record", o.record_file, "Write a golden file: each image's top-k and maps, for --expect (docs/ci.md)");
  auto* expect = command->add_option("--expect", o.expect_file,
                                     "Check the results against a golden file; exit 8 when an image differs (docs/ci.md)");
  command->add_option("--prob-tolerance", o.tolerances.probability, "--expect: largest change of the top-1 probability")
      ->check(kFinite & CLI::Range(0.0, 1.0))
      ->capture_default_str()
      ->needs(expect);
  command->add_option("--map-tolerance", o.tolerances.map_spearman, "--expect: smallest Spearman correlation with the recorded map")
      ->check(kFinite & CLI::Range(-1.0, 1.0))
      ->capture_default_str()
      ->needs(expect);
  command->add_option("--peak-tolerance", o.tolerances.peak_cells, "--expect: how many cells the map's peak may move")
      ->check(CLI::Range(0, 1000))
      ->capture_default_str()
      ->needs(expect);
  command->add_option("--junit", o.junit_file, "--expect: write the check as JUnit XML, one test case per image")->needs(expect);
  add_common_options(command, common);
  add_lanes_option(command, common);
  return {command, [&common, options] { return run(common, *options); }, /*runs_models=*/true};
}

}  // namespace tve::cli
