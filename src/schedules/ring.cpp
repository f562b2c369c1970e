// Ring Attention: Q stays; K and V rotate around the ring, prefetched one step
// ahead. Backward: K, V rotate and their fp32 dK/dV accumulator follows one step
// behind, ending on the K/V owner; dQ accumulates where Q lives.
#include "schedules/ring_driver.hpp"

namespace lvx {

using namespace sched;

void ring_schedule_forward(ScheduleEnv& env, const ForwardIO& io) {
  const Plan& p = env.plan;
  Backend& be = env.backend;
  PhaseScope phase(env);
  const size_t es = dtype_size(p.dtype);
  const int64_t n_o = p.B * p.lq[p.rank] * p.Hq * p.D;
  const bool direct = p.dtype == DType::f32;
  float* o = direct ? static_cast<float*>(io.o) : env.workspace.get_as<float>("ring.fwd.o", n_o);
  phase.timer.begin();
  be.fill(o, 0.f, n_o);
  be.fill(io.lse, kNegInf, p.B * p.Hq * p.lq[p.rank]);
  phase.timer.end();

  const size_t kv_row = p.B * p.Hkv * p.D * es;
  RingSpec spec;
  spec.name = "ring.fwd";
  spec.rows = p.lkv;
  spec.inputs = {{io.k, kv_row, kTagK}, {io.v, kv_row, kTagV}};
  spec.compute = [&](int j, const std::vector<const void*>& in, void*) {
    FwdStep st;
    st.s = p.step(p.rank, j);
    st.dtype = p.dtype;
    st.q = io.q;
    st.k = in[0];
    st.v = in[1];
    st.q_ranges = io.q_ranges;
    st.kv_begin = p.kv_off[j];
    st.scale = p.scale;
    st.o = o;
    st.lse = io.lse;
    be.attend_fwd_step(st);
  };
  run_ring(env, phase.timer, spec);
  if (!direct) {
    phase.timer.begin();
    be.convert(io.o, p.dtype, o, DType::f32, n_o);
    phase.timer.end();
  }
  phase.finish();
}

void ring_schedule_backward(ScheduleEnv& env, const BackwardIO& io) {
  const Plan& p = env.plan;
  Backend& be = env.backend;
  PhaseScope phase(env);
  const size_t es = dtype_size(p.dtype);
  const int64_t n_q = p.B * p.lq[p.rank] * p.Hq * p.D;
  const int64_t kv_elems_row = p.B * p.Hkv * p.D;
  const bool direct = p.dtype == DType::f32;
  Workspace& ws = env.workspace;
  float* dl = ws.get_as<float>("ring.bwd.dl", p.B * p.Hq * p.lq[p.rank]);
  float* dq = direct ? static_cast<float*>(io.dq) : ws.get_as<float>("ring.bwd.dq", n_q);
  phase.timer.begin();
  be.row_dot(RowDot{p.B, p.lq[p.rank], p.Hq, p.D, p.dtype, io.dout, io.o, dl});
  be.fill(dq, 0.f, n_q);
  phase.timer.end();

  RingSpec spec;
  spec.name = "ring.bwd";
  spec.rows = p.lkv;
  spec.inputs = {{io.k, kv_elems_row * es, kTagK}, {io.v, kv_elems_row * es, kTagV}};
  spec.acc_row_bytes = 2 * kv_elems_row * sizeof(float);  // dK block then dV block
  spec.acc_tag = kTagDk;
  spec.compute = [&](int j, const std::vector<const void*>& in, void* acc) {
    const int64_t n = p.lkv[j] * kv_elems_row;
    float* dk = static_cast<float*>(acc);
    be.fill(dk, 0.f, 2 * n);
    BwdStep st;
    st.s = p.step(p.rank, j);
    st.dtype = p.dtype;
    st.q = io.q;
    st.k = in[0];
    st.v = in[1];
    st.dout = io.dout;
    st.lse = io.lse;
    st.dl = dl;
    st.q_ranges = io.q_ranges;
    st.kv_begin = p.kv_off[j];
    st.scale = p.scale;
    st.dq = dq;
    st.dk = dk;
    st.dv = dk + n;
    be.attend_bwd_step(st);
  };
  spec.combine = [&](int j, void* acc, const void* inc) {
    be.add(static_cast<float*>(acc), static_cast<const float*>(inc), 2 * p.lkv[j] * kv_elems_row);
  };
  spec.finish = [&](void* own) {
    const int64_t n = p.lkv[p.rank] * kv_elems_row;
    const float* dk = static_cast<const float*>(own);
    be.convert(io.dk, p.dtype, dk, DType::f32, n);
    be.convert(io.dv, p.dtype, dk + n, DType::f32, n);
  };
  run_ring(env, phase.timer, spec);
  if (!direct) {
    phase.timer.begin();
    be.convert(io.dq, p.dtype, dq, DType::f32, n_q);
    phase.timer.end();
  }
  phase.finish();
}

}  // namespace lvx
