// Point-to-point transports for the ring schedules. A schedule posts a group of
// sends and receives and later waits for the group:
//   - post() orders the transfer after all backend work issued before it, so a
//     send may read (and a receive may overwrite) buffers that earlier kernels used;
//   - wait() orders backend work issued after it behind the transfer.
// On the CPU both are plain MPI; a GPU transport uses events and its own stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace lvx {

struct Message {
  int peer = 0;
  void* buf = nullptr;
  size_t bytes = 0;
  int tag = 0;
};

struct TransportCounters {
  uint64_t bytes_sent = 0, bytes_recv = 0;
  double blocked_s = 0.0;  // host time the caller spent waiting on transfers
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual std::string name() const = 0;
  // Whether device buffers move without host staging (NCCL, CUDA-aware MPI).
  virtual bool device_direct() const { return false; }
  virtual int post(const std::vector<Message>& sends, const std::vector<Message>& recvs) = 0;
  virtual void wait(int ticket) = 0;
  // Blocks until every posted group is complete (used on error paths and at the end).
  virtual void wait_all() = 0;
  // Orders all later backend work behind every posted group; a GPU transport
  // does this without waiting on the host.
  virtual void drain() { wait_all(); }
  TransportCounters counters;
  // Device-side waits, as pairs of backend marks around each stall of the compute
  // stream; the phase that issued them reads and releases them.
  std::vector<std::pair<int, int>> stall_marks;
};

}  // namespace lvx
