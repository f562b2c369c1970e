// LV-XAttn: K/V stay where they are; query-side blocks travel (DESIGN.md).
// Forward: Q (+ q_ranges) is prefetched around the ring; the fp32 (O, LSE)
// accumulator follows one step behind and ends on the Q owner.
// Backward: Q, dO, LSE, Dl (+ q_ranges) are prefetched; the fp32 dQ accumulator
// follows and returns to its owner; dK, dV accumulate where K, V live. O is
// never sent: its owner computes Dl = rowsum(dO ∘ O) once.
#include "ring_driver.hpp"

namespace lvx {

using namespace sched;

void lvx_forward(ScheduleEnv& env, const ForwardIO& io) {
  const Plan& p = env.plan;
  Backend& be = env.backend;
  PhaseScope phase(env);
  const size_t es = dtype_size(p.dtype);
  const int64_t o_row = p.B * p.Hq * p.D, lse_row = p.B * p.Hq;  // elements per Q row
  RingSpec spec;
  spec.name = "lvx.fwd";
  spec.rows = p.lq;
  spec.inputs = {{io.q, o_row * es, kTagQ},
                 {io.q_ranges, p.has_ranges ? size_t(p.B) * 2 * sizeof(int32_t) : 0, kTagRanges}};
  spec.acc_row_bytes = (o_row + lse_row) * sizeof(float);
  spec.compute = [&](int i, const std::vector<const void*>& in, void* acc) {
    float* o = static_cast<float*>(acc);
    float* lse = o + p.lq[i] * o_row;
    be.fill(o, 0.f, p.lq[i] * o_row);
    be.fill(lse, kNegInf, p.lq[i] * lse_row);
    FwdStep st;
    st.s = p.step(i, p.rank);
    st.dtype = p.dtype;
    st.q = in[0];
    st.k = io.k;
    st.v = io.v;
    st.q_ranges = static_cast<const int32_t*>(in[1]);
    st.kv_begin = p.kv_off[p.rank];
    st.scale = p.scale;
    st.o = o;
    st.lse = lse;
    be.attend_fwd_step(st);
  };
  spec.combine = [&](int i, void* acc, const void* inc) {
    float* o = static_cast<float*>(acc);
    const float* oi = static_cast<const float*>(inc);
    be.merge_lse(MergeLse{p.B, p.lq[i], p.Hq, p.D, o, o + p.lq[i] * o_row, oi, oi + p.lq[i] * o_row});
  };
  spec.finish = [&](void* own) {
    const float* o = static_cast<const float*>(own);
    const int64_t n = p.lq[p.rank] * o_row;
    be.convert(io.o, p.dtype, o, DType::f32, n);
    be.copy(io.lse, o + n, p.lq[p.rank] * lse_row * sizeof(float));
  };
  run_ring(env, phase.timer, spec);
  phase.finish();
}

void lvx_backward(ScheduleEnv& env, const BackwardIO& io) {
  const Plan& p = env.plan;
  Backend& be = env.backend;
  PhaseScope phase(env);
  const size_t es = dtype_size(p.dtype);
  const int64_t q_row = p.B * p.Hq * p.D, lse_row = p.B * p.Hq;
  const int64_t n_kv = p.B * p.lkv[p.rank] * p.Hkv * p.D;
  const bool direct = p.dtype == DType::f32;
  Workspace& ws = env.workspace;
  float* dl = ws.get_as<float>("lvx.bwd.dl", p.lq[p.rank] * lse_row);
  float* dk = direct ? static_cast<float*>(io.dk) : ws.get_as<float>("lvx.bwd.dk", n_kv);
  float* dv = direct ? static_cast<float*>(io.dv) : ws.get_as<float>("lvx.bwd.dv", n_kv);

  phase.timer.begin();
  be.row_dot(RowDot{p.B, p.lq[p.rank], p.Hq, p.D, p.dtype, io.dout, io.o, dl});
  phase.timer.end();

  RingSpec spec;
  spec.name = "lvx.bwd";
  spec.rows = p.lq;
  spec.inputs = {{io.q, q_row * es, kTagQ},
                 {io.dout, q_row * es, kTagDout},
                 {io.lse, lse_row * sizeof(float), kTagLse},
                 {dl, lse_row * sizeof(float), kTagDl},
                 {io.q_ranges, p.has_ranges ? size_t(p.B) * 2 * sizeof(int32_t) : 0, kTagRanges}};
  spec.acc_row_bytes = q_row * sizeof(float);
  int steps_done = 0;
  spec.compute = [&](int i, const std::vector<const void*>& in, void* acc) {
    float* dq = static_cast<float*>(acc);
    be.fill(dq, 0.f, p.lq[i] * q_row);
    BwdStep st;
    st.s = p.step(i, p.rank);
    st.dtype = p.dtype;
    st.q = in[0];
    st.dout = in[1];
    st.lse = static_cast<const float*>(in[2]);
    st.dl = static_cast<const float*>(in[3]);
    st.q_ranges = static_cast<const int32_t*>(in[4]);
    st.k = io.k;
    st.v = io.v;
    st.kv_begin = p.kv_off[p.rank];
    st.scale = p.scale;
    st.dq = dq;
    st.dk = dk;
    st.dv = dv;
    // dK/dV: the first step writes the fp32 sums, the last one the outputs.
    st.kv_fresh = steps_done++ == 0;
    if (!direct && steps_done == p.P) {
      st.dk_out = io.dk;
      st.dv_out = io.dv;
    }
    be.attend_bwd_step(st);
  };
  spec.combine = [&](int i, void* acc, const void* inc) {
    be.add(static_cast<float*>(acc), static_cast<const float*>(inc), p.lq[i] * q_row);
  };
  spec.finish = [&](void* own) {
    be.convert(io.dq, p.dtype, own, DType::f32, p.lq[p.rank] * q_row);
  };
  run_ring(env, phase.timer, spec);
  phase.finish();
}

}  // namespace lvx
