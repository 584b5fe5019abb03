#pragma once
// What the gradient methods (saliency, smoothgrad, ig, gradcam, gradcam++) share: they run with
// autograd on, and they differentiate the logit of the explained class, of any head, with respect
// to the input or to features(). docs/methods.md defines each.

#include <cstdint>

#include "tve/attribution.hpp"

namespace tve {

class GradientMethod : public AttributionMethod {
 public:
  bool needs_gradients() const override { return true; }

 protected:
  // d y / d x for y = head(embed(x))[class_of_image[b]] of each image b of `images` [B,3,H,W]:
  // [B,3,H,W]. One forward and one backward pass per image; the images are not modified.
  static torch::Tensor logit_gradient(Bundle& bundle, Head& head, const torch::Tensor& images,
                                      const torch::Tensor& class_of_image);
};

}  // namespace tve
