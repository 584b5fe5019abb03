#pragma once
// One interface for every attribution method. A method takes a preprocessed batch and, for each
// image, the classes to explain, and returns one G x G map per (image, class), oriented like the
// image: map[i][k][row][col], row 0 at the top. Rendering, output and evaluation never care
// which method made a map. Each method is one file (include/tve/methods/, src/methods/) and one
// line in the registry (methods.hpp), which is also what the command line offers.

#include <ATen/core/Generator.h>
#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "tve/bundle.hpp"

namespace tve {

// What a method spent, per image of the batch: passes of single images, so a batch of 64 masked
// copies of one image is 64 forward passes. A pass through part of the network (gradient methods
// that start from features()) counts as one.
struct AttributionCost {
  int64_t forward_passes = 0;    // of the target
  int64_t backward_passes = 0;   // of the target, to the input or to features()
  int64_t explainer_passes = 0;  // of the bundle's explainer
  int64_t model_evaluations() const { return forward_passes + explainer_passes; }
};

struct Attribution {
  torch::Tensor maps;  // [B,K,G,G] f32, on the bundle's device
  AttributionCost cost;
  double seconds = 0;  // wall time for the whole batch
};

// The forward pass that picks the classes to explain: E(x), and whatever a method computed in the
// same pass for its own use. TVE on an explainer that holds the whole encoder (embed_and_explain,
// docs/bundle-format.md) gets E(x) and the meta-attributions from one pass over the encoder's
// layers; everyone else gets E(x) from the target. Implicit from a tensor of embeddings, so that a
// caller with E(x) alone passes it as it is.
struct ForwardPass {
  ForwardPass(torch::Tensor embeddings_ = {}) : embeddings(std::move(embeddings_)) {}  // NOLINT: implicit by design
  torch::Tensor embeddings;        // [B,D], E(images)
  torch::Tensor psi_pos, psi_neg;  // [B,G*G,D] meta-attributions when computed with them, else undefined
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

  // The forward pass whose E(x) picks the classes to explain (run in inference mode): the
  // target's embed(images) unless the method can do part of its own work in the same pass (TVE).
  // Callers that explain with this method alone call it; callers sharing one pass among several
  // methods may pass the target's E(x) instead, and the method then does all its work itself.
  virtual ForwardPass forward_pass(Bundle& bundle, const torch::Tensor& images);

  // images: [B,3,H,W] normalised, on the bundle's device. classes: [B,K] int64 class indices of
  // `head`. pass: the forward pass that picked the classes when the caller has it (its
  // embeddings [B,D], maybe more: forward_pass()), else empty; a method may use it to avoid
  // recomputing. Checks the arguments, then runs the method without autograd unless it
  // needs_gradients(). Throws InvalidArgument on a class index outside the head.
  Attribution explain(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                      const ForwardPass& pass = {});

 protected:
  // The method itself, on arguments explain() has checked.
  virtual Attribution compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                                   const ForwardPass& pass) = 0;
};

// A CPU random generator for stream `stream` of `seed`: random methods draw chunk i of their masks,
// noise or coalitions from stream i, so results depend on the seed only, not on batch sizes, on the
// device or on which other images share the batch.
at::Generator seeded_generator(uint64_t seed, uint64_t stream);

// Calls work(from, to) for consecutive ranges [from, to) of [0, total), at most `chunk` long: the
// methods that evaluate many variants of one image pass them to the model a batch at a time.
template <typename Work>
void for_each_chunk(int64_t total, int64_t chunk, Work&& work) {
  for (int64_t from = 0; from < total; from += chunk) work(from, std::min(total, from + chunk));
}

// Pixel masks of the windows: [G*G, 1, H, W] f32, 1 inside S_k. Pixel row p belongs to grid row
// floor(p * G / H), likewise for columns; cell k = row * G + col.
torch::Tensor window_masks(int grid, int radius, int height, int width, const torch::Device& device);

// [B,K,G,G] -> [B,K,G,G] mean over the (2r+1) window, cells outside the grid not counted.
torch::Tensor smooth_map(const torch::Tensor& maps, int radius);

// Which pixels make up each cell along one side: [G,size] f32, row g is 1 at the pixels p with
// floor(p * G / size) == g (the cells of window_masks).
torch::Tensor cell_membership(int grid, int64_t size, const torch::Device& device);

// Pixel-resolution maps [...,H,W] -> [...,G,G]: the sum, or the mean, of each cell's pixels.
torch::Tensor sum_over_cells(const torch::Tensor& pixel_maps, int grid);
torch::Tensor mean_over_cells(const torch::Tensor& pixel_maps, int grid);

// Cell values [...,G,G] -> [...,H,W]: each pixel takes its cell's value (coalitions to pixel masks).
torch::Tensor cells_to_pixels(const torch::Tensor& cell_values, int64_t height, int64_t width);

}  // namespace tve
