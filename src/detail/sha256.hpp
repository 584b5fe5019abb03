#pragma once

#include <filesystem>
#include <string>

namespace tve {

// Lowercase hex SHA-256 of a file's bytes. Throws tve::Error naming the file if it cannot be read.
std::string sha256_file(const std::filesystem::path& file);

}  // namespace tve
