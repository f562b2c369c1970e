#include "plan/cost_model.hpp"

#include <algorithm>
#include <string>

#include "core/error.hpp"

namespace lvx {

namespace {

double attn_flops(const Plan& p, int64_t lq, int64_t lkv) {
  return 4.0 * p.B * p.Hq * static_cast<double>(lq) * lkv * p.D;
}

// Steps of a ring schedule: every rank's step t has the same structure; the
// slowest rank sets the pace, so use the largest blocks.
struct RingCost {
  double step_compute, step_bytes_in, step_bytes_acc;
};

double ring_time(const Plan& p, const CostParams& c, const RingCost& r, bool acc_travels) {
  const double t_in = r.step_bytes_in / c.bytes_per_s + c.latency_s;
  const double t_acc = acc_travels ? r.step_bytes_acc / c.bytes_per_s + c.latency_s : 0.0;
  // P − 1 steps overlap a prefetch and an accumulator hop with compute. The two go
  // to the next rank as separate transfers that run side by side (measured on NCCL:
  // one transfer does not fill the link), so the longer one counts. The last step
  // has no prefetch, and its hop (home to the owner) cannot overlap anything.
  const double step = std::max(r.step_compute, std::max(t_in, t_acc));
  return (p.P - 1) * step + std::max(r.step_compute, t_acc) + t_acc;
}

}  // namespace

CostParams make_cost_params(double flops_per_s, double bytes_per_s, double latency_s, const std::vector<double>& kernel) {
  LVX_REQUIRE(flops_per_s > 0 && bytes_per_s > 0 && latency_s >= 0,
              "cost parameters: flops_per_s and bytes_per_s must be > 0 and latency_s >= 0");
  LVX_REQUIRE(kernel.empty() || kernel.size() == 8,
              "cost parameters: kernel takes 8 numbers (forward, then backward: s_per_flop, s_per_kv_elem, "
              "s_per_q_elem, s_per_call), got " + std::to_string(kernel.size()));
  for (double v : kernel) LVX_REQUIRE(v >= 0, "cost parameters: kernel terms must be >= 0");
  CostParams c;
  c.flops_per_s = flops_per_s;
  c.bytes_per_s = bytes_per_s;
  c.latency_s = latency_s;
  if (!kernel.empty()) {
    c.fwd = {kernel[0], kernel[1], kernel[2], kernel[3]};
    c.bwd = {kernel[4], kernel[5], kernel[6], kernel[7]};
  }
  return c;
}

const LinkCost* link_of(const CostParams& c, TransportKind t) {
  switch (t) {
    case TransportKind::nccl: return &c.nccl;
    case TransportKind::mpi_direct: return &c.mpi_direct;
    case TransportKind::mpi_staged: return &c.mpi_staged;
    default: return nullptr;
  }
}

void set_link(CostParams& c, TransportKind t, double bytes_per_s, double latency_s) {
  LinkCost* link = t == TransportKind::nccl         ? &c.nccl
                   : t == TransportKind::mpi_direct ? &c.mpi_direct
                   : t == TransportKind::mpi_staged ? &c.mpi_staged
                                                    : nullptr;
  LVX_REQUIRE(link, std::string("cost parameters: links are for nccl, mpi-direct and mpi-staged, got '") + name(t) + "'");
  LVX_REQUIRE(bytes_per_s > 0 && latency_s >= 0,
              std::string("cost parameters: the link of '") + name(t) + "' needs bytes_per_s > 0 and latency_s >= 0");
  *link = LinkCost{bytes_per_s, latency_s};
}

CostParams with_link(const CostParams& c, TransportKind t) {
  CostParams out = c;
  const LinkCost* link = link_of(c, t);
  if (link && link->bytes_per_s > 0) {
    out.bytes_per_s = link->bytes_per_s;
    out.latency_s = link->latency_s;
  }
  return out;
}

double step_seconds(const KernelCost& k, double flops_per_s, double flops, double q_elems, double kv_elems) {
  const double per_flop = k.s_per_flop > 0 ? k.s_per_flop : 1.0 / flops_per_s;
  return flops * per_flop + kv_elems * k.s_per_kv_elem + q_elems * k.s_per_q_elem;
}

Prediction predict(Algorithm a, const Plan& p, const CostParams& c) {
  Prediction out;
  const double es = static_cast<double>(dtype_size(p.dtype));
  const int P = p.P;
  const int r = p.rank;
  // One ring step (or the whole problem when P = 1): the largest blocks pace it.
  const double fl_fwd = attn_flops(p, p.lq_max, p.lkv_max);
  const double q_el = double(p.B) * p.lq_max * p.Hq * p.D, kv_el = double(p.B) * p.lkv_max * p.Hkv * p.D;
  const double c_fwd = step_seconds(c.fwd, c.flops_per_s, fl_fwd, q_el, kv_el);
  const double c_bwd = step_seconds(c.bwd, c.flops_per_s, 2.5 * fl_fwd, q_el, kv_el);
  if (P == 1) {
    out.forward_s = c_fwd + c.fwd.s_per_call;
    out.backward_s = c_bwd + c.bwd.s_per_call;
    return out;
  }
  auto sum_blocks = [&](const std::vector<int64_t>& rows, double row_bytes, int steps) {
    // bytes this rank sends over `steps` steps: blocks r, r−1, …
    double b = 0;
    for (int t = 0; t < steps; ++t) b += rows[((r - t) % P + P) % P] * row_bytes;
    return b;
  };
  const double q_row = p.B * p.Hq * p.D, lse_row = p.B * p.Hq, kv_row = p.B * p.Hkv * p.D;
  const double rng = p.has_ranges ? 8.0 * p.B : 0.0;
  switch (a) {
    case Algorithm::lvx: {
      const double in_f = q_row * es + rng, acc_f = 4.0 * (q_row + lse_row);
      const double in_b = 2 * q_row * es + 8.0 * lse_row + rng, acc_b = 4.0 * q_row;
      if (p.lvx_gathered()) {
        // The gather (P − 1 messages each way at once), overlapped with a step over
        // the own block or not; one step over the rest; the others' partial results
        // go home (exposed). The slowest rank paces everyone.
        auto gather_time = [&](const KernelCost& k, double flop_factor, double in, double acc) {
          double worst = 0;
          for (int q = 0; q < P; ++q) {
            const double own = p.lq[q], others = p.lq_total - own;
            const double lkv = p.lkv[q];
            auto step = [&](double rows) {
              if (rows <= 0) return 0.0;
              return step_seconds(k, c.flops_per_s, flop_factor * attn_flops(p, int64_t(rows), int64_t(lkv)),
                                  double(p.B) * rows * p.Hq * p.D, double(p.B) * lkv * p.Hkv * p.D);
            };
            const double t_in = std::max(own * (P - 1), others) * in / c.bytes_per_s + c.latency_s;
            const double t_back = std::max(own * (P - 1), others) * acc / c.bytes_per_s + c.latency_s;
            worst = std::max(worst, p.lvx_overlapped() ? std::max(step(own), t_in) + step(others) + t_back
                                                  : t_in + step(own + others) + t_back);
          }
          return worst;
        };
        const double own = p.lq[r], others = p.lq_total - own;
        out.forward_bytes = static_cast<uint64_t>(own * (P - 1) * in_f + others * acc_f + 0.5);
        out.backward_bytes = static_cast<uint64_t>(own * (P - 1) * in_b + others * acc_b + 0.5);
        out.forward_s = gather_time(c.fwd, 1.0, in_f, acc_f);
        out.backward_s = gather_time(c.bwd, 2.5, in_b, acc_b);
        break;
      }
      out.forward_bytes = static_cast<uint64_t>(sum_blocks(p.lq, in_f, P - 1) + sum_blocks(p.lq, acc_f, P) + 0.5);
      out.backward_bytes = static_cast<uint64_t>(sum_blocks(p.lq, in_b, P - 1) + sum_blocks(p.lq, acc_b, P) + 0.5);
      out.forward_s = ring_time(p, c, {c_fwd, p.lq_max * in_f, p.lq_max * acc_f}, true);
      out.backward_s = ring_time(p, c, {c_bwd, p.lq_max * in_b, p.lq_max * acc_b}, true);
      break;
    }
    case Algorithm::ring: {
      const double in = 2 * kv_row * es, acc_b = 8.0 * kv_row;
      out.forward_bytes = static_cast<uint64_t>(sum_blocks(p.lkv, in, P - 1));
      out.backward_bytes = static_cast<uint64_t>(sum_blocks(p.lkv, in, P - 1) + sum_blocks(p.lkv, acc_b, P));
      out.forward_s = ring_time(p, c, {c_fwd, p.lkv_max * in, 0}, false);
      out.backward_s = ring_time(p, c, {c_bwd, p.lkv_max * in, p.lkv_max * acc_b}, true);
      break;
    }
    case Algorithm::ulysses: {
      if (p.Hq % P || p.Hkv % P) {
        out.feasible = false;
        return out;
      }
      // Out: 1/P of the heads of this rank's rows to each other rank. Back: this
      // rank's heads of every other rank's rows.
      const double part = double(P - 1) / P;
      const double lq = p.lq[r], lkv = p.lkv[r];
      const double lq_other = p.lq_total - lq, lkv_other = p.lkv_total - lkv;
      const double rows_out = p.has_ranges ? 8.0 * p.B * lq * (P - 1) : 0.0;
      const double f_bytes = part * (lq * q_row * es + 2 * lkv * kv_row * es) + rows_out +
                             lq_other * (q_row * es + 4 * lse_row) / P;
      const double b_bytes = part * (2 * lq * q_row * es + 2 * lkv * kv_row * es + 8 * lq * lse_row) +
                             rows_out + (lq_other * q_row + 2 * lkv_other * kv_row) * es / P;
      out.forward_bytes = static_cast<uint64_t>(f_bytes + 0.5);
      out.backward_bytes = static_cast<uint64_t>(b_bytes + 0.5);
      // One local attention over all rows with H/P heads.
      const double fl = attn_flops(p, p.lq_total, p.lkv_total) / P;
      const double hq_el = double(p.B) * p.lq_total * p.Hq * p.D / P;
      const double hkv_el = double(p.B) * p.lkv_total * p.Hkv * p.D / P;
      // Each all-to-all is one round of P − 1 concurrent messages: forward Q, K, V
      // out and O, LSE back; backward Q, K, V, dO, LSE, Dl out and dQ, dK, dV back
      // (and q_ranges out in each).
      const double rng_round = p.has_ranges ? 1.0 : 0.0;
      out.forward_s = step_seconds(c.fwd, c.flops_per_s, fl, hq_el, hkv_el) + f_bytes / c.bytes_per_s +
                      (5 + rng_round) * c.latency_s;
      out.backward_s = step_seconds(c.bwd, c.flops_per_s, 2.5 * fl, hq_el, hkv_el) + b_bytes / c.bytes_per_s +
                       (9 + rng_round) * c.latency_s;
      break;
    }
    case Algorithm::automatic: break;
  }
  out.forward_s += c.fwd.s_per_call;
  out.backward_s += c.bwd.s_per_call;
  return out;
}

double lvx_gather_bytes(const Plan& p) {
  // Gathered Q and dO (storage dtype), LSE and Dl, and the fp32 dQ of the others,
  // plus this rank's own fp32 dQ.
  const double rows = double(p.B) * p.lq_total;
  return rows * p.Hq * (p.D * (2.0 * dtype_size(p.dtype) + 8.0) + 8.0);
}

LvxForm choose_lvx_form(const Plan& p, const Settings& s, bool device_direct) {
  if (p.P == 1) return LvxForm::ring;
  switch (s.gather_mode) {
    case GatherMode::ring: return LvxForm::ring;
    case GatherMode::single: return LvxForm::single;
    case GatherMode::overlap: return LvxForm::overlap;
    case GatherMode::any: break;
    case GatherMode::automatic:
      if (!device_direct || lvx_gather_bytes(p) > double(s.gather_max_bytes)) return LvxForm::ring;
      break;
  }
  int64_t lkv_min = p.lkv_max, lq_min = p.lq_max;
  for (int r = 0; r < p.P; ++r) {
    lkv_min = std::min(lkv_min, p.lkv[r]);
    lq_min = std::min(lq_min, p.lq[r]);
  }
  return double(lkv_min) * p.Hkv < 1.5 * double(p.lq_total - lq_min) * p.Hq ? LvxForm::overlap : LvxForm::single;
}

Algorithm choose_algorithm(const Plan& plan, const CostParams& c) {
  Algorithm best = Algorithm::lvx;
  double best_t = -1;
  for (Algorithm a : {Algorithm::lvx, Algorithm::ring, Algorithm::ulysses}) {
    Prediction pr = predict(a, plan, c);
    if (!pr.feasible) continue;
    const double t = pr.forward_s + pr.backward_s;
    if (best_t < 0 || t < best_t) {
      best = a;
      best_t = t;
    }
  }
  return best;
}

}  // namespace lvx
