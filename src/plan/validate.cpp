#include "plan/validate.hpp"

#include <cmath>
#include <limits>

#include "core/error.hpp"

namespace lvx {

namespace {

std::string check_shape(const Problem& p, Backend& backend) {
  const std::string D = std::to_string(p.D);
  if (p.B < 1) return "batch size must be >= 1, got " + std::to_string(p.B);
  if (p.Lq < 0 || p.Lkv < 0) return "query and KV lengths must be >= 0";
  if (p.Hq < 1 || p.Hkv < 1 || p.Hq % p.Hkv)
    return "query heads (" + std::to_string(p.Hq) + ") must be a positive multiple of KV heads (" +
           std::to_string(p.Hkv) + ")";
  if (p.D < 1 || p.D > kMaxHeadDim) return "head dim must be in [1, " + std::to_string(kMaxHeadDim) + "], got " + D;
  if (!is_valid(p.dtype)) return "unknown dtype " + std::to_string(int(p.dtype));
  if (!is_valid(p.algorithm)) return "unknown algorithm " + std::to_string(int(p.algorithm));
  if (std::isinf(p.scale)) return "scale must be finite, got " + std::to_string(p.scale);
  const std::string why = backend.head_dim_error(p.D);
  if (!why.empty()) return why;
  return "";
}

std::string check_ranges(const Problem& p, Backend& backend, int64_t* max_end) {
  *max_end = 0;
  if (!p.q_ranges) return "";
  const Backend::RangeSummary s = backend.summarize_ranges(p.q_ranges, p.B * p.Lq);
  if (s.min_begin < 0) return "q_ranges begin must be >= 0, got " + std::to_string(s.min_begin);
  if (s.reversed_rows)
    return "q_ranges must have begin <= end in every row (" + std::to_string(s.reversed_rows) + " rows have begin > end)";
  *max_end = s.max_end;
  return "";
}

}  // namespace

std::string validate(const Problem& call, Backend& backend, LocalProblem* out) {
  try {
    std::string error = check_shape(call, backend);
    int64_t max_end = 0;
    if (error.empty()) error = check_ranges(call, backend, &max_end);
    if (!error.empty()) return error;
    LocalProblem& l = *out;
    l.B = call.B;
    l.Lq = call.Lq;
    l.Lkv = call.Lkv;
    l.Hq = call.Hq;
    l.Hkv = call.Hkv;
    l.D = call.D;
    l.dtype = call.dtype;
    l.algorithm = call.algorithm;
    l.scale = std::isnan(call.scale) ? 1.f / std::sqrt(static_cast<float>(call.D)) : call.scale;
    l.has_ranges = call.q_ranges != nullptr;
    l.max_range_end = max_end;
    return "";
  } catch (const std::exception& e) {  // reading device ranges can fail (a bad pointer)
    return e.what();
  }
}

}  // namespace lvx
