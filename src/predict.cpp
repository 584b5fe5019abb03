#include "tve/predict.hpp"

#include <torch/torch.h>

#include <algorithm>

#include "tve/error.hpp"
#include "tve/log.hpp"
#include "tve/stopwatch.hpp"

namespace tve {

std::vector<std::vector<ClassScore>> top_k(const torch::Tensor& logits, const std::vector<std::string>& labels, int k) {
  if (k < 1) throw InvalidArgument("--top-k must be at least 1");
  const auto cpu_logits = logits.detach().to(torch::kCPU, torch::kFloat32);  // [B,C]
  const auto classes = cpu_logits.size(1);
  if (classes != static_cast<int64_t>(labels.size())) {
    throw InvalidArgument("head gives " + std::to_string(classes) + " logits for " + std::to_string(labels.size()) + " labels");
  }
  const auto probabilities = torch::softmax(cpu_logits, 1);
  const auto [best_probabilities, best_indices] = probabilities.topk(std::min<int64_t>(k, classes), 1);
  std::vector<std::vector<ClassScore>> out(static_cast<size_t>(cpu_logits.size(0)));
  for (int64_t row = 0; row < cpu_logits.size(0); ++row) {
    for (int64_t j = 0; j < best_indices.size(1); ++j) {
      const int64_t index = best_indices[row][j].item<int64_t>();
      out[static_cast<size_t>(row)].push_back(ClassScore{index, labels[static_cast<size_t>(index)],
                                                         best_probabilities[row][j].item<double>(),
                                                         cpu_logits[row][index].item<double>()});
    }
  }
  return out;
}

nlohmann::json to_json(const ClassScore& score) {
  return {{"index", score.index}, {"label", score.label}, {"probability", score.probability}, {"logit", score.logit}};
}

PredictSummary run_predict(Bundle& bundle, Head& head, const std::vector<InputFile>& inputs, const PredictOptions& options,
                           const std::function<void(const nlohmann::json& record)>& on_record) {
  PredictSummary summary;
  torch::InferenceMode no_autograd;
  read_in_batches(inputs, bundle.manifest().input, options.batch, [&](std::vector<ImageJob>& jobs) {
    const Stopwatch stopwatch;
    const torch::Tensor batch = stack_good(jobs, bundle.device());  // [B,3,H,W], decoded images only
    std::vector<std::vector<ClassScore>> scores;
    if (batch.defined()) scores = top_k(head.logits(bundle.embed(batch)), head.spec.labels, options.top_k);
    const double model_ms = stopwatch.milliseconds();
    size_t row = 0;
    for (const auto& job : jobs) {
      nlohmann::json record{{"input", job.input.path.string()}, {"model", bundle.manifest().name}, {"head", head.spec.name}};
      if (!job.ok()) {
        ++summary.failed;
        logger().error("{}", job.error);
        record["error"] = job.error;
      } else {
        ++summary.succeeded;
        const auto& best = scores[row++];
        record["class"] = to_json(best.front());
        record["top_k"] = nlohmann::json::array();
        for (const auto& score : best) record["top_k"].push_back(to_json(score));
        record["timings_ms"] = {{"decode", 1e3 * job.decode_seconds},
                                {"model_per_image", model_ms / static_cast<double>(scores.size())}};
        record["device"] = bundle.device().str();
        record["precision"] = to_string(bundle.precision());
      }
      if (on_record) on_record(record);
    }
  });
  return summary;
}

}  // namespace tve
