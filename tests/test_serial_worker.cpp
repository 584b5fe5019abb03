// SerialWorker: tasks run in order on one other thread; a task's exception reaches the caller.

#include "detail/serial_worker.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

namespace tve {
namespace {

TEST(SerialWorker, RunsEveryTaskInOrderOnAnotherThread) {
  std::vector<int> order;  // touched only by the worker until finish()
  std::atomic<bool> on_caller_thread{false};
  const auto caller = std::this_thread::get_id();
  SerialWorker worker;
  for (int i = 0; i < 100; ++i) {
    worker.submit([&, i] {
      if (std::this_thread::get_id() == caller) on_caller_thread = true;
      order.push_back(i);
    });
  }
  worker.finish();
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[static_cast<size_t>(i)], i);
  EXPECT_FALSE(on_caller_thread);
}

TEST(SerialWorker, ATaskExceptionIsRethrownAndLaterTasksDoNotRun) {
  std::atomic<int> ran{0};
  SerialWorker worker;
  worker.submit([&] { ++ran; });
  worker.submit([] { throw std::runtime_error("disk on fire"); });
  bool thrown = false;
  try {
    // Either a later submit() or finish() sees the failure, depending on timing.
    for (int i = 0; i < 3; ++i) worker.submit([&] { ++ran; });
    worker.finish();
  } catch (const std::runtime_error& e) {
    thrown = true;
    EXPECT_STREQ(e.what(), "disk on fire");
  }
  EXPECT_TRUE(thrown);
  // Only the task before the failing one ran: one waiting behind it was dropped, later ones were
  // refused.
  EXPECT_EQ(ran, 1);
}

TEST(SerialWorker, SubmitBlocksWhileATaskIsWaiting) {
  std::atomic<bool> release{false};
  std::atomic<int> ran{0};
  SerialWorker worker;
  worker.submit([&] {
    while (!release) std::this_thread::yield();
    ++ran;
  });
  // Returns once the worker has taken the first task; the first cannot finish before `release`.
  worker.submit([&] { ++ran; });
  std::atomic<bool> third_queued{false};
  std::thread third([&] {
    worker.submit([&] { ++ran; });
    third_queued = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(third_queued) << "submit() returned while the slot was taken";
  release = true;
  third.join();
  worker.finish();
  EXPECT_EQ(ran, 3);
}

TEST(SerialWorker, DestructionDropsTheWaitingTaskAndWaitsForTheRunningOne) {
  std::atomic<bool> release{false};
  std::atomic<int> ran{0};
  std::thread releaser;
  {
    SerialWorker worker;
    worker.submit([&] {
      while (!release) std::this_thread::yield();
      ++ran;
    });
    worker.submit([&] { ran += 10; });  // waits in the slot while the first one spins
    releaser = std::thread([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      release = true;
    });
  }  // the destructor returns only after the running task has finished
  EXPECT_EQ(ran, 1);
  releaser.join();
}

}  // namespace
}  // namespace tve
