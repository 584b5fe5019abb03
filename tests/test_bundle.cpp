// Bundle loading: the shipped tiny bundles load, and every way a bundle can be malformed gets its
// own error naming the file and the mismatch, before any image is touched.

#include "tve/bundle.hpp"

#include <torch/torch.h>

#include "test_helpers.hpp"
#include "tve/error.hpp"
#include "detail/sha256.hpp"

namespace tve {
namespace {

using test::copy_bundle;
using test::expect_error;
using test::TempDir;
namespace fs = std::filesystem;

Bundle load_cpu(const fs::path& dir) { return Bundle::load(dir, torch::kCPU); }

class TinyBundles : public ::testing::TestWithParam<std::string> {};

TEST_P(TinyBundles, LoadsAndMatchesItsManifest) {
  Bundle bundle = load_cpu(test::shipped_bundle(GetParam()));
  const Manifest& m = bundle.manifest();
  EXPECT_EQ(m.name, GetParam());
  EXPECT_EQ(m.input.height, 32);
  EXPECT_EQ(m.grid, 4);
  EXPECT_EQ(m.target.labels.size(), 10u);
  EXPECT_TRUE(bundle.has_explainer());
  EXPECT_TRUE(bundle.has_gradient_methods());
  EXPECT_EQ(bundle.head_names(), (std::vector<std::string>{"target", "parity"}));

  torch::InferenceMode guard;
  auto x = torch::randn({2, 3, 32, 32});
  auto z = bundle.embed(x);
  EXPECT_EQ(z.sizes(), (std::vector<int64_t>{2, m.embedding_dim}));
  EXPECT_TRUE(torch::allclose(bundle.head("target").logits(z), bundle.logits(x), 1e-5, 1e-5));
  EXPECT_EQ(bundle.head("parity").logits(z).sizes(), (std::vector<int64_t>{2, 2}));
  auto [pos, neg] = bundle.meta_attributions(x);
  EXPECT_EQ(pos.sizes(), (std::vector<int64_t>{2, 16, m.embedding_dim}));
  EXPECT_EQ(neg.sizes(), pos.sizes());
}

INSTANTIATE_TEST_SUITE_P(Shipped, TinyBundles, ::testing::Values("tiny-vit", "tiny-resnet", "tiny-swin"));

// TVE applies W and b directly (only the explained rows); they must be the module's own map.
TEST_P(TinyBundles, HeadWeightsReadOffTheModuleReproduceIt) {
  Bundle bundle = load_cpu(test::shipped_bundle(GetParam()));
  torch::InferenceMode guard;
  const auto z = 3 * torch::randn({5, bundle.manifest().embedding_dim});
  for (const auto& name : bundle.head_names()) {
    Head& head = bundle.head(name);
    ASSERT_EQ(head.weight.sizes(), (std::vector<int64_t>{static_cast<int64_t>(head.spec.labels.size()), bundle.manifest().embedding_dim}));
    const auto direct = torch::addmm(head.bias, z, head.weight.t());
    EXPECT_TRUE(torch::allclose(direct, head.logits(z), 1e-5, 1e-5)) << name;
  }
}

TEST(Bundle, UnknownHeadNamesTheAvailableOnes) {
  Bundle bundle = load_cpu(test::shipped_bundle("tiny-vit"));
  expect_error<InvalidArgument>([&] { bundle.head("nope"); }, {"no head 'nope'", "target, parity"});
}

TEST(Bundle, ExternalHeadIsCheckedLikeABundledOne) {
  Bundle bundle = load_cpu(test::shipped_bundle("tiny-vit"));
  Head parity = bundle.load_external_head(test::shipped_bundle("tiny-vit") / "heads" / "parity.pt", std::vector<std::string>{"even", "odd"});
  EXPECT_EQ(parity.spec.labels.size(), 2u);
  EXPECT_TRUE(torch::equal(parity.weight, bundle.head("parity").weight));
  expect_error<BundleError>([&] { bundle.load_external_head(test::bundle_part("head_nonlinear.pt"), std::vector<std::string>{"a", "b"}); },
                            {"head_nonlinear.pt", "not affine"});
  expect_error<BundleError>([&] { bundle.load_external_head(test::bundle_part("head_wrong_dim.pt"), std::vector<std::string>{"a", "b"}); },
                            {"head_wrong_dim.pt", "running the head"});
  expect_error<BundleError>([&] { bundle.load_external_head(test::shipped_bundle("tiny-vit") / "heads" / "parity.pt", std::vector<std::string>{"a", "b", "c"}); },
                            {"parity.pt", "expected [1, 3]"});
}

// ---- malformed manifests -------------------------------------------------------------------

TEST(BundleErrors, MissingFolderAndManifest) {
  TempDir tmp;
  expect_error<BundleError>([&] { load_cpu(tmp / "absent"); }, {"absent", "does not exist"});
  expect_error<BundleError>([&] { load_cpu(tmp.path()); }, {"no manifest.json"});
}

TEST(BundleErrors, ManifestIsNotJson) {
  TempDir tmp;
  const auto dir = copy_bundle("tiny-vit", tmp.path());
  test::write_text(dir / "manifest.json", "{ \"format_version\": 1, ");
  expect_error<BundleError>([&] { load_cpu(dir); }, {"manifest.json", "not valid JSON"});
}

struct ManifestCase {
  std::string name;
  std::function<void(nlohmann::json&)> edit;
  std::string expected;
};

class MalformedManifest : public ::testing::TestWithParam<ManifestCase> {};

TEST_P(MalformedManifest, IsRefusedWithAClearError) {
  TempDir tmp;
  const auto dir = copy_bundle("tiny-vit", tmp.path(), GetParam().edit);
  expect_error<BundleError>([&] { load_cpu(dir); }, {GetParam().expected});
  // read_manifest alone already sees schema errors; file errors need Bundle::load.
}

INSTANTIATE_TEST_SUITE_P(
    Cases, MalformedManifest,
    ::testing::Values(
        ManifestCase{"future_version", [](auto& m) { m["format_version"] = 2; }, "format_version 2 is not supported"},
        ManifestCase{"version_is_text", [](auto& m) { m["format_version"] = "1"; }, "'format_version' must be an integer"},
        ManifestCase{"no_input", [](auto& m) { m.erase("input"); }, "missing required key 'input'"},
        ManifestCase{"height_is_text", [](auto& m) { m["input"]["height"] = "32"; }, "'input.height' must be an integer"},
        ManifestCase{"negative_grid", [](auto& m) { m["grid"] = -4; }, "'grid' is -4"},
        ManifestCase{"mean_of_two", [](auto& m) { m["input"]["mean"] = {0.5, 0.5}; }, "'input.mean' must be a list of 3"},
        ManifestCase{"zero_std", [](auto& m) { m["input"]["std"] = {0.2, 0.0, 0.2}; }, "'input.std' has 0.0 for G, expected 0.001 to 100"},
        // Every real number is bounded, so that a typo is refused here (exit 3) instead of
        // surfacing as a numerical failure or a meaningless input later.
        ManifestCase{"denormal_std", [](auto& m) { m["input"]["std"] = {1e-45, 0.2, 0.2}; }, "manifest.json: 'input.std' has 1e-45 for R"},
        ManifestCase{"huge_std", [](auto& m) { m["input"]["std"] = {0.2, 0.2, 1e30}; }, "'input.std' has 1e+30 for B"},
        ManifestCase{"negative_std", [](auto& m) { m["input"]["std"] = {-0.2, 0.2, 0.2}; }, "'input.std' has -0.2 for R"},
        ManifestCase{"mean_above_one", [](auto& m) { m["input"]["mean"] = {0.5, 255.0, 0.5}; }, "'input.mean' has 255.0 for G, expected 0 to 1"},
        ManifestCase{"std_is_text", [](auto& m) { m["input"]["std"] = {"0.2", 0.2, 0.2}; }, "'input.std' must be a list of 3 finite numbers"},
        ManifestCase{"tiny_crop_fraction", [](auto& m) { m["input"]["resize"] = "center_crop"; m["input"]["crop_fraction"] = 1e-6; },
                     "manifest.json: 'input.crop_fraction' is 1e-06, expected 0.1 to 1"},
        ManifestCase{"crop_fraction_above_one", [](auto& m) { m["input"]["resize"] = "center_crop"; m["input"]["crop_fraction"] = 1.5; },
                     "'input.crop_fraction' is 1.5"},
        ManifestCase{"negative_lambda", [](auto& m) { m["explainer"]["lambda_neg"] = -1.0; }, "'explainer.lambda_neg' is -1.0, expected 0 to 1000"},
        ManifestCase{"huge_lambda", [](auto& m) { m["explainer"]["lambda_pos"] = 1e300; }, "'explainer.lambda_pos' is 1e+300"},
        ManifestCase{"both_lambdas_zero", [](auto& m) { m["explainer"]["lambda_pos"] = 0; m["explainer"]["lambda_neg"] = 0; },
                     "are both 0"},
        ManifestCase{"lambda_is_text", [](auto& m) { m["explainer"]["lambda_pos"] = "1"; }, "'explainer.lambda_pos' must be a finite number"},
        ManifestCase{"unknown_resize", [](auto& m) { m["input"]["resize"] = "squash"; }, "expected stretch or center_crop"},
        ManifestCase{"unknown_architecture", [](auto& m) { m["architecture"] = "mlp"; }, "expected vit, resnet or swin"},
        ManifestCase{"layout_not_what_features_gives", [](auto& m) { m["features_layout"] = "map"; }, "with features layout 'map' means [1, 32, h, w]"},
        ManifestCase{"unknown_layout", [](auto& m) { m["features_layout"] = "grid"; }, "'features_layout' is 'grid', expected map or tokens"},
        ManifestCase{"no_labels", [](auto& m) { m["target"].erase("labels"); }, "'target' needs 'labels' or 'labels_file'"},
        ManifestCase{"escaping_path", [](auto& m) { m["target"]["file"] = "../tiny-resnet/target.pt"; }, "must not leave the bundle"},
        ManifestCase{"bad_hash_text", [](auto& m) { m["target"]["sha256"] = "XYZ"; }, "64 lowercase hex digits"},
        ManifestCase{"missing_file", [](auto& m) { m["heads"]["parity"]["file"] = "heads/gone.pt"; }, "gone.pt: file named in the manifest does not exist"},
        ManifestCase{"wrong_hash", [](auto& m) { m["target"]["sha256"] = std::string(64, 'a'); }, "target.pt: SHA-256 is"},
        ManifestCase{"too_few_labels", [](auto& m) { m["target"]["labels"] = {"a", "b"}; }, "expected [1, 2] (the manifest lists 2 labels)"},
        ManifestCase{"wrong_embedding_dim", [](auto& m) { m["embedding_dim"] = 31; }, "embed() gives [1, 32], expected [1, 31]"},
        ManifestCase{"wrong_grid", [](auto& m) { m["grid"] = 8; }, "explainer.pt: explainer output is [1, 16, 32], expected [1, 64, 32]"},
        ManifestCase{"explainer_for_other_target", [](auto& m) { m["explainer"]["target_sha256"] = std::string(64, 'b'); }, "explainer was trained against target SHA-256 bbbb"},
        ManifestCase{"head_labels_mismatch", [](auto& m) { m["heads"]["parity"]["labels"] = {"x", "y", "z"}; }, "parity.pt: head maps [1,32] to [1, 2], expected [1, 3]"},
        ManifestCase{"reserved_head_name", [](auto& m) { m["heads"]["target"] = m["heads"]["parity"]; }, "'heads.target' is reserved"}),
    [](const auto& test_info) { return test_info.param.name; });

TEST(Bundle, AnyArchitectureThatStatesItsFeaturesLayoutLoads) {
  TempDir tmp;
  const auto dir = copy_bundle("tiny-vit", tmp.path(), [](auto& m) {
    m["architecture"] = "deit";
    m["features_layout"] = "tokens";
  });
  const Bundle bundle = load_cpu(dir);
  EXPECT_EQ(bundle.manifest().architecture, "deit");
  EXPECT_EQ(bundle.manifest().features_layout, FeaturesLayout::Tokens);
  EXPECT_EQ(load_cpu(test::shipped_bundle("tiny-resnet")).manifest().features_layout, FeaturesLayout::Map);
}

// ---- malformed TorchScript files -----------------------------------------------------------

// Replaces one file of a bundle copy with a broken part and updates its hash in the manifest, so
// that the error comes from the file's content, not from the hash check.
fs::path bundle_with_part(const TempDir& tmp, const std::string& manifest_key, const std::string& part) {
  const auto dir = copy_bundle("tiny-vit", tmp.path());
  auto manifest = test::read_json(dir / "manifest.json");
  nlohmann::json* entry = &manifest[manifest_key];
  if (manifest_key == "heads") entry = &manifest["heads"]["parity"];
  fs::copy_file(test::bundle_part(part), dir / (*entry)["file"].get<std::string>(), fs::copy_options::overwrite_existing);
  (*entry)["sha256"] = sha256_file(dir / (*entry)["file"].get<std::string>());
  if (manifest_key == "target") manifest["explainer"]["target_sha256"] = (*entry)["sha256"];
  test::write_text(dir / "manifest.json", manifest.dump(2));
  return dir;
}

TEST(BundleErrors, ExplainerWhoseEmbeddingPathChangesPsiPos) {
  TempDir tmp;
  const auto dir = bundle_with_part(tmp, "explainer", "explainer_embedding_changes_pos.pt");
  expect_error<BundleError>([&] { load_cpu(dir); }, {"explainer.pt", "forward_with_embedding() changes psi_pos"});
}

TEST(BundleErrors, TargetThatIsNotTorchScript) {
  TempDir tmp;
  const auto dir = bundle_with_part(tmp, "target", "not_torchscript.pt");
  expect_error<BundleError>([&] { load_cpu(dir); }, {"target.pt", "not a loadable TorchScript module"});
}

TEST(BundleErrors, TargetWithoutHeadMethod) {
  TempDir tmp;
  const auto dir = bundle_with_part(tmp, "target", "target_without_head.pt");
  expect_error<BundleError>([&] { load_cpu(dir); }, {"target.pt", "no method 'embed'"});
}

TEST(BundleErrors, ExplainerOfTheWrongEmbeddingDim) {
  TempDir tmp;
  const auto dir = bundle_with_part(tmp, "explainer", "explainer_wrong_dim.pt");
  expect_error<BundleError>([&] { load_cpu(dir); }, {"explainer.pt", "[1, 16, 35]", "expected [1, 16, 32]", "embedding_dim 32"});
}

TEST(BundleErrors, ExplainerOfTheWrongGrid) {
  TempDir tmp;
  const auto dir = bundle_with_part(tmp, "explainer", "explainer_wrong_grid.pt");
  expect_error<BundleError>([&] { load_cpu(dir); }, {"explainer.pt", "[1, 64, 32]", "grid 4x4"});
}

TEST(BundleErrors, HeadTakingAnotherEmbeddingDim) {
  TempDir tmp;
  const auto dir = bundle_with_part(tmp, "heads", "head_wrong_dim.pt");
  expect_error<BundleError>([&] { load_cpu(dir); }, {"parity.pt", "running the head on a [1,32] embedding failed"});
}

TEST(BundleErrors, HeadThatIsNotLinear) {
  TempDir tmp;
  const auto dir = bundle_with_part(tmp, "heads", "head_nonlinear.pt");
  expect_error<BundleError>([&] { load_cpu(dir); }, {"parity.pt", "not affine"});
}

TEST(BundleErrors, TruncatedTorchScriptFileFailsItsHash) {
  TempDir tmp;
  const auto dir = copy_bundle("tiny-vit", tmp.path());
  fs::resize_file(dir / "explainer.pt", fs::file_size(dir / "explainer.pt") / 2);
  expect_error<BundleError>([&] { load_cpu(dir); }, {"explainer.pt", "SHA-256 is", "changed or corrupt"});
}

TEST(Manifest, LabelsFileIsRead) {
  TempDir tmp;
  const auto dir = copy_bundle("tiny-vit", tmp.path(), [](auto& m) {
    m["target"].erase("labels");
    m["target"]["labels_file"] = "labels.txt";
  });
  std::string labels;
  for (int i = 0; i < 10; ++i) labels += "label " + std::to_string(i) + "\r\n";
  test::write_text(dir / "labels.txt", labels + "\n");
  const Manifest m = read_manifest(dir);
  ASSERT_EQ(m.target.labels.size(), 10u);
  EXPECT_EQ(m.target.labels[3], "label 3");
  EXPECT_NO_THROW(load_cpu(dir));
}

}  // namespace
}  // namespace tve
