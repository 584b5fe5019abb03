#include "tve/methods/integrated_gradients.hpp"

#include <torch/torch.h>

#include <cmath>

#include "tve/error.hpp"
#include "tve/stopwatch.hpp"

namespace tve {

std::pair<std::vector<double>, std::vector<double>> gauss_legendre_rule(int points) {
  // The nodes are the roots of the Legendre polynomial P_m on [-1,1], found by Newton's method from
  // the classic cosine estimate; each weight is 2 / ((1 - x^2) P_m'(x)^2). Mapped to [0,1].
  const double pi = std::acos(-1.0);
  std::vector<double> nodes(static_cast<size_t>(points)), weights(static_cast<size_t>(points));
  for (int i = 0; i < points; ++i) {
    double x = std::cos(pi * (i + 0.75) / (points + 0.5));
    double derivative = 0;
    for (int iteration = 0; iteration < 100; ++iteration) {
      double p = 1, previous = 0;  // P_0, P_{-1}
      for (int n = 1; n <= points; ++n) {
        const double next = ((2.0 * n - 1) * x * p - (n - 1.0) * previous) / n;
        previous = p;
        p = next;
      }
      derivative = points * (x * p - previous) / (x * x - 1);
      const double step = p / derivative;
      x -= step;
      if (std::abs(step) < 1e-15) break;
    }
    // Roots come out descending in x; store ascending on [0,1].
    const auto slot = static_cast<size_t>(points - 1 - i);
    nodes[slot] = (x + 1) / 2;
    weights[slot] = 1.0 / ((1 - x * x) * derivative * derivative);  // (2 / (...)) / 2 for [0,1]
  }
  return {nodes, weights};
}

std::unique_ptr<AttributionMethod> IntegratedGradients::create(const Bundle& /*bundle*/, const MethodSettings& settings) {
  IntegratedGradientsOptions options;
  options.steps = settings.steps.value_or(options.steps);
  options.batch_size = settings.batch_size.value_or(options.batch_size);
  if (options.steps < 1 || options.steps > 1024) throw InvalidArgument("ig needs --steps between 1 and 1024");
  return std::make_unique<IntegratedGradients>(options);
}

nlohmann::json IntegratedGradients::parameters() const {
  return {{"steps", options_.steps}, {"baseline", "zero"}, {"quadrature", "gauss-legendre"}};
}

Attribution IntegratedGradients::compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images,
                                              const torch::Tensor& classes, const ForwardPass& /*pass*/) {
  const Stopwatch stopwatch;
  const auto [nodes, weights] = gauss_legendre_rule(options_.steps);
  const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(images.device());
  const auto alphas = torch::tensor(std::vector<float>(nodes.begin(), nodes.end())).to(options).view({-1, 1, 1, 1});
  const auto alpha_weights = torch::tensor(std::vector<float>(weights.begin(), weights.end())).to(options).view({-1, 1, 1, 1});
  std::vector<torch::Tensor> per_image;  // B x [K,G,G]
  for (int64_t i = 0; i < images.size(0); ++i) {
    const auto image = images[i].unsqueeze(0);  // [1,3,H,W]
    std::vector<torch::Tensor> per_class;
    for (int64_t k = 0; k < classes.size(1); ++k) {
      auto path_integral = torch::zeros_like(image[0]);  // [3,H,W]
      for_each_chunk(options_.steps, options_.batch_size, [&](int64_t from, int64_t to) {
        const auto scaled = alphas.slice(0, from, to) * image;  // points on the straight path from 0 to x
        const auto gradient = logit_gradient(bundle, head, scaled, classes[i][k].expand({to - from}));
        path_integral += (alpha_weights.slice(0, from, to) * gradient).sum(0);
      });
      const auto pixel_attribution = (image[0] * path_integral).sum(0);  // [H,W], channels summed
      per_class.push_back(sum_over_cells(pixel_attribution, bundle.manifest().grid));
    }
    per_image.push_back(torch::stack(per_class));
  }
  AttributionCost cost;
  cost.forward_passes = cost.backward_passes = options_.steps * classes.size(1);
  return {torch::stack(per_image).contiguous(), cost, stopwatch.seconds()};
}

}  // namespace tve
