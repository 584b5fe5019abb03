// tve eval: faithfulness and cost of attribution methods side by side on a set of images.

#include <iostream>
#include <memory>
#include <sstream>

#include "cli.hpp"
#include "tve/atomic_file.hpp"
#include "tve/evaluate.hpp"
#include "tve/explain.hpp"
#include "tve/html_report.hpp"
#include "tve/log.hpp"
#include "tve/png.hpp"
#include "tve/render.hpp"
#include "tve/runtime.hpp"

namespace fs = std::filesystem;

namespace tve::cli {
namespace {

struct EvalCliOptions {
  std::vector<std::string> inputs;
  std::string model;
  HeadChoice head;
  std::vector<std::string> methods{"tve", "gradcam", "saliency", "ig", "occlusion"};
  MethodSettings method_settings;
  std::optional<std::string> class_spec;
  std::optional<std::string> masks;
  std::string insertion_start = "baseline";
  bool no_fidelity = false;
  std::string out_dir;
  int batch_size = 8;
  int64_t max_pixels = ImageLimits{}.max_pixels;
  std::string progress = "auto";
  bool resume = false;
};

int run(const CommonOptions& common, EvalCliOptions& options) {
  const fs::path out(options.out_dir);
  if (options.masks) {
    // A --masks that names nothing would only leave every image without its mask, unsaid.
    std::error_code ec;
    if (options.masks->empty()) throw InvalidArgument("--masks is empty; give the folder of <stem>.mask.png files");
    if (!fs::is_directory(*options.masks, ec)) {
      throw InvalidArgument("--masks " + *options.masks +
                            (fs::exists(*options.masks, ec) ? ": not a folder" : ": folder does not exist"));
    }
  }
  // What a run killed outright (kill -9) wrote of results.jsonl is under a temporary name, which
  // preparing the folder removes: --resume reads it first, with a finished run's results.jsonl.
  std::vector<fs::path> previous_files;
  if (options.resume) {
    previous_files = stale_temporaries_of(out / "results.jsonl");
    std::error_code ec;
    if (fs::is_regular_file(out / "results.jsonl", ec)) previous_files.push_back(out / "results.jsonl");
  }
  auto previous = read_previous_records(previous_files);
  prepare_output_folder(out);  // an unusable --out is exit 7 before any model work
  std::vector<InputFile> inputs;
  size_t masks_skipped = 0;
  // --out may be the images' folder: its images are inputs, eval's own outputs are not.
  InputScanOptions scan;
  scan.skip_folder = out;
  scan.is_output = [](const std::string& name) {
    const auto ends_with = [&name](const std::string& suffix) {
      return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    return name == "results.jsonl" || name == "summary.json" || name == "table.md" || name == "curves.png" ||
           name == "report.html" || ends_with(".overlay.png") || is_temporary_output_name(name);
  };
  for (auto& input : expand_inputs(options.inputs, std::cin, scan)) {
    if (input.error.empty() && is_mask_file(input.path)) {
      ++masks_skipped;  // a mask beside its image is not an image to evaluate
    } else {
      inputs.push_back(std::move(input));
    }
  }
  if (inputs.empty()) {
    logger().error("no images found in the inputs given");
    return kNoInputSucceeded;
  }
  Bundle bundle = load_bundle_for_run(common, options.model, options.batch_size, inputs.size());
  Head& head = choose_head(bundle, options.head);

  EvaluationOptions evaluation;
  evaluation.methods = options.methods;
  evaluation.method_settings = options.method_settings;
  if (options.class_spec) evaluation.class_index = resolve_class(head, *options.class_spec);
  if (options.masks) evaluation.masks = fs::path(*options.masks);
  evaluation.insertion_from_blur = options.insertion_start == "blur";
  evaluation.fidelity = !options.no_fidelity;
  evaluation.batch.batch_size = options.batch_size;
  evaluation.batch.limits.max_pixels = options.max_pixels;
  evaluation.batch.prefetch = decode_in_parallel(bundle.device(), current_thread_settings());
  evaluation.batch.decode_threads = decode_threads(bundle.device());
  // Records of another model, head or protocol are never mixed into this run's results.
  evaluation.settings = {{"model_sha256", bundle.manifest().target.sha256},
                         {"explainer_sha256", bundle.manifest().explainer ? nlohmann::json(bundle.manifest().explainer->sha256) : nlohmann::json()},
                         {"head_sha256", head.spec.sha256},
                         {"class", options.class_spec ? nlohmann::json(*options.class_spec) : nlohmann::json()},
                         {"masks", options.masks ? nlohmann::json(*options.masks) : nlohmann::json()},
                         {"insertion_start", options.insertion_start},
                         {"fidelity", evaluation.fidelity},
                         {"precision", to_string(bundle.precision())}};
  evaluation.previous = std::move(previous);
  logger().info("evaluating {} on {} image(s) of head '{}'{}", fmt::join(options.methods, ", "), inputs.size(),
                head.spec.name, masks_skipped ? fmt::format(" ({} mask file(s) not taken as images)", masks_skipped) : "");

  // results.jsonl grows with the run under a temporary name and appears whole at the end; a run
  // that fails or is stopped leaves no partial file.
  AtomicFileWriter results(out / "results.jsonl");
  ProgressBar progress(options.progress);
  // report.html's gallery: a small overlay per image and method under out/overlays, as the maps come.
  EvalGallery gallery(out, bundle.manifest().input);
  EvaluationCallbacks callbacks;
  callbacks.on_record = [&](const nlohmann::json& record) {
    results.append(record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
    gallery.add_record(record);
  };
  callbacks.on_progress = [&](size_t done, size_t total) { progress.update(done, total); };
  callbacks.on_map = [&](const ImageJob& job, const std::string& method, const torch::Tensor& map) {
    gallery.add_map(job, method, map);
  };
  const auto report = run_evaluation(bundle, head, inputs, evaluation, callbacks);
  results.commit();
  auto summary = report.summary();
  summary["model"] = bundle.manifest().name;
  summary["head"] = head.spec.name;
  summary["device"] = bundle.device().str();
  summary["precision"] = to_string(bundle.precision());
  summary["insertion_start"] = options.insertion_start;
  summary["fidelity_reference"] = evaluation.fidelity ? nlohmann::json("occlusion") : nlohmann::json(nullptr);
  summary["settings"] = evaluation.settings;
  summary["report"] = "report.html";  // with its overlays under overlays/
  write_file_atomically(out / "summary.json", summary.dump(2) + "\n");
  const std::string table = report.markdown_table();
  write_file_atomically(out / "table.md", table);
  write_file_atomically(out / "curves.png", encode_png(report.plot_curves()));
  write_file_atomically(out / "report.html", eval_report_html(summary, report, gallery.entries(inputs)));
  std::cout << table;
  std::cout.flush();
  if (!std::cout) throw OutputError("stdout", "cannot write the table");
  logger().info("{} image(s) evaluated{}, {} failed; results.jsonl, summary.json, table.md, curves.png and report.html in {}",
                report.images,
                report.resumed ? " (" + std::to_string(report.resumed) + " by an earlier run)" : "", report.failed, out.string());
  if (options.masks && report.without_mask) {
    logger().warn("{} of {} image(s) have no mask under {}", report.without_mask, report.images, *options.masks);
  }
  const int code = exit_code_for(report.images, report.failed);
  if (code == kSuccess && !report.mask_failures.empty()) {
    logger().error("{} mask(s) could not be used (summary.json, \"mask_failures\")", report.mask_failures.size());
    return kSomeInputsFailed;  // part of what was asked (the localisation measures) was not done
  }
  return code;
}

}  // namespace

Command add_eval_command(CLI::App& tve, CommonOptions& common) {
  auto options = std::make_shared<EvalCliOptions>();
  auto& o = *options;
  auto* command = tve.add_subcommand("eval", "Faithfulness and cost of attribution methods on a set of images");
  add_inputs_option(command, o.inputs, /*required=*/true);
  add_model_option(command, o.model);
  add_head_options(command, o.head);
  command->add_option("--methods", o.methods, methods_help("Methods to compare, comma-separated"))
      ->delimiter(',')
      ->check(CLI::IsMember(method_names()))
      ->capture_default_str();
  add_method_settings(command, o.method_settings);
  command->add_option("-c,--class", o.class_spec, "Class to explain, by index or label (default: each image's top-1)");
  command->add_option("--masks", o.masks, "Folder of object masks (<stem>.mask.png); default: beside each image");
  command->add_option("--insertion-start", o.insertion_start, "What insertion starts from: baseline (mean colour) or blur")
      ->check(CLI::IsMember({"baseline", "blur"}))
      ->capture_default_str();
  command->add_flag("--no-fidelity", o.no_fidelity,
                    "Skip the comparison with exact windowed occlusion (G*G passes per image and term of non-zero lambda)");
  command->add_option("-o,--out", o.out_dir, "Output folder: results.jsonl, summary.json, table.md, curves.png, report.html (its overlays in overlays/)")->required();
  add_batch_size_option(command, o.batch_size);
  add_max_pixels_option(command, o.max_pixels);
  add_progress_option(command, o.progress);
  command->add_flag("--resume", o.resume,
                    "Keep the records of an earlier run into --out (finished, or killed) made with the same settings; "
                    "evaluate the rest");
  add_common_options(command, common);
  return {command, [&common, options] { return run(common, *options); }, /*runs_models=*/true};
}

}  // namespace tve::cli
