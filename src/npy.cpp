#include "tve/npy.hpp"

#include <fstream>
#include <numeric>
#include <regex>
#include <string>

#include "tve/atomic_file.hpp"
#include "tve/error.hpp"

namespace tve {

void write_npy(const std::filesystem::path& file, const NpyArray& array) {
  std::string shape;
  for (const auto dim : array.shape) shape += std::to_string(dim) + ",";
  if (array.shape.size() > 1) shape.pop_back();  // "(3,)" for 1-D, "(2,3)" otherwise
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + shape + "), }";
  // Magic (6) + version (2) + header length (2) + header, padded with spaces to a multiple of 64
  // and ended by a newline, as the format requires.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';

  std::string bytes("\x93NUMPY\x01\x00", 8);
  bytes += static_cast<char>(header.size() & 0xFF);
  bytes += static_cast<char>(header.size() >> 8);
  bytes += header;
  bytes.append(reinterpret_cast<const char*>(array.values.data()), array.values.size() * sizeof(float));
  write_file_atomically(file, bytes);
}

NpyArray read_npy(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file, "cannot open .npy file");
  char preamble[10];
  if (!in.read(preamble, 10) || std::string(preamble, 6) != std::string("\x93NUMPY", 6)) throw Error(file, "not a .npy file");
  if (preamble[6] != 1) throw Error(file, "only .npy format version 1.0 is read");
  const size_t header_length = static_cast<unsigned char>(preamble[8]) | (static_cast<size_t>(static_cast<unsigned char>(preamble[9])) << 8);
  std::string header(header_length, '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(header_length))) throw Error(file, ".npy header is truncated");
  if (header.find("'descr': '<f4'") == std::string::npos) throw Error(file, ".npy array is not little-endian float32");
  if (header.find("'fortran_order': False") == std::string::npos) throw Error(file, ".npy array is not in C order");
  std::smatch match;
  if (!std::regex_search(header, match, std::regex(R"('shape':\s*\(([0-9,\s]*)\))"))) throw Error(file, ".npy header has no shape");
  NpyArray array;
  const std::string dims = match[1];
  const std::regex number("[0-9]+");
  for (std::sregex_iterator it(dims.begin(), dims.end(), number), end; it != end; ++it) {
    array.shape.push_back(std::stoll(it->str()));
  }
  const auto count = std::accumulate(array.shape.begin(), array.shape.end(), int64_t{1}, std::multiplies<>());
  array.values.resize(static_cast<size_t>(count));
  if (!in.read(reinterpret_cast<char*>(array.values.data()), static_cast<std::streamsize>(count * sizeof(float)))) {
    throw Error(file, ".npy data is truncated");
  }
  return array;
}

}  // namespace tve
