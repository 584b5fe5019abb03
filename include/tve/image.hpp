#pragma once
// Image input: reading files safely (format sniffed from the bytes, size checked from the header
// before decoding, truncation detected) and preprocessing them into model input per a manifest.

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <opencv2/core.hpp>
#include <string>
#include <vector>

#include "tve/input_spec.hpp"

namespace tve {

enum class ImageFormat { Png, Jpeg, Bmp, Tiff, WebP };

std::string to_string(ImageFormat format);

struct ImageHeader {
  ImageFormat format;
  int64_t width = 0;
  int64_t height = 0;
};

// Identifies the format from the leading bytes and reads the dimensions from the header alone.
// Throws ImageError naming `file` for unknown formats and malformed headers.
ImageHeader read_image_header(const std::vector<uint8_t>& bytes, const std::filesystem::path& file);

struct ImageLimits {
  // Refused before decoding: a 20 kB PNG can claim 100k x 100k pixels (a decompression bomb).
  int64_t max_pixels = 100'000'000;
  uintmax_t max_file_bytes = uintmax_t{512} << 20;
};

struct Image {
  std::filesystem::path file;
  ImageFormat format = ImageFormat::Png;
  // As decoded, EXIF orientation applied: 1 (gray), 3 (BGR) or 4 (BGRA) channels; depth 8U, 16U
  // or 32F. OpenCV's channel order, which is BGR.
  cv::Mat pixels;

  int width() const { return pixels.cols; }
  int height() const { return pixels.rows; }
};

// Reads, checks and decodes one image file. Throws ImageError naming the file.
Image load_image(const std::filesystem::path& file, const ImageLimits& limits = {});

// The region of the original image a model input covers, in original pixel coordinates.
struct CropBox {
  double x = 0, y = 0, width = 0, height = 0;
};

CropBox input_region(int image_width, int image_height, const InputSpec& spec);

// The box in whole pixels (rounded, at least 1 x 1), clipped to a width x height image: the same
// pixels for preprocessing and for drawing the overlay.
cv::Rect pixel_rect(const CropBox& box, int width, int height);

// [3,H,W] f32 RGB, normalised with spec.mean/std. Transparent pixels are composited onto the
// mean colour, which is the baseline ("removed") value of the attribution methods: what is not
// there counts as removed, not as white or black.
torch::Tensor preprocess(const Image& image, const InputSpec& spec);

// 8-bit BGR copy of the image for display (overlays): gray replicated, alpha composited on white,
// 16-bit and float scaled to 8 bits.
cv::Mat to_display_bgr8(const Image& image);

}  // namespace tve
