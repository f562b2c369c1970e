#include "core/backend.hpp"

#include <algorithm>

namespace lvx {

Backend::RangeSummary Backend::summarize_ranges(const int32_t* ranges, int64_t rows) {
  RangeSummary s;
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t b = ranges[2 * i], e = ranges[2 * i + 1];
    s.min_begin = i ? std::min(s.min_begin, b) : b;
    s.reversed_rows += b > e;
    s.max_end = std::max(s.max_end, e);
  }
  return s;
}

}  // namespace lvx
