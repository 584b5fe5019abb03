#include "tve/image.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "tve/error.hpp"
#include "tve/log.hpp"

namespace fs = std::filesystem;

namespace tve {
namespace {

uint32_t be32(const uint8_t* p) { return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3]; }
uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
uint32_t le32(const uint8_t* p) { return (uint32_t{p[3]} << 24) | (uint32_t{p[2]} << 16) | (uint32_t{p[1]} << 8) | p[0]; }
uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>((p[1] << 8) | p[0]); }
uint32_t le24(const uint8_t* p) { return (uint32_t{p[2]} << 16) | (uint32_t{p[1]} << 8) | p[0]; }

bool starts_with(const std::vector<uint8_t>& bytes, const char* magic, size_t offset = 0) {
  const size_t n = std::strlen(magic);
  return bytes.size() >= offset + n && std::memcmp(bytes.data() + offset, magic, n) == 0;
}

ImageHeader png_header(const std::vector<uint8_t>& b, const fs::path& file) {
  // 8-byte signature, then the IHDR chunk: length(4) "IHDR" width(4, BE) height(4, BE)
  if (b.size() < 24 || std::memcmp(b.data() + 12, "IHDR", 4) != 0) throw ImageError(file, "PNG header is truncated or has no IHDR chunk");
  return {ImageFormat::Png, be32(b.data() + 16), be32(b.data() + 20)};
}

ImageHeader jpeg_header(const std::vector<uint8_t>& b, const fs::path& file) {
  // Walk the marker segments up to the first start-of-frame, which holds the dimensions.
  size_t pos = 2;
  while (pos + 4 <= b.size()) {
    if (b[pos] != 0xFF) throw ImageError(file, "JPEG is corrupt (bad marker before the frame header)");
    const uint8_t marker = b[pos + 1];
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (marker == 0xD8 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {  // no length field
      pos += 2;
      continue;
    }
    const uint16_t length = be16(b.data() + pos + 2);
    const bool start_of_frame = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (start_of_frame) {
      if (pos + 9 > b.size()) break;
      return {ImageFormat::Jpeg, be16(b.data() + pos + 7), be16(b.data() + pos + 5)};
    }
    if (marker == 0xD9 || length < 2) break;
    pos += 2 + length;
  }
  throw ImageError(file, "JPEG is truncated or corrupt (no frame header found)");
}

ImageHeader bmp_header(const std::vector<uint8_t>& b, const fs::path& file) {
  if (b.size() < 26) throw ImageError(file, "BMP header is truncated");
  const auto width = static_cast<int32_t>(le32(b.data() + 18));
  const auto height = static_cast<int32_t>(le32(b.data() + 22));  // negative: rows stored top-down
  return {ImageFormat::Bmp, std::abs(int64_t{width}), std::abs(int64_t{height})};
}

ImageHeader tiff_header(const std::vector<uint8_t>& b, const fs::path& file) {
  const bool little = b[0] == 'I';
  auto u16 = [&](size_t at) { return little ? le16(b.data() + at) : be16(b.data() + at); };
  auto u32 = [&](size_t at) { return little ? le32(b.data() + at) : be32(b.data() + at); };
  if (b.size() < 8) throw ImageError(file, "TIFF header is truncated");
  const size_t ifd = u32(4);
  if (ifd + 2 > b.size()) throw ImageError(file, "TIFF is truncated (first directory past the end of the file)");
  const size_t entries = u16(ifd);
  ImageHeader header{ImageFormat::Tiff, 0, 0};
  for (size_t i = 0; i < entries; ++i) {
    const size_t entry = ifd + 2 + 12 * i;
    if (entry + 12 > b.size()) throw ImageError(file, "TIFF is truncated (directory runs past the end of the file)");
    const uint16_t tag = u16(entry);
    const uint16_t type = u16(entry + 2);
    const int64_t value = type == 3 ? u16(entry + 8) : u32(entry + 8);  // SHORT or LONG
    if (tag == 256) header.width = value;
    if (tag == 257) header.height = value;
  }
  if (header.width <= 0 || header.height <= 0) throw ImageError(file, "TIFF has no image width/height tags");
  return header;
}

ImageHeader webp_header(const std::vector<uint8_t>& b, const fs::path& file) {
  if (b.size() < 30) throw ImageError(file, "WebP header is truncated");
  if (starts_with(b, "VP8X", 12)) return {ImageFormat::WebP, int64_t{le24(b.data() + 24)} + 1, int64_t{le24(b.data() + 27)} + 1};
  if (starts_with(b, "VP8L", 12)) {
    const uint32_t bits = le32(b.data() + 21);
    return {ImageFormat::WebP, int64_t{bits & 0x3FFF} + 1, int64_t{(bits >> 14) & 0x3FFF} + 1};
  }
  if (starts_with(b, "VP8 ", 12)) return {ImageFormat::WebP, le16(b.data() + 26) & 0x3FFF, le16(b.data() + 28) & 0x3FFF};
  throw ImageError(file, "WebP has an unknown chunk layout");
}

// An animated WebP: OpenCV 4.6 decodes WebP with libwebp's still-image decoder, which refuses
// animations (cv::imdecode returns nothing, and cv::imreadmulti has no WebP support before 4.11).
// Its first frame is rebuilt here as a still WebP from the frame's own bitstream (an ANMF chunk
// holds an optional ALPH chunk and a VP8 or VP8L one), decoded, and placed on the canvas at the
// frame's offset; the canvas outside the frame is transparent, as before any frame is drawn.
struct AnimatedWebP {
  size_t frames = 0;
  std::vector<uint8_t> first_frame;  // a still WebP file
  int canvas_width = 0, canvas_height = 0, frame_x = 0, frame_y = 0;
};

std::optional<AnimatedWebP> animated_webp(const std::vector<uint8_t>& b, const fs::path& file) {
  constexpr uint8_t kAnimationFlag = 0x02, kAlphaFlag = 0x10;
  if (b.size() < 30 || !starts_with(b, "VP8X", 12) || !(b[20] & kAnimationFlag)) return std::nullopt;
  AnimatedWebP out;
  out.canvas_width = static_cast<int>(le24(b.data() + 24)) + 1;
  out.canvas_height = static_cast<int>(le24(b.data() + 27)) + 1;
  const size_t end = std::min<size_t>(b.size(), size_t{le32(b.data() + 4)} + 8);
  for (size_t pos = 12; pos + 8 <= end;) {
    const size_t size = le32(b.data() + pos + 4);
    if (size > end - pos - 8) throw ImageError(file, "animated WebP is truncated (a chunk runs past the end of the file)");
    if (std::memcmp(b.data() + pos, "ANMF", 4) == 0 && ++out.frames == 1) {
      if (size < 16 + 8) throw ImageError(file, "animated WebP is corrupt (its first frame is empty)");
      const uint8_t* frame = b.data() + pos + 8;
      out.frame_x = 2 * static_cast<int>(le24(frame));
      out.frame_y = 2 * static_cast<int>(le24(frame + 3));
      std::vector<uint8_t> data(frame + 16, frame + size);  // ALPH? then VP8 or VP8L
      const bool alpha = std::memcmp(data.data(), "ALPH", 4) == 0;
      std::vector<uint8_t> still = {'R', 'I', 'F', 'F', 0, 0, 0, 0, 'W', 'E', 'B', 'P'};
      if (alpha) {  // a lossy frame with alpha needs the extended header
        const uint32_t w = le24(frame + 6), h = le24(frame + 9);
        const uint8_t vp8x[] = {'V', 'P', '8', 'X', 10, 0, 0, 0, kAlphaFlag, 0, 0, 0,
                                static_cast<uint8_t>(w), static_cast<uint8_t>(w >> 8), static_cast<uint8_t>(w >> 16),
                                static_cast<uint8_t>(h), static_cast<uint8_t>(h >> 8), static_cast<uint8_t>(h >> 16)};
        still.insert(still.end(), std::begin(vp8x), std::end(vp8x));
      }
      still.insert(still.end(), data.begin(), data.end());
      const auto riff_size = static_cast<uint32_t>(still.size() - 8);
      for (int i = 0; i < 4; ++i) still[4 + static_cast<size_t>(i)] = static_cast<uint8_t>(riff_size >> (8 * i));
      out.first_frame = std::move(still);
    }
    pos += 8 + size + (size & 1);  // chunks are padded to an even size
  }
  if (out.frames == 0) throw ImageError(file, "animated WebP has no frame");
  return out;
}

cv::Mat decode_first_frame(const AnimatedWebP& animation, const fs::path& file) {
  cv::Mat frame;
  try {
    frame = cv::imdecode(cv::_InputArray(animation.first_frame.data(), static_cast<int>(animation.first_frame.size())),
                         cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception& e) {
    throw ImageError(file, "animated WebP: its first frame could not be decoded: " + e.msg);
  }
  if (frame.empty()) throw ImageError(file, "animated WebP: its first frame could not be decoded (corrupt or truncated data)");
  const cv::Rect placed = cv::Rect(animation.frame_x, animation.frame_y, frame.cols, frame.rows) &
                          cv::Rect(0, 0, animation.canvas_width, animation.canvas_height);
  if (placed.x == 0 && placed.y == 0 && placed.width == animation.canvas_width && placed.height == animation.canvas_height &&
      frame.cols == animation.canvas_width && frame.rows == animation.canvas_height) {
    return frame;
  }
  cv::Mat bgra;
  if (frame.channels() == 4) {
    bgra = frame;
  } else {
    cv::cvtColor(frame, bgra, frame.channels() == 1 ? cv::COLOR_GRAY2BGRA : cv::COLOR_BGR2BGRA);
  }
  cv::Mat canvas = cv::Mat::zeros(animation.canvas_height, animation.canvas_width, CV_8UC4);
  if (!placed.empty()) bgra(cv::Rect(0, 0, placed.width, placed.height)).copyTo(canvas(placed));
  return canvas;
}

// Detects files cut short, which decoders often accept silently (libjpeg pads with grey).
void check_not_truncated(const std::vector<uint8_t>& b, ImageFormat format, const fs::path& file) {
  auto tail_contains = [&](const uint8_t* needle, size_t n, size_t window) {
    const size_t from = b.size() > window ? b.size() - window : 0;
    return std::search(b.begin() + static_cast<std::ptrdiff_t>(from), b.end(), needle, needle + n) != b.end();
  };
  if (format == ImageFormat::Png) {
    static const uint8_t iend[] = {'I', 'E', 'N', 'D'};
    if (!tail_contains(iend, 4, 4096)) throw ImageError(file, "PNG is truncated (no IEND chunk at the end)");
  } else if (format == ImageFormat::Jpeg) {
    static const uint8_t eoi[] = {0xFF, 0xD9};
    if (!tail_contains(eoi, 2, 4096)) throw ImageError(file, "JPEG is truncated (no end-of-image marker)");
  }
}

std::vector<uint8_t> read_file_bytes(const fs::path& file, const ImageLimits& limits) {
  std::error_code ec;
  const auto status = fs::status(file, ec);
  if (ec || !fs::exists(status)) throw ImageError(file, "file does not exist");
  if (fs::is_directory(status)) throw ImageError(file, "is a folder, not an image file");
  // A named pipe or a device would block or never end.
  if (!fs::is_regular_file(status)) throw ImageError(file, "is not a regular file (a pipe, socket or device)");
  const uintmax_t size = fs::file_size(file, ec);
  if (ec) throw ImageError(file, "cannot read file size: " + ec.message());
  if (size == 0) throw ImageError(file, "file is empty");
  if (size > limits.max_file_bytes) {
    throw ImageError(file, "file is " + std::to_string(size >> 20) + " MiB, over the limit of " +
                               std::to_string(limits.max_file_bytes >> 20) + " MiB");
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ImageError(file, "cannot open file for reading (permissions?)");
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
  if (in.gcount() != static_cast<std::streamsize>(size)) throw ImageError(file, "read error (file changed while reading?)");
  return bytes;
}

// Pixel values to [0,1] floats, whatever the depth.
cv::Mat to_unit_float(const cv::Mat& pixels) {
  cv::Mat out;
  switch (pixels.depth()) {
    case CV_8U: pixels.convertTo(out, CV_32F, 1.0 / 255.0); break;
    case CV_16U: pixels.convertTo(out, CV_32F, 1.0 / 65535.0); break;
    case CV_32F: out = cv::min(cv::max(pixels, 0.0), 1.0); break;  // float images are taken as [0,1]
    default: throw std::logic_error("load_image admitted an unsupported depth");
  }
  return out;
}

// Composites BGRA onto a BGR background colour; keeps 1- and 3-channel images as they are.
cv::Mat composite_alpha(const cv::Mat& unit_float, const cv::Scalar& background_bgr) {
  if (unit_float.channels() != 4) return unit_float;
  cv::Mat out(unit_float.size(), CV_32FC3);
  for (int y = 0; y < unit_float.rows; ++y) {
    const auto* src = unit_float.ptr<cv::Vec4f>(y);
    auto* dst = out.ptr<cv::Vec3f>(y);
    for (int x = 0; x < unit_float.cols; ++x) {
      const float a = src[x][3];
      for (int c = 0; c < 3; ++c) dst[x][c] = a * src[x][c] + (1.0f - a) * static_cast<float>(background_bgr[c]);
    }
  }
  return out;
}

cv::Mat to_bgr(const cv::Mat& unit_float) {
  if (unit_float.channels() == 3) return unit_float;
  cv::Mat out;
  cv::cvtColor(unit_float, out, cv::COLOR_GRAY2BGR);
  return out;
}

}  // namespace

std::string to_string(ImageFormat format) {
  switch (format) {
    case ImageFormat::Png: return "PNG";
    case ImageFormat::Jpeg: return "JPEG";
    case ImageFormat::Bmp: return "BMP";
    case ImageFormat::Tiff: return "TIFF";
    case ImageFormat::WebP: return "WebP";
  }
  return "unknown";
}

ImageHeader read_image_header(const std::vector<uint8_t>& bytes, const fs::path& file) {
  static const uint8_t png_signature[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  ImageHeader header{};
  if (bytes.size() >= 8 && std::memcmp(bytes.data(), png_signature, 8) == 0) {
    header = png_header(bytes, file);
  } else if (bytes.size() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF) {
    header = jpeg_header(bytes, file);
  } else if (starts_with(bytes, "BM")) {
    header = bmp_header(bytes, file);
  } else if (starts_with(bytes, "II*") || starts_with(bytes, "MM")) {
    if (bytes.size() < 4 || (bytes[0] == 'M' && !(bytes[2] == 0 && bytes[3] == 42))) {
      throw ImageError(file, "not a supported image (unrecognised content; PNG, JPEG, BMP, TIFF and WebP are read)");
    }
    header = tiff_header(bytes, file);
  } else if (starts_with(bytes, "RIFF") && starts_with(bytes, "WEBP", 8)) {
    header = webp_header(bytes, file);
  } else {
    throw ImageError(file, "not a supported image (unrecognised content; PNG, JPEG, BMP, TIFF and WebP are read)");
  }
  if (header.width <= 0 || header.height <= 0) {
    throw ImageError(file, to_string(header.format) + " header gives an empty size " + std::to_string(header.width) +
                               "x" + std::to_string(header.height));
  }
  return header;
}

Image load_image(const fs::path& file, const ImageLimits& limits) {
  const std::vector<uint8_t> bytes = read_file_bytes(file, limits);
  const ImageHeader header = read_image_header(bytes, file);
  if (header.width * header.height > limits.max_pixels) {
    throw ImageError(file, to_string(header.format) + " is " + std::to_string(header.width) + "x" +
                               std::to_string(header.height) + " pixels, over the limit of " +
                               std::to_string(limits.max_pixels) + " pixels; refused before decoding");
  }
  check_not_truncated(bytes, header.format, file);

  // IMREAD_UNCHANGED keeps alpha and 16 bits but makes OpenCV ignore EXIF orientation, which in
  // practice only JPEG carries; JPEG has no alpha, so it is read with flags that apply orientation.
  const int flags = header.format == ImageFormat::Jpeg ? (cv::IMREAD_ANYDEPTH | cv::IMREAD_ANYCOLOR) : cv::IMREAD_UNCHANGED;
  cv::Mat pixels;
  if (const auto animation = header.format == ImageFormat::WebP ? animated_webp(bytes, file) : std::nullopt) {
    pixels = decode_first_frame(*animation, file);
    if (animation->frames > 1) {
      logger().warn("{}: animated WebP of {} frames; only its first frame is used", file.string(), animation->frames);
    }
  } else {
    try {
      pixels = cv::imdecode(cv::_InputArray(bytes.data(), static_cast<int>(bytes.size())), flags);
    } catch (const cv::Exception& e) {
      throw ImageError(file, to_string(header.format) + " could not be decoded: " + e.msg);
    }
    if (pixels.empty()) throw ImageError(file, to_string(header.format) + " could not be decoded (corrupt or truncated data)");
  }

  if (pixels.channels() == 2) {  // gray + alpha, as some decoders return it
    cv::Mat channels[2];
    cv::split(pixels, channels);
    cv::Mat bgra;
    cv::merge(std::vector<cv::Mat>{channels[0], channels[0], channels[0], channels[1]}, bgra);
    pixels = bgra;
  }
  const int depth = pixels.depth();
  if (depth != CV_8U && depth != CV_16U && depth != CV_32F) {
    throw ImageError(file, "unsupported pixel depth (8-bit, 16-bit and 32-bit float images are read)");
  }
  if (pixels.channels() != 1 && pixels.channels() != 3 && pixels.channels() != 4) {
    throw ImageError(file, "unsupported number of channels: " + std::to_string(pixels.channels()));
  }
  return Image{file, header.format, pixels};
}

CropBox input_region(int image_width, int image_height, const InputSpec& spec) {
  const double w = image_width;
  const double h = image_height;
  if (spec.resize == ResizePolicy::Stretch) return {0, 0, w, h};
  // Centre crop: the largest box with the input's aspect ratio, shrunk by crop_fraction, centred.
  const double target_aspect = static_cast<double>(spec.width) / spec.height;
  double crop_w = std::min(w, h * target_aspect) * spec.crop_fraction;
  double crop_h = crop_w / target_aspect;
  return {(w - crop_w) / 2, (h - crop_h) / 2, crop_w, crop_h};
}

cv::Rect pixel_rect(const CropBox& box, int width, int height) {
  const cv::Rect rounded(static_cast<int>(std::lround(box.x)), static_cast<int>(std::lround(box.y)),
                         std::max(1, static_cast<int>(std::lround(box.width))),
                         std::max(1, static_cast<int>(std::lround(box.height))));
  return rounded & cv::Rect(0, 0, width, height);
}

torch::Tensor preprocess(const Image& image, const InputSpec& spec) {
  const CropBox box = input_region(image.width(), image.height(), spec);
  const cv::Mat region = image.pixels(pixel_rect(box, image.width(), image.height()));

  // Resize in the decoded depth (cheaper than float for large images). INTER_AREA averages the
  // source pixels when shrinking (no aliasing); it degenerates to bilinear when enlarging.
  cv::Mat resized;
  if (region.cols == spec.width && region.rows == spec.height) {
    resized = region;
  } else {
    const bool shrinking = region.cols >= spec.width && region.rows >= spec.height;
    cv::resize(region, resized, cv::Size(spec.width, spec.height), 0, 0, shrinking ? cv::INTER_AREA : cv::INTER_LINEAR);
  }
  const cv::Scalar mean_bgr(spec.mean[2], spec.mean[1], spec.mean[0]);
  cv::Mat bgr = to_bgr(composite_alpha(to_unit_float(resized), mean_bgr));  // HxW CV_32FC3, BGR, [0,1]

  // HWC BGR -> CHW RGB, normalised: x = (p - mean) / std in float32, in one pass over the pixels.
  // (As five tensor operations, flip, permute, copy, subtract and divide, their dispatch cost more
  // than the arithmetic at the shipped models' 112 px, a tenth of a folder run's decoding time.)
  auto out = torch::empty({3, spec.height, spec.width}, torch::kFloat32);
  float* planes = out.data_ptr<float>();
  const size_t plane = static_cast<size_t>(spec.height) * static_cast<size_t>(spec.width);
  for (int y = 0; y < spec.height; ++y) {
    const auto* row = bgr.ptr<cv::Vec3f>(y);
    const size_t at = static_cast<size_t>(y) * static_cast<size_t>(spec.width);
    for (size_t c = 0; c < 3; ++c) {
      float* to = planes + c * plane + at;
      const size_t from = 2 - c;  // BGR
      for (int x = 0; x < spec.width; ++x) to[x] = (row[x][static_cast<int>(from)] - spec.mean[c]) / spec.std[c];
    }
  }
  return out;
}

cv::Mat to_display_bgr8(const Image& image) {
  // The common case needs no conversion; a float copy of a large photo would cost 12 bytes a pixel.
  if (image.pixels.type() == CV_8UC3) return image.pixels;
  if (image.pixels.type() == CV_8UC1) {
    cv::Mat out;
    cv::cvtColor(image.pixels, out, cv::COLOR_GRAY2BGR);
    return out;
  }
  cv::Mat bgr = to_bgr(composite_alpha(to_unit_float(image.pixels), cv::Scalar(1.0, 1.0, 1.0)));
  cv::Mat out;
  bgr.convertTo(out, CV_8U, 255.0);
  return out;
}

}  // namespace tve
