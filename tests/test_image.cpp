// Image decoding and preprocessing, checked against values computed independently with numpy
// (scripts/make_image_fixtures.py wrote them).

#include "tve/image.hpp"

#include <torch/torch.h>

#include <cctype>

#include "test_helpers.hpp"
#include "tve/npy.hpp"

namespace tve {
namespace {

using test::image_fixture;

InputSpec tiny_spec() {
  InputSpec spec;
  spec.height = 32;
  spec.width = 32;
  spec.mean = {0.485f, 0.456f, 0.406f};
  spec.std = {0.229f, 0.224f, 0.225f};
  return spec;
}

torch::Tensor expected_input(const std::string& name) {
  const NpyArray array = read_npy(image_fixture("expected") / (name + ".npy"));
  EXPECT_EQ(array.shape, (std::vector<int64_t>{3, 32, 32}));
  return torch::from_blob(const_cast<float*>(array.values.data()), {3, 32, 32}, torch::kFloat32).clone();
}

struct DecodeCase {
  std::string file;
  ImageFormat format;
  int channels;
  int depth;
};

class Decoding : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(Decoding, KeepsChannelsAndDepth) {
  const auto& c = GetParam();
  const Image image = load_image(image_fixture(c.file));
  EXPECT_EQ(image.format, c.format);
  EXPECT_EQ(image.pixels.channels(), c.channels);
  EXPECT_EQ(image.pixels.depth(), c.depth);
  EXPECT_EQ(image.width(), 32);
  EXPECT_EQ(image.height(), 32);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Decoding,
                         ::testing::Values(DecodeCase{"rgb8.png", ImageFormat::Png, 3, CV_8U},
                                           DecodeCase{"rgb8.jpg", ImageFormat::Jpeg, 3, CV_8U},
                                           DecodeCase{"rgb8.bmp", ImageFormat::Bmp, 3, CV_8U},
                                           DecodeCase{"rgb8.tiff", ImageFormat::Tiff, 3, CV_8U},
                                           DecodeCase{"rgb8.webp", ImageFormat::WebP, 3, CV_8U},
                                           DecodeCase{"gray8.png", ImageFormat::Png, 1, CV_8U},
                                           DecodeCase{"gray16.png", ImageFormat::Png, 1, CV_16U},
                                           DecodeCase{"rgb16.png", ImageFormat::Png, 3, CV_16U},
                                           DecodeCase{"rgba.png", ImageFormat::Png, 4, CV_8U},
                                           DecodeCase{"gray_alpha.png", ImageFormat::Png, 4, CV_8U},
                                           DecodeCase{"palette.png", ImageFormat::Png, 3, CV_8U}));

class Preprocessing : public ::testing::TestWithParam<std::string> {};

TEST_P(Preprocessing, MatchesNumpy) {
  const torch::Tensor actual = preprocess(load_image(image_fixture(GetParam())), tiny_spec());
  ASSERT_EQ(actual.sizes(), (std::vector<int64_t>{3, 32, 32}));
  ASSERT_EQ(actual.dtype(), torch::kFloat32);
  // Same arithmetic in float32 versus float64: differences of a few ulps only.
  const double max_error = (actual - expected_input(GetParam())).abs().max().item<double>();
  EXPECT_LT(max_error, 1e-5) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Preprocessing,
                         ::testing::Values("rgb8.png", "rgb8.bmp", "rgb8.tiff", "rgb8.webp", "gray8.png", "gray16.png",
                                           "rgb16.png", "rgba.png", "gray_alpha.png", "palette.png", "odd name ü.png"),
                         [](const auto& test_info) {
                           std::string name = test_info.param;  // gtest names allow [A-Za-z0-9_] only
                           for (auto& c : name) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return name;
                         });

TEST(Preprocessing, DownscaleAveragesBlocks) {
  const torch::Tensor actual = preprocess(load_image(image_fixture("downscale_64.png")), tiny_spec());
  // INTER_AREA averages 2x2 blocks in 8 bits, rounding to the nearest grey level: at most half a
  // level off the exact mean, which is 0.5/255/std in normalised units.
  const double tolerance = 0.5 / 255.0 / 0.224 + 1e-5;
  EXPECT_LT((actual - expected_input("downscale_64.png")).abs().max().item<double>(), tolerance);
}

TEST(Preprocessing, JpegMatchesPillowsDecoding) {
  const torch::Tensor jpeg = preprocess(load_image(image_fixture("rgb8.jpg")), tiny_spec());
  // Both use libjpeg-turbo, but IDCT and colour conversion may differ by a grey level between
  // builds: allow two levels, in normalised units.
  EXPECT_LT((jpeg - expected_input("rgb8.jpg")).abs().max().item<double>(), 2.0 / 255.0 / 0.224);
}

TEST(Decoding, ExifOrientationIsApplied) {
  // Stored 40x20, left quarter red; orientation 6 means rotate 90 degrees clockwise to display.
  const Image image = load_image(image_fixture("exif_rotate90.jpg"));
  ASSERT_EQ(image.width(), 20);
  ASSERT_EQ(image.height(), 40);
  const auto top = image.pixels.at<cv::Vec3b>(2, 10);     // BGR
  const auto bottom = image.pixels.at<cv::Vec3b>(37, 10);
  EXPECT_GT(top[2], 200);  // red at the top
  EXPECT_LT(top[0], 60);
  EXPECT_GT(bottom[0], 200);  // blue below
  EXPECT_LT(bottom[2], 60);
}

TEST(Preprocessing, CenterCropKeepsTheMiddle) {
  InputSpec spec = tiny_spec();
  spec.resize = ResizePolicy::CenterCrop;
  spec.crop_fraction = 0.5;
  const CropBox box = input_region(200, 100, spec);
  EXPECT_DOUBLE_EQ(box.width, 50);
  EXPECT_DOUBLE_EQ(box.height, 50);
  EXPECT_DOUBLE_EQ(box.x, 75);
  EXPECT_DOUBLE_EQ(box.y, 25);
  const Image image = load_image(image_fixture("downscale_64.png"));
  EXPECT_EQ(preprocess(image, spec).sizes(), (std::vector<int64_t>{3, 32, 32}));
}

TEST(Preprocessing, StretchCoversTheWholeImage) {
  const CropBox box = input_region(200, 100, tiny_spec());
  EXPECT_DOUBLE_EQ(box.width, 200);
  EXPECT_DOUBLE_EQ(box.height, 100);
}

TEST(Display, EveryKindBecomesEightBitBgr) {
  for (const char* name : {"gray16.png", "rgba.png", "rgb16.png", "gray8.png"}) {
    const cv::Mat display = to_display_bgr8(load_image(image_fixture(name)));
    EXPECT_EQ(display.type(), CV_8UC3) << name;
    EXPECT_EQ(display.size(), cv::Size(32, 32)) << name;
  }
}

}  // namespace
}  // namespace tve
