#pragma once
// SmoothGrad (Smilkov et al. 2017): the gradient magnitude averaged over noisy copies of the image,
// x + N(0, sigma^2) with sigma = 0.15 (max x - min x), then as `saliency`. n forward and n backward
// passes per image and class. docs/methods.md.

#include <cstdint>
#include <memory>

#include "tve/methods.hpp"
#include "tve/methods/gradient.hpp"

namespace tve {

struct SmoothGradOptions {
  int samples = 25;
  double noise_level = 0.15;  // sigma as a fraction of the image's value range
  uint64_t seed = 0;
  int batch_size = 16;
};

class SmoothGrad : public GradientMethod {
 public:
  explicit SmoothGrad(SmoothGradOptions options) : options_(options) {}
  static std::unique_ptr<AttributionMethod> create(const Bundle& bundle, const MethodSettings& settings);
  std::string name() const override { return "smoothgrad"; }
  nlohmann::json parameters() const override;
  // Standard normal noise [to - from, C,H,W]: samples from..to-1 of the method's sequence.
  torch::Tensor noise_samples(int64_t from, int64_t to, torch::IntArrayRef image_size) const;

 protected:
  Attribution compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                           const ForwardPass& pass) override;

 private:
  SmoothGradOptions options_;
};

}  // namespace tve
