// The attribution methods tve offers: one line each (methods.hpp).

#include "tve/methods.hpp"

#include "tve/error.hpp"
#include "tve/methods/gradcam.hpp"
#include "tve/methods/gradcam_plus_plus.hpp"
#include "tve/methods/integrated_gradients.hpp"
#include "tve/methods/kernel_shap.hpp"
#include "tve/methods/occlusion.hpp"
#include "tve/methods/rise.hpp"
#include "tve/methods/saliency.hpp"
#include "tve/methods/smoothgrad.hpp"
#include "tve/methods/tve.hpp"

namespace tve {

const std::vector<MethodEntry>& attribution_methods() {
  static const std::vector<MethodEntry> methods{
      {"tve", "one pass of the bundle's pre-trained explainer (the default)", &TveMethod::create},
      {"occlusion", "windowed occlusion, exact: G*G model passes per image and non-zero lambda", &WindowedOcclusion::create},
      {"gradcam", "Grad-CAM on the target's features(): 1 forward, 1 backward pass", &GradCam::create},
      {"gradcam++", "Grad-CAM++ on the target's features(): 1 forward, 1 backward pass", &GradCamPlusPlus::create},
      {"saliency", "input-gradient magnitude, summed per cell: 1 forward, 1 backward pass", &Saliency::create},
      {"smoothgrad", "saliency averaged over --samples noisy copies (default 25)", &SmoothGrad::create},
      {"ig", "Integrated Gradients from the mean colour, --steps passes (default 32)", &IntegratedGradients::create},
      {"rise", "RISE: --samples random masks (default 4000)", &Rise::create},
      {"kernelshap", "Kernel SHAP over the G*G cells, --samples coalitions (default 2000)", &KernelShap::create},
  };
  return methods;
}

std::vector<std::string> method_names() {
  std::vector<std::string> names;
  for (const auto& method : attribution_methods()) names.emplace_back(method.name);
  return names;
}

std::unique_ptr<AttributionMethod> make_method(const std::string& name, const Bundle& bundle, const MethodSettings& settings) {
  for (const auto& method : attribution_methods()) {
    if (name == method.name) return method.create(bundle, settings);
  }
  std::string known;
  for (const auto& method : attribution_methods()) known += (known.empty() ? "" : ", ") + std::string(method.name);
  throw InvalidArgument("unknown attribution method '" + name + "'; known: " + known);
}

}  // namespace tve
