#include "tve/explain.hpp"

#include <torch/torch.h>

#include <fstream>
#include <memory>
#include <sstream>

#include "tve/atomic_file.hpp"
#include "tve/error.hpp"
#include "tve/log.hpp"
#include "tve/npy.hpp"
#include "tve/predict.hpp"
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

// Records beyond this size are not ours (a map of 1,000 classes on a 64 x 64 grid is ~100 MB).
constexpr std::uintmax_t kMaxRecordBytes = 256ull << 20;

// The record of an earlier run that completed `input` the way this run would, or null: its JSON
// output parses, carries `identity` (model, head, method, parameters, settings) unchanged, and
// names exactly the outputs this run would write, each of which exists.
json completed_record(const InputFile& input, const json& identity, const ExplainOptions& options) {
  const fs::path file = *output_paths(input, 1, options).json;
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) return nullptr;
  const auto size = fs::file_size(file, ec);
  if (ec || size > kMaxRecordBytes) return nullptr;
  std::ifstream in(file, std::ios::binary);
  json record = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!record.is_object()) return nullptr;
  for (const auto& [key, value] : identity.items()) {
    if (!record.contains(key) || record[key] != value) return nullptr;
  }
  if (!record.contains("explained") || !record["explained"].is_array() || record["explained"].empty()) return nullptr;
  const json expected = to_json(output_paths(input, static_cast<int64_t>(record["explained"].size()), options));
  if (!record.contains("outputs") || record["outputs"] != expected) return nullptr;
  for (const auto& [kind, value] : expected.items()) {
    for (const auto& path : value.is_array() ? value : json::array({value})) {
      if (!fs::is_regular_file(path.get<std::string>(), ec)) return nullptr;
    }
  }
  record.erase("settings");
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

BatchResult explain_batch(Bundle& bundle, Head& head, AttributionMethod& method, const torch::Tensor& images,
                          const ExplainOptions& options) {
  BatchResult result;
  const Stopwatch stopwatch;
  torch::Tensor embeddings, logits;  // [B,D], [B,C]
  {
    torch::InferenceMode no_autograd;
    embeddings = bundle.embed(images);
    logits = head.logits(embeddings);
  }
  constexpr int kReportedPredictions = 5;
  result.predictions = top_k(logits, head.spec.labels, std::max(options.top_k, kReportedPredictions));
  torch::Tensor classes = options.class_index
                              ? torch::full({images.size(0), 1}, *options.class_index, torch::kLong)
                              : std::get<1>(logits.topk(std::min<int64_t>(options.top_k, logits.size(1)), 1));
  classes = classes.to(bundle.device(), torch::kLong);
  const double good = static_cast<double>(images.size(0));
  result.forward_ms = stopwatch.milliseconds() / good;

  Attribution attribution = method.explain(bundle, head, images, classes, embeddings);
  result.maps = attribution.maps.to(torch::kCPU, torch::kFloat32).contiguous();
  result.explain_ms = 1e3 * attribution.seconds / good;
  result.cost = attribution.cost;
  result.classes = classes.to(torch::kCPU);
  result.probabilities = torch::softmax(logits.to(torch::kCPU, torch::kFloat32), 1);
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
  BatchOptions batch_options = options.batch;
  batch_options.keep_images = options.out_dir.has_value() && options.formats.overlay;
  if (options.resume) {
    const json identity{{"model", manifest.name}, {"head", head.spec.name},       {"method", method.name()},
                        {"parameters", method.parameters()}, {"settings", settings}};
    batch_options.reuse = [identity, &options](const InputFile& input) { return completed_record(input, identity, options); };
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

  // At most four batches are alive: one decoding, one in the model, one waiting for the writer,
  // one being written.
  SerialWorker writer;
  read_in_batches(inputs, manifest.input, batch_options, [&](std::vector<ImageJob>& jobs) {
    const torch::Tensor images = stack_good(jobs, bundle.device());  // [B,3,H,W], decoded images only
    auto batch = std::make_shared<BatchResult>();
    if (images.defined()) *batch = explain_batch(bundle, head, method, images, options);
    auto written = std::make_shared<std::vector<ImageJob>>(std::move(jobs));
    writer.submit([written, batch, &write_batch] { write_batch(*written, *batch); });
  });
  writer.finish();

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
