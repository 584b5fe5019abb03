#pragma once
// The registry of attribution methods: a name, a line of help and a factory each. The command
// line's --method choices and help come from here, so adding a method means one file under
// src/methods/ (with its header under include/tve/methods/), one line in src/methods/registry.cpp
// and its tests.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tve/attribution.hpp"
#include "tve/bundle.hpp"

namespace tve {

// What a user can set on any method; each method reads what applies to it and takes the rest
// from the bundle.
struct MethodSettings {
  std::optional<double> lambda_pos;  // tve, occlusion
  std::optional<double> lambda_neg;  // tve, occlusion
  std::optional<bool> smooth;        // tve
  std::optional<int> radius;         // occlusion: the window (tve's is fixed by its training)
  std::optional<int> steps;          // ig: quadrature points
  std::optional<int> samples;        // smoothgrad, rise, kernelshap: random draws per image
  std::optional<uint64_t> seed;      // smoothgrad, rise, kernelshap
  std::optional<int> rise_cells;     // rise: side of the coarse mask grid
  std::optional<int> batch_size;     // perturbed, noisy or interpolated copies per pass
};

struct MethodEntry {
  const char* name;
  const char* summary;  // one line for --help
  std::unique_ptr<AttributionMethod> (*create)(const Bundle& bundle, const MethodSettings& settings);
};

// Every method, in the order --help lists them.
const std::vector<MethodEntry>& attribution_methods();
std::vector<std::string> method_names();

// Throws InvalidArgument for an unknown name (listing the known ones), and whatever the method's
// factory throws (BundleError when the bundle lacks what it needs).
std::unique_ptr<AttributionMethod> make_method(const std::string& name, const Bundle& bundle,
                                               const MethodSettings& settings = {});

}  // namespace tve
