#pragma once
// A second thread that runs tasks one at a time, in the order they were submitted. `tve explain`
// uses it to write batch n's outputs (overlay rendering, PNG encoding, files) while the model
// works on batch n+1.

#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

namespace tve {

class SerialWorker {
 public:
  SerialWorker();
  // Drops a task still waiting, waits for the running one and joins. Call finish() to run all.
  ~SerialWorker();
  SerialWorker(const SerialWorker&) = delete;
  SerialWorker& operator=(const SerialWorker&) = delete;

  // Queues `task`. At most one task waits besides the running one: submit() blocks until the slot
  // is free, which keeps the memory held by queued work bounded. If an earlier task threw, its
  // exception is rethrown here and `task` is not queued.
  void submit(std::function<void()> task);

  // Waits until every submitted task has run; rethrows the first exception a task threw (tasks
  // submitted after a failed one are not run).
  void finish();

 private:
  void run();
  void rethrow_failure();  // with mutex_ held

  std::mutex mutex_;
  std::condition_variable changed_;
  std::optional<std::function<void()>> waiting_;
  bool running_ = false;
  bool stopping_ = false;
  std::exception_ptr failure_;
  std::thread thread_;  // declared last: started once the members it uses exist
};

}  // namespace tve
