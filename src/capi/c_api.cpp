// The C API: a thin shell over lvx::Context (the front door it shares with the Python
// bindings) that reads the versioned structs, turns exceptions into result codes and
// keeps the last error text per thread.
#include "lvx/lvx.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <string>

#include "context/context.hpp"
#include "core/error.hpp"

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

// The bytes of a struct's first layout (lvx.h, "Versions and the ABI"): up to the end of
// its last field in version 0.2. Fields appended later are read only when struct_size
// covers them.
constexpr size_t kOptionsFirst = offsetof(lvx_options_t, transport) + sizeof(lvx_transport_t);
constexpr size_t kProblemFirst = offsetof(lvx_problem_t, scale) + sizeof(float);
constexpr size_t kStatsFirst = offsetof(lvx_stats_t, transport) + sizeof(lvx_transport_t);

// A caller's struct as this library's: defaults for fields the caller's header did not have.
template <typename T>
std::string read_sized(const T* in, const char* type, size_t first, const char* fill, T* out) {
  const size_t n = in->struct_size;
  if (n < first)
    return std::string(type) + ".struct_size is " + std::to_string(n) + ", not a size of this struct: fill it with " +
           fill + " first (lvx.h, \"Versions and the ABI\")";
  std::memcpy(out, in, std::min(n, sizeof(T)));
  out->struct_size = sizeof(T);
  return "";
}

// The C API's own checks: its structs and buffer pointers (a buffer may be NULL when
// this rank holds no rows of its side). The problem itself is checked by the front door.
struct Buffer {
  const void* ptr;
  const char* name;
  bool query_side;
};

std::string check_call(const lvx_problem_t* problem, lvx_problem_t* p, std::initializer_list<Buffer> bufs) {
  lvx_default_problem(p);
  if (!problem) return "problem is NULL";
  std::string error = read_sized(problem, "lvx_problem_t", kProblemFirst, "lvx_default_problem()", p);
  if (!error.empty()) return error;
  for (const Buffer& b : bufs) {
    const bool may_be_null = b.query_side ? p->q_len == 0 : p->kv_len == 0;
    if (!b.ptr && !may_be_null) return std::string(b.name) + " is NULL";
  }
  return "";
}

lvx::Problem problem_of(const lvx_problem_t& p, const int32_t* q_ranges) {
  lvx::Problem c;
  c.B = p.batch;
  c.Lq = p.q_len;
  c.Lkv = p.kv_len;
  c.Hq = p.q_heads;
  c.Hkv = p.kv_heads;
  c.D = p.head_dim;
  c.dtype = static_cast<lvx::DType>(p.dtype);  // same values (core/types.cpp); checked by the front door
  c.algorithm = static_cast<lvx::Algorithm>(p.algorithm);
  c.scale = p.scale;
  c.q_ranges = q_ranges;
  return c;
}

lvx::Context& context_of(lvx_context_t context) {
  if (!context) LVX_FAIL(lvx::Status::invalid_argument, "context is NULL");
  return *context->ctx;
}

}  // namespace

extern "C" {

int lvx_version(void) { return LVX_VERSION; }

void lvx_default_options(lvx_options_t* o) {
  if (!o) return;
  *o = lvx_options_t{};
  o->struct_size = sizeof(lvx_options_t);
  o->device = LVX_DEVICE_CPU;
  o->device_index = -1;
  o->threads = 0;
  o->transport = LVX_TRANSPORT_AUTO;
}

void lvx_default_problem(lvx_problem_t* p) {
  if (!p) return;
  *p = lvx_problem_t{};
  p->struct_size = sizeof(lvx_problem_t);
  p->dtype = LVX_FLOAT32;
  p->algorithm = LVX_ALGO_LVX;
  p->scale = std::numeric_limits<float>::quiet_NaN();
}

lvx_result_t lvx_context_create(MPI_Comm comm, const lvx_options_t* options, lvx_context_t* context) {
  return guarded([&] {
    if (!context) LVX_FAIL(lvx::Status::invalid_argument, "context is NULL");
    *context = nullptr;
    auto planner = std::make_shared<lvx::Planner>(comm);
    // Every rank learns of any rank's failure here, so that none is left waiting later.
    std::string error;
    auto h = std::make_unique<lvx_context_s>();
    try {
      lvx_options_t o;
      lvx_default_options(&o);
      if (options) error = read_sized(options, "lvx_options_t", kOptionsFirst, "lvx_default_options()", &o);
      if (error.empty()) {
        lvx::ContextOptions co;
        co.device = static_cast<lvx::DeviceKind>(o.device);
        co.device_index = o.device_index;
        co.threads = o.threads;
        co.transport = static_cast<lvx::TransportKind>(o.transport);
        h->ctx = std::make_unique<lvx::Context>(planner, co);
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
    planner->agree(error);
    *context = h.release();
  });
}

void lvx_context_destroy(lvx_context_t context) { delete context; }

lvx_result_t lvx_set_stream(lvx_context_t context, void* stream) {
  return guarded([&] { context_of(context).backend().set_stream(stream); });
}

lvx_result_t lvx_forward(lvx_context_t context, const lvx_problem_t* problem, const void* q, const void* k,
                         const void* v, const int32_t* q_ranges, void* o, float* lse) {
  return guarded([&] {
    lvx::Context& c = context_of(context);
    lvx_problem_t p;
    const std::string err =
        check_call(problem, &p, {{q, "q", true}, {k, "k", false}, {v, "v", false}, {o, "o", true}, {lse, "lse", true}});
    const lvx::Plan plan = c.plan(problem_of(p, q_ranges), err);
    c.forward(plan, lvx::ForwardIO{q, k, v, q_ranges, o, lse});
  });
}

lvx_result_t lvx_backward(lvx_context_t context, const lvx_problem_t* problem, const void* q, const void* k,
                          const void* v, const int32_t* q_ranges, const void* o, const float* lse,
                          const void* dout, void* dq, void* dk, void* dv) {
  return guarded([&] {
    lvx::Context& c = context_of(context);
    lvx_problem_t p;
    const std::string err = check_call(problem, &p,
                                       {{q, "q", true}, {k, "k", false}, {v, "v", false}, {o, "o", true},
                                        {lse, "lse", true}, {dout, "dout", true}, {dq, "dq", true}, {dk, "dk", false},
                                        {dv, "dv", false}});
    const lvx::Plan plan = c.plan(problem_of(p, q_ranges), err);
    c.backward(plan, lvx::BackwardIO{q, k, v, q_ranges, o, lse, dout, dq, dk, dv});
  });
}

lvx_result_t lvx_get_stats(lvx_context_t context, int phase, lvx_stats_t* stats) {
  return guarded([&] {
    lvx::Context& c = context_of(context);
    if (!stats) LVX_FAIL(lvx::Status::invalid_argument, "stats is NULL");
    if (stats->struct_size < kStatsFirst)
      LVX_FAIL(lvx::Status::invalid_argument, "lvx_stats_t.struct_size is " + std::to_string(stats->struct_size) +
                                                  ": set it to sizeof(lvx_stats_t) (lvx.h, \"Versions and the ABI\")");
    const lvx::PhaseStats& s = phase == 0 ? c.forward_stats() : c.backward_stats();
    lvx_stats_t out{};
    out.struct_size = stats->struct_size;
    out.bytes_sent = s.bytes_sent;
    out.bytes_recv = s.bytes_recv;
    out.compute_s = s.compute_s;
    out.blocked_s = s.blocked_s;
    out.total_s = s.total_s;
    out.steps = s.steps;
    out.algorithm = static_cast<lvx_algorithm_t>(c.last_plan().algorithm);
    out.transport = static_cast<lvx_transport_t>(c.last_plan().transport);
    std::memcpy(stats, &out, std::min(stats->struct_size, sizeof out));
  });
}

const char* lvx_last_error(void) { return g_last_error.c_str(); }

const char* lvx_result_string(lvx_result_t r) { return lvx::status_name(static_cast<lvx::Status>(r)); }

}  // extern "C"
