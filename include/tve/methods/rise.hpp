#pragma once
// RISE (Petsiuk et al. 2018): the class probability of many randomly masked copies of the image,
// each credited to the pixels its mask kept. Masks are coarse random binary grids, upsampled
// bilinearly with a random shift, the same masks for every image (from --seed). n forward passes
// per image, all classes from the same passes. docs/methods.md.

#include <cstdint>
#include <memory>

#include "tve/methods.hpp"

namespace tve {

struct RiseOptions {
  int samples = 4000;
  int cells = 7;                  // side of the coarse grid; create() picks ceil(G/2)
  double keep_probability = 0.5;  // of each coarse cell
  uint64_t seed = 0;
  int batch_size = 64;
};

class Rise : public AttributionMethod {
 public:
  explicit Rise(RiseOptions options) : options_(options) {}
  static std::unique_ptr<AttributionMethod> create(const Bundle& bundle, const MethodSettings& settings);
  std::string name() const override { return "rise"; }
  nlohmann::json parameters() const override;

  // Masks [to - from,1,H,W] in [0,1]: numbers from..to-1 of the method's mask sequence.
  torch::Tensor masks(int64_t from, int64_t to, int64_t height, int64_t width) const;

 protected:
  Attribution compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                           const ForwardPass& pass) override;

 private:
  RiseOptions options_;
};

}  // namespace tve
