#pragma once
// Windowed occlusion, the quantity TVE amortises, by brute force (docs/design.md, section 3): for
// each cell k, e[k] = lambda_pos * h(E(x with only S_k kept))[c] - lambda_neg * h(E(x with S_k
// removed))[c], where S_k is the (2r+1) x (2r+1) block of cells around k (clipped at the border)
// and removed pixels take the baseline value 0 in normalised space (the mean colour).
// G * G forward passes per image for each term whose lambda is not 0 (a term weighted 0 is skipped):
// 2 * G * G with both.

#include <memory>

#include "tve/attribution.hpp"
#include "tve/methods.hpp"

namespace tve {

struct OcclusionOptions {
  int radius = 2;
  int batch_size = 64;  // masked images per forward pass
  double lambda_pos = 1.0;
  double lambda_neg = 1.0;
};

class WindowedOcclusion : public AttributionMethod {
 public:
  explicit WindowedOcclusion(OcclusionOptions options) : options_(options) {}
  // The bundle's radius and explainer lambdas (so that it computes what TVE amortises), overridden
  // by `settings`.
  static std::unique_ptr<AttributionMethod> create(const Bundle& bundle, const MethodSettings& settings);

  std::string name() const override { return "occlusion"; }
  nlohmann::json parameters() const override;

 protected:
  // Ignores the forward pass: every masked image needs its own anyway.
  Attribution compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                           const ForwardPass& pass) override;

 private:
  OcclusionOptions options_;
};

}  // namespace tve
