#include "tve/methods/occlusion.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <vector>

#include "tve/stopwatch.hpp"
#include "tve/methods/tve.hpp"

namespace tve {

std::unique_ptr<AttributionMethod> WindowedOcclusion::create(const Bundle& bundle, const MethodSettings& settings) {
  // The quantity TVE amortises: the same window and lambdas as the bundle's explainer.
  const TveOptions bundle_defaults = TveMethod::defaults_for(bundle.manifest());
  OcclusionOptions options;
  options.radius = settings.radius.value_or(bundle.manifest().radius);
  options.batch_size = settings.batch_size.value_or(options.batch_size);
  options.lambda_pos = settings.lambda_pos.value_or(bundle_defaults.lambda_pos);
  options.lambda_neg = settings.lambda_neg.value_or(bundle_defaults.lambda_neg);
  return std::make_unique<WindowedOcclusion>(options);
}

nlohmann::json WindowedOcclusion::parameters() const {
  return {{"radius", options_.radius}, {"lambda_pos", options_.lambda_pos}, {"lambda_neg", options_.lambda_neg}};
}

Attribution WindowedOcclusion::compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images,
                                            const torch::Tensor& classes, const torch::Tensor& /*embeddings*/) {
  const Stopwatch stopwatch;
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
  AttributionCost cost;
  cost.forward_passes = 2 * cells;
  return {torch::stack(per_image).contiguous(), cost, stopwatch.seconds()};
}

}  // namespace tve
