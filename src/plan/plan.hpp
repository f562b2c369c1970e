// A plan: the global problem every rank agreed on for one call, and what the planner
// chose for it (algorithm, transport, lvx's form). The schedules execute it and decide
// nothing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/kernels.hpp"
#include "core/types.hpp"

namespace lvx {

// How lvx moves the query side (DESIGN.md): P ring steps, or gathered (every rank sends
// its query-side block to all others) and attended to in one step (single), or in two
// with this rank's own block first while the others arrive (overlap).
enum class LvxForm : int32_t { ring = 0, single = 1, overlap = 2 };
const char* name(LvxForm f);
bool is_valid(LvxForm f);
LvxForm parse_lvx_form(const std::string& s);  // throws "invalid argument" for other names

struct Plan {
  int P = 1, rank = 0;
  int64_t B = 0, Hq = 0, Hkv = 0, D = 0;
  DType dtype = DType::f32;
  Algorithm algorithm = Algorithm::lvx;  // resolved: never automatic
  TransportKind transport = TransportKind::none;  // the path that moves the data (none when P == 1)
  LvxForm lvx_form = LvxForm::ring;      // lvx's form (ring unless algorithm is lvx and P > 1)
  float scale = 1.f;
  bool has_ranges = false;
  std::vector<int64_t> lq, lkv, q_off, kv_off;  // per rank
  int64_t lq_total = 0, lkv_total = 0, lq_max = 0, lkv_max = 0;

  bool lvx_gathered() const { return lvx_form != LvxForm::ring; }
  bool lvx_overlapped() const { return lvx_form == LvxForm::overlap; }
  StepShape step(int q_owner, int kv_owner) const {
    return StepShape{B, lq[q_owner], lkv[kv_owner], Hq, Hkv, D};
  }
  // Sets the rows of every rank (P = their count) and the offsets, totals and maxima.
  void set_rows(std::vector<int64_t> q_rows, std::vector<int64_t> kv_rows);
};

}  // namespace lvx
