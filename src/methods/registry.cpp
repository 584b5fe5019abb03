// The attribution methods tve offers: one line each (methods.hpp).

#include "tve/methods.hpp"

#include "tve/error.hpp"
#include "tve/methods/occlusion.hpp"
#include "tve/methods/tve.hpp"

namespace tve {

const std::vector<MethodEntry>& attribution_methods() {
  static const std::vector<MethodEntry> methods{
      {"tve", "one pass of the bundle's pre-trained explainer (the default)", &TveMethod::create},
      {"occlusion", "windowed occlusion, exact: 2*G*G model passes per image", &WindowedOcclusion::create},
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
