#include "detail/serial_worker.hpp"

#include <utility>

namespace tve {

SerialWorker::SerialWorker() : thread_([this] { run(); }) {}

SerialWorker::~SerialWorker() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    waiting_.reset();
  }
  changed_.notify_all();
  thread_.join();
}

void SerialWorker::rethrow_failure() {
  if (failure_) {
    // Rethrown once: the caller decides what happens next, and the destructor must not throw.
    std::exception_ptr failure = std::exchange(failure_, nullptr);
    stopping_ = true;
    std::rethrow_exception(failure);
  }
}

void SerialWorker::submit(std::function<void()> task) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return !waiting_ || failure_ || stopping_; });
  rethrow_failure();
  if (stopping_) return;
  waiting_ = std::move(task);
  changed_.notify_all();
}

void SerialWorker::finish() {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return (!waiting_ && !running_) || failure_ || stopping_; });
  rethrow_failure();
}

void SerialWorker::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    changed_.wait(lock, [&] { return waiting_ || stopping_; });
    if (stopping_) return;
    std::function<void()> task = std::move(*waiting_);
    waiting_.reset();
    running_ = true;
    changed_.notify_all();  // the slot is free for the next submit()
    lock.unlock();
    std::exception_ptr failure;
    try {
      task();
    } catch (...) {
      failure = std::current_exception();
    }
    lock.lock();
    running_ = false;
    if (failure) {
      failure_ = failure;
      waiting_.reset();  // not run: what it depends on may have failed
    }
    changed_.notify_all();
  }
}

}  // namespace tve
