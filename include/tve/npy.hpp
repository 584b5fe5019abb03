#pragma once
// NumPy .npy files (format 1.0), little-endian float32, C order: the raw attribution maps.

#include <cstdint>
#include <filesystem>
#include <vector>

namespace tve {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> values;  // C order
};

// Writes atomically: a temporary file in the same folder, then a rename.
void write_npy(const std::filesystem::path& file, const NpyArray& array);

// Reads a '<f4' (float32 little-endian) C-order array. Throws tve::Error naming the file.
NpyArray read_npy(const std::filesystem::path& file);

}  // namespace tve
