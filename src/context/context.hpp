// A context binds a communicator, a backend (CPU or one GPU) and a transport,
// and owns the buffers reused across calls. Calls on a communicator are
// collective: every rank makes the same calls in the same order.
#pragma once

#include <mpi.h>

#include <deque>
#include <memory>
#include <string>

#include "core/backend.hpp"
#include "plan/cost_model.hpp"
#include "plan/plan.hpp"
#include "schedules/schedules.hpp"
#include "transport/transport.hpp"
#include "core/workspace.hpp"

namespace lvx {

// The stats of one phase (forward or backward) over calls. A call's device timing
// is read only when stats are asked for, so calls never wait for the device; at
// most kMaxPending calls stay unread (older ones are read then, long finished).
class PhaseLog {
 public:
  struct Totals {
    PhaseStats sum;
    int64_t calls = 0;
  };
  static constexpr size_t kMaxPending = 32;
  void add(const PhaseStats& stats, PhaseTiming timing, Backend& be);
  const PhaseStats& last(Backend& be);
  Totals totals(Backend& be);
  void reset_totals(Backend& be);
  void discard(Backend& be);  // drops unread timings (their marks are released)

 private:
  struct Pending {
    PhaseStats stats;
    PhaseTiming timing;
  };
  void read_oldest(Backend& be);
  std::deque<Pending> pending_;
  PhaseStats last_;
  Totals totals_;
};

struct ContextOptions {
  DeviceKind device = DeviceKind::cpu;
  int device_index = -1;        // CUDA device; -1: local rank modulo the device count
  int threads = 0;              // CPU threads; 0: cores / ranks on this node
  std::string transport = "auto";  // auto | mpi | nccl
};

class Context {
 public:
  // comm == MPI_COMM_NULL: a single process that never touches MPI.
  Context(MPI_Comm comm, const ContextOptions& options);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  Backend& backend() { return *backend_; }
  std::string transport_name() const;

  // Collective: one allgather of every rank's description. Raises the same
  // error on every rank when any rank's input is bad (local_error non-empty) or
  // the ranks disagree on something they must share.
  Plan make_plan(const LocalProblem& local, const std::string& local_error = "");

  void forward(const Plan& plan, const ForwardIO& io);
  void backward(const Plan& plan, const BackwardIO& io);

  // Frees the buffers kept between calls (they grow to the largest call so far).
  void release_buffers();
  size_t buffer_bytes() const { return workspace_->bytes_held(); }

  // The last call of each phase; waits for that call's device work.
  const PhaseStats& forward_stats() { return fwd_log_.last(*backend_); }
  const PhaseStats& backward_stats() { return bwd_log_.last(*backend_); }
  PhaseLog& phase_log(int phase) { return phase == 0 ? fwd_log_ : bwd_log_; }
  const Plan& last_plan() const { return last_plan_; }

  CostParams cost_params;  // used by algorithm "auto"; rank 0's values decide

 private:
  template <typename Fn>
  void run_collective(const char* what, Fn&& fn);
  Plan effective(const Plan& plan) const;
  template <typename IO>
  void run_phase(const char* what, const Plan& plan, const IO& io, PhaseLog& log,
                 void (*single)(ScheduleEnv&, const IO&), void (*const (&schedules)[3])(ScheduleEnv&, const IO&));

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Transport> transport_;
  std::unique_ptr<Workspace> workspace_;
  PhaseLog fwd_log_, bwd_log_;
  Plan last_plan_;
};

// Host-side q_ranges check: returns "" or a message; sets max_end.
std::string check_ranges_host(const int32_t* ranges, int64_t rows, int64_t* max_end);

}  // namespace lvx
