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
                                            const torch::Tensor& classes, const ForwardPass& /*pass*/) {
  const Stopwatch stopwatch;
  const int grid = bundle.manifest().grid;
  const auto height = images.size(2), width = images.size(3);
  const auto masks = window_masks(grid, options_.radius, static_cast<int>(height), static_cast<int>(width), images.device());
  const int64_t cells = masks.size(0);
  // A term with weight 0 is not computed: occlusion as Captum defines it (--lambda-pos 0) costs
  // half the passes.
  const bool with_kept = options_.lambda_pos != 0, with_removed = options_.lambda_neg != 0;
  std::vector<torch::Tensor> per_image;
  for (int64_t i = 0; i < images.size(0); ++i) {
    const auto image = images[i].unsqueeze(0);  // [1,3,H,W]
    const auto c = classes[i];                  // [K]
    auto scores = torch::zeros({c.size(0), cells}, images.options());  // [K,N]
    for (int64_t from = 0; from < cells; from += options_.batch_size) {
      const int64_t to = std::min(cells, from + options_.batch_size);
      const auto m = masks.slice(0, from, to);  // [n,1,H,W]
      // Baseline 0 in normalised space: multiplying by the mask removes what lies outside it.
      if (with_kept) scores.slice(1, from, to) += options_.lambda_pos * head.logits(bundle.embed(image * m)).index_select(1, c).t();
      if (with_removed) {
        scores.slice(1, from, to) -= options_.lambda_neg * head.logits(bundle.embed(image * (1 - m))).index_select(1, c).t();
      }
    }
    per_image.push_back(scores.reshape({c.size(0), grid, grid}));
  }
  AttributionCost cost;
  cost.forward_passes = (int64_t{with_kept} + int64_t{with_removed}) * cells;
  return {torch::stack(per_image).contiguous(), cost, stopwatch.seconds()};
}

}  // namespace tve
