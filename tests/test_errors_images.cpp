// Bad image files: each gets an ImageError that names the file and says what is wrong.

#include "test_helpers.hpp"
#include "tve/error.hpp"
#include "tve/image.hpp"

namespace tve {
namespace {

using test::expect_error;
using test::image_fixture;

struct BadImageCase {
  std::string file;
  std::string expected;
};

class BadImage : public ::testing::TestWithParam<BadImageCase> {};

TEST_P(BadImage, IsRefusedNamingTheFile) {
  const auto path = image_fixture(GetParam().file);
  expect_error<ImageError>([&] { load_image(path); }, {path.string(), GetParam().expected});
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, BadImage,
    ::testing::Values(BadImageCase{"empty.png", "file is empty"},
                      BadImageCase{"truncated.png", "PNG is truncated"},
                      BadImageCase{"truncated.jpg", "JPEG is truncated"},
                      BadImageCase{"corrupt.png", "PNG could not be decoded"},
                      BadImageCase{"not_an_image.jpg", "not a supported image"},
                      BadImageCase{"does_not_exist.png", "does not exist"},
                      BadImageCase{"expected", "is a folder"}));

TEST(BadImage, DecompressionBombIsRefusedFromItsHeader) {
  // 900 megapixels would need gigabytes to decode; the refusal must come from the header.
  expect_error<ImageError>([] { load_image(image_fixture("bomb.png")); },
                           {"bomb.png", "30000x30000 pixels", "over the limit", "refused before decoding"});
  ImageLimits tiny;
  tiny.max_pixels = 100;
  expect_error<ImageError>([&] { load_image(image_fixture("rgb8.png"), tiny); }, {"32x32 pixels", "limit of 100"});
}

TEST(BadImage, OversizedFileIsRefusedBeforeReading) {
  ImageLimits limits;
  limits.max_file_bytes = 1000;
  expect_error<ImageError>([&] { load_image(image_fixture("downscale_64.png"), limits); }, {"downscale_64.png", "over the limit"});
}

TEST(Header, DimensionsComeFromTheHeaderAlone) {
  const std::vector<uint8_t> bmp = {'B', 'M', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                    0x10, 0, 0, 0, 0xF0, 0xFF, 0xFF, 0xFF};  // 16 wide, -16 (top-down) high
  const ImageHeader header = read_image_header(bmp, "x.bmp");
  EXPECT_EQ(header.format, ImageFormat::Bmp);
  EXPECT_EQ(header.width, 16);
  EXPECT_EQ(header.height, 16);
  expect_error<ImageError>([] { read_image_header({0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'}, "short.png"); },
                           {"short.png", "PNG header is truncated"});
  expect_error<ImageError>([] { read_image_header({0xFF, 0xD8, 0xFF, 0xE0, 0, 16}, "cut.jpg"); },
                           {"cut.jpg", "JPEG is truncated or corrupt"});
  expect_error<ImageError>([] { read_image_header({'G', 'I', 'F', '8', '9', 'a'}, "anim.gif"); },
                           {"anim.gif", "not a supported image"});
}

}  // namespace
}  // namespace tve
