// NCCL transport: each post is one ncclGroupStart/End of sends and receives on
// a communication stream that first waits (an event) for the compute stream to
// reach the post; wait() makes the compute stream wait for the group. The host
// never blocks. Blocked time is the compute stream's stall, read from events
// around each wait when the phase ends.
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <cstdlib>
#include <map>
#include <vector>

#include "core/backend.hpp"
#include "cuda_check.hpp"
#include "comm_stream.hpp"
#include "gpu/transports.hpp"
#include "core/mpi_check.hpp"

#define LVX_NCCL_CHECK(call)                                                                 \
  do {                                                                                       \
    ncclResult_t lvx_nccl_rc_ = (call);                                                      \
    if (lvx_nccl_rc_ != ncclSuccess)                                                         \
      ::lvx::raise_error(::lvx::Status::nccl, __FILE__, __LINE__,                            \
                         std::string(#call) + ": " + ncclGetErrorString(lvx_nccl_rc_) + " (" + \
                             ncclGetLastError(nullptr) + ")");                              \
  } while (0)

namespace lvx {

namespace {

class NcclTransport final : public Transport {
 public:
  NcclTransport(MPI_Comm comm, Backend& backend, int device) : backend_(backend), device_(device) {
    // NVLink multicast (NVLS) stays off unless the user asked for it.
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    int rank = 0, size = 1;
    LVX_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    LVX_MPI_CHECK(MPI_Comm_size(comm, &size));
    ncclUniqueId id;
    if (rank == 0) LVX_NCCL_CHECK(ncclGetUniqueId(&id));
    LVX_MPI_CHECK(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, comm));
    LVX_CUDA_CHECK(cudaSetDevice(device_));
    LVX_NCCL_CHECK(ncclCommInitRank(&comm_, size, id, rank));
    comm_stream_ = cuda::make_comm_stream();
  }
  ~NcclTransport() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(comm_stream_);
    for (cudaEvent_t e : free_) cudaEventDestroy(e);
    for (auto& [t, e] : open_) cudaEventDestroy(e);
    cudaStreamDestroy(comm_stream_);
    ncclCommDestroy(comm_);
  }

  std::string name() const override { return "nccl"; }
  bool device_direct() const override { return true; }

  int post(const std::vector<Message>& sends, const std::vector<Message>& recvs) override {
    cudaEvent_t ready = event(), done = event();
    LVX_CUDA_CHECK(cudaEventRecord(ready, stream()));
    LVX_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, ready, 0));
    LVX_NCCL_CHECK(ncclGroupStart());
    for (const Message& m : recvs) {
      if (m.bytes) LVX_NCCL_CHECK(ncclRecv(m.buf, m.bytes, ncclChar, m.peer, comm_, comm_stream_));
      counters.bytes_recv += m.bytes;
    }
    for (const Message& m : sends) {
      if (m.bytes) LVX_NCCL_CHECK(ncclSend(m.buf, m.bytes, ncclChar, m.peer, comm_, comm_stream_));
      counters.bytes_sent += m.bytes;
    }
    LVX_NCCL_CHECK(ncclGroupEnd());
    LVX_CUDA_CHECK(cudaEventRecord(done, comm_stream_));
    free_.push_back(ready);  // reusable: a recorded event may be re-recorded
    const int ticket = next_ticket_++;
    open_.emplace(ticket, done);
    return ticket;
  }

  void wait(int ticket) override {
    auto it = open_.find(ticket);
    if (it == open_.end()) return;
    // The compute stream's stall = time between "compute reached the wait" and
    // "the transfer is done": two backend marks around the wait, read later.
    const int before = backend_.mark();
    LVX_CUDA_CHECK(cudaStreamWaitEvent(stream(), it->second, 0));
    stall_marks.emplace_back(before, backend_.mark());
    free_.push_back(it->second);
    open_.erase(it);
  }

  void drain() override {
    while (!open_.empty()) wait(open_.begin()->first);
  }

  void wait_all() override {
    drain();
    LVX_CUDA_CHECK(cudaStreamSynchronize(stream()));
  }

 private:
  cudaStream_t stream() const { return static_cast<cudaStream_t>(backend_.stream()); }
  cudaEvent_t event() {
    if (!free_.empty()) {
      cudaEvent_t e = free_.back();
      free_.pop_back();
      return e;
    }
    cudaEvent_t e;
    LVX_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
  }

  Backend& backend_;
  int device_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t comm_stream_ = nullptr;
  std::vector<cudaEvent_t> free_;
  std::map<int, cudaEvent_t> open_;
  int next_ticket_ = 1;
};

}  // namespace

std::unique_ptr<Transport> gpu::make_nccl_transport(MPI_Comm comm, Backend& backend, int device) {
  return std::make_unique<NcclTransport>(comm, backend, device);
}
bool gpu::nccl_built() { return true; }

}  // namespace lvx
