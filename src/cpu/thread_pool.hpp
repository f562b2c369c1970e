// A small persistent pool for the CPU kernels. Threads sleep on a condition
// variable between calls (no spinning), so they do not compete with the
// caller's own runtime (torch, MPI) for cores when idle.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace lvx {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  // Runs fn(item, worker) for item in [0, n), worker in [0, size()); items are
  // handed out dynamically. The calling thread is worker 0. Returns when all are done.
  void parallel_for(int64_t n, const std::function<void(int64_t, int)>& fn);

 private:
  void work(int worker);
  void run_items(int worker);

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t, int)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t next_ = 0;
  int busy_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace lvx
