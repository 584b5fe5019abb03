// The method registry, and the pipeline giving each method the autograd mode it asks for.

#include "tve/methods.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "test_helpers.hpp"
#include "tve/error.hpp"
#include "tve/explain.hpp"

namespace tve {
namespace {

Bundle tiny(const std::string& name = "tiny-vit") { return Bundle::load(test::shipped_bundle(name), torch::kCPU); }

TEST(Methods, RegistryNamesEveryMethodOnce) {
  const auto names = method_names();
  EXPECT_EQ(names.front(), "tve");  // the default comes first
  EXPECT_NE(std::find(names.begin(), names.end(), "occlusion"), names.end());
  auto sorted = names;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end());
  for (const auto& entry : attribution_methods()) EXPECT_GT(std::string(entry.summary).size(), 10u) << entry.name;
}

TEST(Methods, MakeMethodByNameWithTheBundlesDefaults) {
  Bundle bundle = tiny();
  for (const auto& name : method_names()) EXPECT_EQ(make_method(name, bundle)->name(), name);
  EXPECT_EQ(make_method("tve", bundle)->parameters()["smooth"], bundle.manifest().explainer->smooth);
  MethodSettings settings;
  settings.lambda_neg = 0.25;
  EXPECT_EQ(make_method("occlusion", bundle, settings)->parameters()["lambda_neg"], 0.25);
  EXPECT_EQ(make_method("occlusion", bundle)->parameters()["radius"], bundle.manifest().radius);
  test::expect_error<InvalidArgument>([&] { make_method("gradcam++-typo", bundle); }, {"unknown attribution method", "tve"});
}

// The cost a record states is the passes made: G*G per term of non-zero lambda (docs/methods.md).
TEST(Methods, OcclusionCostsGSquaredPassesPerTermOfNonZeroLambda) {
  Bundle bundle = tiny();
  const int grid = bundle.manifest().grid;
  Head& head = bundle.head("target");
  const auto& input = bundle.manifest().input;
  const auto images = torch::rand({2, 3, input.height, input.width});
  const auto classes = torch::zeros({2, 1}, torch::kLong);
  for (const auto& [lambda_pos, lambda_neg, terms] : std::vector<std::tuple<double, double, int>>{{1, 1, 2}, {1, 0, 1}, {0, 0.5, 1}}) {
    MethodSettings settings;
    settings.lambda_pos = lambda_pos;
    settings.lambda_neg = lambda_neg;
    const auto attribution = make_method("occlusion", bundle, settings)->explain(bundle, head, images, classes);
    EXPECT_EQ(attribution.cost.forward_passes, terms * grid * grid) << lambda_pos << " " << lambda_neg;
  }
}

TEST(Methods, TveNeedsAnExplainer) {
  test::TempDir tmp;
  const auto dir = test::copy_bundle("tiny-vit", tmp.path(), [](auto& m) { m.erase("explainer"); });
  Bundle bundle = Bundle::load(dir, torch::kCPU);
  test::expect_error<BundleError>([&] { make_method("tve", bundle); }, {"no explainer", "--method occlusion"});
  EXPECT_EQ(make_method("occlusion", bundle)->name(), "occlusion");
}

// A gradient method in miniature: |d logit_c / d x| summed over channels, pooled to the grid. It
// can only run where explain() turned autograd on, whatever the caller's mode.
class InputGradient : public AttributionMethod {
 public:
  std::string name() const override { return "input-gradient"; }
  nlohmann::json parameters() const override { return nlohmann::json::object(); }
  bool needs_gradients() const override { return true; }
  bool saw_autograd = false;

 protected:
  Attribution compute_maps(Bundle& bundle, Head& head, const torch::Tensor& images, const torch::Tensor& classes,
                           const ForwardPass&) override {
    saw_autograd = torch::GradMode::is_enabled() && !c10::InferenceMode::is_enabled();
    auto x = images.detach().clone().requires_grad_(true);
    const auto logits = head.logits(bundle.embed(x));
    logits.gather(1, classes.slice(1, 0, 1)).sum().backward();
    const int grid = bundle.manifest().grid;
    auto maps = torch::adaptive_avg_pool2d(x.grad().abs().sum(1, true), {grid, grid});  // [B,1,G,G]
    return {maps.detach(), {1, 1, 0}, 0.0};
  }
};

class ExactBrightness : public AttributionMethod {  // a method that must not see autograd
 public:
  std::string name() const override { return "inference-only"; }
  nlohmann::json parameters() const override { return nlohmann::json::object(); }
  bool saw_inference_mode = false;

 protected:
  Attribution compute_maps(Bundle& bundle, Head&, const torch::Tensor& images, const torch::Tensor& classes,
                           const ForwardPass&) override {
    saw_inference_mode = c10::InferenceMode::is_enabled();
    const int grid = bundle.manifest().grid;
    return {torch::zeros({images.size(0), classes.size(1), grid, grid}), {1, 0, 0}, 0.0};
  }
};

TEST(Methods, ExplainGivesEachMethodTheAutogradModeItNeeds) {
  Bundle bundle = tiny();
  Head& head = bundle.head("target");
  const auto images = torch::randn({2, 3, 32, 32});
  const auto classes = torch::zeros({2, 1}, torch::kLong);
  InputGradient gradient;
  ExactBrightness plain;
  {
    torch::InferenceMode callers_mode;  // a caller in inference mode must not stop a gradient method
    EXPECT_EQ(gradient.explain(bundle, head, torch::randn({2, 3, 32, 32}), classes).maps.sizes(),
              (std::vector<int64_t>{2, 1, 4, 4}));
  }
  EXPECT_TRUE(gradient.saw_autograd);
  plain.explain(bundle, head, images, classes);
  EXPECT_TRUE(plain.saw_inference_mode);

  // And through a whole explain run: maps from gradients, positive somewhere, one record each.
  test::TempDir tmp;
  std::vector<InputFile> inputs{{test::image_fixture("rgb8.png")}, {test::image_fixture("gray8.png")}};
  std::vector<nlohmann::json> records;
  const auto summary = run_explain(bundle, head, gradient, inputs, {}, {[&](const nlohmann::json& r) { records.push_back(r); }, {}});
  EXPECT_EQ(summary.succeeded, 2u);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0]["method"], "input-gradient");
  double largest = 0;
  for (const auto& row : records[0]["explained"][0]["values"]) {
    for (const auto& value : row) largest = std::max(largest, value.get<double>());
  }
  EXPECT_GT(largest, 0.0);
}

}  // namespace
}  // namespace tve
