#pragma once
// Classification results: top-k classes with probabilities.

#include <torch/types.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

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

}  // namespace tve
