#include "plan/plan.hpp"

#include <algorithm>
#include <utility>

#include "core/error.hpp"

namespace lvx {

const char* name(LvxForm f) {
  switch (f) {
    case LvxForm::ring: return "ring";
    case LvxForm::single: return "single";
    case LvxForm::overlap: return "overlap";
  }
  return "unknown";
}

bool is_valid(LvxForm f) { return f == LvxForm::ring || f == LvxForm::single || f == LvxForm::overlap; }

LvxForm parse_lvx_form(const std::string& s) {
  for (LvxForm f : {LvxForm::ring, LvxForm::single, LvxForm::overlap})
    if (s == name(f)) return f;
  LVX_FAIL(Status::invalid_argument, "lvx_form must be one of 'ring', 'single', 'overlap', got '" + s + "'");
}

void Plan::set_rows(std::vector<int64_t> q_rows, std::vector<int64_t> kv_rows) {
  lq = std::move(q_rows);
  lkv = std::move(kv_rows);
  P = static_cast<int>(lq.size());
  q_off.assign(P, 0);
  kv_off.assign(P, 0);
  lq_total = lkv_total = lq_max = lkv_max = 0;
  for (int r = 0; r < P; ++r) {
    q_off[r] = lq_total;
    kv_off[r] = lkv_total;
    lq_total += lq[r];
    lkv_total += lkv[r];
    lq_max = std::max(lq_max, lq[r]);
    lkv_max = std::max(lkv_max, lkv[r]);
  }
}

}  // namespace lvx
