#pragma once
// One interface for every attribution method. A method takes a preprocessed batch and, for each
// image, the classes to explain, and returns one G x G map per (image, class), oriented like the
// image: map[i][k][row][col], row 0 at the top. Rendering, output and evaluation never care
// which method made a map.

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

  // images: [B,3,H,W] normalised, on the bundle's device. classes: [B,K] int64 class indices of
  // `head`. embeddings: the target's E(images) [B,D] when the caller already has them (from the
  // forward pass that picked the classes), else undefined; a method may use them to avoid
  // recomputing. Checks the arguments, then runs the method without autograd unless it needs
  // gradients. Throws InvalidArgument on a class index outside the head.
  Attribution explain(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                      const torch::Tensor& embeddings = {});

 protected:
  // The method itself, on arguments explain() has checked.
  virtual Attribution compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                                   const torch::Tensor& embeddings) = 0;
};

struct TveOptions {
  double lambda_pos = 1.0;
  double lambda_neg = 1.0;
  bool smooth = true;
  int radius = 2;
};

// TVE (docs/design.md, section 4): e[k] = lambda_pos * h(psi_pos[k])[c] - lambda_neg * h(psi_neg[k])[c],
// then optionally a (2r+1) x (2r+1) mean filter that does not count cells outside the grid.
// One explainer forward pass per batch; the head is applied to the meta-attributions, which is
// what lets a head trained after the explainer be explained without training anything.
class TveMethod : public AttributionMethod {
 public:
  explicit TveMethod(TveOptions options) : options_(options) {}
  // Defaults from the bundle's manifest (explainer section and radius).
  static TveOptions defaults_for(const Manifest& manifest);

  std::string name() const override { return "tve"; }
  nlohmann::json parameters() const override;

 protected:
  Attribution compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                           const torch::Tensor& embeddings) override;

 private:
  TveOptions options_;
};

// Windowed occlusion, the quantity TVE amortises, by brute force: for each cell k,
// e[k] = h(E(x with only S_k kept))[c] - h(E(x with S_k removed))[c], where S_k is the
// (2r+1) x (2r+1) block of cells around k (clipped at the border) and removed pixels take the
// baseline value 0 in normalised space (the mean colour). 2 * G * G forward passes per image.
struct OcclusionOptions {
  int radius = 2;
  int batch_size = 64;  // masked images per forward pass
  double lambda_pos = 1.0;
  double lambda_neg = 1.0;
};

class WindowedOcclusion : public AttributionMethod {
 public:
  explicit WindowedOcclusion(OcclusionOptions options) : options_(options) {}
  std::string name() const override { return "occlusion"; }
  nlohmann::json parameters() const override;

 protected:
  // Ignores the embeddings: every masked image needs its own forward pass anyway.
  Attribution compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                           const torch::Tensor& embeddings) override;

 private:
  OcclusionOptions options_;
};

// Pixel masks of the windows: [G*G, 1, H, W] f32, 1 inside S_k. Pixel row p belongs to grid row
// floor(p * G / H), likewise for columns; cell k = row * G + col.
torch::Tensor window_masks(int grid, int radius, int height, int width, const torch::Device& device);

// [B,K,G,G] -> [B,K,G,G] mean over the (2r+1) window, cells outside the grid not counted.
torch::Tensor smooth_map(const torch::Tensor& maps, int radius);

}  // namespace tve
