#include "tve/methods/gradcam_plus_plus.hpp"

#include <torch/torch.h>

namespace tve {

std::unique_ptr<AttributionMethod> GradCamPlusPlus::create(const Bundle& bundle, const MethodSettings& /*settings*/) {
  require_features(bundle, "gradcam++");
  return std::make_unique<GradCamPlusPlus>();
}

torch::Tensor GradCamPlusPlus::channel_weights(const torch::Tensor& activations, const torch::Tensor& gradients) const {
  const auto squared = gradients.pow(2);
  const auto cubed = squared * gradients;
  const auto activation_sums = activations.sum({2, 3}, /*keepdim=*/true);  // [B,D,1,1]
  // 1e-6 keeps the ratio finite where the denominator vanishes (as pytorch-grad-cam does); positions
  // with no gradient get no weight at all.
  auto alpha = squared / (2 * squared + activation_sums * cubed + 1e-6);
  alpha = torch::where(gradients != 0, alpha, torch::zeros_like(alpha));
  return (torch::relu(gradients) * alpha).sum({2, 3});
}

}  // namespace tve
