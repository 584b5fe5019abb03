#include "tve/attribution.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "tve/error.hpp"

namespace tve {

ForwardPass AttributionMethod::forward_pass(Bundle& bundle, const torch::Tensor& images) {
  torch::InferenceMode no_autograd;
  return ForwardPass(bundle.embed(images));
}

Attribution AttributionMethod::explain(Bundle& bundle, Head& head, const torch::Tensor& images,
                                       const torch::Tensor& classes, const ForwardPass& pass) {
  const torch::Tensor& embeddings = pass.embeddings;
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
  if (pass.psi_pos.defined() && (pass.psi_pos.size(0) != images.size(0) || !pass.psi_neg.defined() ||
                                  pass.psi_neg.sizes() != pass.psi_pos.sizes())) {
    throw InvalidArgument("the forward pass's meta-attributions do not match the batch of " + std::to_string(images.size(0)) +
                          " images");
  }
  if (needs_gradients()) {
    c10::InferenceMode gradients_possible(false);  // undo a caller's inference mode
    torch::AutoGradMode enable(true);
    return compute_maps(bundle, head, images, classes, pass);
  }
  torch::InferenceMode no_autograd;
  return compute_maps(bundle, head, images, classes, pass);
}

torch::Tensor smooth_map(const torch::Tensor& maps, int radius) {
  if (radius == 0) return maps;
  const auto sizes = maps.sizes().vec();  // [B,K,G,G]
  auto flat = maps.reshape({sizes[0] * sizes[1], 1, sizes[2], sizes[3]});
  auto smoothed = torch::nn::functional::avg_pool2d(
      flat, torch::nn::functional::AvgPool2dFuncOptions(2 * radius + 1).stride(1).padding(radius).count_include_pad(false));
  return smoothed.reshape(sizes);
}

at::Generator seeded_generator(uint64_t seed, uint64_t stream) {
  // splitmix64 of (seed, stream): nearby seeds and streams give unrelated generator states.
  uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (stream + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return at::detail::createCPUGenerator(z ^ (z >> 31));
}

torch::Tensor cell_membership(int grid, int64_t size, const torch::Device& device) {
  auto cell_of_pixel = torch::div(torch::arange(size, torch::kLong) * grid, size, "floor");  // [size]
  return (torch::arange(grid, torch::kLong).unsqueeze(1) == cell_of_pixel.unsqueeze(0)).to(device, torch::kFloat32);
}

namespace {

// rows [G,H] @ map [..,H,W] @ cols^T [W,G]: two small matrix products instead of G*G reductions.
torch::Tensor pool_cells(const torch::Tensor& pixel_maps, const torch::Tensor& rows, const torch::Tensor& cols) {
  return torch::matmul(torch::matmul(rows, pixel_maps), cols.t());
}

}  // namespace

torch::Tensor sum_over_cells(const torch::Tensor& pixel_maps, int grid) {
  return pool_cells(pixel_maps, cell_membership(grid, pixel_maps.size(-2), pixel_maps.device()),
                    cell_membership(grid, pixel_maps.size(-1), pixel_maps.device()));
}

torch::Tensor mean_over_cells(const torch::Tensor& pixel_maps, int grid) {
  const auto rows = cell_membership(grid, pixel_maps.size(-2), pixel_maps.device());
  const auto cols = cell_membership(grid, pixel_maps.size(-1), pixel_maps.device());
  const auto pixels_per_cell = torch::outer(rows.sum(1), cols.sum(1));  // [G,G]
  return pool_cells(pixel_maps, rows, cols) / pixels_per_cell;
}

torch::Tensor cells_to_pixels(const torch::Tensor& cell_values, int64_t height, int64_t width) {
  const auto grid = static_cast<int>(cell_values.size(-1));
  const auto rows = cell_membership(grid, height, cell_values.device());  // [G,H]
  const auto cols = cell_membership(grid, width, cell_values.device());   // [G,W]
  return torch::matmul(torch::matmul(rows.t(), cell_values.to(torch::kFloat32)), cols);
}

torch::Tensor window_masks(int grid, int radius, int height, int width, const torch::Device& device) {
  // Pixel p lies in grid row (or column) floor(p * G / H), as in cell_membership.
  auto row_of_pixel = torch::div(torch::arange(height, torch::kLong) * grid, height, "floor");  // [H]
  auto col_of_pixel = torch::div(torch::arange(width, torch::kLong) * grid, width, "floor");    // [W]
  auto cell_rows = torch::arange(grid, torch::kLong).repeat_interleave(grid);  // [N] row of cell k
  auto cell_cols = torch::arange(grid, torch::kLong).repeat(grid);             // [N] col of cell k
  auto in_rows = (row_of_pixel.unsqueeze(0) - cell_rows.unsqueeze(1)).abs() <= radius;  // [N,H]
  auto in_cols = (col_of_pixel.unsqueeze(0) - cell_cols.unsqueeze(1)).abs() <= radius;  // [N,W]
  auto masks = in_rows.unsqueeze(2) & in_cols.unsqueeze(1);                             // [N,H,W]
  return masks.unsqueeze(1).to(device, torch::kFloat32);
}

}  // namespace tve
