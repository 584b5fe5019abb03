#include "tve/methods/gradient.hpp"

#include <torch/torch.h>

namespace tve {

torch::Tensor GradientMethod::logit_gradient(Bundle& bundle, Head& head, const torch::Tensor& images,
                                             const torch::Tensor& class_of_image) {
  // A copy made here is an ordinary tensor even when `images` was made in inference mode.
  auto x = images.detach().clone().requires_grad_(true);
  const auto logits = head.logits(bundle.embed(x));  // [B,C]
  // Images do not interact in eval mode, so the gradient of the sum is each image's own gradient.
  const auto chosen = logits.gather(1, class_of_image.reshape({-1, 1}).to(logits.device(), torch::kLong)).sum();
  return torch::autograd::grad({chosen}, {x})[0];
}

}  // namespace tve
