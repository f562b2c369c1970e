// DeepSpeed-Ulysses style: all-to-all from sequence-sharded to head-sharded,
// local attention over the whole sequences for Hq/P query heads and Hkv/P KV
// heads, all-to-all back. Needs Hq and Hkv divisible by P (checked when the
// plan is made). Backward sends Q, K, V, dO, LSE, Dl again rather than keeping
// the head-sharded copies alive between the passes.
#include <algorithm>

#include "schedules/schedules.hpp"

namespace lvx {

using namespace sched;

namespace {

// Sequence-major tensors [B, L_r, H, E bytes] (Q, K, V, O, q_ranges with H = 1).
// to_heads: rank r sends heads [p·h, (p+1)·h) of its rows to rank p, and
// assembles [B, L_total, h, E] of its own heads from every rank's rows
// (gather_all: every rank gets all H heads, for q_ranges).
// from_heads is the inverse: [B, L_total, h, E] back to [B, L_r, H, E].
// Head-major tensors [B, H, L_r] of floats (LSE, Dl) have their own pair.
class AllToAll {
 public:
  AllToAll(ScheduleEnv& env) : env_(env), p_(env.plan) {}

  void seq_to_heads(const void* src, const std::vector<int64_t>& rows, int64_t H, int64_t h,
                    size_t E, void* dst, bool gather_all = false) {
    const int P = p_.P, r = p_.rank;
    const int64_t B = p_.B, Lr = rows[r], Lt = total(rows);
    const int64_t hs = gather_all ? H : h;
    size_t send_total = 0, recv_total = 0;
    std::vector<size_t> soff(P), roff(P);
    for (int q = 0; q < P; ++q) {
      soff[q] = send_total;
      send_total += B * Lr * hs * E;
      roff[q] = recv_total;
      recv_total += B * rows[q] * hs * E;
    }
    char* sbuf = stage("a2a.send", send_total);
    char* rbuf = stage("a2a.recv", recv_total);
    for (int q = 0; q < P; ++q) {
      const char* s = static_cast<const char*>(src) + (gather_all ? 0 : q * h * E);
      copy_2d(sbuf + soff[q], hs * E, s, H * E, hs * E, B * Lr);
    }
    exchange(sbuf, soff, [&](int) { return B * Lr * hs * E; }, rbuf, roff,
             [&](int q) { return B * rows[q] * hs * E; });
    for (int q = 0; q < P; ++q) {
      char* d = static_cast<char*>(dst) + offset(rows, q) * hs * E;
      copy_2d(d, Lt * hs * E, rbuf + roff[q], rows[q] * hs * E, rows[q] * hs * E, B);
    }
  }

  void heads_to_seq(const void* src, const std::vector<int64_t>& rows, int64_t H, int64_t h,
                    size_t E, void* dst) {
    const int P = p_.P, r = p_.rank;
    const int64_t B = p_.B, Lr = rows[r], Lt = total(rows);
    size_t send_total = 0, recv_total = 0;
    std::vector<size_t> soff(P), roff(P);
    for (int q = 0; q < P; ++q) {
      soff[q] = send_total;
      send_total += B * rows[q] * h * E;
      roff[q] = recv_total;
      recv_total += B * Lr * h * E;
    }
    char* sbuf = stage("a2a.send", send_total);
    char* rbuf = stage("a2a.recv", recv_total);
    for (int q = 0; q < P; ++q) {
      const char* s = static_cast<const char*>(src) + offset(rows, q) * h * E;
      copy_2d(sbuf + soff[q], rows[q] * h * E, s, Lt * h * E, rows[q] * h * E, B);
    }
    exchange(sbuf, soff, [&](int q) { return B * rows[q] * h * E; }, rbuf, roff,
             [&](int) { return B * Lr * h * E; });
    for (int q = 0; q < P; ++q)
      copy_2d(static_cast<char*>(dst) + q * h * E, H * E, rbuf + roff[q], h * E, h * E,
                           B * Lr);
  }

  // [B, H, L_r] floats → [B, h, L_total] for this rank's heads.
  void lse_to_heads(const float* src, const std::vector<int64_t>& rows, int64_t H, int64_t h,
                    float* dst) {
    const int P = p_.P, r = p_.rank;
    const int64_t B = p_.B, Lr = rows[r], Lt = total(rows);
    const size_t F = sizeof(float);
    std::vector<size_t> soff(P), roff(P);
    size_t st = 0, rt = 0;
    for (int q = 0; q < P; ++q) {
      soff[q] = st;
      st += B * h * Lr * F;
      roff[q] = rt;
      rt += B * h * rows[q] * F;
    }
    char* sbuf = stage("a2a.send", st);
    char* rbuf = stage("a2a.recv", rt);
    for (int q = 0; q < P; ++q)  // heads of q: rows b·H + q·h … are contiguous per batch
      copy_2d(sbuf + soff[q], h * Lr * F, src + q * h * Lr, H * Lr * F, h * Lr * F, B);
    exchange(sbuf, soff, [&](int) { return B * h * Lr * F; }, rbuf, roff,
             [&](int q) { return B * h * rows[q] * F; });
    for (int q = 0; q < P; ++q)
      copy_2d(dst + offset(rows, q), Lt * F, rbuf + roff[q], rows[q] * F, rows[q] * F, B * h);
  }

  // [B, h, L_total] → [B, H, L_r].
  void lse_to_seq(const float* src, const std::vector<int64_t>& rows, int64_t H, int64_t h, float* dst) {
    const int P = p_.P, r = p_.rank;
    const int64_t B = p_.B, Lr = rows[r], Lt = total(rows);
    const size_t F = sizeof(float);
    std::vector<size_t> soff(P), roff(P);
    size_t st = 0, rt = 0;
    for (int q = 0; q < P; ++q) {
      soff[q] = st;
      st += B * h * rows[q] * F;
      roff[q] = rt;
      rt += B * h * Lr * F;
    }
    char* sbuf = stage("a2a.send", st);
    char* rbuf = stage("a2a.recv", rt);
    for (int q = 0; q < P; ++q)
      copy_2d(sbuf + soff[q], rows[q] * F, src + offset(rows, q), Lt * F, rows[q] * F, B * h);
    exchange(sbuf, soff, [&](int q) { return B * h * rows[q] * F; }, rbuf, roff,
             [&](int) { return B * h * Lr * F; });
    for (int q = 0; q < P; ++q)
      copy_2d(dst + q * h * Lr, H * Lr * F, rbuf + roff[q], h * Lr * F, h * Lr * F, B);
  }

 private:
  static int64_t total(const std::vector<int64_t>& rows) {
    int64_t t = 0;
    for (int64_t x : rows) t += x;
    return t;
  }
  static int64_t offset(const std::vector<int64_t>& rows, int q) {
    int64_t t = 0;
    for (int k = 0; k < q; ++k) t += rows[k];
    return t;
  }
  void copy_2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t rows) {
    if (width && rows) env_.backend.copy_2d(dst, dpitch, src, spitch, width, rows);
  }
  char* stage(const char* name, size_t bytes) {
    return static_cast<char*>(env_.workspace.get(name, bytes));
  }
  // Sends block q of sbuf to rank q and receives block q of rbuf from rank q; the
  // block to and from this rank itself is a local copy.
  template <typename SendBytes, typename RecvBytes>
  void exchange(char* sbuf, const std::vector<size_t>& soff, SendBytes sbytes, char* rbuf,
                const std::vector<size_t>& roff, RecvBytes rbytes) {
    std::vector<Message> sends, recvs;
    for (int q = 0; q < p_.P; ++q) {
      if (q == p_.rank) continue;
      sends.push_back({q, sbuf + soff[q], static_cast<size_t>(sbytes(q)), kTagA2A});
      recvs.push_back({q, rbuf + roff[q], static_cast<size_t>(rbytes(q)), kTagA2A});
    }
    if (sbytes(p_.rank)) env_.backend.copy(rbuf + roff[p_.rank], sbuf + soff[p_.rank], sbytes(p_.rank));
    int ticket = env_.transport->post(sends, recvs);
    env_.transport->wait(ticket);
  }

  ScheduleEnv& env_;
  const Plan& p_;
};

struct HeadSharded {
  int64_t hq, hkv;
  StepShape shape;
};

HeadSharded head_sharded(const Plan& p) {
  HeadSharded h;
  h.hq = p.Hq / p.P;
  h.hkv = p.Hkv / p.P;
  h.shape = StepShape{p.B, p.lq_total, p.lkv_total, h.hq, h.hkv, p.D};
  return h;
}

}  // namespace

void ulysses_schedule_forward(ScheduleEnv& env, const ForwardIO& io) {
  const Plan& p = env.plan;
  Backend& be = env.backend;
  PhaseScope phase(env);
  const HeadSharded hs = head_sharded(p);
  const size_t es = dtype_size(p.dtype), row = p.D * es;
  const StepShape& s = hs.shape;
  Workspace& ws = env.workspace;
  char* qh = static_cast<char*>(ws.get("uly.q", s.B * s.Lq * s.Hq * row));
  char* kh = static_cast<char*>(ws.get("uly.k", s.B * s.Lkv * s.Hkv * row));
  char* vh = static_cast<char*>(ws.get("uly.v", s.B * s.Lkv * s.Hkv * row));
  char* oh = static_cast<char*>(ws.get("uly.o", s.B * s.Lq * s.Hq * row));
  float* lseh = ws.get_as<float>("uly.lse", s.B * s.Hq * s.Lq);
  int32_t* rh = p.has_ranges ? ws.get_as<int32_t>("uly.ranges", s.B * s.Lq * 2) : nullptr;

  AllToAll a2a(env);
  a2a.seq_to_heads(io.q, p.lq, p.Hq, hs.hq, row, qh);
  a2a.seq_to_heads(io.k, p.lkv, p.Hkv, hs.hkv, row, kh);
  a2a.seq_to_heads(io.v, p.lkv, p.Hkv, hs.hkv, row, vh);
  if (rh) a2a.seq_to_heads(io.q_ranges, p.lq, 1, 1, 2 * sizeof(int32_t), rh, true);

  ForwardIO local{qh, kh, vh, rh, oh, lseh};
  local_forward(be, ws, s, p.dtype, p.scale, local, phase.timer);
  env.stats.steps = 1;

  a2a.heads_to_seq(oh, p.lq, p.Hq, hs.hq, row, io.o);
  a2a.lse_to_seq(lseh, p.lq, p.Hq, hs.hq, io.lse);
  phase.finish();
}

void ulysses_schedule_backward(ScheduleEnv& env, const BackwardIO& io) {
  const Plan& p = env.plan;
  Backend& be = env.backend;
  PhaseScope phase(env);
  const HeadSharded hs = head_sharded(p);
  const size_t es = dtype_size(p.dtype), row = p.D * es;
  const StepShape& s = hs.shape;
  Workspace& ws = env.workspace;
  const size_t q_bytes = s.B * s.Lq * s.Hq * row, kv_bytes = s.B * s.Lkv * s.Hkv * row;
  char* qh = static_cast<char*>(ws.get("uly.q", q_bytes));
  char* kh = static_cast<char*>(ws.get("uly.k", kv_bytes));
  char* vh = static_cast<char*>(ws.get("uly.v", kv_bytes));
  char* doh = static_cast<char*>(ws.get("uly.do", q_bytes));
  char* dqh = static_cast<char*>(ws.get("uly.dq", q_bytes));
  char* dkh = static_cast<char*>(ws.get("uly.dk", kv_bytes));
  char* dvh = static_cast<char*>(ws.get("uly.dv", kv_bytes));
  float* lseh = ws.get_as<float>("uly.lse", s.B * s.Hq * s.Lq);
  float* dlh = ws.get_as<float>("uly.dl", s.B * s.Hq * s.Lq);
  float* dl = ws.get_as<float>("uly.dl.own", p.B * p.Hq * p.lq[p.rank]);
  int32_t* rh = p.has_ranges ? ws.get_as<int32_t>("uly.ranges", s.B * s.Lq * 2) : nullptr;

  // Dl is computed where O lives and travels instead of O (1/D of the bytes).
  phase.timer.begin();
  be.row_dot(RowDot{p.B, p.lq[p.rank], p.Hq, p.D, p.dtype, io.dout, io.o, dl});
  phase.timer.end();
  AllToAll a2a(env);
  a2a.seq_to_heads(io.q, p.lq, p.Hq, hs.hq, row, qh);
  a2a.seq_to_heads(io.k, p.lkv, p.Hkv, hs.hkv, row, kh);
  a2a.seq_to_heads(io.v, p.lkv, p.Hkv, hs.hkv, row, vh);
  a2a.seq_to_heads(io.dout, p.lq, p.Hq, hs.hq, row, doh);
  a2a.lse_to_heads(io.lse, p.lq, p.Hq, hs.hq, lseh);
  a2a.lse_to_heads(dl, p.lq, p.Hq, hs.hq, dlh);
  if (rh) a2a.seq_to_heads(io.q_ranges, p.lq, 1, 1, 2 * sizeof(int32_t), rh, true);

  BackwardIO local{qh, kh, vh, rh, nullptr, lseh, doh, dqh, dkh, dvh};
  local_backward(be, ws, s, p.dtype, p.scale, local, phase.timer, dlh);
  env.stats.steps = 1;

  a2a.heads_to_seq(dqh, p.lq, p.Hq, hs.hq, row, io.dq);
  a2a.heads_to_seq(dkh, p.lkv, p.Hkv, hs.hkv, row, io.dk);
  a2a.heads_to_seq(dvh, p.lkv, p.Hkv, hs.hkv, row, io.dv);
  phase.finish();
}

}  // namespace lvx
