#include "tve/methods/saliency.hpp"

#include <torch/torch.h>

#include <vector>

#include "tve/stopwatch.hpp"

namespace tve {

std::unique_ptr<AttributionMethod> Saliency::create(const Bundle& /*bundle*/, const MethodSettings& /*settings*/) {
  return std::make_unique<Saliency>();
}

Attribution Saliency::compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                                   const ForwardPass& /*pass*/) {
  const Stopwatch stopwatch;
  std::vector<torch::Tensor> per_class;  // K x [B,G,G]
  for (int64_t k = 0; k < classes.size(1); ++k) {
    const auto gradient = logit_gradient(bundle, head, images, classes.select(1, k));  // [B,3,H,W]
    const auto pixel_saliency = std::get<0>(gradient.abs().max(1));                     // [B,H,W]
    per_class.push_back(sum_over_cells(pixel_saliency, bundle.manifest().grid));
  }
  AttributionCost cost;
  cost.forward_passes = cost.backward_passes = classes.size(1);
  return {torch::stack(per_class, 1).contiguous(), cost, stopwatch.seconds()};
}

}  // namespace tve
