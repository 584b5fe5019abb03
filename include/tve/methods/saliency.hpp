#pragma once
// Saliency (Simonyan et al. 2014): per pixel the largest magnitude over the colour channels of the
// explained logit's gradient, summed over each cell. One forward and one backward pass per image
// and class. docs/methods.md.

#include <memory>

#include "tve/methods.hpp"
#include "tve/methods/gradient.hpp"

namespace tve {

class Saliency : public GradientMethod {
 public:
  static std::unique_ptr<AttributionMethod> create(const Bundle& bundle, const MethodSettings& settings);
  std::string name() const override { return "saliency"; }
  nlohmann::json parameters() const override { return nlohmann::json::object(); }

 protected:
  Attribution compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                           const ForwardPass& pass) override;
};

}  // namespace tve
