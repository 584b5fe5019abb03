#include "tve/methods/gradcam.hpp"

#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "tve/error.hpp"
#include "tve/stopwatch.hpp"

namespace tve {

torch::Tensor features_as_map(const torch::Tensor& features, FeaturesLayout layout, int64_t height, int64_t width) {
  if (layout == FeaturesLayout::Map) return features;
  const int64_t tokens = features.size(1) - 1;
  const auto rows = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(tokens) * height / width)));
  if (rows < 1 || tokens % rows != 0) {
    throw InvalidArgument("features() gives " + std::to_string(tokens) + " patch tokens, which do not form a grid of the "
                          "input's aspect ratio " + std::to_string(height) + ":" + std::to_string(width));
  }
  return features.slice(1, 1).reshape({features.size(0), rows, tokens / rows, features.size(2)}).permute({0, 3, 1, 2});
}

void ClassActivationMap::require_features(const Bundle& bundle, const char* method) {
  if (!bundle.has_gradient_methods()) {
    throw BundleError(bundle.manifest().target.file, std::string("target has no features() method, so --method ") + method +
                                                         " is unavailable (docs/bundle-format.md); try saliency, ig, "
                                                         "rise, kernelshap or occlusion");
  }
}

Attribution ClassActivationMap::compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images,
                                             const torch::Tensor& classes, const ForwardPass& /*pass*/) {
  const Stopwatch stopwatch;
  const auto height = images.size(2), width = images.size(3);
  // The encoder up to features() needs no graph: the gradient is taken with respect to its output.
  torch::Tensor features;
  {
    torch::NoGradGuard no_graph;
    features = bundle.features(images);
  }
  features = features.detach().clone().requires_grad_(true);
  const auto logits = bundle.logits_from_features(features, head);  // [B,C]
  const auto activations = features_as_map(features.detach(), bundle.manifest().features_layout, height, width);
  std::vector<torch::Tensor> per_class;  // K x [B,G,G]
  for (int64_t k = 0; k < classes.size(1); ++k) {
    const auto chosen = logits.gather(1, classes.select(1, k).reshape({-1, 1})).sum();
    const bool more_classes = k + 1 < classes.size(1);
    const auto gradient = torch::autograd::grad({chosen}, {features}, {}, /*retain_graph=*/more_classes)[0];
    const auto gradients = features_as_map(gradient, bundle.manifest().features_layout, height, width);
    const auto weights = channel_weights(activations, gradients);  // [B,D]
    const auto cam = torch::relu((weights.unsqueeze(2).unsqueeze(3) * activations).sum(1, /*keepdim=*/true));  // [B,1,h,w]
    // Half-pixel centres, no antialiasing: OpenCV's INTER_LINEAR, which pytorch-grad-cam uses.
    const auto upsampled = torch::nn::functional::interpolate(
        cam, torch::nn::functional::InterpolateFuncOptions()
                 .size(std::vector<int64_t>{height, width})
                 .mode(torch::kBilinear)
                 .align_corners(false));
    per_class.push_back(mean_over_cells(upsampled.squeeze(1), bundle.manifest().grid));
  }
  AttributionCost cost;
  cost.forward_passes = 1;
  cost.backward_passes = classes.size(1);
  return {torch::stack(per_class, 1).contiguous(), cost, stopwatch.seconds()};
}

std::unique_ptr<AttributionMethod> GradCam::create(const Bundle& bundle, const MethodSettings& /*settings*/) {
  require_features(bundle, "gradcam");
  return std::make_unique<GradCam>();
}

torch::Tensor GradCam::channel_weights(const torch::Tensor& /*activations*/, const torch::Tensor& gradients) const {
  return gradients.mean({2, 3});
}

}  // namespace tve
