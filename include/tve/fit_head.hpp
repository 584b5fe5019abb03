#pragma once
// Training a linear head in C++ on a frozen encoder's embeddings: the "new downstream task" that
// TVE then explains with its pre-trained explainer, without training anything else.

#include <torch/script.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tve/bundle.hpp"
#include "tve/pipeline.hpp"

namespace tve {

// A folder with one sub-folder per class, images inside (recursively). Class indices follow the
// sub-folders' names in sorted order.
struct LabelledImages {
  std::vector<std::string> class_names;
  std::vector<InputFile> files;
  std::vector<int64_t> labels;  // one per file
};
LabelledImages scan_labelled_folder(const std::filesystem::path& dir);

struct FitHeadOptions {
  double held_out_fraction = 0.2;  // per class, chosen by a seeded shuffle
  int steps = 500;                 // full-batch optimisation steps
  double learning_rate = 0.01;
  double weight_decay = 1e-4;
  uint64_t seed = 0;
  BatchOptions batch;
};

struct FitHeadResult {
  torch::Tensor weight;  // [C,D] f32 CPU
  torch::Tensor bias;    // [C] f32 CPU
  std::vector<std::string> labels;
  size_t train_count = 0;
  size_t held_out_count = 0;
  size_t failed_images = 0;
  double train_accuracy = 0;
  double held_out_accuracy = 0;  // NaN when nothing is held out
};

FitHeadResult fit_linear_head(Bundle& bundle, const LabelledImages& data, const FitHeadOptions& options,
                              const std::function<void(const std::string& failure)>& on_failed_image = {});

// The JSON record `tve fit-head` prints for a head written to `head_file` in `seconds`.
nlohmann::json fit_head_record(const FitHeadResult& result, const std::filesystem::path& head_file,
                               const std::string& model, double seconds);

// Saves `W z + b` as TorchScript with its labels inside (attribute `labels`, a list of strings),
// atomically. Loadable by tve (--head-file) and by Python's torch.jit.load.
void save_linear_head(const std::filesystem::path& file, const FitHeadResult& head);

}  // namespace tve
