// MPI transport for device buffers, with no host wait on compute.
//
// Each post() becomes a job that is progressed without blocking whenever the
// caller posts or waits (one progress engine for all open jobs, so a rank that
// waits for a receive keeps its own sends moving and rings cannot deadlock):
//   receives: MPI_Irecv per chunk; each finished chunk is copied to the device on a
//             copy stream (host-staged: posted at once into pinned memory) or lands
//             there directly (CUDA-aware MPI: posted only once the compute stream has
//             passed the post, since kernels issued before it may still read the buffer);
//   sends:    once the compute stream has passed the post (an event), chunks are
//             copied to pinned host memory on the copy stream and each is sent as
//             soon as its copy lands (host-staged), or the device buffer is handed to
//             MPI as is (CUDA-aware): MPI reads it only after the kernels writing it.
// wait(ticket) progresses until that job is done (MPI completed every chunk: with a
// CUDA-aware MPI the data is then in device memory), then makes the compute stream
// wait for the job's last copy (an event): kernels issued after it see the data. The
// host time spent in wait() is the transport's blocked time; nothing synchronizes the
// device. MPI matches messages of one (peer, tag) in posting order, so jobs post their
// receives and start their sends in ticket order. Chunks keep every MPI count below
// 2^31 (4 MiB staged, the pipelining grain; 1 GiB direct). Pinned staging buffers are
// pooled, so steady-state steps allocate nothing.
// LVX_TRANSPORT_TRACE=1 prints one line per job on stderr when it is waited for: its
// bytes and, in microseconds from the post, when the compute stream passed the post,
// the receives were posted, the first send started, MPI finished, and the wait began
// and ended (a diagnostic for cluster MPIs; slurm/README.md).
#include <cuda_runtime.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "core/backend.hpp"
#include "cuda_check.hpp"
#include "comm_stream.hpp"
#include "gpu/transports.hpp"
#include "core/mpi_check.hpp"

namespace lvx {

namespace {

constexpr size_t kChunk = size_t(4) << 20;         // pipelining grain for host staging
constexpr size_t kDirectChunk = size_t(1) << 30;  // a direct message's largest piece (MPI counts are int)

class PinnedPool {
 public:
  ~PinnedPool() {
    for (auto& b : blocks_) cudaFreeHost(b.ptr);
  }
  char* acquire(size_t bytes) {
    Block* best = nullptr;
    for (auto& b : blocks_)
      if (!b.used && b.bytes >= bytes && (!best || b.bytes < best->bytes)) best = &b;
    if (!best) {
      blocks_.push_back({nullptr, std::max<size_t>(bytes, 1), false});
      LVX_CUDA_CHECK(cudaMallocHost(&blocks_.back().ptr, blocks_.back().bytes));
      best = &blocks_.back();
    }
    best->used = true;
    return static_cast<char*>(best->ptr);
  }
  void release(char* p) {
    for (auto& b : blocks_)
      if (b.ptr == p) b.used = false;
  }

 private:
  struct Block {
    void* ptr;
    size_t bytes;
    bool used;
  };
  std::vector<Block> blocks_;
};

struct Chunk {
  int peer, tag;
  char* device;  // where the bytes live (send) or go (receive) on the GPU
  char* host;    // staging, null when MPI reads device memory itself
  size_t bytes;
  MPI_Request req = MPI_REQUEST_NULL;
  cudaEvent_t copied = nullptr;  // staged send: the D2H copy of this chunk
  bool started = false, arrived = false, done = false;
};

struct Job {
  std::vector<Chunk> sends, recvs;
  std::vector<char*> staging;
  cudaEvent_t ready = nullptr;  // compute stream reached the post
  cudaEvent_t done = nullptr;   // last device-side copy of the job
  bool ready_seen = false, sends_copied = false, recvs_posted = false, finished = false;
  // LVX_TRANSPORT_TRACE: host times of the job's milestones
  using Clock = std::chrono::steady_clock;
  Clock::time_point t_post, t_ready, t_recvs, t_send, t_done;
};

bool trace_enabled() {
  const char* v = std::getenv("LVX_TRANSPORT_TRACE");
  return v && *v && std::strcmp(v, "0") != 0;
}

class MpiDeviceTransport final : public Transport {
 public:
  MpiDeviceTransport(MPI_Comm comm, Backend& backend, int device, bool cuda_aware)
      : comm_(comm), backend_(backend), device_(device), direct_(cuda_aware), trace_(trace_enabled()) {
    LVX_CUDA_CHECK(cudaSetDevice(device_));
    copy_stream_ = cuda::make_comm_stream();
  }
  ~MpiDeviceTransport() override {
    try {
      wait_all();
    } catch (...) {
    }
    cudaStreamSynchronize(copy_stream_);
    for (auto& p : pending_) cudaEventDestroy(p.second);
    for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
    cudaStreamDestroy(copy_stream_);
  }

  std::string name() const override { return direct_ ? "mpi (CUDA-aware)" : "mpi (host-staged)"; }
  bool device_direct() const override { return direct_; }

  int post(const std::vector<Message>& sends, const std::vector<Message>& recvs) override {
    LVX_CUDA_CHECK(cudaSetDevice(device_));
    recycle_staging();
    auto job = std::make_unique<Job>();
    job->ready = event();
    job->done = event();
    job->t_post = Job::Clock::now();
    LVX_CUDA_CHECK(cudaEventRecord(job->ready, stream()));
    split(recvs, job->recvs, *job, false);
    split(sends, job->sends, *job, true);
    // Staged receives land in pinned memory and can start now; direct ones write
    // device memory that kernels issued before the post may still read.
    if (!direct_) post_receives(*job);
    for (Chunk& c : job->recvs) counters.bytes_recv += c.bytes;
    for (Chunk& c : job->sends) counters.bytes_sent += c.bytes;
    const int ticket = next_ticket_++;
    jobs_.emplace(ticket, std::move(job));
    progress();
    return ticket;
  }

  void wait(int ticket) override {
    auto it = jobs_.find(ticket);
    if (it == jobs_.end()) return;
    const auto t0 = std::chrono::steady_clock::now();
    while (!it->second->finished) {
      if (!progress()) std::this_thread::yield();
    }
    const auto t1 = std::chrono::steady_clock::now();
    counters.blocked_s += std::chrono::duration<double>(t1 - t0).count();
    Job& job = *it->second;
    if (trace_) print_trace(ticket, job, t0, t1);
    LVX_CUDA_CHECK(cudaStreamWaitEvent(stream(), job.done, 0));
    // Staging is reused only after the job's copies have run (job.done).
    pending_.push_back({std::move(job.staging), job.done});
    give_back(job.ready);
    for (Chunk& c : job.sends)
      if (c.copied) give_back(c.copied);
    jobs_.erase(it);
  }

  void wait_all() override {
    while (!jobs_.empty()) wait(jobs_.begin()->first);
  }

 private:
  cudaStream_t stream() const { return static_cast<cudaStream_t>(backend_.stream()); }

  void post_receives(Job& job) {
    for (Chunk& c : job.recvs)
      LVX_MPI_CHECK(MPI_Irecv(c.host ? c.host : c.device, int(c.bytes), MPI_BYTE, c.peer, c.tag, comm_, &c.req));
    job.recvs_posted = true;
    if (trace_) job.t_recvs = Job::Clock::now();
  }

  void print_trace(int ticket, const Job& job, Job::Clock::time_point w0, Job::Clock::time_point w1) const {
    auto us = [&](Job::Clock::time_point t) {
      return t == Job::Clock::time_point{} ? -1.0 : std::chrono::duration<double, std::micro>(t - job.t_post).count();
    };
    size_t sent = 0, recv = 0;
    for (const Chunk& c : job.sends) sent += c.bytes;
    for (const Chunk& c : job.recvs) recv += c.bytes;
    int rank = 0;
    MPI_Comm_rank(comm_, &rank);
    std::fprintf(stderr,
                 "lvx-trace rank %d %s job %d: %zu sends %zu B, %zu recvs %zu B; us from post: ready %.1f recvs %.1f "
                 "send %.1f done %.1f wait %.1f..%.1f\n",
                 rank, direct_ ? "direct" : "staged", ticket, job.sends.size(), sent, job.recvs.size(), recv,
                 us(job.t_ready), us(job.t_recvs), us(job.t_send), us(job.t_done), us(w0), us(w1));
  }

  void recycle_staging() {
    for (size_t i = 0; i < pending_.size();) {
      cudaError_t q = cudaEventQuery(pending_[i].second);
      if (q == cudaErrorNotReady) {
        ++i;
        continue;
      }
      LVX_CUDA_CHECK(q);
      for (char* p : pending_[i].first) pool_.release(p);
      give_back(pending_[i].second);
      pending_.erase(pending_.begin() + i);
    }
  }

  cudaEvent_t event() {
    if (!free_events_.empty()) {
      cudaEvent_t e = free_events_.back();
      free_events_.pop_back();
      return e;
    }
    cudaEvent_t e;
    LVX_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
  }
  void give_back(cudaEvent_t e) { free_events_.push_back(e); }

  void split(const std::vector<Message>& msgs, std::vector<Chunk>& out, Job& job, bool is_send) {
    size_t total = 0;
    for (const Message& m : msgs) total += m.bytes;
    char* host = nullptr;
    if (!direct_ && total) {
      host = pool_.acquire(total);
      job.staging.push_back(host);
    }
    size_t at = 0;
    for (const Message& m : msgs) {
      if (!m.bytes) continue;  // both sides know the sizes: skipping is symmetric
      const size_t grain = direct_ ? kDirectChunk : kChunk;
      for (size_t off = 0; off < m.bytes; off += grain) {
        Chunk c;
        c.peer = m.peer;
        c.tag = m.tag;
        c.device = static_cast<char*>(m.buf) + off;
        c.host = host ? host + at + off : nullptr;
        c.bytes = std::min(grain, m.bytes - off);
        if (is_send && !direct_) c.copied = event();
        out.push_back(c);
      }
      at += m.bytes;
    }
  }

  // Advances every open job as far as it can go without blocking; true if anything moved.
  bool progress() {
    bool moved = false;
    // MPI matches messages of one (peer, tag) in posting order, so a job may post
    // its receives or start its sends only after every earlier job has.
    bool earlier_recvs_waiting = false, earlier_sends_waiting = false;
    for (auto& [ticket, jp] : jobs_) {
      Job& job = *jp;
      if (job.finished) continue;
      // Nothing of the job may touch device memory before the compute stream has
      // passed the post: sends read buffers kernels wrote, receives overwrite
      // buffers kernels read.
      if (!job.ready_seen) {
        cudaError_t q = cudaEventQuery(job.ready);
        if (q == cudaSuccess) {
          job.ready_seen = moved = true;
          if (trace_) job.t_ready = Job::Clock::now();
        } else if (q != cudaErrorNotReady) {
          LVX_CUDA_CHECK(q);
        }
      }
      if (job.ready_seen && !job.recvs_posted && !earlier_recvs_waiting) post_receives(job);
      earlier_recvs_waiting = earlier_recvs_waiting || !job.recvs_posted;
      if (job.ready_seen && !job.sends_copied) {
        for (Chunk& c : job.sends)
          if (!direct_) {
            LVX_CUDA_CHECK(cudaMemcpyAsync(c.host, c.device, c.bytes, cudaMemcpyDeviceToHost, copy_stream_));
            LVX_CUDA_CHECK(cudaEventRecord(c.copied, copy_stream_));
          }
        job.sends_copied = true;
      }
      if (job.sends_copied && !earlier_sends_waiting)
        for (Chunk& c : job.sends) {
          if (!c.started) {
            if (c.copied) {
              cudaError_t q = cudaEventQuery(c.copied);
              if (q == cudaErrorNotReady) break;  // chunks land in order
              LVX_CUDA_CHECK(q);
            }
            LVX_MPI_CHECK(MPI_Isend(c.host ? c.host : c.device, int(c.bytes), MPI_BYTE, c.peer, c.tag, comm_, &c.req));
            c.started = moved = true;
            if (trace_ && job.t_send == Job::Clock::time_point{}) job.t_send = Job::Clock::now();
          }
        }
      for (const Chunk& c : job.sends) earlier_sends_waiting = earlier_sends_waiting || !c.started;
      for (Chunk& c : job.sends)
        if (c.started && !c.done) {
          int flag = 0;
          LVX_MPI_CHECK(MPI_Test(&c.req, &flag, MPI_STATUS_IGNORE));
          if (flag) c.done = moved = true;
        }
      if (job.recvs_posted)
        for (Chunk& c : job.recvs) {
          if (!c.arrived) {
            int flag = 0;
            LVX_MPI_CHECK(MPI_Test(&c.req, &flag, MPI_STATUS_IGNORE));
            if (flag) c.arrived = moved = true;
          }
          if (c.arrived && !c.done && job.ready_seen) {
            if (c.host)
              LVX_CUDA_CHECK(cudaMemcpyAsync(c.device, c.host, c.bytes, cudaMemcpyHostToDevice, copy_stream_));
            c.done = moved = true;
          }
        }
      const bool all_sent = job.sends.empty() ||
                            (job.sends_copied && std::all_of(job.sends.begin(), job.sends.end(),
                                                             [](const Chunk& c) { return c.done; }));
      const bool all_recv = (job.recvs.empty() || job.recvs_posted) && std::all_of(job.recvs.begin(), job.recvs.end(), [](const Chunk& c) { return c.done; });
      if (all_sent && all_recv) {
        // The receive copies were issued on the copy stream; so is this event.
        LVX_CUDA_CHECK(cudaEventRecord(job.done, copy_stream_));
        job.finished = moved = true;
        if (trace_) job.t_done = Job::Clock::now();
      }
    }
    return moved;
  }

  MPI_Comm comm_;
  Backend& backend_;
  int device_;
  bool direct_;
  bool trace_;
  cudaStream_t copy_stream_ = nullptr;
  PinnedPool pool_;
  std::vector<cudaEvent_t> free_events_;
  std::map<int, std::unique_ptr<Job>> jobs_;
  std::vector<std::pair<std::vector<char*>, cudaEvent_t>> pending_;  // staging still being copied
  int next_ticket_ = 1;
};

}  // namespace

cudaStream_t cuda::make_comm_stream() {
  int least = 0, greatest = 0;
  LVX_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  const char* v = std::getenv("LVX_COMM_PRIORITY");
  const bool high = !(v && std::strcmp(v, "normal") == 0);
  cudaStream_t s = nullptr;
  LVX_CUDA_CHECK(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, high ? greatest : least));
  return s;
}

std::unique_ptr<Transport> gpu::make_mpi_transport(MPI_Comm comm, Backend& backend, int device, bool direct) {
  return std::make_unique<MpiDeviceTransport>(comm, backend, device, direct);
}

}  // namespace lvx
