// The overlays' PNG encoder (src/png.cpp): lossless for every image shape and layout it accepts,
// valid for decoders that check every CRC, and refusing what it cannot encode.
#include "tve/png.hpp"

#include <gtest/gtest.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "tve/error.hpp"

namespace tve {
namespace {

cv::Mat decode(const std::string& png) {
  const std::vector<uchar> bytes(png.begin(), png.end());
  return cv::imdecode(bytes, cv::IMREAD_UNCHANGED);
}

void expect_same_pixels(const cv::Mat& expected, const cv::Mat& actual) {
  ASSERT_FALSE(actual.empty()) << "OpenCV could not decode the PNG";
  ASSERT_EQ(actual.type(), expected.type());
  ASSERT_EQ(actual.size(), expected.size());
  EXPECT_EQ(cv::norm(expected, actual, cv::NORM_INF), 0.0);
}

cv::Mat random_image(int rows, int cols, int type, uint64_t seed) {
  cv::Mat image(rows, cols, type);
  cv::RNG rng(seed);
  rng.fill(image, cv::RNG::UNIFORM, 0, 256);
  return image;
}

TEST(Png, RoundTripsEveryChannelCountAndOddSize) {
  for (const int type : {CV_8UC1, CV_8UC3, CV_8UC4}) {
    for (const auto& size : {cv::Size(1, 1), cv::Size(2, 1), cv::Size(1, 5), cv::Size(7, 3), cv::Size(333, 211)}) {
      SCOPED_TRACE("type " + std::to_string(type) + ", " + std::to_string(size.width) + "x" + std::to_string(size.height));
      const cv::Mat image = random_image(size.height, size.width, type, 17 + size.area());
      expect_same_pixels(image, decode(encode_png(image)));
    }
  }
}

TEST(Png, RoundTripsAnImageLargerThanOneBlockAndOneChunk) {
  // Random bytes do not compress: ~6 MB of IDAT in many 64 KiB chunks, rows in many blocks.
  const cv::Mat image = random_image(1500, 1400, CV_8UC3, 3);
  const std::string png = encode_png(image);
  EXPECT_GT(png.size(), 6'000'000u);
  expect_same_pixels(image, decode(png));
}

TEST(Png, RoundTripsASmoothImageAndCompressesIt) {
  // A gradient, like a heatmap: the SUB filter turns it into runs that deflate shrinks.
  cv::Mat ramp(256, 512, CV_8UC3);
  for (int y = 0; y < ramp.rows; ++y) {
    for (int x = 0; x < ramp.cols; ++x) ramp.at<cv::Vec3b>(y, x) = cv::Vec3b(x / 2, y, 255 - y);
  }
  const std::string png = encode_png(ramp);
  EXPECT_LT(png.size(), ramp.total() * 3 / 10);
  expect_same_pixels(ramp, decode(png));
}

TEST(Png, KeepsAViewIntoALargerImage) {
  // A region of interest has rows that do not follow each other in memory.
  const cv::Mat whole = random_image(40, 50, CV_8UC3, 5);
  const cv::Mat region = whole(cv::Rect(3, 4, 17, 29));
  ASSERT_FALSE(region.isContinuous());
  expect_same_pixels(region.clone(), decode(encode_png(region)));
}

TEST(Png, StartsWithTheSignatureAndAValidHeaderChunk) {
  const std::string png = encode_png(random_image(9, 13, CV_8UC3, 1));
  ASSERT_GE(png.size(), 33u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(png.substr(12, 4), "IHDR");
  // The last chunk is IEND, whose CRC is the fixed CRC-32 of its type: AE 42 60 82.
  EXPECT_EQ(png.substr(png.size() - 12), std::string("\0\0\0\0IEND\xAE\x42\x60\x82", 12));
}

TEST(Png, RefusesWhatItCannotEncode) {
  EXPECT_THROW(encode_png(cv::Mat()), OutputError);
  EXPECT_THROW(encode_png(cv::Mat(4, 4, CV_16UC3, cv::Scalar::all(0))), OutputError);
  EXPECT_THROW(encode_png(cv::Mat(4, 4, CV_32FC1, cv::Scalar::all(0))), OutputError);
  EXPECT_THROW(encode_png(cv::Mat(4, 4, CV_8UC2, cv::Scalar::all(0))), OutputError);
}

}  // namespace
}  // namespace tve
