#pragma once
// Kernel SHAP (Lundberg and Lee 2017) with the G x G cells as players: the explained logit of many
// coalitions (removed cells at the baseline, 0 in normalised space), then the least-squares linear
// model of the logit in the coalition, whose coefficients estimate the cells' Shapley values.
// Coalition sizes are drawn from the Shapley kernel, so every sample weighs the same in the fit but
// the full and empty coalitions, always in and weighted 1e6 so that the values add up to
// y(x) - y(baseline). The same coalitions for every image (--seed).
// n forward passes per image, all classes from the same passes. docs/methods.md.

#include <cstdint>
#include <memory>

#include "tve/methods.hpp"

namespace tve {

struct KernelShapOptions {
  int samples = 2000;
  uint64_t seed = 0;
  int batch_size = 64;
};

class KernelShap : public AttributionMethod {
 public:
  KernelShap(KernelShapOptions options, int grid);
  static std::unique_ptr<AttributionMethod> create(const Bundle& bundle, const MethodSettings& settings);
  std::string name() const override { return "kernelshap"; }
  nlohmann::json parameters() const override;

  // [samples, G*G] f32, 1 where the coalition keeps the cell; row 0 keeps all, row 1 none.
  const torch::Tensor& coalitions() const { return coalitions_; }

 protected:
  Attribution compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                           const ForwardPass& pass) override;

 private:
  KernelShapOptions options_;
  int grid_;
  torch::Tensor coalitions_;
};

}  // namespace tve
