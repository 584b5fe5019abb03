// Image decoding and preprocessing, checked against values computed independently with numpy
// (tests/fixtures/generators/make_image_fixtures.py wrote them).

#include "tve/image.hpp"

#include <torch/torch.h>

#include <cctype>
#include <cstring>
#include <fstream>
#include <opencv2/imgcodecs.hpp>

#include "test_helpers.hpp"
#include "tve/error.hpp"
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


// ---- animated WebP --------------------------------------------------------------------------

void put24(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 3; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put_chunk(std::vector<uint8_t>& out, const char* fourcc, const std::vector<uint8_t>& payload) {
  out.insert(out.end(), fourcc, fourcc + 4);
  put32(out, static_cast<uint32_t>(payload.size()));
  out.insert(out.end(), payload.begin(), payload.end());
  if (payload.size() & 1) out.push_back(0);
}

// An animated WebP as the WebP container specification lays it out (VP8X with the animation flag,
// ANIM, one ANMF per frame), each frame's bitstream made by OpenCV's still encoder. `offset` is
// the first frame's position on the canvas (even numbers).
std::vector<uint8_t> animated_webp(const std::vector<cv::Mat>& frames, cv::Size canvas, cv::Point offset, int quality) {
  std::vector<uint8_t> file = {'R', 'I', 'F', 'F', 0, 0, 0, 0, 'W', 'E', 'B', 'P'};
  std::vector<uint8_t> vp8x = {0x02 | 0x10, 0, 0, 0};  // animation, alpha
  put24(vp8x, static_cast<uint32_t>(canvas.width - 1));
  put24(vp8x, static_cast<uint32_t>(canvas.height - 1));
  put_chunk(file, "VP8X", vp8x);
  put_chunk(file, "ANIM", {255, 255, 255, 255, 0, 0});
  for (size_t f = 0; f < frames.size(); ++f) {
    std::vector<uint8_t> still;
    EXPECT_TRUE(cv::imencode(".webp", frames[f], still, {cv::IMWRITE_WEBP_QUALITY, quality}));
    size_t from = 12;  // past RIFF and WEBP; an extended still header is the animation's to give
    if (std::memcmp(still.data() + 12, "VP8X", 4) == 0) from += 8 + 10;
    std::vector<uint8_t> anmf;
    put24(anmf, static_cast<uint32_t>(f == 0 ? offset.x / 2 : 0));
    put24(anmf, static_cast<uint32_t>(f == 0 ? offset.y / 2 : 0));
    put24(anmf, static_cast<uint32_t>(frames[f].cols - 1));
    put24(anmf, static_cast<uint32_t>(frames[f].rows - 1));
    put24(anmf, 100);  // ms
    anmf.push_back(0);
    anmf.insert(anmf.end(), still.begin() + static_cast<std::ptrdiff_t>(from), still.end());
    put_chunk(file, "ANMF", anmf);
  }
  const auto size = static_cast<uint32_t>(file.size() - 8);
  for (int i = 0; i < 4; ++i) file[4 + static_cast<size_t>(i)] = static_cast<uint8_t>(size >> (8 * i));
  return file;
}

void write_bytes(const std::filesystem::path& file, const std::vector<uint8_t>& bytes) {
  std::ofstream(file, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

TEST(Decoding, AnimatedWebPGivesItsFirstFrame) {
  test::TempDir tmp;
  const cv::Mat red(12, 16, CV_8UC3, cv::Scalar(0, 0, 255)), blue(12, 16, CV_8UC3, cv::Scalar(255, 0, 0));
  // Lossless (VP8L) and lossy (VP8) frames: both bitstreams a still WebP can hold.
  for (const int quality : {101, 90}) {
    const auto file = tmp / ("anim" + std::to_string(quality) + ".webp");
    write_bytes(file, animated_webp({red, blue}, {16, 12}, {0, 0}, quality));
    const Image image = load_image(file);
    EXPECT_EQ(image.format, ImageFormat::WebP);
    ASSERT_EQ(image.width(), 16);
    ASSERT_EQ(image.height(), 12);
    const cv::Scalar mean = cv::mean(image.pixels);
    EXPECT_NEAR(mean[2], 255, 3) << quality;  // red: the first frame, not the blue second
    EXPECT_NEAR(mean[0], 0, 3) << quality;
  }
}

TEST(Decoding, AnimatedWebPFrameIsPlacedOnItsCanvas) {
  test::TempDir tmp;
  const cv::Mat red(6, 8, CV_8UC4, cv::Scalar(0, 0, 255, 255));
  const auto file = tmp / "offset.webp";
  write_bytes(file, animated_webp({red}, {16, 12}, {4, 2}, 101));
  const Image image = load_image(file);
  ASSERT_EQ(image.pixels.type(), CV_8UC4);
  ASSERT_EQ(image.width(), 16);
  EXPECT_EQ(image.pixels.at<cv::Vec4b>(0, 0)[3], 0);  // outside the frame: transparent
  EXPECT_EQ(image.pixels.at<cv::Vec4b>(3, 6), cv::Vec4b(0, 0, 255, 255));
  EXPECT_EQ(image.pixels.at<cv::Vec4b>(7, 11), cv::Vec4b(0, 0, 255, 255));
  EXPECT_EQ(image.pixels.at<cv::Vec4b>(8, 12)[3], 0);
}

TEST(Decoding, AnimatedWebPCutShortNamesTheProblem) {
  test::TempDir tmp;
  const cv::Mat red(12, 16, CV_8UC3, cv::Scalar(0, 0, 255));
  auto bytes = animated_webp({red, red}, {16, 12}, {0, 0}, 101);
  bytes.resize(bytes.size() - 10);
  const auto file = tmp / "cut.webp";
  write_bytes(file, bytes);
  test::expect_error<ImageError>([&] { load_image(file); }, {"cut.webp", "animated WebP is truncated"});
}

}  // namespace
}  // namespace tve
