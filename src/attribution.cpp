#include "tve/attribution.hpp"

#include <torch/torch.h>

#include <chrono>

#include "tve/error.hpp"

namespace tve {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Attribution AttributionMethod::explain(Bundle& bundle, Head& head, const torch::Tensor& images,
                                       const torch::Tensor& classes, const torch::Tensor& embeddings) {
  if (classes.dim() != 2 || classes.size(0) != images.size(0)) {
    throw InvalidArgument("classes must be [B,K] for a batch of " + std::to_string(images.size(0)) + " images");
  }
  const auto count = static_cast<int64_t>(head.spec.labels.size());
  if (classes.numel() > 0 && (classes.min().item<int64_t>() < 0 || classes.max().item<int64_t>() >= count)) {
    throw InvalidArgument("class index out of range for head '" + head.spec.name + "' with " + std::to_string(count) + " classes");
  }
  if (embeddings.defined() &&
      (embeddings.dim() != 2 || embeddings.size(0) != images.size(0) || embeddings.size(1) != bundle.manifest().embedding_dim)) {
    throw InvalidArgument("embeddings must be [B, embedding_dim] for a batch of " + std::to_string(images.size(0)) + " images");
  }
  return compute_maps(bundle, head, images, classes, embeddings);
}

TveOptions TveMethod::defaults_for(const Manifest& manifest) {
  TveOptions options;
  options.radius = manifest.radius;
  if (manifest.explainer) {
    options.lambda_pos = manifest.explainer->lambda_pos;
    options.lambda_neg = manifest.explainer->lambda_neg;
    options.smooth = manifest.explainer->smooth;
  }
  return options;
}

nlohmann::json TveMethod::parameters() const {
  return {{"lambda_pos", options_.lambda_pos}, {"lambda_neg", options_.lambda_neg}, {"smooth", options_.smooth},
          {"radius", options_.radius}};
}

Attribution TveMethod::compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                                    const torch::Tensor& embeddings) {
  const auto start = std::chrono::steady_clock::now();
  torch::InferenceMode no_autograd;
  const int grid = bundle.manifest().grid;
  auto [psi_pos, psi_neg] = bundle.meta_attributions(images, embeddings);  // each [B,N,D], N = G*G row-major
  // The head sees the meta-attributions as if they were embeddings. h is affine, so
  //   lambda_pos * h(psi_pos)[c] - lambda_neg * h(psi_neg)[c]
  //     = (lambda_pos * psi_pos - lambda_neg * psi_neg) . W[c] + (lambda_pos - lambda_neg) * b[c],
  // and only the K explained rows of W are needed, not all C classes.
  const auto combined = options_.lambda_pos * psi_pos - options_.lambda_neg * psi_neg;  // [B,N,D]
  const auto batch = classes.size(0), explained = classes.size(1);
  const auto rows = classes.reshape(-1);
  const auto class_weights = head.weight.index_select(0, rows).view({batch, explained, -1});  // [B,K,D]
  const auto class_bias = head.bias.index_select(0, rows).view({batch, explained, 1});        // [B,K,1]
  const auto scores = torch::bmm(class_weights, combined.transpose(1, 2)) +
                      (options_.lambda_pos - options_.lambda_neg) * class_bias;  // [B,K,N]
  auto maps = scores.reshape({batch, explained, grid, grid});                    // row-major: [.., row, col]
  if (options_.smooth) maps = smooth_map(maps, options_.radius);
  return {maps.contiguous(), 1, seconds_since(start)};
}

torch::Tensor smooth_map(const torch::Tensor& maps, int radius) {
  if (radius == 0) return maps;
  const auto sizes = maps.sizes().vec();  // [B,K,G,G]
  auto flat = maps.reshape({sizes[0] * sizes[1], 1, sizes[2], sizes[3]});
  auto smoothed = torch::nn::functional::avg_pool2d(
      flat, torch::nn::functional::AvgPool2dFuncOptions(2 * radius + 1).stride(1).padding(radius).count_include_pad(false));
  return smoothed.reshape(sizes);
}

torch::Tensor window_masks(int grid, int radius, int height, int width, const torch::Device& device) {
  // Pixel p lies in grid row (or column) floor(p * G / H).
  auto row_of_pixel = torch::div(torch::arange(height, torch::kLong) * grid, height, "floor");  // [H]
  auto col_of_pixel = torch::div(torch::arange(width, torch::kLong) * grid, width, "floor");    // [W]
  auto cell_rows = torch::arange(grid, torch::kLong).repeat_interleave(grid);  // [N] row of cell k
  auto cell_cols = torch::arange(grid, torch::kLong).repeat(grid);             // [N] col of cell k
  auto in_rows = (row_of_pixel.unsqueeze(0) - cell_rows.unsqueeze(1)).abs() <= radius;  // [N,H]
  auto in_cols = (col_of_pixel.unsqueeze(0) - cell_cols.unsqueeze(1)).abs() <= radius;  // [N,W]
  auto masks = in_rows.unsqueeze(2) & in_cols.unsqueeze(1);                             // [N,H,W]
  return masks.unsqueeze(1).to(device, torch::kFloat32);
}

nlohmann::json WindowedOcclusion::parameters() const {
  return {{"radius", options_.radius}, {"lambda_pos", options_.lambda_pos}, {"lambda_neg", options_.lambda_neg}};
}

Attribution WindowedOcclusion::compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images,
                                            const torch::Tensor& classes, const torch::Tensor& /*embeddings*/) {
  const auto start = std::chrono::steady_clock::now();
  torch::InferenceMode no_autograd;
  const int grid = bundle.manifest().grid;
  const auto height = images.size(2), width = images.size(3);
  const auto masks = window_masks(grid, options_.radius, static_cast<int>(height), static_cast<int>(width), images.device());
  const int64_t cells = masks.size(0);
  std::vector<torch::Tensor> per_image;
  for (int64_t i = 0; i < images.size(0); ++i) {
    const auto image = images[i].unsqueeze(0);  // [1,3,H,W]
    std::vector<torch::Tensor> kept, removed;
    for (int64_t from = 0; from < cells; from += options_.batch_size) {
      const auto m = masks.slice(0, from, std::min(cells, from + options_.batch_size));  // [n,1,H,W]
      // Baseline 0 in normalised space: multiplying by the mask removes what lies outside it.
      kept.push_back(head.logits(bundle.embed(image * m)));
      removed.push_back(head.logits(bundle.embed(image * (1 - m))));
    }
    const auto c = classes[i];  // [K]
    auto pos = torch::cat(kept).index_select(1, c).t();     // [K,N]
    auto neg = torch::cat(removed).index_select(1, c).t();  // [K,N]
    per_image.push_back((options_.lambda_pos * pos - options_.lambda_neg * neg).reshape({c.size(0), grid, grid}));
  }
  return {torch::stack(per_image).contiguous(), 2 * cells, seconds_since(start)};
}

}  // namespace tve
