#pragma once
// Model lanes: whole batches run side by side on separate threads, each with its own LibTorch
// intra-op threads, instead of one batch at a time spread over every core.
//
// Why: the shipped models are small (112 px), and one batch of 8 spread over two cores keeps
// neither busy: OpenMP's threads meet at a barrier after every operation, and a thread that the
// scheduler preempts there (to decode an image, to write an overlay) stalls the other. On this
// project's 2-core machine a second single-threaded process beside the first nearly doubled the
// compute (resnet 338 -> 650 images/s, swin 250 -> 450, vit 131 -> 243), where the second intra-op
// thread gave 1.2-1.5x (docs/performance.md, "Model lanes"). A lane that is preempted stalls only
// itself, so decoding and writing threads share the cores with the lanes without slowing them.
//
// A batch is the same batch whichever lane runs it, so every image's results are those of a run
// without lanes with the same thread count per batch.

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace tve {

class ModelLanes {
 public:
  // `lanes` threads (at least 1), each running LibTorch with `intra_op_threads` threads. With one
  // lane no thread is started: run() computes on the caller's thread, as before lanes existed.
  ModelLanes(int lanes, int intra_op_threads);
  // Lets the running tasks finish, drops the waiting ones (their futures report a broken promise)
  // and joins.
  ~ModelLanes();
  ModelLanes(const ModelLanes&) = delete;
  ModelLanes& operator=(const ModelLanes&) = delete;

  int size() const { return lanes_; }

  // How many tasks a caller keeps given before it waits for its oldest: two per lane (one running,
  // one waiting, so that a lane done early starts the next at once); one without lanes.
  size_t tasks_in_flight() const { return lanes_ == 1 ? 1 : 2 * static_cast<size_t>(lanes_); }

  // Runs `task` on the first lane that is free and returns its result, or its exception, through
  // the future. Tasks start in the order they were given. Blocks while size() tasks already wait
  // for a lane, which bounds the memory that queued work holds.
  template <class Result, class Task>
  std::future<Result> run(Task task) {
    auto promise = std::make_shared<std::promise<Result>>();
    std::future<Result> result = promise->get_future();
    auto settle = [promise, task = std::move(task)]() mutable {
      try {
        promise->set_value(task());
      } catch (...) {
        promise->set_exception(std::current_exception());
      }
    };
    if (threads_.empty()) {
      settle();
    } else {
      enqueue(std::move(settle));
    }
    return result;
  }

 private:
  void enqueue(std::function<void()> task);
  void serve(int intra_op_threads);

  int lanes_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::function<void()>> waiting_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;  // empty with one lane; declared last, started last
};

}  // namespace tve
