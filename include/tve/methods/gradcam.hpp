#pragma once
// Grad-CAM (Selvaraju et al. 2017) on the bundle's features(): a weighted sum of the feature
// channels, weighted by their mean gradient, through a ReLU, upsampled to the input and averaged
// over each cell. ClassActivationMap holds what every CAM shares (reading features() in the
// manifest's layout, the head's logits from them, the upsampling); a variant only says how it
// weighs the channels. One forward pass per image, one backward pass from the logits to features()
// per image and class. docs/methods.md.

#include <memory>

#include "tve/methods.hpp"
#include "tve/methods/gradient.hpp"

namespace tve {

class ClassActivationMap : public GradientMethod {
 public:
  nlohmann::json parameters() const override { return {{"layer", "features"}}; }

 protected:
  Attribution compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                           const ForwardPass& pass) override;
  // activations, gradients: [B,D,h,w] -> channel weights [B,D].
  virtual torch::Tensor channel_weights(const torch::Tensor& activations, const torch::Tensor& gradients) const = 0;
  // Throws BundleError when the bundle has no features() to read.
  static void require_features(const Bundle& bundle, const char* method);
};

class GradCam : public ClassActivationMap {
 public:
  static std::unique_ptr<AttributionMethod> create(const Bundle& bundle, const MethodSettings& settings);
  std::string name() const override { return "gradcam"; }

 protected:
  // The mean gradient over positions: how much the logit rises per unit of the channel.
  torch::Tensor channel_weights(const torch::Tensor& activations, const torch::Tensor& gradients) const override;
};

// features() [B,1+N,D] (tokens) or [B,D,h,w] (map) -> [B,D,h,w]. Tokens drop the class token and
// go back on their h x w grid, row-major, with h / w the input's aspect ratio.
torch::Tensor features_as_map(const torch::Tensor& features, FeaturesLayout layout, int64_t height, int64_t width);

}  // namespace tve
