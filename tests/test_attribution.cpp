// Attribution methods. The "oracle" fixture bundle (tests/fixtures/generators/make_test_bundles.py) has a linear
// brightness encoder and its exact explainer, so its maps are known in closed form.

#include "tve/attribution.hpp"
#include "tve/methods.hpp"
#include "tve/methods/occlusion.hpp"
#include "tve/methods/tve.hpp"

#include <torch/torch.h>

#include "test_helpers.hpp"
#include "tve/error.hpp"

namespace tve {
namespace {

Bundle oracle() { return Bundle::load(test::fixtures() / "bundles" / "oracle", torch::kCPU); }

// Grey (0 after normalisation, i.e. "removed") everywhere, +1 in the pixels of one grid cell.
torch::Tensor image_with_bright_cell(int row, int col, int grid = 8, int size = 32) {
  auto x = torch::zeros({1, 3, size, size});
  const int cell = size / grid;
  x.index_put_({0, torch::indexing::Slice(), torch::indexing::Slice(row * cell, (row + 1) * cell),
                torch::indexing::Slice(col * cell, (col + 1) * cell)},
               1.0);
  return x;
}

TEST(WindowedOcclusion, MapIsOrientedLikeTheImage) {
  Bundle bundle = oracle();
  WindowedOcclusion occlusion({/*radius=*/1, /*batch_size=*/16, 1.0, 1.0});
  // Bright cell at row 0, col 6: top right, off the diagonal, so a transposed or flipped map fails.
  const auto attribution = occlusion.explain(bundle, bundle.head("target"), image_with_bright_cell(0, 6),
                                             torch::tensor({{0}}, torch::kLong));
  ASSERT_EQ(attribution.maps.sizes(), (std::vector<int64_t>{1, 1, 8, 8}));
  EXPECT_EQ(attribution.cost.forward_passes, 2 * 64);
  // Class 0 sums the cells' brightness s = 1 (one cell of mean 1): e[k] = s if the bright cell is
  // in k's window, else 0 - s.
  const auto map = attribution.maps[0][0];
  for (int r = 0; r < 8; ++r) {
    for (int c = 0; c < 8; ++c) {
      const bool covers = std::abs(r - 0) <= 1 && std::abs(c - 6) <= 1;
      EXPECT_NEAR(map[r][c].item<float>(), covers ? 1.0f : -1.0f, 1e-5) << "cell " << r << "," << c;
    }
  }
}

TEST(Tve, EqualsWindowedOcclusionWithAnExactExplainer) {
  Bundle bundle = oracle();
  torch::manual_seed(3);
  const auto images = torch::randn({3, 3, 32, 32});
  const auto classes = torch::tensor({{0, 1}, {2, 0}, {1, 2}}, torch::kLong);
  TveMethod tve({1.0, 1.0, /*smooth=*/false, 1});
  WindowedOcclusion occlusion({1, 64, 1.0, 1.0});
  const auto fast = tve.explain(bundle, bundle.head("target"), images, classes);
  const auto exact = occlusion.explain(bundle, bundle.head("target"), images, classes);
  ASSERT_EQ(fast.maps.sizes(), (std::vector<int64_t>{3, 2, 8, 8}));
  EXPECT_EQ(fast.cost.explainer_passes, 1);
  EXPECT_LT((fast.maps - exact.maps).abs().max().item<double>(), 1e-4);
}

TEST(Tve, LambdasWeighTheTwoTerms) {
  Bundle bundle = oracle();
  const auto image = image_with_bright_cell(5, 2);
  const auto cls = torch::tensor({{0}}, torch::kLong);
  const auto pos_only = TveMethod({1.0, 0.0, false, 1}).explain(bundle, bundle.head("target"), image, cls).maps;
  const auto neg_only = TveMethod({0.0, 1.0, false, 1}).explain(bundle, bundle.head("target"), image, cls).maps;
  const auto both = TveMethod({1.0, 1.0, false, 1}).explain(bundle, bundle.head("target"), image, cls).maps;
  EXPECT_TRUE(torch::allclose(both, pos_only + neg_only, 1e-5, 1e-5));
  // Region alone: s where the window covers the bright cell, 0 elsewhere.
  EXPECT_NEAR(pos_only[0][0][5][2].item<float>(), 1.0f, 1e-5);
  EXPECT_NEAR(pos_only[0][0][0][7].item<float>(), 0.0f, 1e-5);
}

TEST(Tve, RefusesClassesOutOfRange) {
  Bundle bundle = oracle();
  TveMethod tve(TveMethod::defaults_for(bundle.manifest()));
  test::expect_error<InvalidArgument>(
      [&] { tve.explain(bundle, bundle.head("target"), torch::zeros({1, 3, 32, 32}), torch::tensor({{3}}, torch::kLong)); },
      {"class index out of range", "3 classes"});
}

// The shipped resnet explainer estimates E(x) for psi_neg; `tve explain` gives it the target's own
// E(x) instead. Then psi_neg = z + change[k], so the map is exactly
// lambda_pos h(psi_pos)[c] - lambda_neg (W[c].z + b[c] + W[c].change[k]): moving z by delta moves
// every cell by -lambda_neg W[c].delta, and the estimate itself may differ from z only by a
// constant per image and class.
TEST(Tve, ExplainerTakesTheTargetsEmbeddingAsDocumented) {
  Bundle bundle = Bundle::load(test::shipped_bundle("resnet"), torch::kCPU);
  ASSERT_TRUE(bundle.explainer_takes_embedding());
  Head& head = bundle.head("target");
  torch::InferenceMode guard;
  torch::manual_seed(5);
  const auto images = torch::randn({2, 3, 112, 112});
  const auto embeddings = bundle.embed(images);                   // [2,D]
  const auto delta = torch::randn_like(embeddings);                // [2,D]
  const auto classes = torch::tensor({{3, 17}, {150, 0}}, torch::kLong);
  const double lambda_neg = 0.7;
  TveMethod tve({1.0, lambda_neg, /*smooth=*/true, 2});
  const auto given = tve.explain(bundle, head, images, classes, embeddings).maps;  // [2,2,14,14]
  const auto moved = tve.explain(bundle, head, images, classes, embeddings + delta).maps;
  const auto estimated = tve.explain(bundle, head, images, classes).maps;
  const double scale = given.abs().max().item<double>() + 1.0;

  const auto class_weights = head.weight.index_select(0, classes.reshape(-1)).view({2, 2, -1});  // [2,2,D]
  const auto expected_move = -lambda_neg * (class_weights * delta.unsqueeze(1)).sum(2);          // [2,2]
  const auto move = (moved - given).flatten(2);                                                  // [2,2,196]
  EXPECT_LT((move - expected_move.unsqueeze(2)).abs().max().item<double>(), 1e-4 * scale);
  EXPECT_GT(expected_move.abs().min().item<double>(), 1e-2);  // the move is visible at all

  const auto shift = (given - estimated).flatten(2);
  EXPECT_LT((shift - shift.mean(2, true)).abs().max().item<double>(), 1e-4 * scale);
  test::expect_error<InvalidArgument>([&] { tve.explain(bundle, head, images, classes, embeddings.slice(0, 0, 1)); },
                                      {"embeddings must be [B, embedding_dim]"});
}

// embed_and_explain (docs/bundle-format.md): one pass gives the target's E(x) and the maps that
// embed() followed by forward_with_embedding() give, for each shipped architecture.
TEST(Tve, OnePassGivesTheTargetsEmbeddingAndTheSameMaps) {
  for (const std::string name : {"resnet", "swin", "vit"}) {
    SCOPED_TRACE(name);
    Bundle bundle = Bundle::load(test::shipped_bundle(name), torch::kCPU);
    ASSERT_TRUE(bundle.explainer_embeds());
    Head& head = bundle.head("fashion");  // a head the explainer never saw: the transfer rule as well
    torch::InferenceMode guard;
    torch::manual_seed(6);
    const auto images = torch::randn({3, 3, 112, 112});
    TveMethod tve(TveMethod::defaults_for(bundle.manifest()));
    const ForwardPass one_pass = tve.forward_pass(bundle, images);
    ASSERT_TRUE(one_pass.psi_pos.defined());
    const auto embeddings = bundle.embed(images);
    const double z_scale = embeddings.abs().max().item<double>();
    EXPECT_LT((one_pass.embeddings - embeddings).abs().max().item<double>(), 1e-5 * z_scale);

    const auto classes = std::get<1>(head.logits(embeddings).topk(2, 1));
    const auto shared = tve.explain(bundle, head, images, classes, one_pass).maps;
    const auto separate = tve.explain(bundle, head, images, classes, embeddings).maps;
    const double scale = separate.abs().max().item<double>();
    EXPECT_GT(scale, 0.0);
    EXPECT_LT((shared - separate).abs().max().item<double>(), 1e-4 * scale);
    test::expect_error<InvalidArgument>(
        [&] {
          ForwardPass wrong = one_pass;
          wrong.psi_neg = wrong.psi_neg.slice(0, 0, 1);
          tve.explain(bundle, head, images, classes, wrong);
        },
        {"meta-attributions do not match the batch"});
  }
}

// Methods other than TVE take the target's own forward pass.
TEST(AttributionMethod, DefaultForwardPassIsTheTargetsEmbedding) {
  Bundle bundle = Bundle::load(test::shipped_bundle("resnet"), torch::kCPU);
  torch::InferenceMode guard;
  const auto images = torch::randn({2, 3, 112, 112});
  const auto pass = make_method("gradcam", bundle, {})->forward_pass(bundle, images);
  EXPECT_FALSE(pass.psi_pos.defined());
  EXPECT_TRUE(torch::equal(pass.embeddings, bundle.embed(images)));
}

TEST(Tve, DefaultsComeFromTheManifest) {
  const auto options = TveMethod::defaults_for(read_manifest(test::fixtures() / "bundles" / "oracle"));
  EXPECT_FALSE(options.smooth);
  EXPECT_EQ(options.radius, 1);
  EXPECT_DOUBLE_EQ(options.lambda_neg, 1.0);
}

TEST(SmoothMap, MeanOverTheWindowWithoutPadding) {
  // A constant map stays constant, borders included: cells outside the grid are not counted.
  const auto ones = torch::ones({1, 1, 5, 5});
  EXPECT_TRUE(torch::allclose(smooth_map(ones, 2), ones));
  // A single 1 at the corner (0,0) with radius 1: corner window has 4 cells, edge 6, inner 9.
  auto delta = torch::zeros({1, 1, 4, 4});
  delta[0][0][0][0] = 1.0;
  const auto smoothed = smooth_map(delta, 1)[0][0];
  EXPECT_NEAR(smoothed[0][0].item<float>(), 1.0f / 4, 1e-6);
  EXPECT_NEAR(smoothed[0][1].item<float>(), 1.0f / 6, 1e-6);
  EXPECT_NEAR(smoothed[1][1].item<float>(), 1.0f / 9, 1e-6);
  EXPECT_NEAR(smoothed[2][2].item<float>(), 0.0f, 1e-6);
  EXPECT_TRUE(torch::equal(smooth_map(delta, 0), delta));
}

TEST(WindowMasks, CellsTileThePixels) {
  const auto masks = window_masks(4, 0, 32, 32, torch::kCPU);  // [16,1,32,32]
  ASSERT_EQ(masks.sizes(), (std::vector<int64_t>{16, 1, 32, 32}));
  EXPECT_TRUE(torch::equal(masks.sum(0), torch::ones({1, 32, 32})));  // radius 0: a partition
  // Cell 1 is row 0, col 1: pixels rows 0..7, columns 8..15.
  EXPECT_EQ(masks[1][0].sum().item<float>(), 64.0f);
  EXPECT_EQ(masks[1][0][7][8].item<float>(), 1.0f);
  EXPECT_EQ(masks[1][0][8][8].item<float>(), 0.0f);
  // Radius 1 at a corner cell covers a 2x2 block of cells, clipped at the border.
  EXPECT_EQ(window_masks(4, 1, 32, 32, torch::kCPU)[0].sum().item<float>(), 4 * 64.0f);
}

}  // namespace
}  // namespace tve
