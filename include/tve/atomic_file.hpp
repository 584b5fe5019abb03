#pragma once
// Output files appear whole or not at all: written to a temporary name in the same folder, then
// renamed over the destination (rename is atomic within a file system).

#include <filesystem>
#include <string_view>

namespace tve {

void write_file_atomically(const std::filesystem::path& file, std::string_view bytes);

}  // namespace tve
