#pragma once
// Classification: top-k classes with probabilities, and `tve predict`'s run over many inputs.

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tve/bundle.hpp"
#include "tve/pipeline.hpp"

namespace tve {

struct ClassScore {
  int64_t index = 0;
  std::string label;
  double probability = 0;  // softmax over the head's classes
  double logit = 0;
};

// logits [B,C] -> for each row, the k best classes, best first. k is clipped to C.
std::vector<std::vector<ClassScore>> top_k(const torch::Tensor& logits, const std::vector<std::string>& labels, int k);

nlohmann::json to_json(const ClassScore& score);

struct PredictOptions {
  int top_k = 5;
  BatchOptions batch;
};

struct PredictSummary {
  size_t succeeded = 0;
  size_t failed = 0;
};

// Classifies `inputs` with `head` on the bundle's encoder, streaming: one record per input, in
// input order, to `on_record`: the best top_k classes and timings, or the input's error.
PredictSummary run_predict(Bundle& bundle, Head& head, const std::vector<InputFile>& inputs, const PredictOptions& options,
                           const std::function<void(const nlohmann::json& record)>& on_record);

}  // namespace tve
