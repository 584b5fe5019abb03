#pragma once
// One interface for every attribution method. A method takes a preprocessed batch and, for each
// image, the classes to explain, and returns one G x G map per (image, class), oriented like the
// image: map[i][k][row][col], row 0 at the top. Rendering, output and evaluation never care
// which method made a map. Each method is one file (include/tve/methods/, src/methods/) and one
// line in the registry (methods.hpp), which is also what the command line offers.

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "tve/bundle.hpp"

namespace tve {

struct Attribution {
  torch::Tensor maps;             // [B,K,G,G] f32, on the bundle's device
  int64_t model_evaluations = 0;  // forward passes of the target (or explainer) per image
  double seconds = 0;             // wall time for the whole batch
};

class AttributionMethod {
 public:
  virtual ~AttributionMethod() = default;
  virtual std::string name() const = 0;
  // Parameters worth recording next to a map (lambdas, radius, smoothing...).
  virtual nlohmann::json parameters() const = 0;
  // Whether compute_maps needs autograd (gradient methods). explain() runs every other method in
  // inference mode, and these with autograd on, whatever mode the caller is in.
  virtual bool needs_gradients() const { return false; }

  // images: [B,3,H,W] normalised, on the bundle's device. classes: [B,K] int64 class indices of
  // `head`. embeddings: the target's E(images) [B,D] when the caller already has them (from the
  // forward pass that picked the classes), else undefined; a method may use them to avoid
  // recomputing. Checks the arguments, then runs the method without autograd unless it
  // needs_gradients(). Throws InvalidArgument on a class index outside the head.
  Attribution explain(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                      const torch::Tensor& embeddings = {});

 protected:
  // The method itself, on arguments explain() has checked.
  virtual Attribution compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                                   const torch::Tensor& embeddings) = 0;
};

// Pixel masks of the windows: [G*G, 1, H, W] f32, 1 inside S_k. Pixel row p belongs to grid row
// floor(p * G / H), likewise for columns; cell k = row * G + col.
torch::Tensor window_masks(int grid, int radius, int height, int width, const torch::Device& device);

// [B,K,G,G] -> [B,K,G,G] mean over the (2r+1) window, cells outside the grid not counted.
torch::Tensor smooth_map(const torch::Tensor& maps, int radius);

}  // namespace tve
