#include "tve/error.hpp"

namespace tve {

Error::Error(const std::filesystem::path& file, const std::string& what)
    : std::runtime_error(file.empty() ? what : file.string() + ": " + what), file_(file), detail_(what) {}

Error::Error(const std::string& what) : std::runtime_error(what), detail_(what) {}

}  // namespace tve
