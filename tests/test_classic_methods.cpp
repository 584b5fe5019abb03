// The classic attribution methods (docs/methods.md) on real bundles: exact values where a model
// makes them known, the cost each reports, reproducibility of the random ones, and clear errors
// where a bundle lacks what a method needs. Agreement with Captum and pytorch-grad-cam is checked
// in tests/python/test_methods_match_references.py.

#include <torch/torch.h>

#include <cmath>

#include "detail/sha256.hpp"
#include "test_helpers.hpp"
#include "tve/error.hpp"
#include "tve/methods.hpp"
#include "tve/methods/integrated_gradients.hpp"
#include "tve/methods/kernel_shap.hpp"

namespace tve {
namespace {

Bundle load(const std::filesystem::path& dir) { return Bundle::load(dir, torch::kCPU); }

// The oracle bundle (tests/fixtures/generators/make_test_bundles.py) is linear: z[k] = mean of x over the channels
// and the pixels of cell k, logits = W z. For a linear model every method below has a closed form.
struct Oracle {
  Bundle bundle = load(test::fixtures() / "bundles" / "oracle");
  Head& head = bundle.head("target");
  torch::Tensor images = torch::randn({2, 3, 32, 32});
  torch::Tensor classes = torch::tensor({int64_t{0}, int64_t{1}, int64_t{2}, int64_t{0}}).view({2, 2});

  // [B,K,G,G]: the explained class's weight of each cell, w[c][k].
  torch::Tensor class_weights() const {
    torch::NoGradGuard no_grad;
    const int grid = bundle.manifest().grid;
    return head.weight.index_select(0, classes.reshape(-1)).view({2, 2, grid, grid});
  }
  torch::Tensor cells() {  // z as [B,1,G,G]
    torch::NoGradGuard no_grad;
    const int grid = bundle.manifest().grid;
    return bundle.embed(images).view({2, 1, grid, grid});
  }
  torch::Tensor maps(const std::string& method, const MethodSettings& settings = {}) {
    return make_method(method, bundle, settings)->explain(bundle, head, images, classes).maps;
  }
};

void expect_close(const torch::Tensor& actual, const torch::Tensor& expected, double tolerance) {
  ASSERT_EQ(actual.sizes(), expected.sizes());
  EXPECT_LE((actual - expected).abs().max().item<double>(), tolerance) << "actual\n" << actual << "\nexpected\n" << expected;
}

TEST(ClassicMethods, IntegratedGradientsOfALinearModelIsInputTimesWeight) {
  Oracle oracle;
  // Cell k's attribution is w[c][k] * z[k]: the gradient is constant, so any quadrature is exact.
  expect_close(oracle.maps("ig"), oracle.class_weights() * oracle.cells(), 1e-5);
}

TEST(ClassicMethods, KernelShapOfALinearModelIsExact) {
  Oracle oracle;
  // Removing cell k moves the logit by exactly w[c][k] z[k] whatever else is removed, so the
  // least-squares fit recovers it from any coalitions that determine it (more than G*G + 1).
  MethodSettings settings;
  settings.samples = 200;
  expect_close(oracle.maps("kernelshap", settings), oracle.class_weights() * oracle.cells(), 1e-4);
}

TEST(ClassicMethods, KernelShapMeetsEfficiency) {
  // The full and the empty coalition weigh 1e6 in the fit: the values add up to y(x) - y(0).
  Bundle bundle = load(test::shipped_bundle("tiny-vit"));
  Head& head = bundle.head("target");
  const auto images = torch::randn({2, 3, 32, 32});
  const auto classes = torch::tensor({int64_t{2}, int64_t{7}}).view({2, 1});
  MethodSettings settings;
  settings.samples = 300;
  const auto maps = make_method("kernelshap", bundle, settings)->explain(bundle, head, images, classes).maps;
  torch::NoGradGuard no_grad;
  const auto full = head.logits(bundle.embed(images)).gather(1, classes).squeeze(1);
  const auto empty = head.logits(bundle.embed(torch::zeros_like(images))).gather(1, classes).squeeze(1);
  expect_close(maps.sum({1, 2, 3}), full - empty, 1e-3);
}

TEST(ClassicMethods, SaliencyAndSmoothGradOfALinearModelAreTheWeights) {
  Oracle oracle;
  // d logit / d x[ch,p] = w[c][k] / (3 channels * 16 pixels) for p in cell k; summed over the 16
  // pixels of the cell: |w[c][k]| / 3. SmoothGrad averages the same constant gradient.
  const auto expected = oracle.class_weights().abs() / 3;
  expect_close(oracle.maps("saliency"), expected, 1e-6);
  MethodSettings settings;
  settings.samples = 3;
  expect_close(oracle.maps("smoothgrad", settings), expected, 1e-6);
}

TEST(ClassicMethods, GaussLegendreIntegratesPolynomialsExactly) {
  for (int points : {1, 2, 5, 32}) {
    const auto [nodes, weights] = gauss_legendre_rule(points);
    ASSERT_EQ(nodes.size(), static_cast<size_t>(points));
    for (size_t i = 1; i < nodes.size(); ++i) EXPECT_LT(nodes[i - 1], nodes[i]);
    for (int degree = 0; degree < 2 * points; ++degree) {
      double integral = 0;
      for (size_t i = 0; i < nodes.size(); ++i) integral += weights[i] * std::pow(nodes[i], degree);
      EXPECT_NEAR(integral, 1.0 / (degree + 1), 1e-12) << points << " points, degree " << degree;
    }
  }
}

TEST(ClassicMethods, KernelShapCoalitionsFollowTheShapleyKernel) {
  const KernelShap method({4000, 7, 64}, 4);
  const auto& z = method.coalitions();
  ASSERT_EQ(z.sizes(), (std::vector<int64_t>{4000, 16}));
  EXPECT_EQ(z[0].sum().item<double>(), 16);
  EXPECT_EQ(z[1].sum().item<double>(), 0);
  const auto sizes = z.slice(0, 2).sum(1);
  EXPECT_GE(sizes.min().item<double>(), 1);
  EXPECT_LE(sizes.max().item<double>(), 15);
  // The kernel puts the most mass on sizes 1 and 15: (M-1)/(k(M-k)) is 1 there and 0.27 at 8.
  const double at_edges = ((sizes == 1).sum() + (sizes == 15).sum()).item<double>();
  const double in_middle = (sizes == 8).sum().item<double>();
  EXPECT_GT(at_edges, 4 * in_middle);
}

TEST(ClassicMethods, EveryMethodRunsOnEveryFamilyAndHeadAndReportsItsCost) {
  for (const std::string family : {"tiny-vit", "tiny-resnet", "tiny-swin"}) {
    Bundle bundle = load(test::shipped_bundle(family));
    const auto images = torch::randn({2, 3, 32, 32});
    for (const std::string head_name : {"target", "parity"}) {
      Head& head = bundle.head(head_name);
      const auto classes = torch::tensor({int64_t{1}, int64_t{0}}).view({2, 1});
      MethodSettings settings;
      settings.samples = 40;
      settings.steps = 4;
      for (const auto& name : method_names()) {
        SCOPED_TRACE(family + " " + head_name + " " + name);
        const auto attribution = make_method(name, bundle, settings)->explain(bundle, head, images, classes);
        ASSERT_EQ(attribution.maps.sizes(), (std::vector<int64_t>{2, 1, 4, 4}));
        EXPECT_TRUE(torch::isfinite(attribution.maps).all().item<bool>());
        const auto& cost = attribution.cost;
        EXPECT_GT(cost.model_evaluations(), 0);
        if (name == "gradcam" || name == "gradcam++") {
          // A ReLU, upsampled and averaged; all zero where every weighted channel sum is negative
          // (tiny-resnet's features() are 1 x 1).
          EXPECT_GE(attribution.maps.min().item<double>(), 0);
          EXPECT_EQ(cost.backward_passes, 1);
        } else {
          EXPECT_GT(attribution.maps.abs().max().item<double>(), 0);
        }
        if (name == "saliency") {
          EXPECT_EQ(cost.forward_passes, 1);
        } else if (name == "ig") {
          EXPECT_EQ(cost.backward_passes, 4);
        } else if (name == "rise" || name == "kernelshap" || name == "smoothgrad") {
          EXPECT_EQ(cost.forward_passes, 40);
        } else if (name == "occlusion") {
          EXPECT_EQ(cost.forward_passes, 2 * 16);
          MethodSettings removal_only;  // a term of weight 0 costs nothing
          removal_only.lambda_pos = 0;
          EXPECT_EQ(make_method(name, bundle, removal_only)->explain(bundle, head, images, classes).cost.forward_passes, 16);
        }
      }
    }
  }
}

TEST(ClassicMethods, RandomMethodsDependOnTheSeedOnly) {
  Bundle bundle = load(test::shipped_bundle("tiny-resnet"));
  Head& head = bundle.head("target");
  const auto images = torch::randn({2, 3, 32, 32});
  const auto classes = torch::tensor({int64_t{3}, int64_t{5}}).view({2, 1});
  for (const std::string name : {"rise", "kernelshap", "smoothgrad"}) {
    SCOPED_TRACE(name);
    MethodSettings settings;
    settings.samples = 50;
    settings.seed = 11;
    const auto batch = make_method(name, bundle, settings)->explain(bundle, head, images, classes).maps;
    // Another batch size, the second image alone: the same maps.
    settings.batch_size = 7;
    const auto alone =
        make_method(name, bundle, settings)->explain(bundle, head, images.slice(0, 1, 2), classes.slice(0, 1, 2)).maps;
    EXPECT_TRUE(torch::allclose(alone[0], batch[1], 1e-5, 1e-5));
    settings.seed = 12;
    const auto reseeded = make_method(name, bundle, settings)->explain(bundle, head, images, classes).maps;
    EXPECT_FALSE(torch::allclose(reseeded, batch, 1e-3, 1e-3));
  }
}

TEST(ClassicMethods, GradCamNeedsFeaturesAndForOtherHeadsEmbedFeatures) {
  test::TempDir tmp;
  // The tiny-vit layout but the older target format: features() and classify(), no embed_features().
  const auto dir = test::copy_bundle("tiny-vit", tmp.path(), [](auto& m) { m.erase("explainer"); });
  std::filesystem::copy_file(test::bundle_part("target_without_embed_features.pt"), dir / "target.pt", std::filesystem::copy_options::overwrite_existing);
  auto manifest = test::read_json(dir / "manifest.json");
  manifest["target"]["sha256"] = sha256_file(dir / "target.pt");
  test::write_text(dir / "manifest.json", manifest.dump(2));
  Bundle bundle = load(dir);
  EXPECT_FALSE(bundle.has_embed_features());
  const auto images = torch::randn({1, 3, 32, 32});
  const auto classes = torch::zeros({1, 1}, torch::kLong);
  auto gradcam = make_method("gradcam", bundle);
  EXPECT_EQ(gradcam->explain(bundle, bundle.head("target"), images, classes).maps.sizes(), (std::vector<int64_t>{1, 1, 4, 4}));
  test::expect_error<BundleError>([&] { gradcam->explain(bundle, bundle.head("parity"), images, classes); },
                                  {"target.pt", "embed_features", "'parity'"});
  // A bundle without features() offers every method but the CAMs, and says which others work.
  test::expect_error<BundleError>([&] { make_method("gradcam", load(test::fixtures() / "bundles" / "oracle")); },
                                  {"no features()", "saliency"});
}

}  // namespace
}  // namespace tve
