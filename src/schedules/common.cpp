// Pieces shared by the schedules: phase timing, the single-device attention used for
// P == 1 and inside ulysses, and the choice of a plan's schedule.
#include <algorithm>

#include "core/error.hpp"
#include "schedules/schedules.hpp"

namespace lvx {

void PhaseTiming::release(Backend& be) {
  for (int m : {start, end})
    if (m >= 0) be.release_mark(m);
  for (auto* spans : {&compute, &stalls})
    for (auto [a, b] : *spans) {
      be.release_mark(a);
      be.release_mark(b);
    }
  start = end = -1;
  compute.clear();
  stalls.clear();
}

namespace sched {

PhaseScope::PhaseScope(ScheduleEnv& e) : env(e), timer(e.backend) {
  env.stats = PhaseStats{};
  if (env.transport) {
    before = env.transport->counters;
    env.transport->stall_marks.clear();
  }
  start_mark = env.backend.mark();
}

PhaseScope::~PhaseScope() {
  if (finished) return;
  PhaseTiming t;
  t.start = start_mark;
  t.compute = std::move(timer.spans);
  if (env.transport) t.stalls = std::move(env.transport->stall_marks);
  t.release(env.backend);
  if (env.transport) env.transport->stall_marks.clear();
}

void PhaseScope::finish() {
  if (env.transport) env.transport->drain();
  env.timing.start = start_mark;
  env.timing.end = env.backend.mark();
  env.timing.compute = std::move(timer.spans);
  timer.spans.clear();
  if (env.transport) {
    env.timing.stalls = std::move(env.transport->stall_marks);
    env.transport->stall_marks.clear();
    const TransportCounters& now = env.transport->counters;
    env.stats.bytes_sent = now.bytes_sent - before.bytes_sent;
    env.stats.bytes_recv = now.bytes_recv - before.bytes_recv;
    env.stats.blocked_s = now.blocked_s - before.blocked_s;  // host waits; device stalls come later
  }
  finished = true;
}

void local_forward(Backend& be, Workspace& /*ws*/, const StepShape& s, DType dtype, float scale,
                   const ForwardIO& io, ComputeTimer& timer) {
  const size_t n_o = static_cast<size_t>(s.B * s.Lq * s.Hq * s.D);
  const size_t n_lse = static_cast<size_t>(s.B * s.Hq * s.Lq);
  // One step over all of K/V: fp32 outputs are its accumulator (filled first); 16-bit
  // ones it writes itself (FwdStep::o_out), without an fp32 accumulator.
  const bool direct = dtype == DType::f32;
  float* o = direct ? static_cast<float*>(io.o) : nullptr;
  timer.begin();
  if (direct) {
    be.fill(o, 0.f, n_o);
    be.fill(io.lse, kNegInf, n_lse);
  }
  FwdStep st;
  st.s = s;
  st.dtype = dtype;
  st.q = io.q;
  st.k = io.k;
  st.v = io.v;
  st.q_ranges = io.q_ranges;
  st.kv_begin = 0;
  st.scale = scale;
  st.o = o;
  st.lse = io.lse;
  if (!direct) st.o_out = io.o;
  be.attend_fwd_step(st);
  timer.end();
}

void local_backward(Backend& be, Workspace& ws, const StepShape& s, DType dtype, float scale,
                    const BackwardIO& io, ComputeTimer& timer, const float* dl_given) {
  const size_t n_q = static_cast<size_t>(s.B * s.Lq * s.Hq * s.D);
  const bool direct = dtype == DType::f32;
  float* dl = dl_given ? nullptr : ws.get_as<float>("local.dl", s.B * s.Hq * s.Lq);
  float* dq = direct ? static_cast<float*>(io.dq) : ws.get_as<float>("local.dq", n_q);
  timer.begin();
  if (!dl_given) be.row_dot(RowDot{s.B, s.Lq, s.Hq, s.D, dtype, io.dout, io.o, dl});
  be.fill(dq, 0.f, n_q);
  BwdStep st;
  st.s = s;
  st.dtype = dtype;
  st.q = io.q;
  st.k = io.k;
  st.v = io.v;
  st.dout = io.dout;
  st.lse = io.lse;
  st.dl = dl_given ? dl_given : dl;
  st.q_ranges = io.q_ranges;
  st.kv_begin = 0;
  st.scale = scale;
  st.dq = dq;
  st.kv_fresh = true;  // one step: dK/dV are written once, straight into the outputs
  if (direct) {
    st.dk = static_cast<float*>(io.dk);
    st.dv = static_cast<float*>(io.dv);
  } else {
    st.dk_out = io.dk;
    st.dv_out = io.dv;
  }
  be.attend_bwd_step(st);
  if (!direct) be.convert(io.dq, dtype, dq, DType::f32, n_q);
  timer.end();
}

}  // namespace sched

void single_rank_forward(ScheduleEnv& env, const ForwardIO& io) {
  sched::PhaseScope phase(env);
  const Plan& p = env.plan;
  sched::local_forward(env.backend, env.workspace, p.step(0, 0), p.dtype, p.scale, io, phase.timer);
  phase.finish();
}

void single_rank_backward(ScheduleEnv& env, const BackwardIO& io) {
  sched::PhaseScope phase(env);
  const Plan& p = env.plan;
  sched::local_backward(env.backend, env.workspace, p.step(0, 0), p.dtype, p.scale, io, phase.timer);
  phase.finish();
}

void run_schedule(ScheduleEnv& env, const ForwardIO& io) {
  if (env.plan.P == 1) return single_rank_forward(env, io);
  switch (env.plan.algorithm) {
    case Algorithm::lvx: return lvx_schedule_forward(env, io);
    case Algorithm::ring: return ring_schedule_forward(env, io);
    case Algorithm::ulysses: return ulysses_schedule_forward(env, io);
    case Algorithm::automatic: break;
  }
  LVX_FAIL(Status::internal, "plan with an unresolved algorithm");
}

void run_schedule(ScheduleEnv& env, const BackwardIO& io) {
  if (env.plan.P == 1) return single_rank_backward(env, io);
  switch (env.plan.algorithm) {
    case Algorithm::lvx: return lvx_schedule_backward(env, io);
    case Algorithm::ring: return ring_schedule_backward(env, io);
    case Algorithm::ulysses: return ulysses_schedule_backward(env, io);
    case Algorithm::automatic: break;
  }
  LVX_FAIL(Status::internal, "plan with an unresolved algorithm");
}

}  // namespace lvx
