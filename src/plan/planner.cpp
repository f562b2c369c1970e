#include "plan/planner.hpp"

#include <cstdio>
#include <cstring>
#include <sstream>
#include <vector>

#include "core/error.hpp"
#include "core/mpi_check.hpp"
#include "gpu/gpu.hpp"
#include "gpu/transports.hpp"
#include "plan/settings.hpp"
#include "transport/mpi_device_support.hpp"

namespace lvx {

namespace {

// What each rank contributes to a plan's allgather (plain bytes).
struct Descriptor {
  int64_t B, Lq, Lkv, Hq, Hkv, D, max_range_end;
  int32_t dtype, algorithm, has_ranges, has_error, device, transport;
  int32_t gather_mode;       // Settings (rank 0's decide)
  int64_t gather_max_bytes;
  float scale;
  double flops_per_s, bytes_per_s, latency_s;  // CostParams (rank 0's decide)
  KernelCost kernel_fwd, kernel_bwd;
  LinkCost link_nccl, link_mpi_direct, link_mpi_staged;
  char error[240];
};

// What each rank contributes to the second allgather of a plan on CUDA buffers: its
// TransportCaps. Gathered only once every rank is known to pass CUDA buffers (and no rank
// has an error), so that a rank on host memory never meets device-capability code.
struct CapsWire {
  int32_t nccl, mpi_device;
  uint64_t gpu;
  char how[160];
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
  d.gather_mode = static_cast<int32_t>(s.gather_mode);
  d.gather_max_bytes = s.gather_max_bytes;
  d.scale = l.scale;
  d.flops_per_s = l.cost.flops_per_s;
  d.bytes_per_s = l.cost.bytes_per_s;
  d.latency_s = l.cost.latency_s;
  d.kernel_fwd = l.cost.fwd;
  d.kernel_bwd = l.cost.bwd;
  d.link_nccl = l.cost.nccl;
  d.link_mpi_direct = l.cost.mpi_direct;
  d.link_mpi_staged = l.cost.mpi_staged;
  d.has_error = !error.empty();
  std::snprintf(d.error, sizeof d.error, "%s", error.c_str());
  return d;
}

CostParams cost_of(const Descriptor& d) {
  CostParams c{d.flops_per_s, d.bytes_per_s, d.latency_s, d.kernel_fwd, d.kernel_bwd, {}, {}, {}};
  c.nccl = d.link_nccl;
  c.mpi_direct = d.link_mpi_direct;
  c.mpi_staged = d.link_mpi_staged;
  return c;
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

namespace {

bool is_device_transport(TransportKind t) {
  return t == TransportKind::nccl || t == TransportKind::mpi_direct || t == TransportKind::mpi_staged;
}

// "rank 0 (why), rank 2 (why)" for the ranks where pick holds, the first few of them.
template <typename Pick>
std::string ranks_where(const std::vector<TransportCaps>& caps, Pick pick, bool with_how = true) {
  std::string out;
  int shown = 0, more = 0;
  for (size_t r = 0; r < caps.size(); ++r) {
    if (!pick(caps[r])) continue;
    if (shown == 4) {
      ++more;
      continue;
    }
    out += (shown++ ? ", rank " : "rank ") + std::to_string(r);
    if (with_how && !caps[r].how.empty()) out += " (" + caps[r].how + ")";
  }
  if (more) out += " and " + std::to_string(more) + " more";
  return out;
}

std::string shared_gpus(const std::vector<TransportCaps>& caps) {
  for (size_t a = 0; a < caps.size(); ++a)
    for (size_t b = a + 1; b < caps.size(); ++b)
      if (caps[a].gpu && caps[a].gpu == caps[b].gpu)
        return "ranks " + std::to_string(a) + " and " + std::to_string(b) + " share one GPU";
  return "";
}

const char* kClusterDoc = "see docs/clusters.md";

}  // namespace

std::vector<TransportKind> transport_candidates(TransportKind asked, DeviceKind device, int P,
                                                const std::vector<TransportCaps>& caps) {
  if (P == 1) return {TransportKind::none};
  if (device == DeviceKind::cpu) {
    if (is_device_transport(asked))
      LVX_FAIL(Status::invalid_argument, std::string("transport '") + name(asked) +
                                             "' moves CUDA tensors; host tensors go over 'mpi' (or 'auto')");
    return {TransportKind::mpi};
  }
  bool nccl = true, direct = true, some_aware = false, some_not = false;
  for (const TransportCaps& c : caps) {
    nccl = nccl && c.nccl;
    direct = direct && c.mpi_device == MpiDeviceAccess::yes;
    some_aware = some_aware || c.mpi_device != MpiDeviceAccess::none;
    some_not = some_not || c.mpi_device == MpiDeviceAccess::none;
  }
  const std::string shared = shared_gpus(caps);
  const bool mixed = some_aware && some_not;
  auto not_aware = [](const TransportCaps& c) { return c.mpi_device != MpiDeviceAccess::yes; };
  auto mixed_error = [&] {
    LVX_FAIL(Status::mismatch,
             "ranks disagree on whether their MPI takes CUDA buffers: yes on " +
                 ranks_where(caps, [](const TransportCaps& c) { return c.mpi_device != MpiDeviceAccess::none; }) +
                 "; no on " + ranks_where(caps, [](const TransportCaps& c) { return c.mpi_device == MpiDeviceAccess::none; }) +
                 ". Run every rank with the same CUDA-aware MPI and settings (" + kClusterDoc +
                 "), or ask for transport='mpi-staged'" + (nccl && shared.empty() ? " or 'nccl'" : ""));
  };
  switch (asked) {
    case TransportKind::nccl:
      if (!nccl)
        LVX_FAIL(Status::unsupported, "this build of lvxattn has no NCCL (nccl.h was not found at build time) on " +
                                          ranks_where(caps, [](const TransportCaps& c) { return !c.nccl; }, false) +
                                          "; use transport='mpi'");
      if (!shared.empty())
        LVX_FAIL(Status::unsupported, "transport 'nccl' needs one GPU per rank, but " + shared + "; use transport='mpi'");
      return {TransportKind::nccl};
    case TransportKind::mpi_staged: return {TransportKind::mpi_staged};
    case TransportKind::mpi_direct:
      if (!direct) {
        if (mixed) mixed_error();
        LVX_FAIL(Status::unsupported, "transport 'mpi-direct' needs an MPI that takes CUDA buffers on every rank; not on " +
                                          ranks_where(caps, not_aware) + " (" + kClusterDoc +
                                          "; LVX_MPI_CUDA_AWARE=1 asserts it)");
      }
      return {TransportKind::mpi_direct};
    case TransportKind::mpi:
      if (mixed) mixed_error();
      if (direct) return {TransportKind::mpi_direct, TransportKind::mpi_staged};
      return {TransportKind::mpi_staged};
    case TransportKind::automatic: {
      // Ranks that disagree fail 'auto' as they fail 'mpi', whether NCCL could run or not:
      // the choice among the candidates must not hide a misconfigured MPI on some ranks,
      // nor depend on the build; asking for 'nccl' or 'mpi-staged' runs regardless.
      if (mixed) mixed_error();
      std::vector<TransportKind> out;
      if (nccl && shared.empty()) out.push_back(TransportKind::nccl);
      if (direct) out.push_back(TransportKind::mpi_direct);
      out.push_back(TransportKind::mpi_staged);
      return out;
    }
    default: break;
  }
  LVX_FAIL(Status::invalid_argument, std::string("transport '") + name(asked) + "' cannot be asked for");
}

TransportKind choose_transport(TransportKind asked, DeviceKind device, int P, const std::vector<TransportCaps>& caps) {
  return transport_candidates(asked, device, P, caps).front();
}

bool moves_device_memory(TransportKind t) { return t == TransportKind::nccl || t == TransportKind::mpi_direct; }

PathChoice choose_path(const Plan& shape, TransportKind asked, DeviceKind device, const std::vector<TransportCaps>& caps,
                       const Settings& settings, Algorithm algorithm, const CostParams& cost) {
  Plan p = shape;
  p.rank = 0;  // every rank prices the same view
  const std::vector<TransportKind> candidates = transport_candidates(asked, device, p.P, caps);
  bool priced = candidates.size() > 1;
  for (TransportKind t : candidates) {
    const LinkCost* link = link_of(cost, t);
    priced = priced && link && link->bytes_per_s > 0;
  }
  PathChoice best;
  double best_s = -1;
  for (TransportKind t : candidates) {
    PathChoice c;
    c.transport = t;
    p.transport = t;
    p.lvx_form = choose_lvx_form(p, settings, moves_device_memory(t));
    const CostParams ct = with_link(cost, t);
    c.algorithm = algorithm == Algorithm::automatic ? choose_algorithm(p, ct) : algorithm;
    c.lvx_form = c.algorithm == Algorithm::lvx ? p.lvx_form : LvxForm::ring;
    if (!priced) return c;
    p.lvx_form = c.lvx_form;
    const Prediction pr = predict(c.algorithm, p, ct);
    const double s = pr.feasible ? pr.forward_s + pr.backward_s : 1e300;
    if (best_s < 0 || s < best_s) {
      best = c;
      best_s = s;
    }
  }
  return best;
}

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

// The one-time probe, where every rank's MPI says it takes device buffers on evidence
// alone (none was forced, none said no) and the answer can change the transport: run
// collectively at the same plan on every rank (all inputs below are agreed), then its
// answer replaces the evidence on this and every later plan.
void Planner::probe_if_needed(const LocalProblem& l, std::vector<TransportCaps>& caps, const CostParams& cost) {
  if (l.device != DeviceKind::cuda || size_ < 2) return;
  if (probe_.empty()) {
    bool evidence = false, none = false, nccl = true;
    for (const TransportCaps& c : caps) {
      evidence = evidence || c.mpi_device == MpiDeviceAccess::evidence;
      none = none || c.mpi_device == MpiDeviceAccess::none;
      nccl = nccl && c.nccl;
    }
    if (!evidence || none) return;
    if (l.transport == TransportKind::nccl || l.transport == TransportKind::mpi_staged) return;
    const bool priced = cost.nccl.bytes_per_s > 0 && cost.mpi_direct.bytes_per_s > 0;
    if (l.transport == TransportKind::automatic && nccl && shared_gpus(caps).empty() && !priced) return;  // NCCL first
    std::string why;
    probe_ = probe_mpi_device(comm_, l.cuda_device, &why) ? "passed" : "failed: " + why;
  }
  for (TransportCaps& c : caps) {
    if (c.mpi_device != MpiDeviceAccess::evidence) continue;
    c.mpi_device = probe_ == "passed" ? MpiDeviceAccess::yes : MpiDeviceAccess::none;
    c.how += "; probe " + probe_;
  }
}

Plan Planner::plan(const LocalProblem& l, const std::string& local_error) {
  std::string error = local_error;
  const Settings settings = read_settings(&error);
  // First every rank's call: errors and disagreements (device type, transport, ...) fail
  // every rank here, before any rank asks its GPU or its MPI about device buffers.
  const std::vector<Descriptor> all = allgather(comm_, size_, describe(l, settings, error));
  fail_on_errors(all);
  check_agreement(all);
  // Then, where every rank passes CUDA buffers (agreed above), every rank's capabilities.
  std::vector<TransportCaps> caps(all.size());
  if (l.device == DeviceKind::cuda && size_ > 1) {
    CapsWire mine{};
    mine.nccl = gpu::nccl_built();
    mine.gpu = gpu::device_uuid_digest(l.cuda_device);
    const MpiDeviceSupport m = mpi_device_support(settings.mpi_cuda_aware);
    mine.mpi_device = static_cast<int32_t>(m.access);
    std::snprintf(mine.how, sizeof mine.how, "%s", m.how.c_str());
    const std::vector<CapsWire> wire = allgather(comm_, size_, mine);
    for (size_t r = 0; r < wire.size(); ++r)
      caps[r] = TransportCaps{wire[r].nccl != 0, static_cast<MpiDeviceAccess>(wire[r].mpi_device), wire[r].gpu,
                              std::string(wire[r].how, strnlen(wire[r].how, sizeof wire[r].how))};
  }

  Plan p;
  p.rank = rank_;
  p.B = l.B;
  p.Hq = l.Hq;
  p.Hkv = l.Hkv;
  p.D = l.D;
  p.dtype = l.dtype;
  p.scale = l.scale;
  std::vector<int64_t> lq, lkv;
  for (const auto& d : all) {
    p.has_ranges = p.has_ranges || (d.Lq > 0 && d.has_ranges);
    lq.push_back(d.Lq);
    lkv.push_back(d.Lkv);
  }
  p.set_rows(std::move(lq), std::move(lkv));

  // Checks that need the global picture.
  for (int r = 0; r < p.P; ++r)
    if (all[r].max_range_end > p.lkv_total)
      LVX_FAIL(Status::invalid_argument, rank_prefix(p.P, r) + "q_ranges end " + std::to_string(all[r].max_range_end) +
                                             " exceeds the global KV length " + std::to_string(p.lkv_total));

  // The choices, in order: the transport, lvx's form for it, the algorithm priced with both
  // (settings and costs: rank 0's).
  const Descriptor& first = all[0];
  const CostParams cost = cost_of(first);
  probe_if_needed(l, caps, cost);
  const Settings decides{static_cast<GatherMode>(first.gather_mode), first.gather_max_bytes, settings.mpi_cuda_aware};
  const PathChoice choice = choose_path(p, l.transport, l.device, caps, decides, l.algorithm, cost);
  if (choice.algorithm == Algorithm::ulysses && (p.Hq % p.P || p.Hkv % p.P))
    LVX_FAIL(Status::invalid_argument,
             "algorithm 'ulysses' needs query heads (" + std::to_string(p.Hq) + ") and KV heads (" +
                 std::to_string(p.Hkv) + ") divisible by the number of ranks (" + std::to_string(p.P) +
                 "); use 'lvx' or 'ring'");
  p.transport = choice.transport;
  p.algorithm = choice.algorithm;
  p.lvx_form = choice.lvx_form;
  return p;
}

}  // namespace lvx
