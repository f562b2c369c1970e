#include "plan/planner.hpp"

#include <cstdio>
#include <sstream>
#include <vector>

#include "core/error.hpp"
#include "core/mpi_check.hpp"
#include "plan/settings.hpp"

namespace lvx {

namespace {

// What each rank contributes to a plan's allgather (plain bytes).
struct Descriptor {
  int64_t B, Lq, Lkv, Hq, Hkv, D, max_range_end;
  int32_t dtype, algorithm, has_ranges, has_error, device, transport;
  int32_t nccl, mpi_cuda_aware;  // TransportCaps
  int32_t gather_mode;           // Settings (rank 0's decide)
  int64_t gather_max_bytes;
  float scale;
  double flops_per_s, bytes_per_s, latency_s;  // CostParams (rank 0's decide)
  KernelCost kernel_fwd, kernel_bwd;
  char error[240];
};

Descriptor describe(const LocalProblem& l, const Settings& s, const std::string& error) {
  Descriptor d{};
  d.B = l.B;
  d.Lq = l.Lq;
  d.Lkv = l.Lkv;
  d.Hq = l.Hq;
  d.Hkv = l.Hkv;
  d.D = l.D;
  d.max_range_end = l.max_range_end;
  d.dtype = static_cast<int32_t>(l.dtype);
  d.algorithm = static_cast<int32_t>(l.algorithm);
  d.has_ranges = l.has_ranges;
  d.device = static_cast<int32_t>(l.device);
  d.transport = static_cast<int32_t>(l.transport);
  d.nccl = l.caps.nccl;
  d.mpi_cuda_aware = l.caps.mpi_cuda_aware;
  d.gather_mode = static_cast<int32_t>(s.gather_mode);
  d.gather_max_bytes = s.gather_max_bytes;
  d.scale = l.scale;
  d.flops_per_s = l.cost.flops_per_s;
  d.bytes_per_s = l.cost.bytes_per_s;
  d.latency_s = l.cost.latency_s;
  d.kernel_fwd = l.cost.fwd;
  d.kernel_bwd = l.cost.bwd;
  d.has_error = !error.empty();
  std::snprintf(d.error, sizeof d.error, "%s", error.c_str());
  return d;
}

template <typename T>
std::vector<T> allgather(MPI_Comm comm, int size, const T& mine) {
  std::vector<T> all(size);
  if (comm != MPI_COMM_NULL && size > 1)
    LVX_MPI_CHECK(MPI_Allgather(&mine, sizeof mine, MPI_BYTE, all.data(), sizeof mine, MPI_BYTE, comm));
  else
    all[0] = mine;
  return all;
}

// Any rank's own complaint fails every rank with the same text.
template <typename T>
void fail_on_errors(const std::vector<T>& all) {
  const int P = static_cast<int>(all.size());
  std::ostringstream errs;
  int bad = 0;
  for (int r = 0; r < P; ++r)
    if (all[r].has_error) errs << (bad++ ? "; " : "") << (P > 1 ? "rank " + std::to_string(r) + ": " : "") << all[r].error;
  if (bad) LVX_FAIL(Status::invalid_argument, errs.str());
}

template <typename T>
void check_agree(const std::vector<Descriptor>& all, const char* field, T Descriptor::*member,
                 std::string (*show)(T) = nullptr) {
  for (size_t r = 1; r < all.size(); ++r) {
    if (all[r].*member == all[0].*member) continue;
    std::ostringstream os;
    os << "ranks disagree on " << field << ":";
    for (size_t q = 0; q < all.size(); ++q) {
      os << (q ? "," : "") << " rank " << q << " has ";
      if (show)
        os << show(all[q].*member);
      else
        os << all[q].*member;
    }
    LVX_FAIL(Status::mismatch, os.str());
  }
}

template <typename E>
std::string show_enum(int32_t v) {
  return name(static_cast<E>(v));
}
std::string show_ranges(int32_t b) { return b ? "q_ranges" : "no q_ranges"; }

// The fields every rank must share.
void check_agreement(const std::vector<Descriptor>& all) {
  check_agree(all, "batch size (B)", &Descriptor::B);
  check_agree(all, "query heads (Hq)", &Descriptor::Hq);
  check_agree(all, "KV heads (Hkv)", &Descriptor::Hkv);
  check_agree(all, "head dim (D)", &Descriptor::D);
  check_agree(all, "dtype", &Descriptor::dtype, show_enum<DType>);
  check_agree(all, "algorithm", &Descriptor::algorithm, show_enum<Algorithm>);
  check_agree(all, "scale", &Descriptor::scale);
  // A rank without query rows may pass no q_ranges; the others must agree.
  std::vector<Descriptor> view = all;
  int32_t first = -1;
  for (const auto& d : view)
    if (d.Lq > 0 && first < 0) first = d.has_ranges;
  for (auto& d : view)
    if (d.Lq == 0) d.has_ranges = first < 0 ? 0 : first;
  check_agree(view, "q_ranges presence", &Descriptor::has_ranges, show_ranges);
  check_agree(all, "device type", &Descriptor::device, show_enum<DeviceKind>);
  check_agree(all, "transport", &Descriptor::transport, show_enum<TransportKind>);
}

std::string rank_prefix(int P, int r) { return P > 1 ? "rank " + std::to_string(r) + ": " : std::string(); }

int node_rank(MPI_Comm comm, int* ranks_on_node) {
  MPI_Comm node;
  *ranks_on_node = 1;
  if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) != MPI_SUCCESS) return 0;
  int rank = 0;
  MPI_Comm_size(node, ranks_on_node);
  MPI_Comm_rank(node, &rank);
  MPI_Comm_free(&node);
  return rank;
}

}  // namespace

TransportKind choose_transport(TransportKind asked, DeviceKind device, int P, const std::vector<TransportCaps>& caps) {
  if (P == 1) return TransportKind::none;
  if (device == DeviceKind::cpu) {
    if (asked == TransportKind::nccl) LVX_FAIL(Status::invalid_argument, "transport 'nccl' needs CUDA tensors");
    return TransportKind::mpi;
  }
  bool nccl = true, aware = true;
  for (const TransportCaps& c : caps) {
    nccl = nccl && c.nccl;
    aware = aware && c.mpi_cuda_aware;
  }
  if (asked == TransportKind::nccl && !nccl)
    LVX_FAIL(Status::unsupported,
             "this build of lvxattn has no NCCL (nccl.h was not found at build time); use transport='mpi'");
  if (asked == TransportKind::nccl || (asked == TransportKind::automatic && nccl)) return TransportKind::nccl;
  return aware ? TransportKind::mpi_direct : TransportKind::mpi_staged;
}

bool moves_device_memory(TransportKind t) { return t == TransportKind::nccl || t == TransportKind::mpi_direct; }

Planner::Planner(MPI_Comm comm) {
  if (comm == MPI_COMM_NULL) return;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) LVX_FAIL(Status::mpi, "MPI is not initialized (call MPI_Init first)");
  // A private communicator: our messages never match the caller's.
  LVX_MPI_CHECK(MPI_Comm_dup(comm, &comm_));
  LVX_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  LVX_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  LVX_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  local_rank_ = node_rank(comm_, &ranks_on_node_);
  set_error_rank(rank_);
}

Planner::~Planner() {
  int finalized = 1;
  MPI_Finalized(&finalized);
  if (comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm_);
}

void Planner::fail(const std::string& local_error) {
  plan(LocalProblem{}, local_error.empty() ? "failed" : local_error);
  LVX_FAIL(Status::internal, "a plan joined with an error did not fail");
}

void Planner::agree(const std::string& local_error) {
  struct Flag {
    int32_t has_error;
    char error[240];
  } mine{};
  mine.has_error = !local_error.empty();
  std::snprintf(mine.error, sizeof mine.error, "%s", local_error.c_str());
  fail_on_errors(allgather(comm_, size_, mine));
}

Plan Planner::plan(const LocalProblem& l, const std::string& local_error) {
  std::string error = local_error;
  const Settings settings = read_settings(&error);
  const std::vector<Descriptor> all = allgather(comm_, size_, describe(l, settings, error));
  fail_on_errors(all);
  check_agreement(all);

  Plan p;
  p.rank = rank_;
  p.B = l.B;
  p.Hq = l.Hq;
  p.Hkv = l.Hkv;
  p.D = l.D;
  p.dtype = l.dtype;
  p.scale = l.scale;
  std::vector<int64_t> lq, lkv;
  std::vector<TransportCaps> caps;
  for (const auto& d : all) {
    p.has_ranges = p.has_ranges || (d.Lq > 0 && d.has_ranges);
    lq.push_back(d.Lq);
    lkv.push_back(d.Lkv);
    caps.push_back(TransportCaps{d.nccl != 0, d.mpi_cuda_aware != 0});
  }
  p.set_rows(std::move(lq), std::move(lkv));

  // Checks that need the global picture.
  for (int r = 0; r < p.P; ++r)
    if (all[r].max_range_end > p.lkv_total)
      LVX_FAIL(Status::invalid_argument, rank_prefix(p.P, r) + "q_ranges end " + std::to_string(all[r].max_range_end) +
                                             " exceeds the global KV length " + std::to_string(p.lkv_total));

  // The choices, in order: the transport, lvx's form for it, the algorithm priced with both.
  const Descriptor& first = all[0];
  p.transport = choose_transport(l.transport, l.device, p.P, caps);
  const Settings decides{static_cast<GatherMode>(first.gather_mode), first.gather_max_bytes};
  const LvxForm lvx_form = choose_lvx_form(p, decides, moves_device_memory(p.transport));
  p.lvx_form = lvx_form;
  Algorithm a = l.algorithm;
  if (a == Algorithm::automatic) {
    const CostParams cost{first.flops_per_s, first.bytes_per_s, first.latency_s, first.kernel_fwd, first.kernel_bwd};
    a = choose_algorithm(p, cost);
  }
  if (a == Algorithm::ulysses && (p.Hq % p.P || p.Hkv % p.P))
    LVX_FAIL(Status::invalid_argument,
             "algorithm 'ulysses' needs query heads (" + std::to_string(p.Hq) + ") and KV heads (" +
                 std::to_string(p.Hkv) + ") divisible by the number of ranks (" + std::to_string(p.P) +
                 "); use 'lvx' or 'ring'");
  p.algorithm = a;
  p.lvx_form = a == Algorithm::lvx ? lvx_form : LvxForm::ring;
  return p;
}

}  // namespace lvx
