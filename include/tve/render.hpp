#pragma once
// Heatmap overlays: an attribution map upsampled onto the original image through a colormap.

#include <torch/types.h>

#include <opencv2/core.hpp>
#include <string>

#include "tve/image.hpp"

namespace tve {

enum class Colormap { Jet, Turbo, Inferno, Viridis };

// "jet", "turbo", "inferno" or "viridis"; throws InvalidArgument otherwise.
Colormap parse_colormap(const std::string& name);
std::string to_string(Colormap colormap);

struct OverlayOptions {
  Colormap colormap = Colormap::Jet;
  double alpha = 0.5;  // weight of the heatmap; 0 shows only the image, 1 only the heatmap
};

// display: the original image, 8-bit BGR. map: [G,G] f32 (any device). region: where in the
// original image the model input came from (the map covers exactly that box). The map is
// min-max normalised for display only (a flat map shows as the colormap's low end).
cv::Mat render_overlay(const cv::Mat& display, const torch::Tensor& map, const CropBox& region, const OverlayOptions& options);

}  // namespace tve
