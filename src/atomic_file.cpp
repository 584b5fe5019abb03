#include "tve/atomic_file.hpp"

#include <unistd.h>

#include <fstream>
#include <random>

#include "tve/error.hpp"

namespace fs = std::filesystem;

namespace tve {

void write_file_atomically(const fs::path& file, std::string_view bytes) {
  std::error_code ec;
  if (file.has_parent_path()) fs::create_directories(file.parent_path(), ec);
  if (ec) throw Error(file.parent_path(), "cannot create output folder: " + ec.message());

  // A name unique to this process and call, hidden, so that concurrent jobs writing into the same
  // folder never share a temporary file and half-written files are never mistaken for results.
  static thread_local std::mt19937_64 random{std::random_device{}()};
  const fs::path temporary = file.parent_path() / ("." + file.filename().string() + "." + std::to_string(getpid()) + "." +
                                                   std::to_string(random() % 1000000000) + ".tmp");
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(file, "cannot create temporary output file " + temporary.filename().string());
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      out.close();
      fs::remove(temporary, ec);
      throw Error(file, "write failed (disk full?)");
    }
  }
  fs::rename(temporary, file, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(temporary, ignored);
    throw Error(file, "cannot move output into place: " + ec.message());
  }
}

}  // namespace tve
