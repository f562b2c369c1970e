// Predicted time and bytes of each algorithm for a plan (what algorithm="auto"
// uses). Per step, a ring schedule costs max(compute, transfer) because the two
// overlap, plus the transfers that cannot overlap (the accumulator's last hop).
#pragma once

#include <cstdint>
#include <vector>

#include "plan/plan.hpp"
#include "plan/settings.hpp"

namespace lvx {

// Seconds of one attention step of one phase on one rank:
//   flops · s_per_flop + (B·Lkv·Hkv·D) · s_per_kv_elem + (B·Lq·Hq·D) · s_per_q_elem,
// plus s_per_call once per phase (the call's setup: plan, allocations, launches).
// The row terms carry what does not shrink with the other length (K/V tiles loaded
// and dK/dV written once per step, fills, merges). Backward flops are 2.5× forward
// flops. A zero s_per_flop means 1 / flops_per_s.
struct KernelCost {
  double s_per_flop = 0, s_per_kv_elem = 0, s_per_q_elem = 0, s_per_call = 0;
};

// One transport's point-to-point rate on the communicator (lvxattn.calibrate measures it
// with the transport itself).
struct LinkCost {
  double bytes_per_s = 0;  // per direction; 0: not calibrated
  double latency_s = 0;    // per message
};

struct CostParams {
  double flops_per_s = 50e9;      // sustained attention kernel rate on one rank
  double bytes_per_s = 5e9;       // point-to-point bandwidth per direction
  double latency_s = 5e-6;        // per message
  KernelCost fwd, bwd;            // calibrated step costs (zeros: flops_per_s alone)
  // The device transports' own links. Where every transport a call may use has one,
  // transport "auto" (and "mpi") takes the one with the smallest predicted time; a plan
  // is priced with its transport's link (bytes_per_s and latency_s above otherwise).
  LinkCost nccl, mpi_direct, mpi_staged;
};

// The link of a device transport (nccl, mpi_direct, mpi_staged), or null.
const LinkCost* link_of(const CostParams& c, TransportKind t);
// Sets it; invalid argument for another transport, bytes_per_s <= 0 or latency_s < 0.
void set_link(CostParams& c, TransportKind t, double bytes_per_s, double latency_s);
// c priced for transport t: its link's rates where calibrated.
CostParams with_link(const CostParams& c, TransportKind t);

// Checked parameters: flops_per_s and bytes_per_s > 0, latency_s >= 0; kernel empty or 8
// numbers >= 0 (forward, then backward: s_per_flop, s_per_kv_elem, s_per_q_elem, s_per_call).
CostParams make_cost_params(double flops_per_s, double bytes_per_s, double latency_s, const std::vector<double>& kernel);

// Seconds of one step of B·Lq·Hq queries against B·Lkv·Hkv keys (D per head),
// without the per-call part.
double step_seconds(const KernelCost& k, double flops_per_s, double flops, double q_elems, double kv_elems);

struct Prediction {
  double forward_s = 0, backward_s = 0;
  uint64_t forward_bytes = 0, backward_bytes = 0;  // bytes this rank sends
  bool feasible = true;                            // ulysses needs heads divisible by P
};

Prediction predict(Algorithm a, const Plan& plan, const CostParams& c);
// The feasible algorithm with the smallest predicted forward+backward time.
Algorithm choose_algorithm(const Plan& plan, const CostParams& c);

// lvx's form for a plan (Plan::lvx_form) under the settings (LVX_LVX_GATHER,
// LVX_GATHER_MAX_MB), for a transport that moves device buffers directly or not:
//   - gathered or ring: as forced; under auto, gathered only where the transport moves
//     device buffers without host staging (through pinned host buffers the ring, which
//     overlaps every transfer, is faster: measured on 4 H200s) and the gathered buffers
//     fit in gather_max_bytes. On GPUs one long step runs much closer to the kernel's
//     peak than P short ones.
//   - overlap or single, unless forced: overlap when Lkv·Hkv < 1.5 · (the others' Lq·Hq).
//     The extra step pays a pass over the local K/V (~1.5 ns per K/V row-head in the
//     backward on an H200, D = 128) to hide the gather (~2.2 ns per gathered query
//     row-head: Q and dO at ~235 GB/s over NVLink); the ratio, ~1.5, picked the faster
//     form on all five shapes of the 4x H200 table.
LvxForm choose_lvx_form(const Plan& p, const Settings& s, bool device_direct);
// Bytes of the query-side buffers a gathered lvx backward holds.
double lvx_gather_bytes(const Plan& p);

}  // namespace lvx
