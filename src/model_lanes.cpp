#include "detail/model_lanes.hpp"

#include <ATen/Parallel.h>

#include <algorithm>

namespace tve {

ModelLanes::ModelLanes(int lanes, int intra_op_threads) : lanes_(std::max(1, lanes)) {
  if (lanes_ == 1) return;
  for (int lane = 0; lane < lanes_; ++lane) threads_.emplace_back([this, intra_op_threads] { serve(intra_op_threads); });
}

ModelLanes::~ModelLanes() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    waiting_.clear();
  }
  changed_.notify_all();
  for (auto& thread : threads_) thread.join();
}

void ModelLanes::enqueue(std::function<void()> task) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return waiting_.size() < static_cast<size_t>(lanes_) || stopping_; });
  waiting_.push_back(std::move(task));
  changed_.notify_all();
}

void ModelLanes::serve(int intra_op_threads) {
  // OpenMP's thread count is per thread: a new thread would take LibTorch's process default
  // (every core), not the caller's setting.
  at::set_num_threads(std::max(1, intra_op_threads));
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    changed_.wait(lock, [&] { return !waiting_.empty() || stopping_; });
    if (stopping_) return;
    std::function<void()> task = std::move(waiting_.front());
    waiting_.pop_front();
    changed_.notify_all();  // room for the next enqueue()
    lock.unlock();
    task();  // never throws: run() hands exceptions to the future
    lock.lock();
  }
}

}  // namespace tve
