// The planner of one MPI communicator: every call's plan, made once, from one allgather of
// what each rank brings. It checks that the ranks agree, then chooses the transport (with
// every rank's capabilities), lvx's form (for that transport) and, for "auto", the
// algorithm (priced with that form). Any rank's bad input, bad setting or disagreement
// fails every rank with the same message, before any transport exists.
#pragma once

#include <mpi.h>

#include <string>

#include "core/types.hpp"
#include "plan/cost_model.hpp"
#include "plan/plan.hpp"

namespace lvx {

// What a rank's build and MPI can move.
struct TransportCaps {
  bool nccl = false;            // the NCCL transport is built
  bool mpi_cuda_aware = false;  // this rank's MPI takes device pointers
};

// One rank's call, checked by the front door (validate.hpp).
struct LocalProblem {
  int64_t B = 0, Lq = 0, Lkv = 0, Hq = 0, Hkv = 0, D = 0;
  DType dtype = DType::f32;
  Algorithm algorithm = Algorithm::lvx;
  float scale = 0.f;          // resolved (the default 1/sqrt(D) applied)
  bool has_ranges = false;
  int64_t max_range_end = 0;  // largest q_ranges end on this rank (0 without ranges)
  DeviceKind device = DeviceKind::cpu;             // where this rank's buffers live
  TransportKind transport = TransportKind::automatic;  // as asked: automatic, mpi or nccl
  TransportCaps caps;
  CostParams cost;                                 // for "auto"; rank 0's decide
};

// The transport for P ranks on `device` as asked, given every rank's capabilities:
// none for one rank; mpi for host buffers; for device buffers nccl where asked (or, under
// auto, where every rank has it), else MPI: direct where every rank's MPI takes device
// pointers, else staged. Throws (the same on every rank) when what is asked cannot run.
// The place to add a cost-based choice among nccl, mpi-direct and mpi-staged.
TransportKind choose_transport(TransportKind asked, DeviceKind device, int P, const std::vector<TransportCaps>& caps);
// Whether a transport moves device buffers without host staging.
bool moves_device_memory(TransportKind t);

class Planner {
 public:
  // Collective over comm (a private duplicate, and the node-local rank); MPI_COMM_NULL:
  // one process that never touches MPI.
  explicit Planner(MPI_Comm comm);
  ~Planner();
  Planner(const Planner&) = delete;
  Planner& operator=(const Planner&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }      // rank among the ranks on this node
  int ranks_on_node() const { return ranks_on_node_; }
  MPI_Comm comm() const { return comm_; }             // the private duplicate (MPI_COMM_NULL: none)

  // Collective: one allgather. Throws the same error on every rank when any rank's
  // local_error is set or its settings are bad, the ranks disagree on something they
  // must share, or the call cannot run; else returns the plan.
  Plan plan(const LocalProblem& local, const std::string& local_error = "");
  // Joins plan()'s allgather for a rank that could not describe its call; always throws.
  [[noreturn]] void fail(const std::string& local_error);
  // Collective (its own allgather): throws on every rank when any rank's error is set.
  void agree(const std::string& local_error);

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1, local_rank_ = 0, ranks_on_node_ = 1;
};

}  // namespace lvx
