#include "tve/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace tve {

spdlog::logger& logger() {
  static std::shared_ptr<spdlog::logger> instance = [] {
    auto existing = spdlog::get("tve");
    if (existing) return existing;
    auto created = spdlog::stderr_color_mt("tve");
    created->set_pattern("tve: %^%l%$: %v");
    created->set_level(spdlog::level::info);
    return created;
  }();
  return *instance;
}

}  // namespace tve
