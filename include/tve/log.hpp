#pragma once
// The library's one named logger. It writes to stderr only: stdout belongs to results.

#include <spdlog/logger.h>

namespace tve {

spdlog::logger& logger();

}  // namespace tve
