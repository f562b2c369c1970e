// A device context: one backend (the CPU or one GPU) on one communicator's planner. It
// is the front door shared by the C API and the Python bindings: plan() checks a rank's
// call (validate.hpp) and has the planner plan it; forward() and backward() execute a
// plan (its schedule on this backend and the plan's transport, made on first use, once
// every rank agreed on it) and decide nothing. Making a context is local; its calls are
// collective: every rank makes the same calls in the same order.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "context/phase_log.hpp"
#include "core/backend.hpp"
#include "core/workspace.hpp"
#include "plan/cost_model.hpp"
#include "plan/plan.hpp"
#include "plan/planner.hpp"
#include "plan/validate.hpp"
#include "schedules/schedules.hpp"
#include "transport/transport.hpp"

namespace lvx {

struct ContextOptions {
  DeviceKind device = DeviceKind::cpu;
  int device_index = -1;                       // CUDA device; -1: local rank modulo the device count
  int threads = 0;                             // CPU threads; 0: cores / ranks on this node
  TransportKind transport = TransportKind::automatic;  // as asked: automatic, mpi, nccl, mpi_staged, mpi_direct
};

class Context {
 public:
  Context(std::shared_ptr<Planner> planner, const ContextOptions& options);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int rank() const { return planner_->rank(); }
  int size() const { return planner_->size(); }
  Backend& backend() { return *backend_; }
  Planner& planner() { return *planner_; }

  // Collective: checks this rank's call and plans it with every rank. local_error: what
  // the caller already found wrong (the plan then fails on every rank with it).
  Plan plan(const Problem& call, const std::string& local_error = "");

  // Execute a plan of this context's planner. With `shape` (the caller's local problem
  // when it reuses a plan it did not just make) a mismatch is an error of the call.
  void forward(const Plan& plan, const ForwardIO& io);
  void backward(const Plan& plan, const BackwardIO& io, const Problem* shape = nullptr);

  // Frees the buffers kept between calls (they grow to the largest call so far).
  void release_buffers();
  size_t buffer_bytes() const { return workspace_->bytes_held(); }

  // The last call of each phase; waits for that call's device work.
  const PhaseStats& forward_stats() { return fwd_log_.last(*backend_); }
  const PhaseStats& backward_stats() { return bwd_log_.last(*backend_); }
  PhaseLog& phase_log(int phase) { return phase == 0 ? fwd_log_ : bwd_log_; }
  const Plan& last_plan() const { return last_plan_; }
  // The transport of the last call ("none" for one rank), as it names itself.
  std::string transport_name() const;

  CostParams cost_params;  // used by algorithm "auto"; rank 0's values decide

 private:
  struct OwnedTransport {
    MPI_Comm comm = MPI_COMM_NULL;  // the transport's own duplicate of the planner's communicator
    std::unique_ptr<Transport> transport;
  };
  Transport* transport_for(const Plan& plan);
  template <typename IO>
  void run_phase(const char* what, const Plan& plan, const IO& io, PhaseLog& log, const Problem* shape);

  std::shared_ptr<Planner> planner_;
  ContextOptions options_;
  int device_ = -1;  // CUDA device index
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Workspace> workspace_;
  std::map<TransportKind, OwnedTransport> transports_;
  Transport* last_transport_ = nullptr;
  PhaseLog fwd_log_, bwd_log_;
  Plan last_plan_;
};

}  // namespace lvx
