#include "tve/methods/smoothgrad.hpp"

#include <torch/torch.h>

#include <vector>

#include "tve/error.hpp"
#include "tve/stopwatch.hpp"

namespace tve {

std::unique_ptr<AttributionMethod> SmoothGrad::create(const Bundle& /*bundle*/, const MethodSettings& settings) {
  SmoothGradOptions options;
  options.samples = settings.samples.value_or(options.samples);
  options.seed = settings.seed.value_or(options.seed);
  options.batch_size = settings.batch_size.value_or(options.batch_size);
  if (options.samples < 1) throw InvalidArgument("smoothgrad needs --samples of at least 1");
  return std::make_unique<SmoothGrad>(options);
}

nlohmann::json SmoothGrad::parameters() const {
  return {{"samples", options_.samples}, {"noise_level", options_.noise_level}, {"seed", options_.seed}};
}

torch::Tensor SmoothGrad::noise_samples(int64_t from, int64_t to, torch::IntArrayRef image_size) const {
  // Sample j from stream j: the same noise whatever the batch size, for every image and class.
  std::vector<torch::Tensor> noise;
  for (int64_t j = from; j < to; ++j) {
    auto generator = seeded_generator(options_.seed, static_cast<uint64_t>(j));
    noise.push_back(at::randn(image_size, generator, torch::TensorOptions().dtype(torch::kFloat32)));
  }
  return torch::stack(noise);
}

Attribution SmoothGrad::compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                                     const ForwardPass& /*pass*/) {
  const Stopwatch stopwatch;
  std::vector<torch::Tensor> per_image;  // B x [K,G,G]
  for (int64_t i = 0; i < images.size(0); ++i) {
    const auto image = images[i];  // [3,H,W]
    const double sigma = options_.noise_level * (image.max() - image.min()).item<double>();
    std::vector<torch::Tensor> per_class;
    for (int64_t k = 0; k < classes.size(1); ++k) {
      auto mean_magnitude = torch::zeros_like(image);  // [3,H,W], summed then divided
      for_each_chunk(options_.samples, options_.batch_size, [&](int64_t from, int64_t to) {
        const auto noise = noise_samples(from, to, image.sizes()).to(image.device());
        const auto noisy = image.unsqueeze(0) + sigma * noise;
        const auto gradient = logit_gradient(bundle, head, noisy, classes[i][k].expand({to - from}));
        mean_magnitude += gradient.abs().sum(0);
      });
      mean_magnitude /= static_cast<double>(options_.samples);
      per_class.push_back(sum_over_cells(std::get<0>(mean_magnitude.max(0)), bundle.manifest().grid));
    }
    per_image.push_back(torch::stack(per_class));
  }
  AttributionCost cost;
  cost.forward_passes = cost.backward_passes = options_.samples * classes.size(1);
  return {torch::stack(per_image).contiguous(), cost, stopwatch.seconds()};
}

}  // namespace tve
