#include "tve/explain.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <fstream>
#include <future>
#include <memory>
#include <sstream>

#include "tve/atomic_file.hpp"
#include "tve/error.hpp"
#include "tve/log.hpp"
#include "tve/npy.hpp"
#include "tve/png.hpp"
#include "tve/predict.hpp"
#include "detail/model_lanes.hpp"
#include "detail/serial_worker.hpp"
#include "tve/stopwatch.hpp"
#include "tve/version.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace tve {
namespace {

// [G,G] tensor -> nested JSON rows, row 0 at the top.
json rows_of(const torch::Tensor& map) {
  const auto cpu = map.to(torch::kCPU, torch::kFloat32).contiguous();
  json rows = json::array();
  for (int64_t r = 0; r < cpu.size(0); ++r) {
    const float* row = cpu[r].data_ptr<float>();
    rows.push_back(std::vector<float>(row, row + cpu.size(1)));
  }
  return rows;
}

// The files one input's outputs go to, by kind, for `classes` explained classes.
struct OutputPaths {
  std::vector<fs::path> overlays;
  std::optional<fs::path> npy;
  std::optional<fs::path> json;
};

OutputPaths output_paths(const InputFile& input, int64_t classes, const ExplainOptions& options) {
  const std::string base = (*options.out_dir / mirrored_output_path(input.path)).string();
  OutputPaths paths;
  if (options.formats.overlay) {
    for (int64_t k = 0; k < classes; ++k) {
      paths.overlays.emplace_back(base + (classes == 1 ? ".overlay.png" : ".top" + std::to_string(k + 1) + ".overlay.png"));
    }
  }
  if (options.formats.npy) paths.npy = base + ".map.npy";
  if (options.formats.json) paths.json = base + ".json";
  return paths;
}

}  // namespace

bool is_explain_output_name(const std::string& filename) {
  const auto ends_with = [&filename](const std::string& suffix) {
    return filename.size() >= suffix.size() && filename.compare(filename.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends_with(".overlay.png") || ends_with(".map.npy") || ends_with(".json") || is_temporary_output_name(filename) ||
         filename == ".tve-write-check";
}

namespace {

json to_json(const OutputPaths& paths) {
  json out = json::object();
  if (!paths.overlays.empty()) {
    out["overlay"] = json::array();
    for (const auto& file : paths.overlays) out["overlay"].push_back(file.string());
  }
  if (paths.npy) out["npy"] = paths.npy->string();
  if (paths.json) out["json"] = paths.json->string();
  return out;
}

// Writes the outputs of one image, the JSON record last: its presence marks the image as done
// (ExplainOptions::resume). Returns the paths written, by kind. On failure removes what it wrote
// for this image so that no partial set of outputs is left.
json write_outputs(const ImageJob& job, const torch::Tensor& maps, const json& record, const json& settings,
                   const ExplainOptions& options, const InputSpec& spec) {
  const OutputPaths paths = output_paths(job.input, maps.size(0), options);
  std::vector<fs::path> written;
  try {
    if (!paths.overlays.empty()) {
      const cv::Mat display = to_display_bgr8(*job.image);
      const CropBox region = input_region(display.cols, display.rows, spec);
      for (size_t k = 0; k < paths.overlays.size(); ++k) {
        write_file_atomically(paths.overlays[k],
                              encode_png(render_overlay(display, maps[static_cast<int64_t>(k)], region, options.overlay)));
        written.push_back(paths.overlays[k]);
      }
    }
    if (paths.npy) {
      const auto cpu = maps.to(torch::kCPU, torch::kFloat32).contiguous();  // [K,G,G]
      write_npy(*paths.npy, NpyArray{cpu.sizes().vec(), std::vector<float>(cpu.data_ptr<float>(), cpu.data_ptr<float>() + cpu.numel())});
      written.push_back(*paths.npy);
    }
    if (paths.json) {
      json full = record;
      full["outputs"] = to_json(paths);
      full["settings"] = settings;
      write_file_atomically(*paths.json, full.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
    }
  } catch (...) {
    std::error_code ignored;
    for (const auto& file : written) fs::remove(file, ignored);
    throw;
  }
  return to_json(paths);
}

// What makes two runs' outputs for an image interchangeable, beyond model, head, method and
// parameters (which every record carries): the exact files, the classes asked for, how overlays
// are drawn. Stored in each JSON output file and compared by --resume.
json output_settings(const Bundle& bundle, const Head& head, const ExplainOptions& options) {
  const Manifest& m = bundle.manifest();
  json settings{{"model_sha256", m.target.sha256}, {"head_sha256", head.spec.sha256}};
  if (m.explainer) settings["explainer_sha256"] = m.explainer->sha256;
  // bf16 maps differ from fp32 ones by more than rounding (docs/performance.md, "Precision"): not
  // interchangeable. The device is not compared: CPU and GPU results agree to float rounding.
  settings["precision"] = to_string(bundle.precision());
  if (options.class_index) {
    settings["class"] = *options.class_index;
  } else {
    settings["top_k"] = options.top_k;
  }
  settings["formats"] = {{"overlay", options.formats.overlay}, {"npy", options.formats.npy}, {"json", options.formats.json}};
  if (options.formats.overlay) {
    settings["overlay"] = {{"colormap", to_string(options.overlay.colormap)}, {"alpha", options.overlay.alpha}};
  }
  return settings;
}

// Runs of at least this many batches pad their partial batches to full size (run_explain).
constexpr size_t kPadFromBatches = 8;

// Records beyond this size are not ours (a map of 1,000 classes on a 64 x 64 grid is ~100 MB).
constexpr std::uintmax_t kMaxRecordBytes = 256ull << 20;

// What --resume compares an earlier run's outputs for an input with.
struct ResumeCheck {
  json identity;   // model, head, method, parameters and output settings: each must be equal
  size_t classes;  // maps per image this run would make
  int64_t grid;
};

// Whether `values` is a G x G map of numbers (JSON has no NaN: a non-finite value was written as null).
bool is_map(const json& values, int64_t grid) {
  if (!values.is_array() || static_cast<int64_t>(values.size()) != grid) return false;
  return std::all_of(values.begin(), values.end(), [grid](const json& row) {
    return row.is_array() && static_cast<int64_t>(row.size()) == grid &&
           std::all_of(row.begin(), row.end(), [](const json& v) { return v.is_number(); });
  });
}

// Whether `file` is a whole PNG: its signature first, its IEND chunk last (a cut file lacks it).
bool is_whole_png(const fs::path& file) {
  static const char kSignature[] = "\x89PNG\r\n\x1a\n";
  static const char kEnd[] = "\0\0\0\0IEND\xae\x42\x60\x82";
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) return false;
  std::ifstream in(file, std::ios::binary);
  char head[8], tail[12];
  if (!in.read(head, 8) || std::memcmp(head, kSignature, 8) != 0) return false;
  in.seekg(-12, std::ios::end);
  return in.read(tail, 12) && std::memcmp(tail, kEnd, 12) == 0;
}

// Whether `file` holds exactly the maps of `explained` ([K,G,G] float32, value for value).
bool npy_holds(const fs::path& file, const json& explained, int64_t grid) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) return false;
  NpyArray array;
  try {
    array = read_npy(file);
  } catch (const Error&) {
    return false;
  }
  const std::vector<int64_t> shape{static_cast<int64_t>(explained.size()), grid, grid};
  if (array.shape != shape) return false;
  size_t i = 0;
  for (const auto& map : explained) {
    for (const auto& row : map.at("values")) {
      for (const auto& v : row) {
        if (array.values[i++] != static_cast<float>(v.get<double>())) return false;
      }
    }
  }
  return true;
}

// The record of an earlier run that completed `input` the way this run would, or null, with why
// in `why` when there was a record (empty when there was none). Done means: the JSON record parses,
// holds no error, carries the same identity, and has one G x G map per class this run explains;
// each output this run would write is whole (an overlay is a complete PNG, the raw maps file holds
// exactly the record's maps). The record comes back with this run's paths for the input and its
// outputs: an earlier run may have spelt them, or --out, differently.
json completed_record(const InputFile& input, const ResumeCheck& check, const ExplainOptions& options, std::string& why) {
  const OutputPaths paths = output_paths(input, static_cast<int64_t>(check.classes), options);
  std::error_code ec;
  if (!fs::exists(*paths.json, ec)) return nullptr;
  const auto reject = [&why](const std::string& reason) {
    why = reason;
    return json(nullptr);
  };
  std::string text;
  try {
    text = read_regular_file(*paths.json, kMaxRecordBytes);
  } catch (const Error& e) {
    return reject(e.what());
  }
  json record = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!record.is_object()) return reject("its record is not a JSON object");
  if (record.contains("error")) return reject("its record holds an error");
  for (const auto& [key, value] : check.identity.items()) {
    if (!record.contains(key) || record[key] != value) return reject("its record has another " + key);
  }
  const json& explained = record["explained"];
  if (!explained.is_array() || explained.size() != check.classes) {
    return reject("its record does not hold " + std::to_string(check.classes) + " map(s)");
  }
  for (const auto& map : explained) {
    if (!map.is_object() || !is_map(map.value("values", json()), check.grid)) return reject("a map of its record is not G x G numbers");
  }
  if (!record["top_k"].is_array() || record["top_k"].empty()) return reject("its record has no top_k");
  for (const auto& overlay : paths.overlays) {
    if (!is_whole_png(overlay)) return reject(overlay.string() + " is missing or not a whole PNG");
  }
  if (paths.npy && !npy_holds(*paths.npy, explained, check.grid)) {
    return reject(paths.npy->string() + " is missing or does not hold the record's maps");
  }
  record.erase("settings");
  record["input"] = input.path.string();
  record["outputs"] = to_json(paths);
  record["resumed"] = true;
  return record;
}

}  // namespace

OutputFormats parse_formats(const std::string& list) {
  OutputFormats formats{false, false, false};
  if (list == "none") return formats;
  // An empty list or item ("", "npy,") would silently write less than asked: "none" says nothing.
  if (list.empty()) throw InvalidArgument("--format is empty; expected overlay, npy, json (comma-separated) or none");
  std::stringstream stream(list + ",");  // the extra comma makes a trailing empty item visible
  std::string item;
  while (std::getline(stream, item, ',')) {
    if (item.empty()) throw InvalidArgument("--format '" + list + "' has an empty item; expected overlay, npy, json (comma-separated) or none");
    if (item == "overlay") formats.overlay = true;
    else if (item == "npy") formats.npy = true;
    else if (item == "json") formats.json = true;
    else throw InvalidArgument("unknown output format '" + item + "'; expected overlay, npy, json (comma-separated) or none");
  }
  return formats;
}

int64_t resolve_class(const Head& head, const std::string& index_or_label) {
  const auto& labels = head.spec.labels;
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] == index_or_label) return static_cast<int64_t>(i);
  }
  const bool is_number = !index_or_label.empty() && index_or_label.find_first_not_of("0123456789") == std::string::npos;
  if (is_number && index_or_label.size() < 10) {
    const int64_t index = std::stoll(index_or_label);
    if (index < static_cast<int64_t>(labels.size())) return index;
    throw InvalidArgument("--class " + index_or_label + " is out of range: head '" + head.spec.name + "' has " +
                          std::to_string(labels.size()) + " classes (0.." + std::to_string(labels.size() - 1) + ")");
  }
  std::string examples;
  for (size_t i = 0; i < std::min<size_t>(labels.size(), 5); ++i) examples += (i ? ", " : "") + labels[i];
  throw InvalidArgument("--class '" + index_or_label + "' is neither an index nor a label of head '" + head.spec.name +
                        "' (labels: " + examples + (labels.size() > 5 ? ", ..." : "") + ")");
}

namespace {

// What one batch's model work produced, for the records of its good images (rows in input order).
struct BatchResult {
  std::vector<std::vector<ClassScore>> predictions;  // per row, the head's best classes
  torch::Tensor classes;                             // [B,K] int64, CPU: the explained classes
  torch::Tensor probabilities;                       // [B,C] f32, CPU
  torch::Tensor maps;                                // [B,K,G,G] f32, CPU
  AttributionCost cost;   // per image
  double forward_ms = 0;  // per image
  double explain_ms = 0;  // per image
};

// The model's kernels depend on the number of images in a call: a single image goes through
// matrix-vector products, larger calls through other blockings than smaller ones, each rounding
// differently (~1e-6). So that an image's results do not depend on how many others share its batch
// (the last one, a resumed run's), a batch of fewer than `rows` images is padded to `rows` with
// copies of its first image, whose results are dropped. 0: no padding.
BatchResult explain_batch(Bundle& bundle, Head& head, AttributionMethod& method, const torch::Tensor& batch_images,
                          int64_t rows, const ExplainOptions& options) {
  const int64_t real = batch_images.size(0);
  const torch::Tensor images =
      rows > real ? torch::cat({batch_images, batch_images.narrow(0, 0, 1).expand({rows - real, -1, -1, -1})}) : batch_images;
  BatchResult result;
  const Stopwatch stopwatch;
  // The method's forward pass: E(x) for the classes, and with TVE on an explainer that holds the
  // encoder, the meta-attributions too (so forward_ms then includes the explainer's work).
  const ForwardPass pass = method.forward_pass(bundle, images);
  torch::Tensor logits;  // [B,C]
  {
    torch::InferenceMode no_autograd;
    logits = head.logits(pass.embeddings);
  }
  constexpr int kReportedPredictions = 5;
  result.predictions = top_k(logits, head.spec.labels, std::max(options.top_k, kReportedPredictions));
  result.predictions.resize(static_cast<size_t>(real));
  torch::Tensor classes = options.class_index
                              ? torch::full({images.size(0), 1}, *options.class_index, torch::kLong)
                              : std::get<1>(logits.topk(std::min<int64_t>(options.top_k, logits.size(1)), 1));
  classes = classes.to(bundle.device(), torch::kLong);
  const double good = static_cast<double>(real);
  result.forward_ms = stopwatch.milliseconds() / good;

  Attribution attribution = method.explain(bundle, head, images, classes, pass);
  result.maps = attribution.maps.narrow(0, 0, real).to(torch::kCPU, torch::kFloat32).contiguous();
  result.explain_ms = 1e3 * attribution.seconds / good;
  result.cost = attribution.cost;
  result.classes = classes.narrow(0, 0, real).to(torch::kCPU);
  result.probabilities = torch::softmax(logits.narrow(0, 0, real).to(torch::kCPU, torch::kFloat32), 1);
  return result;
}

json record_head(const ImageJob& job, const Manifest& manifest, const Head& head, const AttributionMethod& method) {
  return {{"input", job.input.path.string()}, {"model", manifest.name}, {"head", head.spec.name},
          {"task", head.spec.task}, {"method", method.name()}};
}

json success_record(const ImageJob& job, const BatchResult& batch, int64_t row, const Manifest& manifest,
                    const Head& head, const AttributionMethod& method) {
  json record = record_head(job, manifest, head, method);
  record["parameters"] = method.parameters();
  record["grid"] = manifest.grid;
  record["top_k"] = json::array();
  for (const auto& score : batch.predictions[static_cast<size_t>(row)]) record["top_k"].push_back(to_json(score));
  record["explained"] = json::array();
  for (int64_t k = 0; k < batch.classes.size(1); ++k) {
    const int64_t c = batch.classes[row][k].item<int64_t>();
    record["explained"].push_back({{"index", c},
                                   {"label", head.spec.labels[static_cast<size_t>(c)]},
                                   {"probability", batch.probabilities[row][c].item<double>()},
                                   {"values", rows_of(batch.maps[row][k])}});
  }
  record["model_evaluations"] = batch.cost.model_evaluations();
  record["cost"] = {{"forward_passes", batch.cost.forward_passes},
                    {"backward_passes", batch.cost.backward_passes},
                    {"explainer_passes", batch.cost.explainer_passes},
                    {"ms", batch.explain_ms}};
  record["timings_ms"] = {{"decode", 1e3 * job.decode_seconds}, {"forward", batch.forward_ms}, {"explain", batch.explain_ms}};
  return record;
}

}  // namespace

std::string summary_file_name(const Shard& shard) {
  if (shard.count <= 1) return "tve-summary.json";
  return "tve-summary.shard-" + std::to_string(shard.index) + "-of-" + std::to_string(shard.count) + ".json";
}

ExplainSummary run_explain(Bundle& bundle, Head& head, AttributionMethod& method, const std::vector<InputFile>& inputs,
                           const ExplainOptions& options, const ExplainCallbacks& callbacks) {
  if (options.top_k < 1) throw InvalidArgument("--top-k must be at least 1");
  if (options.resume && !(options.out_dir && options.formats.json)) {
    throw InvalidArgument("--resume needs --out and the json format: an image's JSON record, written last, marks it done");
  }
  const Stopwatch run_time;
  const Manifest& manifest = bundle.manifest();
  const json settings = output_settings(bundle, head, options);
  const std::string device_name = bundle.device().str(), precision_name = to_string(bundle.precision());
  BatchOptions batch_options = options.batch;
  batch_options.keep_images = options.out_dir.has_value() && options.formats.overlay;
  std::atomic<size_t> redone{0};  // inputs with a record that --resume did not accept
  if (options.resume) {
    ResumeCheck check{{{"model", manifest.name},
                       {"head", head.spec.name},
                       {"method", method.name()},
                       {"parameters", method.parameters()},
                       {"settings", settings}},
                      options.class_index ? size_t{1} : std::min<size_t>(static_cast<size_t>(options.top_k), head.spec.labels.size()),
                      manifest.grid};
    batch_options.reuse = [check, &options, &redone](const InputFile& input) {
      std::string why;
      json record = completed_record(input, check, options, why);
      if (!why.empty()) {
        ++redone;
        logger().debug("--resume: {} is explained again: {}", input.path.string(), why);
      }
      return record;
    };
  }

  ExplainSummary summary;
  size_t done = 0;
  auto emit = [&](const json& record) {
    if (callbacks.on_record) callbacks.on_record(record);
  };
  auto fail = [&](const ImageJob& job, const std::string& error) {
    ++summary.failed;
    summary.failures.push_back({job.input.path.string(), error});
    logger().error("{}", error);
    json record = record_head(job, manifest, head, method);
    record["error"] = error;
    emit(record);
  };

  // Records and outputs of one batch, in input order. Runs on the writer thread, one batch behind
  // the model, so that rendering and writing overlap the next batch's model work. Only this thread
  // touches `summary`, `done` and the callbacks until writer.finish().
  auto write_batch = [&](std::vector<ImageJob>& jobs, const BatchResult& batch) {
    torch::InferenceMode no_autograd;
    int64_t row = 0;
    for (auto& job : jobs) {
      if (!job.ok()) {
        fail(job, job.error);
        continue;
      }
      if (job.reused()) {
        ++summary.succeeded;
        ++summary.resumed;
        emit(job.previous);
        continue;
      }
      const int64_t this_row = row++;
      // A NaN or infinity would be written as null in JSON and as a flat overlay: not a result.
      if (!torch::isfinite(batch.maps[this_row]).all().item<bool>() ||
          !torch::isfinite(batch.probabilities[this_row]).all().item<bool>()) {
        fail(job, job.input.path.string() + ": the model's output or the attribution map is not finite (NaN or infinity)" +
                      " with " + method.name() + " " + method.parameters().dump());
        continue;
      }
      const Stopwatch write_time;
      json record = success_record(job, batch, this_row, manifest, head, method);
      record["device"] = device_name;
      record["precision"] = precision_name;
      try {
        if (options.out_dir) {
          record["outputs"] = write_outputs(job, batch.maps[this_row], record, settings, options, manifest.input);
        }
      } catch (const Error& e) {
        fail(job, e.what());
        continue;
      } catch (const cv::Exception& e) {  // rendering or PNG encoding
        fail(job, job.input.path.string() + ": rendering the overlay failed: " + e.msg);
        continue;
      }
      record["timings_ms"]["write"] = write_time.milliseconds();
      ++summary.succeeded;
      emit(record);
      job.image.reset();  // the decoded image is no longer needed once its outputs are written
    }
    done += jobs.size();
    if (callbacks.on_progress) callbacks.on_progress(done, inputs.size());
  };

  // A run of several batches pads its partial ones (the last, a resumed run's) to full size, so
  // that its maps do not depend on how the inputs fell into batches (explain_batch): a resumed or
  // sharded run's maps are bit-identical to an uninterrupted run's. Only from kPadFromBatches
  // batches on, where the padding costs at most 1/kPadFromBatches more model work.
  const auto batch_size = static_cast<size_t>(options.batch.batch_size);
  const int64_t pad_to = inputs.size() >= kPadFromBatches * batch_size ? options.batch.batch_size : 0;
  // The model works on batches in its lanes (one, or one per core: BatchOptions::model_lanes),
  // and the writer takes them in input order. At most 3 + lanes.tasks_in_flight() batches are
  // alive: decoding, in the model or waiting for a lane, waiting for the writer, being written.
  SerialWorker writer;
  ModelLanes lanes(batch_options.model_lanes, at::get_num_threads());
  using Jobs = std::shared_ptr<std::vector<ImageJob>>;
  std::deque<std::pair<Jobs, std::future<BatchResult>>> in_model;
  auto write_oldest = [&] {
    auto [jobs, computing] = std::move(in_model.front());
    in_model.pop_front();
    auto batch = std::make_shared<BatchResult>(computing.get());  // a lane's failure is rethrown here
    writer.submit([jobs, batch, &write_batch] { write_batch(*jobs, *batch); });
  };
  read_in_batches(inputs, manifest.input, batch_options, [&](std::vector<ImageJob>& decoded) {
    auto jobs = std::make_shared<std::vector<ImageJob>>(std::move(decoded));
    const torch::Tensor images = stack_good(*jobs, bundle.device());  // [B,3,H,W], decoded images only
    in_model.emplace_back(jobs, lanes.run<BatchResult>([&, images] {
      return images.defined() ? explain_batch(bundle, head, method, images, pad_to, options) : BatchResult{};
    }));
    if (in_model.size() >= lanes.tasks_in_flight()) write_oldest();
  });
  while (!in_model.empty()) write_oldest();
  writer.finish();
  if (redone > 0) {
    logger().info("--resume: {} input(s) with outputs of an earlier run explained again (other settings, or outputs "
                  "incomplete, invalid or holding an error; -v names each)",
                  redone.load());
  }

  if (options.out_dir && options.write_summary) {
    json failures = json::array();
    for (const auto& failure : summary.failures) failures.push_back({{"input", failure.input}, {"error", failure.error}});
    const json record{{"tve_version", kVersion},
                      {"model", manifest.name},
                      {"model_dir", manifest.dir.string()},
                      {"head", head.spec.name},
                      {"method", method.name()},
                      {"parameters", method.parameters()},
                      {"settings", settings},
                      {"device", device_name},
                      {"precision", precision_name},
                      {"build", build_description()},
                      {"shard", {{"index", options.shard.index}, {"count", options.shard.count}}},
                      {"inputs", inputs.size()},
                      {"explained", summary.succeeded - summary.resumed},
                      {"resumed", summary.resumed},
                      {"failed", summary.failed},
                      {"failures", failures},
                      {"seconds", run_time.seconds()}};
    write_file_atomically(*options.out_dir / summary_file_name(options.shard),
                          record.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
  }
  return summary;
}

}  // namespace tve
