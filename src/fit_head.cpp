#include "tve/fit_head.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <sstream>

#include "tve/atomic_file.hpp"
#include "tve/error.hpp"
#include "tve/log.hpp"

namespace fs = std::filesystem;

namespace tve {

LabelledImages scan_labelled_folder(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw InvalidArgument(dir, "--data must be a folder with one sub-folder per class");
  std::vector<fs::path> class_dirs;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.is_directory(ec)) class_dirs.push_back(entry.path());
  }
  std::sort(class_dirs.begin(), class_dirs.end());
  LabelledImages data;
  for (const auto& class_dir : class_dirs) {
    std::istringstream no_stdin;
    const auto files = expand_inputs({class_dir.string()}, no_stdin);
    if (files.empty()) continue;  // a folder without images is not a class
    const auto label = static_cast<int64_t>(data.class_names.size());
    data.class_names.push_back(class_dir.filename().string());
    for (const auto& file : files) {
      data.files.push_back(file);
      data.labels.push_back(label);
    }
  }
  if (data.class_names.size() < 2) {
    throw InvalidArgument(dir, "needs at least 2 sub-folders with images (one per class), found " +
                                   std::to_string(data.class_names.size()));
  }
  return data;
}

namespace {

double accuracy(const torch::Tensor& logits, const torch::Tensor& labels) {
  if (labels.numel() == 0) return std::nan("");
  return logits.argmax(1).eq(labels).to(torch::kFloat64).mean().item<double>();
}

}  // namespace

FitHeadResult fit_linear_head(Bundle& bundle, const LabelledImages& data, const FitHeadOptions& options,
                              const std::function<void(const std::string&)>& on_failed_image) {
  if (!(options.held_out_fraction >= 0.0 && options.held_out_fraction < 1.0)) {
    throw InvalidArgument("--held-out must be in [0, 1)");
  }
  // 1. Embeddings of every readable image, [N,D] on CPU; failed images are reported and skipped.
  std::vector<torch::Tensor> embeddings;
  std::vector<int64_t> labels;
  size_t next = 0;
  FitHeadResult result;
  read_in_batches(data.files, bundle.manifest().input, options.batch, [&](std::vector<ImageJob>& jobs) {
    const auto images = stack_good(jobs, bundle.device());
    for (const auto& job : jobs) {
      const int64_t label = data.labels[next++];
      if (!job.ok()) {
        ++result.failed_images;
        if (on_failed_image) on_failed_image(job.error);
        continue;
      }
      labels.push_back(label);
    }
    if (images.defined()) {
      torch::InferenceMode no_autograd;
      embeddings.push_back(bundle.embed(images).to(torch::kCPU, torch::kFloat32));
    }
  });
  if (embeddings.empty()) throw InvalidArgument("no image in --data could be read");
  const torch::Tensor z = torch::cat(embeddings);                   // [N,D]
  const torch::Tensor y = torch::tensor(labels, torch::kLong);      // [N]
  const auto classes = static_cast<int64_t>(data.class_names.size());

  // 2. A stratified split: the same fraction of each class held out, by a seeded shuffle.
  std::mt19937_64 random(options.seed);
  std::vector<int64_t> train_rows, held_out_rows;
  for (int64_t c = 0; c < classes; ++c) {
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < static_cast<int64_t>(labels.size()); ++i) {
      if (labels[static_cast<size_t>(i)] == c) rows.push_back(i);
    }
    std::shuffle(rows.begin(), rows.end(), random);
    const auto held = rows.size() < 2 ? size_t{0} : static_cast<size_t>(std::lround(options.held_out_fraction * static_cast<double>(rows.size())));
    held_out_rows.insert(held_out_rows.end(), rows.begin(), rows.begin() + static_cast<std::ptrdiff_t>(held));
    train_rows.insert(train_rows.end(), rows.begin() + static_cast<std::ptrdiff_t>(held), rows.end());
  }
  const auto train_index = torch::tensor(train_rows, torch::kLong);
  const auto held_index = torch::tensor(held_out_rows, torch::kLong);
  const auto z_train = z.index_select(0, train_index), y_train = y.index_select(0, train_index);

  // 3. Multinomial logistic regression on standardised embeddings (well conditioned whatever the
  // encoder's scale), full batch, Adam. The standardisation is folded into W and b afterwards, so
  // the saved head takes raw embeddings, as TVE's transfer rule needs.
  torch::manual_seed(options.seed);
  const auto mean = z_train.mean(0);
  const auto scale = z_train.std(0).clamp_min(1e-6);
  const auto x_train = (z_train - mean) / scale;
  auto linear = torch::nn::Linear(z.size(1), classes);
  torch::optim::Adam optimiser(linear->parameters(),
                               torch::optim::AdamOptions(options.learning_rate).weight_decay(options.weight_decay));
  for (int step = 0; step < options.steps; ++step) {
    optimiser.zero_grad();
    auto loss = torch::nn::functional::cross_entropy(linear(x_train), y_train);
    loss.backward();
    optimiser.step();
  }
  torch::NoGradGuard no_grad;
  result.weight = (linear->weight / scale.unsqueeze(0)).contiguous();                        // [C,D]
  result.bias = (linear->bias - (result.weight * mean.unsqueeze(0)).sum(1)).contiguous();   // [C]
  result.labels = data.class_names;
  auto logits_of = [&](const torch::Tensor& embedding) { return torch::addmm(result.bias, embedding, result.weight.t()); };
  result.train_count = train_rows.size();
  result.held_out_count = held_out_rows.size();
  result.train_accuracy = accuracy(logits_of(z_train), y_train);
  result.held_out_accuracy = accuracy(logits_of(z.index_select(0, held_index)), y.index_select(0, held_index));
  return result;
}

nlohmann::json fit_head_record(const FitHeadResult& result, const fs::path& head_file, const std::string& model,
                               double seconds) {
  nlohmann::json record{{"head", head_file.string()},         {"model", model},
                        {"classes", result.labels},           {"train_images", result.train_count},
                        {"held_out_images", result.held_out_count}, {"failed_images", result.failed_images},
                        {"train_accuracy", result.train_accuracy},  {"seconds", seconds}};
  if (result.held_out_count > 0) record["held_out_accuracy"] = result.held_out_accuracy;
  return record;
}

void save_linear_head(const fs::path& file, const FitHeadResult& head) {
  torch::jit::Module module("__torch__.tve.LinearHead");
  module.register_parameter("weight", head.weight, false);
  module.register_parameter("bias", head.bias, false);
  c10::List<std::string> labels;
  for (const auto& label : head.labels) labels.push_back(label);
  module.register_attribute("labels", c10::ListType::create(c10::StringType::get()), labels);
  // Compiled from TorchScript source here, so that the file needs no Python class to load.
  module.define(R"(
def forward(self, z: Tensor) -> Tensor:
    return torch.addmm(self.bias, z, self.weight.t())
)");
  std::ostringstream bytes;
  try {
    module.save(bytes);
  } catch (const c10::Error& e) {
    throw OutputError(file, std::string("cannot serialise head: ") + e.what_without_backtrace());
  }
  write_file_atomically(file, bytes.str());
}

}  // namespace tve
