#pragma once
// tve eval: how faithful each attribution method is on a set of images, and what it costs
// (docs/methods.md, "tve eval"). Per image and method: deletion and insertion curves of the
// explained class's probability, agreement with exact windowed occlusion, and with object masks
// the pointing game and the share of the map's mass above its median on the object. The run
// streams like explain: a batch of images in memory at a time, bad images reported and skipped.
// Time is measured per batch, after a warm-up of every method on one image.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "tve/bundle.hpp"
#include "tve/methods.hpp"
#include "tve/metrics.hpp"
#include "tve/pipeline.hpp"

namespace tve {

struct EvaluationOptions {
  std::vector<std::string> methods;
  MethodSettings method_settings;               // applied to every method (each reads what applies)
  std::optional<int64_t> class_index;           // else each image's top-1 class
  std::optional<std::filesystem::path> masks;   // a folder of masks; else masks are looked for beside the images
  bool insertion_from_blur = false;             // insertion starts from a blurred image instead of the baseline
  bool fidelity = true;                         // compare every map with exact windowed occlusion
  BatchOptions batch;
  // What, beyond each record's method and parameters, makes two runs' records interchangeable
  // (model, explainer and head hashes, insertion start, fidelity, class and masks asked for):
  // written into every record as "settings", and compared on resume.
  nlohmann::json settings = nlohmann::json::object();
  // Records of earlier runs by input path (as given), for resume: an input whose records there are
  // complete (one per method asked, none an error) and made with these settings and parameters is
  // not evaluated again; its records are passed on and counted as they are.
  std::map<std::string, std::vector<nlohmann::json>> previous;
};

// Records of earlier runs found in `files` (results.jsonl files, or what a killed run had written
// of one), by input: lines that do not parse (a line cut by kill -9) are skipped.
std::map<std::string, std::vector<nlohmann::json>> read_previous_records(const std::vector<std::filesystem::path>& files);

// Where the mask of `image` may be, in order of preference: <stem>.mask.png beside it (or, with
// `masks`, at the image's mirrored path under that folder, then directly in it).
std::vector<std::filesystem::path> mask_candidates(const std::filesystem::path& image,
                                                   const std::optional<std::filesystem::path>& masks);
bool is_mask_file(const std::filesystem::path& file);

// The fraction of each cell's pixels inside the mask, [G,G], for an image of width x height whose
// model input covers `spec`'s region. Any non-zero colour is the object. Throws ImageError naming
// the mask when it cannot be read or its size is not the image's.
torch::Tensor object_share_per_cell(const std::filesystem::path& mask, int image_width, int image_height,
                                    const InputSpec& spec, int grid);

struct MethodTotals {
  // Per metric, one value per image; for "ms" and "forward_equivalents", which are measured once
  // per batch (a method runs on the whole batch), one value per batch.
  std::map<std::string, std::vector<double>> metrics;
  std::vector<double> deletion_curve_sum, insertion_curve_sum;
  int64_t curves = 0;
  int64_t non_finite = 0;  // images whose map had a NaN or infinity: reported, left out of the metrics
};

// The summary's metrics in table order (table.md, report.html): the key in summary.json, the
// column heading, and whether it is a 0/1 outcome summarised by its mean ("mean") rather than its
// median ("median").
struct MetricColumn {
  const char* key;
  const char* heading;
  bool rate;
};
const std::vector<MetricColumn>& metric_columns();

// A metric's value as the tables show it: 3 decimals below 10, 1 below 100, none above.
std::string format_metric(double value);

// The colour of the `index`-th method's curves (BGR), the same in curves.png and report.html.
cv::Scalar curve_colour(size_t index);

struct EvaluationReport {
  std::vector<std::string> methods;  // in the order asked
  std::map<std::string, MethodTotals> totals;
  size_t images = 0;   // evaluated, resumed ones included
  size_t resumed = 0;  // of those, evaluated by an earlier run
  size_t failed = 0;
  std::vector<std::pair<std::string, std::string>> failures;       // input, error
  std::vector<std::pair<std::string, std::string>> mask_failures;  // mask file, error: its image was evaluated without it
  size_t without_mask = 0;  // evaluated images for which no mask file was found
  int curve_points = 0;
  nlohmann::json summary() const;  // per method and metric: median, 95% interval, count
  std::string markdown_table() const;
  cv::Mat plot_curves() const;  // mean deletion and insertion curves per method, BGR8
};

struct EvaluationCallbacks {
  std::function<void(const nlohmann::json& record)> on_record;  // one per image and method, or one per failed image
  // Each finite map as it is made, before its record: [G,G] f32 on the CPU, with the job that holds
  // the decoded image (report.html's overlays). Not called for images an earlier run evaluated.
  std::function<void(const ImageJob& job, const std::string& method, const torch::Tensor& map)> on_map;
  std::function<void(size_t done, size_t total)> on_progress;
};

EvaluationReport run_evaluation(Bundle& bundle, Head& head, const std::vector<InputFile>& inputs,
                                const EvaluationOptions& options, const EvaluationCallbacks& callbacks);

}  // namespace tve
