// Predicted time and bytes of each algorithm for a plan (what algorithm="auto"
// uses). Per step, a ring schedule costs max(compute, transfer) because the two
// overlap, plus the transfers that cannot overlap (the accumulator's last hop).
#pragma once

#include <cstdint>

#include "plan.hpp"

namespace lvx {

struct CostParams {
  double flops_per_s = 50e9;      // sustained attention kernel rate on one rank
  double bytes_per_s = 5e9;       // point-to-point bandwidth per direction
  double latency_s = 5e-6;        // per message
};

struct Prediction {
  double forward_s = 0, backward_s = 0;
  uint64_t forward_bytes = 0, backward_bytes = 0;  // bytes this rank sends
  bool feasible = true;                            // ulysses needs heads divisible by P
};

Prediction predict(Algorithm a, const Plan& plan, const CostParams& c);
// The feasible algorithm with the smallest predicted forward+backward time.
Algorithm choose_algorithm(const Plan& plan, const CostParams& c);

}  // namespace lvx
