#include "context/context.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <thread>
#include <vector>

#include "core/error.hpp"
#include "core/mpi_check.hpp"
#include "transport/mpi_host.hpp"
#include "gpu/gpu.hpp"

namespace lvx {

namespace {

// What each rank contributes to the plan allgather (plain bytes).
struct Descriptor {
  int64_t B, Lq, Lkv, Hq, Hkv, D, max_range_end;
  int32_t dtype, algorithm, has_ranges, has_error, device;
  int32_t gather_mode;       // LVX_LVX_GATHER (LvxGatherMode; rank 0's decides)
  int64_t gather_max_bytes;  // LVX_GATHER_MAX_MB in bytes (rank 0's decides)
  float scale;
  double flops_per_s, bytes_per_s, latency_s;
  KernelCost kernel_fwd, kernel_bwd;
  char error[240];
};

// LVX_LVX_GATHER=auto|ring|gather|overlap|single: how lvx moves queries (plan.hpp).
// A bad value is this rank's error, reported through the plan's allgather so that
// every rank fails with it (a throw before the allgather would leave the others
// waiting in it).
int32_t gather_mode_from_env(std::string& error) {
  const char* v = std::getenv("LVX_LVX_GATHER");
  if (!v || !*v) return kGatherAuto;
  const std::string s(v);
  if (s == "auto") return kGatherAuto;
  if (s == "ring") return kGatherRing;
  if (s == "gather") return kGatherAny;
  if (s == "overlap") return kGatherOverlap;
  if (s == "single") return kGatherSingle;
  error = "LVX_LVX_GATHER must be auto, ring, gather, overlap or single, got '" + s + "'";
  return kGatherAuto;
}

// LVX_GATHER_MAX_MB (MiB; default 1024), with errors as above.
int64_t gather_max_bytes_from_env(std::string& error) {
  const int64_t fallback = int64_t(1024) << 20;
  const char* v = std::getenv("LVX_GATHER_MAX_MB");
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const double mb = std::strtod(v, &end);
  if (end == v || *end || !(mb >= 0) || mb > 1e12) {
    error = std::string("LVX_GATHER_MAX_MB must be a number of MiB, got '") + v + "'";
    return fallback;
  }
  return static_cast<int64_t>(mb * (1 << 20));
}

int ranks_on_node(MPI_Comm comm) {
  MPI_Comm node;
  if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) != MPI_SUCCESS) return 1;
  int n = 1, rank = 0;
  MPI_Comm_size(node, &n);
  MPI_Comm_rank(node, &rank);
  MPI_Comm_free(&node);
  return n;
}

int local_rank(MPI_Comm comm) {
  MPI_Comm node;
  if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) != MPI_SUCCESS) return 0;
  int rank = 0;
  MPI_Comm_rank(node, &rank);
  MPI_Comm_free(&node);
  return rank;
}

template <typename T>
void check_agree(const std::vector<Descriptor>& all, const char* field, T Descriptor::*member,
                 const char* (*show)(T) = nullptr) {
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

const char* show_dtype(int32_t t) { return dtype_name(static_cast<DType>(t)); }
const char* show_algorithm(int32_t a) { return algorithm_name(static_cast<Algorithm>(a)); }
const char* show_bool(int32_t b) { return b ? "q_ranges" : "no q_ranges"; }
const char* show_device(int32_t d) { return d ? "cuda" : "cpu"; }

bool abort_on_error() {
  const char* v = std::getenv("LVX_ON_ERROR");
  return !(v && std::strcmp(v, "raise") == 0);
}

}  // namespace

std::string check_ranges_host(const int32_t* ranges, int64_t rows, int64_t* max_end) {
  *max_end = 0;
  for (int64_t i = 0; i < rows; ++i) {
    const int32_t b = ranges[2 * i], e = ranges[2 * i + 1];
    if (b < 0 || e < b) {
      std::ostringstream os;
      os << "q_ranges row " << i << " is [" << b << ", " << e << "): need 0 <= begin <= end";
      return os.str();
    }
    if (e > *max_end) *max_end = e;
  }
  return "";
}

Context::Context(MPI_Comm comm, const ContextOptions& options) {
  if (comm != MPI_COMM_NULL) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) LVX_FAIL(Status::mpi, "MPI is not initialized (call MPI_Init first)");
    // A private communicator: our messages never match the caller's.
    LVX_MPI_CHECK(MPI_Comm_dup(comm, &comm_));
    LVX_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    LVX_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    LVX_MPI_CHECK(MPI_Comm_size(comm_, &size_));
    set_error_rank(rank_);
  }
  int dev = -1;
  if (options.device == DeviceKind::cuda) {
    dev = options.device_index;
    if (dev < 0) dev = comm_ != MPI_COMM_NULL ? local_rank(comm_) : 0;
    backend_ = gpu::make_backend(dev);
  } else {
    int threads = options.threads;
    if (threads <= 0) {
      const int cores = static_cast<int>(std::thread::hardware_concurrency());
      const int per_node = comm_ != MPI_COMM_NULL ? ranks_on_node(comm_) : 1;
      threads = std::max(1, cores / std::max(1, per_node));
    }
    backend_ = make_cpu_backend(threads);
  }
  workspace_ = std::make_unique<Workspace>(*backend_);
  const std::string& choice = options.transport;
  if (choice != "auto" && choice != "mpi" && choice != "nccl")
    LVX_FAIL(Status::invalid_argument, "transport must be 'auto', 'mpi' or 'nccl', got '" + choice + "'");
  if (comm_ == MPI_COMM_NULL || size_ == 1) return;
  if (backend_->kind() == DeviceKind::cpu) {
    if (choice == "nccl") LVX_FAIL(Status::invalid_argument, "transport 'nccl' needs CUDA tensors");
    transport_ = make_mpi_transport(comm_, *backend_);
    return;
  }
  if (choice == "nccl" || (choice == "auto" && gpu::nccl_built()))
    transport_ = gpu::make_nccl_transport(comm_, *backend_, dev);
  else
    transport_ = gpu::make_mpi_transport(comm_, *backend_, dev, gpu::mpi_cuda_aware());
}

Context::~Context() {
  if (transport_) {
    try {
      transport_->wait_all();
    } catch (...) {
    }
  }
  transport_.reset();
  workspace_.reset();
  backend_.reset();
  int finalized = 1;
  MPI_Finalized(&finalized);
  if (comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm_);
}

void Context::release_buffers() {
  if (transport_) transport_->wait_all();
  backend_->synchronize();
  workspace_->clear();
  backend_->release_cached();
}

std::string Context::transport_name() const { return transport_ ? transport_->name() : "none"; }

Plan Context::make_plan(const LocalProblem& l, const std::string& local_error) {
  Descriptor mine{};
  mine.B = l.B;
  mine.Lq = l.Lq;
  mine.Lkv = l.Lkv;
  mine.Hq = l.Hq;
  mine.Hkv = l.Hkv;
  mine.D = l.D;
  mine.max_range_end = l.max_range_end;
  mine.dtype = static_cast<int32_t>(l.dtype);
  mine.algorithm = static_cast<int32_t>(l.algorithm);
  mine.has_ranges = l.has_ranges;
  mine.device = l.device;
  std::string env_error;
  mine.gather_mode = gather_mode_from_env(env_error);
  mine.gather_max_bytes = gather_max_bytes_from_env(env_error);
  mine.scale = l.scale;
  mine.flops_per_s = cost_params.flops_per_s;
  mine.bytes_per_s = cost_params.bytes_per_s;
  mine.latency_s = cost_params.latency_s;
  mine.kernel_fwd = cost_params.fwd;
  mine.kernel_bwd = cost_params.bwd;
  const std::string& my_error = local_error.empty() ? env_error : local_error;
  mine.has_error = !my_error.empty();
  std::snprintf(mine.error, sizeof mine.error, "%s", my_error.c_str());

  std::vector<Descriptor> all(size_);
  if (comm_ != MPI_COMM_NULL && size_ > 1) {
    LVX_MPI_CHECK(MPI_Allgather(&mine, sizeof mine, MPI_BYTE, all.data(), sizeof mine, MPI_BYTE, comm_));
  } else {
    all[0] = mine;
  }

  // 1. Any rank's own complaint fails every rank with the same text.
  std::ostringstream errs;
  int bad = 0;
  for (int r = 0; r < size_; ++r)
    if (all[r].has_error) errs << (bad++ ? "; " : "") << (size_ > 1 ? "rank " + std::to_string(r) + ": " : "") << all[r].error;
  if (bad) LVX_FAIL(Status::invalid_argument, errs.str());

  // 2. Fields every rank must share.
  check_agree(all, "batch size (B)", &Descriptor::B);
  check_agree(all, "query heads (Hq)", &Descriptor::Hq);
  check_agree(all, "KV heads (Hkv)", &Descriptor::Hkv);
  check_agree(all, "head dim (D)", &Descriptor::D);
  check_agree(all, "dtype", &Descriptor::dtype, show_dtype);
  check_agree(all, "algorithm", &Descriptor::algorithm, show_algorithm);
  check_agree(all, "scale", &Descriptor::scale);
  // A rank without query rows may pass no q_ranges; the others must agree.
  {
    std::vector<Descriptor> view = all;
    int32_t first = -1;
    for (const auto& d : view)
      if (d.Lq > 0 && first < 0) first = d.has_ranges;
    for (auto& d : view)
      if (d.Lq == 0) d.has_ranges = first < 0 ? 0 : first;
    check_agree(view, "q_ranges presence", &Descriptor::has_ranges, show_bool);
  }
  check_agree(all, "device type", &Descriptor::device, show_device);

  Plan p;
  p.P = size_;
  p.rank = rank_;
  p.B = l.B;
  p.Hq = l.Hq;
  p.Hkv = l.Hkv;
  p.D = l.D;
  p.dtype = l.dtype;
  p.scale = l.scale;
  p.has_ranges = false;
  for (const auto& d : all) p.has_ranges = p.has_ranges || (d.Lq > 0 && d.has_ranges);
  for (int r = 0; r < size_; ++r) {
    p.lq.push_back(all[r].Lq);
    p.lkv.push_back(all[r].Lkv);
  }
  finish_plan(p);

  // 3. Checks that need the global picture.
  for (int r = 0; r < size_; ++r)
    if (all[r].max_range_end > p.lkv_total)
      LVX_FAIL(Status::invalid_argument,
               (size_ > 1 ? "rank " + std::to_string(r) + ": " : std::string()) + "q_ranges end " +
                   std::to_string(all[r].max_range_end) + " exceeds the global KV length " +
                   std::to_string(p.lkv_total));
  Algorithm a = l.algorithm;
  const bool gather = p.P > 1 && lvx_should_gather(p, all[0].gather_mode, all[0].gather_max_bytes, all[0].device);
  p.lvx_gather = gather;  // what lvx would do, for the prediction below
  p.lvx_overlap = gather && lvx_should_overlap(p, all[0].gather_mode);
  if (a == Algorithm::automatic) {
    CostParams c{all[0].flops_per_s, all[0].bytes_per_s, all[0].latency_s, all[0].kernel_fwd, all[0].kernel_bwd};
    a = choose_algorithm(p, c);
  }
  if (a == Algorithm::ulysses && (p.Hq % p.P || p.Hkv % p.P))
    LVX_FAIL(Status::invalid_argument,
             "algorithm 'ulysses' needs query heads (" + std::to_string(p.Hq) + ") and KV heads (" +
                 std::to_string(p.Hkv) + ") divisible by the number of ranks (" + std::to_string(p.P) +
                 "); use 'lvx' or 'ring'");
  p.algorithm = a;
  p.lvx_gather = gather && a == Algorithm::lvx;
  p.lvx_overlap = p.lvx_overlap && p.lvx_gather;
  p.lvx_gather_forced = all[0].gather_mode != kGatherAuto;
  return p;
}

// A failure inside a schedule leaves peers blocked in transfers that will never
// complete, so by default it ends the whole job with the message (like MPI's own
// fatal errors); LVX_ON_ERROR=raise returns it to the caller instead.
template <typename Fn>
void Context::run_collective(const char* what, Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    if (transport_ && size_ > 1 && abort_on_error()) {
      std::fprintf(stderr, "lvxattn: %s failed on rank %d, aborting the job: %s\n", what, rank_, e.what());
      std::fflush(stderr);
      MPI_Abort(comm_, 3);
    }
    throw;
  }
}

// Auto's gathered lvx needs a transport without host staging: through pinned host
// buffers the ring, which overlaps every transfer, is faster (measured on 4 H200s).
// Every rank has the same kind of transport, so all make the same choice.
Plan Context::effective(const Plan& plan) const {
  Plan p = plan;
  if (p.lvx_gather && !p.lvx_gather_forced && !(transport_ && transport_->device_direct()))
    p.lvx_gather = p.lvx_overlap = false;
  return p;
}

// One phase: the schedule of the plan's algorithm (or the single-rank one), with
// its stats logged unread.
template <typename IO>
void Context::run_phase(const char* what, const Plan& given, const IO& io, PhaseLog& log,
                        void (*single)(ScheduleEnv&, const IO&), void (*const (&schedules)[3])(ScheduleEnv&, const IO&)) {
  if (given.algorithm == Algorithm::automatic) LVX_FAIL(Status::internal, "plan with an unresolved algorithm");
  const Plan plan = effective(given);
  last_plan_ = plan;
  PhaseStats stats;
  PhaseTiming timing;
  ScheduleEnv env{plan, *backend_, transport_.get(), *workspace_, stats, timing};
  run_collective(what, [&] { (plan.P == 1 ? single : schedules[int(plan.algorithm)])(env, io); });
  log.add(stats, std::move(timing), *backend_);
}

void Context::forward(const Plan& plan, const ForwardIO& io) {
  static constexpr void (*kSchedules[3])(ScheduleEnv&, const ForwardIO&) = {lvx_forward, ring_forward,
                                                                           ulysses_forward};
  run_phase("forward", plan, io, fwd_log_, single_rank_forward, kSchedules);
}

void Context::backward(const Plan& plan, const BackwardIO& io) {
  static constexpr void (*kSchedules[3])(ScheduleEnv&, const BackwardIO&) = {lvx_backward, ring_backward,
                                                                            ulysses_backward};
  run_phase("backward", plan, io, bwd_log_, single_rank_backward, kSchedules);
}

void PhaseLog::add(const PhaseStats& stats, PhaseTiming timing, Backend& be) {
  pending_.push_back({stats, std::move(timing)});
  while (pending_.size() > kMaxPending) read_oldest(be);
}

void PhaseLog::read_oldest(Backend& be) {
  Pending& p = pending_.front();
  PhaseStats s = p.stats;
  const PhaseTiming& t = p.timing;
  if (t.start >= 0 && t.end >= 0) s.total_s = be.elapsed_s(t.start, t.end);
  for (auto [a, b] : t.compute) s.compute_s += be.elapsed_s(a, b);
  for (auto [a, b] : t.stalls) s.blocked_s += be.elapsed_s(a, b);
  p.timing.release(be);
  pending_.pop_front();
  last_ = s;
  totals_.calls++;
  totals_.sum.bytes_sent += s.bytes_sent;
  totals_.sum.bytes_recv += s.bytes_recv;
  totals_.sum.compute_s += s.compute_s;
  totals_.sum.blocked_s += s.blocked_s;
  totals_.sum.total_s += s.total_s;
  totals_.sum.steps += s.steps;
}

const PhaseStats& PhaseLog::last(Backend& be) {
  while (!pending_.empty()) read_oldest(be);
  return last_;
}

PhaseLog::Totals PhaseLog::totals(Backend& be) {
  while (!pending_.empty()) read_oldest(be);
  return totals_;
}

void PhaseLog::reset_totals(Backend& be) {
  while (!pending_.empty()) read_oldest(be);
  totals_ = Totals{};
}

void PhaseLog::discard(Backend& be) {
  for (Pending& p : pending_) p.timing.release(be);
  pending_.clear();
}

}  // namespace lvx
