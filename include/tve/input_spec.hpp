#pragma once
// What a model takes as input: size, resize policy and normalisation (a bundle's manifest "input").
// Apart from bundle.hpp so that image decoding and batching need not know about bundles.

#include <array>

namespace tve {

enum class ResizePolicy {
  Stretch,     // resize to height x width; aspect ratio not kept
  CenterCrop,  // scale the shorter side to size / crop_fraction, keep the centre
};

struct InputSpec {
  int height = 0;
  int width = 0;
  ResizePolicy resize = ResizePolicy::Stretch;
  double crop_fraction = 0.875;
  std::array<float, 3> mean{};  // RGB, for pixel values in [0,1]
  std::array<float, 3> std{};   // RGB
};

}  // namespace tve
