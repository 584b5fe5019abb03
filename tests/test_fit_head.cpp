// fit-head: a linear head trained in C++ on a frozen encoder, saved with its labels, and explained
// with the bundle's explainer without training anything else.

#include "tve/fit_head.hpp"

#include <torch/torch.h>

#include <opencv2/imgcodecs.hpp>
#include <random>

#include "test_helpers.hpp"
#include "tve/attribution.hpp"
#include "tve/error.hpp"
#include "tve/methods/tve.hpp"

namespace tve {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

// Two classes that differ in the colour of a block (red or blue) at a random place on a noisy
// background. Colour, unlike shape, survives even a random encoder's features, which is all a
// test bundle has.
void write_dataset(const fs::path& root, int per_class, uint32_t seed) {
  std::mt19937 random(seed);
  std::uniform_int_distribution<int> noise(0, 80), offset(0, 8);
  for (const std::string name : {"blue", "red"}) {
    fs::create_directories(root / name);
    for (int i = 0; i < per_class; ++i) {
      cv::Mat image(32, 32, CV_8UC3);
      for (int y = 0; y < 32; ++y)
        for (int x = 0; x < 32; ++x) image.at<cv::Vec3b>(y, x) = cv::Vec3b(noise(random), noise(random), noise(random));
      const cv::Scalar colour = name == "red" ? cv::Scalar(40, 40, 230) : cv::Scalar(230, 40, 40);  // BGR
      image(cv::Rect(2 * offset(random), 2 * offset(random), 14, 14)).setTo(colour);
      ASSERT_TRUE(cv::imwrite((root / name / (std::to_string(i) + ".png")).string(), image));
    }
  }
}

TEST(FitHead, LearnsASimpleTaskAndIsExplainedByTve) {
  TempDir tmp;
  write_dataset(tmp / "data", 40, 7);
  test::write_text(tmp / "data" / "red" / "broken.png", "not a png");
  fs::create_directories(tmp / "data" / "empty-folder");  // no images: not a class
  Bundle bundle = Bundle::load(test::shipped_bundle("tiny-vit"), torch::kCPU);

  const auto data = scan_labelled_folder(tmp / "data");
  EXPECT_EQ(data.class_names, (std::vector<std::string>{"blue", "red"}));
  std::vector<std::string> failures;
  const auto result = fit_linear_head(bundle, data, {}, [&](const std::string& e) { failures.push_back(e); });
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_NE(failures[0].find("broken.png"), std::string::npos);
  EXPECT_EQ(result.held_out_count, 16u);  // 20% of 40 per class
  EXPECT_EQ(result.train_count, 64u);
  // The stated bar: 90% held-out accuracy.
  EXPECT_GE(result.held_out_accuracy, 0.9) << "train accuracy " << result.train_accuracy;

  // Saved and loaded back as an external head, labels from inside the file.
  save_linear_head(tmp / "heads" / "lr.pt", result);
  Head head = bundle.load_external_head(tmp / "heads" / "lr.pt", std::nullopt);
  EXPECT_EQ(head.spec.labels, (std::vector<std::string>{"blue", "red"}));
  torch::InferenceMode no_autograd;
  const auto z = torch::randn({3, bundle.manifest().embedding_dim});
  EXPECT_TRUE(torch::allclose(head.logits(z), torch::addmm(result.bias, z, result.weight.t()), 1e-5, 1e-5));

  // The transfer: TVE explains the new head with the explainer it already had.
  TveMethod tve(TveMethod::defaults_for(bundle.manifest()));
  const auto maps = tve.explain(bundle, head, torch::randn({2, 3, 32, 32}), torch::tensor({{0}, {1}}, torch::kLong)).maps;
  EXPECT_EQ(maps.sizes(), (std::vector<int64_t>{2, 1, 4, 4}));
  EXPECT_TRUE(torch::isfinite(maps).all().item<bool>());
}

TEST(FitHead, FolderErrors) {
  TempDir tmp;
  test::expect_error<InvalidArgument>([&] { scan_labelled_folder(tmp / "none"); }, {"none", "one sub-folder per class"});
  write_dataset(tmp / "one", 3, 1);
  fs::remove_all(tmp / "one" / "red");
  test::expect_error<InvalidArgument>([&] { scan_labelled_folder(tmp / "one"); }, {"at least 2 sub-folders", "found 1"});
}

TEST(FitHead, HeadWithoutLabelsNeedsALabelsFile) {
  Bundle bundle = Bundle::load(test::shipped_bundle("tiny-vit"), torch::kCPU);
  test::expect_error<BundleError>(
      [&] { bundle.load_external_head(test::shipped_bundle("tiny-vit") / "heads" / "parity.pt", std::nullopt); },
      {"parity.pt", "--labels"});
}

}  // namespace
}  // namespace tve
