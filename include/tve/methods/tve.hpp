#pragma once
// TVE (docs/design.md, section 4): e[k] = lambda_pos * h(psi_pos[k])[c] - lambda_neg * h(psi_neg[k])[c],
// then optionally a (2r+1) x (2r+1) mean filter that does not count cells outside the grid.
// One explainer forward pass per batch; the head is applied to the meta-attributions, which is
// what lets a head trained after the explainer be explained without training anything.

#include <memory>

#include "tve/attribution.hpp"
#include "tve/methods.hpp"

namespace tve {

struct TveOptions {
  double lambda_pos = 1.0;
  double lambda_neg = 1.0;
  bool smooth = true;
  int radius = 2;
};

class TveMethod : public AttributionMethod {
 public:
  explicit TveMethod(TveOptions options) : options_(options) {}
  // Defaults from the bundle's manifest (explainer section and radius).
  static TveOptions defaults_for(const Manifest& manifest);
  // The bundle's defaults overridden by `settings`; throws BundleError when it has no explainer.
  static std::unique_ptr<AttributionMethod> create(const Bundle& bundle, const MethodSettings& settings);

  std::string name() const override { return "tve"; }
  nlohmann::json parameters() const override;
  // With an explainer that holds the whole encoder (Bundle::explainer_embeds), E(x) and the
  // meta-attributions in one pass over the encoder's layers; otherwise the target's embed().
  ForwardPass forward_pass(Bundle& bundle, const torch::Tensor& images) override;

 protected:
  Attribution compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                           const ForwardPass& pass) override;

 private:
  TveOptions options_;
};

}  // namespace tve
