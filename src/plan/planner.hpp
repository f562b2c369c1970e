// The planner of one MPI communicator: every call's plan, made once, from one allgather of
// what each rank brings. It checks that the ranks agree, then chooses the transport (with
// every rank's capabilities, confirmed by a one-time collective probe of CUDA-aware MPI
// where they rest on evidence), lvx's form (for that transport) and, for "auto", the
// algorithm (priced with that form). Any rank's bad input, bad setting or disagreement
// fails every rank with the same message, before any transport exists.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/types.hpp"
#include "plan/cost_model.hpp"
#include "plan/plan.hpp"
#include "plan/settings.hpp"
#include "transport/mpi_device_support.hpp"

namespace lvx {

// What a rank's build, GPU and MPI can move (the planner fills it for device buffers).
struct TransportCaps {
  bool nccl = false;                                   // the NCCL transport is built
  MpiDeviceAccess mpi_device = MpiDeviceAccess::none;  // whether this rank's MPI takes device buffers
  uint64_t gpu = 0;                                    // its GPU's UUID digest (0: unknown)
  std::string how;                                     // the MPI's evidence, for messages
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
  int cuda_device = -1;                            // the CUDA device (for its identity and the MPI probe)
  TransportKind transport = TransportKind::automatic;  // as asked: automatic, mpi, nccl, mpi_staged, mpi_direct
  CostParams cost;                                 // for "auto"; rank 0's decide
};

// The device transports every rank can run for what is asked, best first when no link is
// calibrated: none for one rank; mpi for host buffers; for device buffers
//   nccl        where every rank has it and no two ranks share a GPU (NCCL refuses that);
//   mpi-direct  where every rank's MPI takes device buffers (MpiDeviceAccess::yes);
//   mpi-staged  always, except that "auto" and "mpi" never run MPI when the ranks
//               disagree on whether their MPI takes device buffers (a set-up error).
// "mpi" is mpi-direct then mpi-staged; a named transport is itself. Throws the same on every
// rank when what is asked cannot run: NCCL not built or GPUs shared, mpi-direct where some
// rank's MPI cannot, MPI over ranks that disagree.
std::vector<TransportKind> transport_candidates(TransportKind asked, DeviceKind device, int P,
                                                const std::vector<TransportCaps>& caps);
// The first candidate: the choice without calibrated links.
TransportKind choose_transport(TransportKind asked, DeviceKind device, int P, const std::vector<TransportCaps>& caps);
// Whether a transport moves device buffers without host staging.
bool moves_device_memory(TransportKind t);

// The transport, lvx's form for it and the algorithm ("auto" priced with both). Among
// several candidates the one with the smallest predicted forward+backward time where
// `cost` has every candidate's link (lvx's form and the algorithm chosen for each),
// else the first. Priced from rank 0's view, so every rank chooses the same.
struct PathChoice {
  TransportKind transport = TransportKind::none;
  LvxForm lvx_form = LvxForm::ring;  // ring unless the algorithm is lvx and P > 1
  Algorithm algorithm = Algorithm::lvx;
};
PathChoice choose_path(const Plan& shape, TransportKind asked, DeviceKind device, const std::vector<TransportCaps>& caps,
                       const Settings& settings, Algorithm algorithm, const CostParams& cost);

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

  // The collective probe of CUDA-aware MPI on this communicator: "" while it has not run,
  // "passed", or "failed: " and why (the same on every rank).
  const std::string& mpi_probe() const { return probe_; }

 private:
  void probe_if_needed(const LocalProblem& l, std::vector<TransportCaps>& caps, const CostParams& cost);

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1, local_rank_ = 0, ranks_on_node_ = 1;
  std::string probe_;
};

}  // namespace lvx
