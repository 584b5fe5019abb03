#pragma once
// Grad-CAM++ (Chattopadhay et al. 2018): Grad-CAM with each position's positive gradient weighted
// by alpha = g^2 / (2 g^2 + sum(A) g^3), the paper's closed form for an exponential class score,
// which lets several separate instances of a class each count. docs/methods.md.

#include <memory>

#include "tve/methods/gradcam.hpp"

namespace tve {

class GradCamPlusPlus : public ClassActivationMap {
 public:
  static std::unique_ptr<AttributionMethod> create(const Bundle& bundle, const MethodSettings& settings);
  std::string name() const override { return "gradcam++"; }

 protected:
  torch::Tensor channel_weights(const torch::Tensor& activations, const torch::Tensor& gradients) const override;
};

}  // namespace tve
