#include "tve/methods/tve.hpp"

#include <torch/torch.h>

#include "tve/stopwatch.hpp"
#include "tve/error.hpp"

namespace tve {

TveOptions TveMethod::defaults_for(const Manifest& manifest) {
  TveOptions options;
  options.radius = manifest.radius;
  if (manifest.explainer) {
    options.lambda_pos = manifest.explainer->lambda_pos;
    options.lambda_neg = manifest.explainer->lambda_neg;
    options.smooth = manifest.explainer->smooth;
  }
  return options;
}

nlohmann::json TveMethod::parameters() const {
  return {{"lambda_pos", options_.lambda_pos}, {"lambda_neg", options_.lambda_neg}, {"smooth", options_.smooth},
          {"radius", options_.radius}};
}

std::unique_ptr<AttributionMethod> TveMethod::create(const Bundle& bundle, const MethodSettings& settings) {
  if (!bundle.has_explainer()) {
    throw BundleError(bundle.manifest().dir,
                      "bundle has no explainer, so --method tve is unavailable. Train one on your own images (no labels "
                      "needed): /usr/bin/python3 scripts/train_explainer.py --model " + bundle.manifest().dir.string() +
                          " --images YOUR_IMAGES/ --time-budget 1h (docs/own-model.md). Meanwhile --method gradcam works "
                          "in one pass, and --method occlusion is exact at G*G passes per image and non-zero lambda");
  }
  TveOptions options = defaults_for(bundle.manifest());
  if (settings.lambda_pos) options.lambda_pos = *settings.lambda_pos;
  if (settings.lambda_neg) options.lambda_neg = *settings.lambda_neg;
  if (settings.smooth) options.smooth = *settings.smooth;
  return std::make_unique<TveMethod>(options);
}

ForwardPass TveMethod::forward_pass(Bundle& bundle, const torch::Tensor& images) {
  if (!bundle.explainer_embeds()) return AttributionMethod::forward_pass(bundle, images);
  torch::InferenceMode no_autograd;
  ForwardPass pass;
  std::tie(pass.embeddings, pass.psi_pos, pass.psi_neg) = bundle.embed_and_explain(images);
  return pass;
}

Attribution TveMethod::compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                                    const ForwardPass& pass) {
  const Stopwatch stopwatch;
  const int grid = bundle.manifest().grid;
  // each [B,N,D], N = G*G row-major: from the forward pass when it computed them (forward_pass())
  auto [psi_pos, psi_neg] = pass.psi_pos.defined() ? std::make_pair(pass.psi_pos, pass.psi_neg)
                                                    : bundle.meta_attributions(images, pass.embeddings);
  // The head sees the meta-attributions as if they were embeddings. h is affine, so
  //   lambda_pos * h(psi_pos)[c] - lambda_neg * h(psi_neg)[c]
  //     = (lambda_pos * psi_pos - lambda_neg * psi_neg) . W[c] + (lambda_pos - lambda_neg) * b[c],
  // and only the K explained rows of W are needed, not all C classes.
  const auto combined = options_.lambda_pos * psi_pos - options_.lambda_neg * psi_neg;  // [B,N,D]
  const auto batch = classes.size(0), explained = classes.size(1);
  const auto rows = classes.reshape(-1);
  const auto class_weights = head.weight.index_select(0, rows).view({batch, explained, -1});  // [B,K,D]
  const auto class_bias = head.bias.index_select(0, rows).view({batch, explained, 1});        // [B,K,1]
  const auto scores = torch::bmm(class_weights, combined.transpose(1, 2)) +
                      (options_.lambda_pos - options_.lambda_neg) * class_bias;  // [B,K,N]
  auto maps = scores.reshape({batch, explained, grid, grid});                    // row-major: [.., row, col]
  if (options_.smooth) maps = smooth_map(maps, options_.radius);
  AttributionCost cost;
  cost.explainer_passes = 1;
  return {maps.contiguous(), cost, stopwatch.seconds()};
}

}  // namespace tve
