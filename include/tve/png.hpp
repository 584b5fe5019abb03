#pragma once
// PNG encoding of 8-bit images, the overlays' format.
//
// Written here rather than by cv::imencode because encoding was the largest cost of a folder run
// besides the model: OpenCV's PNG path (libpng + zlib, SUB filter, Z_RLE) took ~1.5 ms for a
// 240 x 240 overlay, against ~2 ms of model work per image for the shipped ResNet. Overlays are
// photographs under a colour wash, so deflate's string matching finds almost nothing and the file
// size comes from Huffman coding alone (docs/performance.md, "Writing overlays"): the same SUB
// filter, compressed by ISA-L's igzip at level 1, gives files of the same size in a third of the
// time.

#include <opencv2/core.hpp>
#include <string>

namespace tve {

// PNG bytes of an 8-bit image: 1 channel (gray), 3 (BGR) or 4 (BGRA), as OpenCV stores them.
// Lossless: cv::imdecode of the result gives back the same pixels. Throws OutputError for any
// other type, or if compression fails.
std::string encode_png(const cv::Mat& image);

}  // namespace tve
