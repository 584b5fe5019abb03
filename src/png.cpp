#include "tve/png.hpp"

#include <isa-l/crc.h>
#include <isa-l/igzip_lib.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tve/error.hpp"

namespace tve {
namespace {

constexpr char kSignature[] = "\x89PNG\r\n\x1a\n";
// IDAT chunks are cut at this many compressed bytes (libpng writes 8 KiB; any size is valid).
constexpr size_t kChunkBytes = 64 * 1024;
// Rows are filtered and handed to the compressor in blocks of about this many bytes, so that a
// large overlay is never copied whole.
constexpr size_t kBlockBytes = 256 * 1024;

void put_be32(std::string& out, uint32_t value) {
  const char bytes[4] = {static_cast<char>(value >> 24), static_cast<char>(value >> 16), static_cast<char>(value >> 8),
                         static_cast<char>(value)};
  out.append(bytes, 4);
}

// A chunk: length, type, data, CRC-32 of type and data (the CRC of gzip and zlib, which ISA-L's
// crc32_gzip_refl computes, pre- and post-inverted).
void put_chunk(std::string& out, const char type[4], const uint8_t* data, size_t size) {
  put_be32(out, static_cast<uint32_t>(size));
  const size_t type_at = out.size();
  out.append(type, 4);
  if (size > 0) out.append(reinterpret_cast<const char*>(data), size);
  put_be32(out, crc32_gzip_refl(0, reinterpret_cast<const uint8_t*>(out.data() + type_at), size + 4));
}

// One scanline as PNG stores it: filter type 1 (SUB: each byte minus the byte one pixel to its
// left), channels in PNG's order (RGB, RGBA) rather than OpenCV's (BGR, BGRA). SUB is what
// OpenCV chooses for speed, and on overlays it compressed as well as UP or per-row choice.
void filter_row(const uint8_t* pixels, int width, int channels, uint8_t* out) {
  *out++ = 1;
  const size_t bytes = static_cast<size_t>(width) * channels;
  if (channels == 1) {
    std::copy(pixels, pixels + bytes, out);
  } else {
    for (int x = 0; x < width; ++x) {
      const uint8_t* in = pixels + static_cast<size_t>(x) * channels;
      uint8_t* to = out + static_cast<size_t>(x) * channels;
      to[0] = in[2];
      to[1] = in[1];
      to[2] = in[0];
      if (channels == 4) to[3] = in[3];
    }
  }
  for (size_t i = bytes; i-- > static_cast<size_t>(channels);) out[i] = static_cast<uint8_t>(out[i] - out[i - channels]);
}

}  // namespace

std::string encode_png(const cv::Mat& image) {
  const int channels = image.channels();
  if (image.depth() != CV_8U || (channels != 1 && channels != 3 && channels != 4) || image.empty()) {
    throw OutputError("cannot encode a PNG of " + std::to_string(image.cols) + "x" + std::to_string(image.rows) +
                      " pixels of OpenCV type " + std::to_string(image.type()) + ": expected 8-bit gray, BGR or BGRA");
  }
  std::string out(kSignature, 8);
  uint8_t header[13] = {};
  for (int i = 0; i < 4; ++i) {
    header[i] = static_cast<uint8_t>(static_cast<uint32_t>(image.cols) >> (24 - 8 * i));
    header[4 + i] = static_cast<uint8_t>(static_cast<uint32_t>(image.rows) >> (24 - 8 * i));
  }
  header[8] = 8;                                               // bits per channel
  header[9] = channels == 1 ? 0 : channels == 3 ? 2 : 6;       // gray, RGB, RGBA
  put_chunk(out, "IHDR", header, sizeof header);               // compression, filter, interlace: 0

  // igzip level 1 with a zlib wrapper (header and Adler-32 trailer), as PNG's IDAT requires.
  isal_zstream stream;
  isal_deflate_init(&stream);
  std::vector<uint8_t> level_buffer(ISAL_DEF_LVL1_DEFAULT);
  stream.level = 1;
  stream.level_buf = level_buffer.data();
  stream.level_buf_size = static_cast<uint32_t>(level_buffer.size());
  stream.gzip_flag = IGZIP_ZLIB;
  stream.flush = NO_FLUSH;

  const size_t row_bytes = 1 + static_cast<size_t>(image.cols) * channels;
  const int rows_per_block = static_cast<int>(std::max<size_t>(1, kBlockBytes / row_bytes));
  std::vector<uint8_t> block(row_bytes * static_cast<size_t>(std::min(rows_per_block, image.rows)));
  std::vector<uint8_t> compressed(kChunkBytes);
  for (int first = 0; first < image.rows; first += rows_per_block) {
    const int last = std::min(image.rows, first + rows_per_block);
    for (int y = first; y < last; ++y) {
      filter_row(image.ptr<uint8_t>(y), image.cols, channels, block.data() + static_cast<size_t>(y - first) * row_bytes);
    }
    stream.next_in = block.data();
    stream.avail_in = static_cast<uint32_t>(static_cast<size_t>(last - first) * row_bytes);
    stream.end_of_stream = last == image.rows ? 1 : 0;
    do {
      stream.next_out = compressed.data();
      stream.avail_out = static_cast<uint32_t>(compressed.size());
      if (isal_deflate(&stream) != COMP_OK) throw OutputError("PNG compression (ISA-L igzip) failed");
      const size_t produced = compressed.size() - stream.avail_out;
      if (produced > 0) put_chunk(out, "IDAT", compressed.data(), produced);
    } while (stream.avail_out == 0 || (stream.end_of_stream && stream.internal_state.state != ZSTATE_END));
  }
  put_chunk(out, "IEND", nullptr, 0);
  return out;
}

}  // namespace tve
