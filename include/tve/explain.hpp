#pragma once
// An explain run: images in, per image a prediction, attribution maps for the chosen classes, and
// the outputs (overlay PNGs, raw .npy maps, a JSON record) written atomically under --out.
// The run streams: at most four batches of images in memory at a time (decoding, in the model,
// waiting to be written, being written), however many inputs there are.

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "tve/attribution.hpp"
#include "tve/bundle.hpp"
#include "tve/pipeline.hpp"
#include "tve/render.hpp"

namespace tve {

struct OutputFormats {
  bool overlay = true;
  bool npy = true;
  bool json = true;
};

// "overlay,npy,json" (any subset, comma-separated) or "none".
OutputFormats parse_formats(const std::string& list);

// An index ("3") or a label ("tabby cat") of `head`. Throws InvalidArgument listing a few labels.
int64_t resolve_class(const Head& head, const std::string& index_or_label);

struct ExplainOptions {
  std::optional<int64_t> class_index;  // explain this class for every image, else the top-k
  int top_k = 1;
  BatchOptions batch;
  std::optional<std::filesystem::path> out_dir;  // nothing is written without it
  OutputFormats formats;
  OverlayOptions overlay;
};

struct ExplainSummary {
  size_t succeeded = 0;
  size_t failed = 0;
};

struct ExplainCallbacks {
  std::function<void(const nlohmann::json& record)> on_record;  // one per input, in input order
  std::function<void(size_t done, size_t total)> on_progress;   // after each batch
};

ExplainSummary run_explain(Bundle& bundle, Head& head, AttributionMethod& method, const std::vector<InputFile>& inputs,
                           const ExplainOptions& options, const ExplainCallbacks& callbacks);

}  // namespace tve
