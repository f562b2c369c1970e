// What every rank agrees on before a distributed call: the global problem built
// from one allgather of each rank's local description.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/kernels.hpp"

namespace lvx {

enum class Algorithm : int32_t { lvx = 0, ring = 1, ulysses = 2, automatic = 3 };
const char* algorithm_name(Algorithm a);

// One rank's view of a call.
struct LocalProblem {
  int64_t B = 0, Lq = 0, Lkv = 0, Hq = 0, Hkv = 0, D = 0;
  DType dtype = DType::f32;
  Algorithm algorithm = Algorithm::lvx;
  float scale = 0.f;          // already resolved (default 1/sqrt(D) applied)
  bool has_ranges = false;
  int64_t max_range_end = 0;  // largest q_ranges end on this rank (0 without ranges)
  int32_t device = 0;         // 0 CPU, 1 CUDA: where this rank's buffers live
};

struct Plan {
  int P = 1, rank = 0;
  int64_t B = 0, Hq = 0, Hkv = 0, D = 0;
  DType dtype = DType::f32;
  Algorithm algorithm = Algorithm::lvx;  // resolved: never automatic
  float scale = 1.f;
  bool has_ranges = false;
  std::vector<int64_t> lq, lkv, q_off, kv_off;  // per rank
  int64_t lq_total = 0, lkv_total = 0, lq_max = 0, lkv_max = 0;
  // lvx only: gather the query-side blocks instead of P ring steps (DESIGN.md),
  // then attend to all of them in one step (lvx_overlap false), or to this rank's
  // own block while the others arrive and to the others in a second step.
  bool lvx_gather = false;
  bool lvx_overlap = false;
  bool lvx_gather_forced = false;  // by LVX_LVX_GATHER, not chosen by auto

  StepShape step(int q_owner, int kv_owner) const {
    return StepShape{B, lq[q_owner], lkv[kv_owner], Hq, Hkv, D};
  }
};

// Fills offsets, totals and maxima from lq / lkv.
void finish_plan(Plan& p);

}  // namespace lvx
