#include "context/context.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "core/error.hpp"
#include "core/mpi_check.hpp"
#include "gpu/gpu.hpp"
#include "gpu/transports.hpp"
#include "transport/mpi_host.hpp"

namespace lvx {

namespace {

bool abort_on_error() {
  const char* v = std::getenv("LVX_ON_ERROR");
  return !(v && std::strcmp(v, "raise") == 0);
}

bool same_shape(const Plan& p, const Problem& s) {
  return s.B == p.B && s.Hq == p.Hq && s.Hkv == p.Hkv && s.D == p.D && s.dtype == p.dtype &&
         s.Lq == p.lq[p.rank] && s.Lkv == p.lkv[p.rank] && (s.q_ranges != nullptr) == (p.has_ranges && s.Lq > 0);
}

}  // namespace

Context::Context(std::shared_ptr<Planner> planner, const ContextOptions& options)
    : planner_(std::move(planner)), options_(options) {
  if (!is_valid(options.device)) LVX_FAIL(Status::invalid_argument, "unknown device " + std::to_string(int(options.device)));
  if (!is_valid(options.transport) || options.transport == TransportKind::none)
    LVX_FAIL(Status::invalid_argument,
             std::string("a context asks for transport auto, mpi, nccl, mpi-staged or mpi-direct, got '") +
                 name(options.transport) + "'");
  if (options.device == DeviceKind::cuda) {
    device_ = options.device_index >= 0 ? options.device_index : planner_->local_rank();
    backend_ = gpu::make_backend(device_);
  } else {
    int threads = options.threads;
    if (threads <= 0) {
      const int cores = static_cast<int>(std::thread::hardware_concurrency());
      threads = std::max(1, cores / std::max(1, planner_->ranks_on_node()));
    }
    backend_ = make_cpu_backend(threads);
  }
  workspace_ = std::make_unique<Workspace>(*backend_);
}

Context::~Context() {
  for (auto& [kind, t] : transports_) {
    try {
      t.transport->wait_all();
    } catch (...) {
    }
    t.transport.reset();
  }
  int finalized = 1;
  MPI_Finalized(&finalized);
  for (auto& [kind, t] : transports_)
    if (t.comm != MPI_COMM_NULL && !finalized) MPI_Comm_free(&t.comm);
  workspace_.reset();
  backend_.reset();
}

void Context::release_buffers() {
  for (auto& [kind, t] : transports_) t.transport->wait_all();
  backend_->synchronize();
  workspace_->clear();
  backend_->release_cached();
}

std::string Context::transport_name() const { return last_transport_ ? last_transport_->name() : "none"; }

Plan Context::plan(const Problem& call, const std::string& local_error) {
  LocalProblem local;
  std::string error = local_error.empty() ? validate(call, *backend_, &local) : local_error;
  local.device = options_.device;
  local.transport = options_.transport;
  local.cuda_device = device_;
  local.cost = cost_params;
  return planner_->plan(local, error);
}

// The plan's transport, made on its first use. Every rank holds the same plan, so all
// make it at the same call (its communicator duplicate and any bootstrap are collective).
Transport* Context::transport_for(const Plan& plan) {
  if (plan.transport == TransportKind::none) return nullptr;
  auto it = transports_.find(plan.transport);
  if (it != transports_.end()) return it->second.transport.get();
  OwnedTransport t;
  LVX_MPI_CHECK(MPI_Comm_dup(planner_->comm(), &t.comm));
  switch (plan.transport) {
    case TransportKind::mpi: t.transport = make_mpi_transport(t.comm, *backend_); break;
    case TransportKind::mpi_staged:
    case TransportKind::mpi_direct:
      t.transport = gpu::make_mpi_transport(t.comm, *backend_, device_, plan.transport == TransportKind::mpi_direct);
      break;
    case TransportKind::nccl: t.transport = gpu::make_nccl_transport(t.comm, *backend_, device_); break;
    default: MPI_Comm_free(&t.comm); LVX_FAIL(Status::internal, std::string("no transport ") + name(plan.transport));
  }
  return transports_.emplace(plan.transport, std::move(t)).first->second.transport.get();
}

// One phase: the plan's schedule, with its stats logged unread. A failure inside a
// schedule leaves peers blocked in transfers that will never complete, so by default it
// ends the whole job with the message (like MPI's own fatal errors); LVX_ON_ERROR=raise
// returns it to the caller instead.
template <typename IO>
void Context::run_phase(const char* what, const Plan& plan, const IO& io, PhaseLog& log, const Problem* shape) {
  if (plan.P != size() || plan.rank != rank())
    LVX_FAIL(Status::invalid_argument, "a plan of another communicator");
  PhaseStats stats;
  PhaseTiming timing;
  try {
    if (shape && !same_shape(plan, *shape))
      LVX_FAIL(Status::invalid_argument, std::string(what) + ": the tensors do not match the plan given");
    Transport* transport = transport_for(plan);
    last_transport_ = transport;
    last_plan_ = plan;
    ScheduleEnv env{plan, *backend_, transport, *workspace_, stats, timing};
    run_schedule(env, io);
  } catch (const Error& e) {
    if (plan.P > 1 && abort_on_error()) {
      std::fprintf(stderr, "lvxattn: %s failed on rank %d, aborting the job: %s\n", what, rank(), e.what());
      std::fflush(stderr);
      MPI_Abort(planner_->comm(), 3);
    }
    throw;
  }
  log.add(stats, std::move(timing), *backend_);
}

void Context::forward(const Plan& plan, const ForwardIO& io) { run_phase("forward", plan, io, fwd_log_, nullptr); }

void Context::backward(const Plan& plan, const BackwardIO& io, const Problem* shape) {
  run_phase("backward", plan, io, bwd_log_, shape);
}

}  // namespace lvx
