#include "tve/methods/kernel_shap.hpp"

#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "tve/error.hpp"
#include "tve/stopwatch.hpp"

namespace tve {
namespace {

constexpr double kEndpointWeight = 1e6;

// Coalitions over `players` cells: all, none, then sizes k in 1..players-1 drawn with probability
// proportional to the Shapley kernel's total weight of that size, (M - 1) / (k (M - k)), and the
// members uniformly among the cells.
torch::Tensor draw_coalitions(int64_t samples, int64_t players, uint64_t seed) {
  auto coalitions = torch::zeros({samples, players}, torch::kFloat32);
  coalitions[0].fill_(1);
  if (samples <= 2 || players < 2) return coalitions;
  auto generator = seeded_generator(seed, 0);
  const auto sizes = torch::arange(1, players, torch::kDouble);
  const auto size_weights = (players - 1) / (sizes * (players - sizes));
  const auto drawn_sizes = at::multinomial(size_weights, samples - 2, /*replacement=*/true, generator) + 1;  // [n-2]
  // A random ranking of the cells per sample; the k lowest ranks are the coalition.
  const auto ranks = at::rand({samples - 2, players}, generator).argsort(int64_t{1}).argsort(int64_t{1});
  coalitions.slice(0, 2) = (ranks < drawn_sizes.unsqueeze(1)).to(torch::kFloat32);
  return coalitions;
}

}  // namespace

KernelShap::KernelShap(KernelShapOptions options, int grid)
    : options_(options), grid_(grid), coalitions_(draw_coalitions(options.samples, int64_t{grid} * grid, options.seed)) {}

std::unique_ptr<AttributionMethod> KernelShap::create(const Bundle& bundle, const MethodSettings& settings) {
  KernelShapOptions options;
  options.samples = settings.samples.value_or(options.samples);
  options.seed = settings.seed.value_or(options.seed);
  options.batch_size = settings.batch_size.value_or(options.batch_size);
  if (options.samples < 2) throw InvalidArgument("kernelshap needs --samples of at least 2");
  return std::make_unique<KernelShap>(options, bundle.manifest().grid);
}

nlohmann::json KernelShap::parameters() const {
  return {{"samples", options_.samples}, {"seed", options_.seed}, {"baseline", "zero"}};
}

Attribution KernelShap::compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                                     const ForwardPass& /*pass*/) {
  const Stopwatch stopwatch;
  const auto height = images.size(2), width = images.size(3);
  const int64_t samples = coalitions_.size(0), players = coalitions_.size(1), explained = classes.size(1);
  auto scores = torch::zeros({images.size(0), samples, explained}, torch::kFloat64);  // [B,n,K] on the CPU
  for_each_chunk(samples, options_.batch_size, [&](int64_t from, int64_t to) {
    const auto kept = coalitions_.slice(0, from, to).view({to - from, grid_, grid_});
    const auto masks = cells_to_pixels(kept, height, width).unsqueeze(1).to(images.device());  // [m,1,H,W]
    for (int64_t i = 0; i < images.size(0); ++i) {
      const auto logits = head.logits(bundle.embed(images[i].unsqueeze(0) * masks));  // [m,C]
      scores[i].slice(0, from, to) = logits.index_select(1, classes[i]).to(torch::kCPU, torch::kFloat64);
    }
  });
  // Least squares with an intercept: [1 | z] phi = y, all images and classes at once. The full and
  // the empty coalition weigh 1e6 (as in Captum and the SHAP library), so the fit all but meets
  // efficiency: sum_k phi_k = y(x) - y(baseline). Weights enter as sqrt(w) on both sides.
  auto row_scale = torch::ones({samples, 1}, torch::kFloat64);
  row_scale.slice(0, 0, std::min<int64_t>(2, samples)).fill_(std::sqrt(kEndpointWeight));
  const auto design = torch::cat({torch::ones({samples, 1}, torch::kFloat64), coalitions_.to(torch::kFloat64)}, 1) * row_scale;
  const auto targets = scores.permute({1, 0, 2}).reshape({samples, -1}) * row_scale;  // [n, B*K]
  const auto solution = std::get<0>(torch::linalg_lstsq(design, targets, c10::nullopt, "gelsd"));  // [1+M, B*K]
  const auto phi = solution.slice(0, 1).reshape({players, images.size(0), explained}).permute({1, 2, 0});  // [B,K,M]
  AttributionCost cost;
  cost.forward_passes = samples;
  return {phi.reshape({images.size(0), explained, grid_, grid_}).to(images.device(), torch::kFloat32).contiguous(), cost,
          stopwatch.seconds()};
}

}  // namespace tve
