#pragma once
// Wall time since construction, on the steady clock: the one timer of tve.

#include <chrono>
#include <utility>

namespace tve {

class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }
  double milliseconds() const { return 1e3 * seconds(); }

 private:
  std::chrono::steady_clock::time_point start_;
};

// Wall time of one call of `work`, in seconds.
template <typename Work>
double seconds_of(Work&& work) {
  const Stopwatch stopwatch;
  std::forward<Work>(work)();
  return stopwatch.seconds();
}

}  // namespace tve
