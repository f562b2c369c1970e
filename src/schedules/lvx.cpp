// LV-XAttn: K/V stay where they are; query-side blocks travel (DESIGN.md).
// Ring form (P steps):
//   Forward: Q (+ q_ranges) is prefetched around the ring; the fp32 (O, LSE)
//   accumulator follows one step behind and ends on the Q owner.
//   Backward: Q, dO, LSE, Dl (+ q_ranges) are prefetched; the fp32 dQ accumulator
//   follows and returns to its owner; dK, dV accumulate where K, V live.
// Gathered form (Plan::lvx_form single or overlap, 1 or 2 steps): every rank sends its query-side block
// to all others while attending to its own, then attends to all the others' blocks
// in one step and sends each owner its partial result (O, LSE or dQ) back. Same
// bytes as the ring; one long step runs near the kernel's peak where P short ones
// pay the per-step cost of loading K/V tiles and writing dK/dV P times.
// In both, O is never sent: its owner computes Dl = rowsum(dO ∘ O) once.
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "schedules/ring_driver.hpp"

namespace lvx {

using namespace sched;

namespace {

// A query-side tensor as `strips` runs of rows of `unit` bytes: Q is B strips of
// Hq·D-element rows, LSE is B·Hq strips of one float per row.
struct Strips {
  const void* own = nullptr;  // this rank's block (null: not sent)
  int64_t strips = 1;
  size_t unit = 0;
  int tag = 0;
};

// One forward step of `rows` query rows against this rank's K/V, into a fresh
// (o, lse) accumulator.
void attend_fwd_fresh(ScheduleEnv& env, const ForwardIO& io, int64_t rows, const void* q, const int32_t* ranges,
                      float* o, float* lse) {
  const Plan& p = env.plan;
  env.backend.fill(o, 0.f, rows * p.B * p.Hq * p.D);
  env.backend.fill(lse, kNegInf, rows * p.B * p.Hq);
  FwdStep st;
  st.s = StepShape{p.B, rows, p.lkv[p.rank], p.Hq, p.Hkv, p.D};
  st.dtype = p.dtype;
  st.q = q;
  st.k = io.k;
  st.v = io.v;
  st.q_ranges = ranges;
  st.kv_begin = p.kv_off[p.rank];
  st.scale = p.scale;
  st.o = o;
  st.lse = lse;
  env.backend.attend_fwd_step(st);
}

// The query side of one backward step: Q, dO, LSE, Dl and q_ranges of `rows` rows.
struct QuerySide {
  int64_t rows = 0;
  const void* q = nullptr;
  const void* dout = nullptr;
  const float* lse = nullptr;
  const float* dl = nullptr;
  const int32_t* ranges = nullptr;
};

// One backward step against this rank's K/V into a fresh dq. dK/dV: the first step
// of this rank's sum writes the fp32 sums dk/dv, the last one the outputs.
void attend_bwd_fresh(ScheduleEnv& env, const BackwardIO& io, const QuerySide& qs, float* dq, float* dk, float* dv,
                      bool first, bool last) {
  const Plan& p = env.plan;
  env.backend.fill(dq, 0.f, qs.rows * p.B * p.Hq * p.D);
  BwdStep st;
  st.s = StepShape{p.B, qs.rows, p.lkv[p.rank], p.Hq, p.Hkv, p.D};
  st.dtype = p.dtype;
  st.q = qs.q;
  st.dout = qs.dout;
  st.lse = qs.lse;
  st.dl = qs.dl;
  st.q_ranges = qs.ranges;
  st.k = io.k;
  st.v = io.v;
  st.kv_begin = p.kv_off[p.rank];
  st.scale = p.scale;
  st.dq = dq;
  st.dk = dk;
  st.dv = dv;
  st.kv_fresh = first;
  if (last && p.dtype != DType::f32) {
    st.dk_out = io.dk;
    st.dv_out = io.dv;
  }
  env.backend.attend_bwd_step(st);
}

// The gathered layout: blocks in order r, r+1, …, r−1 (this rank's own first, and
// only with_self), one after another along the row axis of every strip.
struct Others {
  std::vector<int> ranks;
  std::vector<int64_t> off;
  int64_t rows = 0;
  size_t first_other = 0;  // index of the first block from another rank
  Others(const Plan& p, bool with_self) : first_other(with_self ? 1 : 0) {
    for (int k = with_self ? 0 : 1; k < p.P; ++k) {
      const int j = (p.rank + k) % p.P;
      ranks.push_back(j);
      off.push_back(rows);
      rows += p.lq[j];
    }
  }
};

// Gathers each tensor's blocks from the other ranks into [strips][G rows] buffers.
// Single-strip blocks land in place; others are staged and copied into place.
class QueryGather {
 public:
  QueryGather(ScheduleEnv& env, const std::string& name, const Others& oth, std::vector<Strips> parts)
      : env_(env), oth_(oth), parts_(std::move(parts)) {
    for (size_t k = 0; k < parts_.size(); ++k) {
      const Strips& s = parts_[k];
      const size_t bytes = std::max<size_t>(oth_.rows * s.strips * s.unit, 1);
      gathered_.push_back(static_cast<char*>(env.workspace.get(name + ".g" + std::to_string(k), bytes)));
      staged_.push_back(s.strips > 1 ? static_cast<char*>(env.workspace.get(name + ".s" + std::to_string(k), bytes))
                                     : nullptr);
    }
  }
  int post() {
    const Plan& p = env_.plan;
    std::vector<Message> sends, recvs;
    for (size_t i = oth_.first_other; i < oth_.ranks.size(); ++i) {
      const int j = oth_.ranks[i];
      for (size_t k = 0; k < parts_.size(); ++k) {
        const Strips& s = parts_[k];
        if (!s.unit) continue;
        sends.push_back({j, const_cast<void*>(s.own), p.lq[p.rank] * s.strips * s.unit, s.tag});
        char* dst = s.strips > 1 ? staged_[k] + oth_.off[i] * s.strips * s.unit : gathered_[k] + oth_.off[i] * s.unit;
        recvs.push_back({j, dst, p.lq[j] * s.strips * s.unit, s.tag});
      }
    }
    return env_.transport->post(sends, recvs);
  }
  // After the wait: staged blocks, and this rank's own, go into place.
  void place() {
    const Plan& p = env_.plan;
    for (size_t k = 0; k < parts_.size(); ++k) {
      const Strips& s = parts_[k];
      if (!s.unit) continue;
      for (size_t i = 0; i < oth_.ranks.size(); ++i) {
        const bool self = i < oth_.first_other;
        if (s.strips == 1 && !self) continue;  // landed in place
        const size_t w = p.lq[oth_.ranks[i]] * s.unit;
        const char* src = self ? static_cast<const char*>(s.own) : staged_[k] + oth_.off[i] * s.strips * s.unit;
        env_.backend.copy_2d(gathered_[k] + oth_.off[i] * s.unit, oth_.rows * s.unit, src, w, w, s.strips);
      }
    }
  }
  const void* operator[](size_t k) const { return parts_[k].unit ? gathered_[k] : nullptr; }

 private:
  ScheduleEnv& env_;
  const Others& oth_;
  std::vector<Strips> parts_;
  std::vector<char*> gathered_, staged_;
};

// Sends each other rank its rows of gathered results (fp32 tensors as Strips over
// G rows) and receives this rank's rows from each of them: slot i of `incoming`
// holds the parts of rank oth.ranks[first_other + i], one after another.
int post_results_home(ScheduleEnv& env, const std::string& name, const Others& oth,
                      const std::vector<std::pair<const char*, Strips>>& results, char* incoming) {
  const Plan& p = env.plan;
  size_t own_bytes = 0, packed_bytes = 0;
  for (const auto& [src, s] : results) {
    own_bytes += p.lq[p.rank] * s.strips * s.unit;
    if (s.strips > 1) packed_bytes += oth.rows * s.strips * s.unit;
  }
  char* packed = packed_bytes ? static_cast<char*>(env.workspace.get(name + ".pack", packed_bytes)) : nullptr;
  std::vector<Message> sends, recvs;
  size_t pack_base = 0;
  for (size_t k = 0; k < results.size(); ++k) {
    const auto& [src, s] = results[k];
    for (size_t i = oth.first_other; i < oth.ranks.size(); ++i) {
      const int j = oth.ranks[i];
      const size_t w = p.lq[j] * s.unit;
      const char* out = src + oth.off[i] * s.unit;
      if (s.strips > 1) {
        char* dst = packed + pack_base + oth.off[i] * s.strips * s.unit;
        env.backend.copy_2d(dst, w, out, oth.rows * s.unit, w, s.strips);
        out = dst;
      }
      sends.push_back({j, const_cast<char*>(out), w * s.strips, s.tag});
    }
    if (s.strips > 1) pack_base += oth.rows * s.strips * s.unit;
  }
  for (size_t i = oth.first_other; i < oth.ranks.size(); ++i) {
    size_t part = 0;
    for (const auto& [src, s] : results) {
      const size_t bytes = p.lq[p.rank] * s.strips * s.unit;
      recvs.push_back({oth.ranks[i], incoming + (i - oth.first_other) * own_bytes + part, bytes, s.tag});
      part += bytes;
    }
  }
  return env.transport->post(sends, recvs);
}

void lvx_forward_gathered(ScheduleEnv& env, const ForwardIO& io, PhaseScope& phase) {
  const Plan& p = env.plan;
  Backend& be = env.backend;
  Transport& tr = *env.transport;
  const size_t es = dtype_size(p.dtype);
  const int64_t o_row = p.B * p.Hq * p.D, lse_row = p.B * p.Hq;
  const bool overlap = p.lvx_overlapped();
  const Others oth(p, !overlap);
  const int64_t own = p.lq[p.rank], G = oth.rows;
  QueryGather in(env, "lvx.gf", oth,
                 {{io.q, p.B, size_t(p.Hq * p.D) * es, kTagQ},
                  {io.q_ranges, p.B, p.has_ranges ? 2 * sizeof(int32_t) : 0, kTagRanges}});
  const int gathered = in.post();

  Workspace& ws = env.workspace;
  float* acc = ws.get_as<float>("lvx.gf.own", std::max<int64_t>(own * (o_row + lse_row), 1));
  float* og = ws.get_as<float>("lvx.gf.o", std::max<int64_t>(G * (o_row + lse_row), 1));
  float* lseg = og + G * o_row;
  const size_t own_bytes = own * (o_row + lse_row) * sizeof(float);
  char* inc = static_cast<char*>(ws.get("lvx.gf.inc", std::max<size_t>(oth.ranks.size() * own_bytes, 1)));

  if (overlap) {
    phase.timer.begin();
    attend_fwd_fresh(env, io, own, io.q, io.q_ranges, acc, acc + own * o_row);
    phase.timer.end();
  }
  tr.wait(gathered);
  phase.timer.begin();
  in.place();
  attend_fwd_fresh(env, io, G, in[0], static_cast<const int32_t*>(in[1]), og, lseg);
  if (!overlap) {  // this rank's own rows come first in the gathered results
    be.copy_2d(acc, own * o_row / p.B * sizeof(float), og, G * o_row / p.B * sizeof(float),
               own * o_row / p.B * sizeof(float), p.B);
    be.copy_2d(acc + own * o_row, own * sizeof(float), lseg, G * sizeof(float), own * sizeof(float), p.B * p.Hq);
  }
  phase.timer.end();
  const int home = post_results_home(env, "lvx.gf", oth,
                                     {{reinterpret_cast<const char*>(og), {nullptr, p.B, size_t(p.Hq * p.D) * 4, kTagAcc}},
                                      {reinterpret_cast<const char*>(lseg), {nullptr, p.B * p.Hq, 4, kTagLse}}},
                                     inc);
  tr.wait(home);
  phase.timer.begin();
  for (size_t i = 0; i + oth.first_other < oth.ranks.size(); ++i) {
    const float* part = reinterpret_cast<const float*>(inc + i * own_bytes);
    be.merge_lse(MergeLse{p.B, own, p.Hq, p.D, acc, acc + own * o_row, part, part + own * o_row});
  }
  be.convert(io.o, p.dtype, acc, DType::f32, own * o_row);
  be.copy(io.lse, acc + own * o_row, own * lse_row * sizeof(float));
  phase.timer.end();
  env.stats.steps = overlap ? 2 : 1;
}

void lvx_backward_gathered(ScheduleEnv& env, const BackwardIO& io, PhaseScope& phase, float* dl, float* dk,
                           float* dv) {
  const Plan& p = env.plan;
  Backend& be = env.backend;
  Transport& tr = *env.transport;
  const size_t es = dtype_size(p.dtype);
  const int64_t q_row = p.B * p.Hq * p.D;
  const bool overlap = p.lvx_overlapped();
  const Others oth(p, !overlap);
  const int64_t own = p.lq[p.rank], G = oth.rows;
  QueryGather in(env, "lvx.gb", oth,
                 {{io.q, p.B, size_t(p.Hq * p.D) * es, kTagQ},
                  {io.dout, p.B, size_t(p.Hq * p.D) * es, kTagDout},
                  {io.lse, p.B * p.Hq, sizeof(float), kTagLse},
                  {dl, p.B * p.Hq, sizeof(float), kTagDl},
                  {io.q_ranges, p.B, p.has_ranges ? 2 * sizeof(int32_t) : 0, kTagRanges}});
  const int gathered = in.post();

  Workspace& ws = env.workspace;
  float* dq_own = ws.get_as<float>("lvx.gb.dq", std::max<int64_t>(own * q_row, 1));
  float* dq_g = ws.get_as<float>("lvx.gb.dqg", std::max<int64_t>(G * q_row, 1));
  const size_t own_bytes = own * q_row * sizeof(float);
  char* inc = static_cast<char*>(ws.get("lvx.gb.inc", std::max<size_t>(oth.ranks.size() * own_bytes, 1)));

  if (overlap) {
    phase.timer.begin();
    attend_bwd_fresh(env, io, {own, io.q, io.dout, io.lse, dl, io.q_ranges}, dq_own, dk, dv, true, G == 0);
    phase.timer.end();
  }
  tr.wait(gathered);
  phase.timer.begin();
  in.place();
  if (G > 0 || !overlap)
    attend_bwd_fresh(env, io,
                     {G, in[0], in[1], static_cast<const float*>(in[2]), static_cast<const float*>(in[3]),
                      static_cast<const int32_t*>(in[4])},
                     dq_g, dk, dv, !overlap, true);
  if (!overlap) {  // this rank's own rows come first in the gathered dQ
    const size_t w = own * q_row / p.B * sizeof(float);
    be.copy_2d(dq_own, w, dq_g, G * q_row / p.B * sizeof(float), w, p.B);
  }
  phase.timer.end();
  const int home = post_results_home(
      env, "lvx.gb", oth, {{reinterpret_cast<const char*>(dq_g), {nullptr, p.B, size_t(p.Hq * p.D) * 4, kTagAcc}}},
      inc);
  tr.wait(home);
  phase.timer.begin();
  for (size_t i = 0; i + oth.first_other < oth.ranks.size(); ++i)
    be.add(dq_own, reinterpret_cast<const float*>(inc + i * own_bytes), own * q_row);
  be.convert(io.dq, p.dtype, dq_own, DType::f32, own * q_row);
  phase.timer.end();
  env.stats.steps = overlap ? 2 : 1;
}

}  // namespace

void lvx_schedule_forward(ScheduleEnv& env, const ForwardIO& io) {
  const Plan& p = env.plan;
  Backend& be = env.backend;
  PhaseScope phase(env);
  if (p.lvx_gathered()) {
    lvx_forward_gathered(env, io, phase);
    phase.finish();
    return;
  }
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
    attend_fwd_fresh(env, io, p.lq[i], in[0], static_cast<const int32_t*>(in[1]), o, o + p.lq[i] * o_row);
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

void lvx_schedule_backward(ScheduleEnv& env, const BackwardIO& io) {
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
  if (p.lvx_gathered()) {
    lvx_backward_gathered(env, io, phase, dl, dk, dv);
    phase.finish();
    return;
  }

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
    const bool first = steps_done++ == 0;
    attend_bwd_fresh(env, io,
                     {p.lq[i], in[0], in[1], static_cast<const float*>(in[2]), static_cast<const float*>(in[3]),
                      static_cast<const int32_t*>(in[4])},
                     static_cast<float*>(acc), dk, dv, first, steps_done == p.P);
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
