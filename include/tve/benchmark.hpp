#pragma once
// Speed and memory measured in one process, as ratios against the target's own forward pass, so
// that a noisy shared machine changes the numbers less than the comparison.

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "tve/attribution.hpp"
#include "tve/bundle.hpp"
#include "tve/explain.hpp"
#include "tve/pipeline.hpp"

namespace tve {

struct BenchmarkOptions {
  int repeats = 20;     // timed runs for per-image latency (median reported)
  int batch_size = 8;   // for throughput
  std::vector<InputFile> files;              // folder throughput; skipped when empty
  std::optional<std::filesystem::path> out;  // where the folder run writes its outputs
  OutputFormats formats;
  bool prefetch = true;  // decode on a second thread during the folder run (BatchOptions::prefetch)
  int decode_threads = 1;  // BatchOptions::decode_threads
  int model_lanes = 1;     // BatchOptions::model_lanes: the pure compute runs in as many lanes
};

// Reports (JSON):
//  latency: per-image (batch 1) median ms of the target's forward pass (embed + head) and of a
//           whole explanation (forward + attribution), and their ratio;
//  throughput: images/s of run_explain over `files` (decode, forward, explain, write) against
//           the pure model compute for as many images (the same forward + attribution on tensors
//           already in memory, same batch size and lanes), and their ratio;
//  peak_rss_mib: the process's peak resident memory at the end.
nlohmann::json run_benchmark(Bundle& bundle, Head& head, AttributionMethod& method, const BenchmarkOptions& options);

// Peak resident set size of this process so far, in MiB (getrusage).
double peak_rss_mib();

}  // namespace tve
