#pragma once
// Integrated Gradients (Sundararajan et al. 2017) from the zero baseline (the mean colour in
// normalised space): x * integral_0^1 dy/dx(t x) dt by Gauss-Legendre quadrature, summed over
// channels and over each cell, so a map's cells add up to about y(x) - y(0). `steps` forward and
// backward passes per image and class. docs/methods.md.

#include <memory>
#include <utility>
#include <vector>

#include "tve/methods.hpp"
#include "tve/methods/gradient.hpp"

namespace tve {

struct IntegratedGradientsOptions {
  int steps = 32;
  int batch_size = 16;
};

// The m-point Gauss-Legendre rule on [0,1]: (points, weights), points ascending, weights summing
// to 1. Exact for polynomials of degree up to 2m - 1.
std::pair<std::vector<double>, std::vector<double>> gauss_legendre_rule(int points);

class IntegratedGradients : public GradientMethod {
 public:
  explicit IntegratedGradients(IntegratedGradientsOptions options) : options_(options) {}
  static std::unique_ptr<AttributionMethod> create(const Bundle& bundle, const MethodSettings& settings);
  std::string name() const override { return "ig"; }
  nlohmann::json parameters() const override;

 protected:
  Attribution compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                           const ForwardPass& pass) override;

 private:
  IntegratedGradientsOptions options_;
};

}  // namespace tve
