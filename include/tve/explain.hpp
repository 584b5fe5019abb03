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
  // Skip inputs whose outputs under out_dir an earlier run completed with the same model, head,
  // method, parameters and output settings: its JSON record, written last, says so, holds no
  // error and one map per class, and every output this run would write is there and whole (an
  // overlay a complete PNG, the raw maps equal to the record's). Their records are passed on with
  // "resumed": true, with this run's spelling of the input and output paths. Anything else (no
  // record, other settings, an output missing, cut or changed) is explained again. Needs out_dir
  // and the json format.
  bool resume = false;
  // Write the run summary (summary_file_name) under out_dir when the run ends, as `tve explain` does.
  bool write_summary = false;
  Shard shard;  // recorded in the run summary and in its file name
};

struct ExplainFailure {
  std::string input;
  std::string error;
};

struct ExplainSummary {
  size_t succeeded = 0;  // explained in this run or, with resume, by an earlier one
  size_t resumed = 0;    // of those, done by an earlier run
  size_t failed = 0;
  std::vector<ExplainFailure> failures;  // in input order
};

// Whether a file of this name, found in the output folder, is one of explain's outputs (an
// overlay, a raw map, a record or summary, a temporary): never an input (InputScanOptions::is_output).
bool is_explain_output_name(const std::string& filename);

// Where run_explain writes its summary under out_dir: "tve-summary.json", or
// "tve-summary.shard-K-of-N.json" for a shard, so that the shards of one job array never overwrite
// each other's.
std::string summary_file_name(const Shard& shard);

struct ExplainCallbacks {
  std::function<void(const nlohmann::json& record)> on_record;  // one per input, in input order
  std::function<void(size_t done, size_t total)> on_progress;   // after each batch
};

// Explains `inputs` and, with out_dir, writes each input's outputs and (write_summary) the run
// summary (summary_file_name: counts, every failed input with its reason, model, head, method, parameters
// and tve version), for a driver that merges shards and retries failures. An image whose map or
// prediction is not finite (NaN, infinity) fails like an unreadable one. Exceptions from the
// callbacks (stdout unwritable) stop the run and propagate.
ExplainSummary run_explain(Bundle& bundle, Head& head, AttributionMethod& method, const std::vector<InputFile>& inputs,
                           const ExplainOptions& options, const ExplainCallbacks& callbacks);

}  // namespace tve
