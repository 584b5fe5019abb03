#include "tve/methods/rise.hpp"

#include <torch/torch.h>

#include <vector>

#include "tve/error.hpp"
#include "tve/stopwatch.hpp"

namespace tve {

std::unique_ptr<AttributionMethod> Rise::create(const Bundle& bundle, const MethodSettings& settings) {
  RiseOptions options;
  options.samples = settings.samples.value_or(options.samples);
  options.cells = settings.rise_cells.value_or((bundle.manifest().grid + 1) / 2);
  options.seed = settings.seed.value_or(options.seed);
  options.batch_size = settings.batch_size.value_or(options.batch_size);
  if (options.samples < 1) throw InvalidArgument("rise needs --samples of at least 1");
  if (options.cells < 1 || options.cells > 1024) throw InvalidArgument("rise needs --rise-cells between 1 and 1024");
  return std::make_unique<Rise>(options);
}

nlohmann::json Rise::parameters() const {
  return {{"samples", options_.samples}, {"cells", options_.cells}, {"keep_probability", options_.keep_probability},
          {"seed", options_.seed}};
}

torch::Tensor Rise::masks(int64_t from, int64_t to, int64_t height, int64_t width) const {
  // Chunks of kMasksPerStream share one random stream, so mask i is the same whatever the batch size.
  constexpr int64_t kMasksPerStream = 16;
  const int64_t s = options_.cells;
  const int64_t cell_height = (height + s - 1) / s, cell_width = (width + s - 1) / s;
  std::vector<torch::Tensor> out;
  for (int64_t stream = from / kMasksPerStream; stream * kMasksPerStream < to; ++stream) {
    auto generator = seeded_generator(options_.seed, static_cast<uint64_t>(stream));
    const auto coarse = (at::rand({kMasksPerStream, 1, s, s}, generator) < options_.keep_probability).to(torch::kFloat32);
    const auto shifts_y = at::randint(cell_height, {kMasksPerStream}, generator, torch::kLong);
    const auto shifts_x = at::randint(cell_width, {kMasksPerStream}, generator, torch::kLong);
    // One coarse cell larger than the image, so that any shift within a cell still covers it.
    const auto smooth = torch::nn::functional::interpolate(
        coarse, torch::nn::functional::InterpolateFuncOptions()
                    .size(std::vector<int64_t>{(s + 1) * cell_height, (s + 1) * cell_width})
                    .mode(torch::kBilinear)
                    .align_corners(false));
    for (int64_t j = std::max(from, stream * kMasksPerStream); j < std::min(to, (stream + 1) * kMasksPerStream); ++j) {
      const int64_t local = j - stream * kMasksPerStream;
      const int64_t y = shifts_y[local].item<int64_t>(), x = shifts_x[local].item<int64_t>();
      out.push_back(smooth[local].slice(1, y, y + height).slice(2, x, x + width));
    }
  }
  return torch::stack(out);
}

Attribution Rise::compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                               const ForwardPass& /*pass*/) {
  const Stopwatch stopwatch;
  const auto height = images.size(2), width = images.size(3);
  auto saliency = torch::zeros({images.size(0), classes.size(1), height, width}, images.options());  // [B,K,H,W]
  // Masks outer, images inner: each chunk of masks is made once for the whole batch.
  for_each_chunk(options_.samples, options_.batch_size, [&](int64_t from, int64_t to) {
    const auto chunk = masks(from, to, height, width).to(images.device());  // [m,1,H,W]
    for (int64_t i = 0; i < images.size(0); ++i) {
      const auto probabilities = torch::softmax(head.logits(bundle.embed(images[i].unsqueeze(0) * chunk)), 1);  // [m,C]
      const auto scores = probabilities.index_select(1, classes[i]);                                           // [m,K]
      saliency[i] += torch::einsum("mk,mhw->khw", {scores, chunk.squeeze(1)});
    }
  });
  saliency /= options_.samples * options_.keep_probability;
  AttributionCost cost;
  cost.forward_passes = options_.samples;
  return {mean_over_cells(saliency, bundle.manifest().grid).contiguous(), cost, stopwatch.seconds()};
}

}  // namespace tve
