// The C API: a thin shell over lvx::Context that turns exceptions into result
// codes and keeps the last error text per thread.
#include "lvx/lvx.h"

#include <cmath>
#include <string>

#include "core/backend.hpp"
#include "context/context.hpp"
#include "core/error.hpp"
#include "gpu/gpu.hpp"

struct lvx_context_s {
  std::unique_ptr<lvx::Context> ctx;
};

namespace {

thread_local std::string g_last_error;

template <typename Fn>
lvx_result_t guarded(Fn&& fn) {
  try {
    fn();
    g_last_error.clear();
    return LVX_SUCCESS;
  } catch (const lvx::Error& e) {
    g_last_error = e.what();
    return static_cast<lvx_result_t>(e.status());
  } catch (const std::bad_alloc&) {
    g_last_error = "out of host memory";
    return LVX_ERROR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    g_last_error = e.what();
    return LVX_ERROR_INTERNAL;
  }
}

// Local checks of a problem and its buffers; "" when fine. Never throws, so a
// bad rank still joins the plan's allgather and every rank gets the error.
struct Buffer {
  const void* ptr;
  const char* name;
  bool query_side;  // may be NULL when this rank holds no query rows (else: no KV rows)
};

std::string check_problem(const lvx_problem_t* p, bool ranges_on_host, const int32_t* q_ranges,
                          int64_t* max_end, std::initializer_list<Buffer> bufs) {
  *max_end = 0;
  if (!p) return "problem is NULL";
  if (p->batch < 1) return "batch must be >= 1";
  if (p->q_len < 0 || p->kv_len < 0) return "q_len and kv_len must be >= 0";
  if (p->q_heads < 1 || p->kv_heads < 1) return "q_heads and kv_heads must be >= 1";
  if (p->q_heads % p->kv_heads) return "q_heads must be a multiple of kv_heads";
  if (p->head_dim < 1 || p->head_dim > 256) return "head_dim must be in [1, 256]";
  if (p->dtype < LVX_FLOAT32 || p->dtype > LVX_BFLOAT16) return "unknown dtype";
  if (p->algorithm < LVX_ALGO_LVX || p->algorithm > LVX_ALGO_AUTO) return "unknown algorithm";
  if (!std::isnan(p->scale) && !std::isfinite(p->scale)) return "scale must be finite";
  for (const Buffer& b : bufs) {
    const bool may_be_null = b.query_side ? p->q_len == 0 : p->kv_len == 0;
    if (!b.ptr && !may_be_null) return std::string(b.name) + " is NULL";
  }
  if (q_ranges && ranges_on_host) return lvx::check_ranges_host(q_ranges, p->batch * p->q_len, max_end);
  return "";
}

lvx::LocalProblem local_problem(const lvx_problem_t* p, bool has_ranges, int64_t max_end) {
  lvx::LocalProblem l;
  if (!p) return l;
  l.B = p->batch;
  l.Lq = p->q_len;
  l.Lkv = p->kv_len;
  l.Hq = p->q_heads;
  l.Hkv = p->kv_heads;
  l.D = p->head_dim;
  l.dtype = static_cast<lvx::DType>(p->dtype);
  l.algorithm = static_cast<lvx::Algorithm>(p->algorithm);
  l.scale = std::isnan(p->scale) ? 1.f / std::sqrt(static_cast<float>(p->head_dim > 0 ? p->head_dim : 1)) : p->scale;
  l.has_ranges = has_ranges;
  l.max_range_end = max_end;
  return l;
}

}  // namespace

extern "C" {

void lvx_default_options(lvx_options_t* o) {
  if (!o) return;
  o->device = LVX_DEVICE_CPU;
  o->device_index = -1;
  o->threads = 0;
  o->transport = "auto";
}

lvx_result_t lvx_context_create(MPI_Comm comm, const lvx_options_t* options, lvx_context_t* context) {
  return guarded([&] {
    if (!context) LVX_FAIL(lvx::Status::invalid_argument, "context is NULL");
    lvx_options_t def;
    lvx_default_options(&def);
    if (!options) options = &def;
    lvx::ContextOptions co;
    co.device = options->device == LVX_DEVICE_CUDA ? lvx::DeviceKind::cuda : lvx::DeviceKind::cpu;
    co.device_index = options->device_index;
    co.threads = options->threads;
    co.transport = options->transport ? options->transport : "auto";
    auto h = std::make_unique<lvx_context_s>();
    h->ctx = std::make_unique<lvx::Context>(comm, co);
    *context = h.release();
  });
}

void lvx_context_destroy(lvx_context_t context) { delete context; }

lvx_result_t lvx_set_stream(lvx_context_t context, void* stream) {
  return guarded([&] {
    if (!context) LVX_FAIL(lvx::Status::invalid_argument, "context is NULL");
    context->ctx->backend().set_stream(stream);
  });
}

lvx_result_t lvx_forward(lvx_context_t context, const lvx_problem_t* problem, const void* q, const void* k,
                         const void* v, const int32_t* q_ranges, void* o, float* lse) {
  return guarded([&] {
    if (!context) LVX_FAIL(lvx::Status::invalid_argument, "context is NULL");
    lvx::Context& c = *context->ctx;
    int64_t max_end = 0;
    const bool host = c.backend().kind() == lvx::DeviceKind::cpu;
    std::string err = check_problem(problem, host, q_ranges, &max_end,
                                    {{q, "q", true}, {k, "k", false}, {v, "v", false}, {o, "o", true}, {lse, "lse", true}});
    if (err.empty() && !host && !lvx::gpu::head_dim_supported(problem->head_dim))
      err = "head_dim " + std::to_string(problem->head_dim) + " is not built for the CUDA backend";
    lvx::LocalProblem l = local_problem(problem, q_ranges != nullptr, max_end);
    l.device = host ? 0 : 1;
    lvx::Plan plan = c.make_plan(l, err);
    c.forward(plan, lvx::ForwardIO{q, k, v, q_ranges, o, lse});
  });
}

lvx_result_t lvx_backward(lvx_context_t context, const lvx_problem_t* problem, const void* q, const void* k,
                          const void* v, const int32_t* q_ranges, const void* o, const float* lse,
                          const void* dout, void* dq, void* dk, void* dv) {
  return guarded([&] {
    if (!context) LVX_FAIL(lvx::Status::invalid_argument, "context is NULL");
    lvx::Context& c = *context->ctx;
    int64_t max_end = 0;
    const bool host = c.backend().kind() == lvx::DeviceKind::cpu;
    std::string err = check_problem(problem, host, q_ranges, &max_end,
                                    {{q, "q", true}, {k, "k", false}, {v, "v", false}, {o, "o", true}, {lse, "lse", true},
                                     {dout, "dout", true}, {dq, "dq", true}, {dk, "dk", false}, {dv, "dv", false}});
    if (err.empty() && !host && !lvx::gpu::head_dim_supported(problem->head_dim))
      err = "head_dim " + std::to_string(problem->head_dim) + " is not built for the CUDA backend";
    lvx::LocalProblem l = local_problem(problem, q_ranges != nullptr, max_end);
    l.device = host ? 0 : 1;
    lvx::Plan plan = c.make_plan(l, err);
    c.backward(plan, lvx::BackwardIO{q, k, v, q_ranges, o, lse, dout, dq, dk, dv});
  });
}

lvx_result_t lvx_get_stats(lvx_context_t context, int phase, lvx_stats_t* stats) {
  return guarded([&] {
    if (!context || !stats) LVX_FAIL(lvx::Status::invalid_argument, "context or stats is NULL");
    const lvx::PhaseStats& s = phase == 0 ? context->ctx->forward_stats() : context->ctx->backward_stats();
    stats->bytes_sent = s.bytes_sent;
    stats->bytes_recv = s.bytes_recv;
    stats->compute_s = s.compute_s;
    stats->blocked_s = s.blocked_s;
    stats->total_s = s.total_s;
    stats->steps = s.steps;
    stats->algorithm = static_cast<lvx_algorithm_t>(context->ctx->last_plan().algorithm);
  });
}

const char* lvx_last_error(void) { return g_last_error.c_str(); }

const char* lvx_result_string(lvx_result_t r) { return lvx::status_name(static_cast<lvx::Status>(r)); }

}  // extern "C"
