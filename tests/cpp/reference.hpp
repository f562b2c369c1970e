// Float64 reference attention for the C++ tests, written out explicitly
// (scores, softmax, products) with masks and grouped-query heads.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace ref {

struct Shape {
  int64_t B, Lq, Lkv, Hq, Hkv, D;
};

struct Result {
  std::vector<double> o, lse, dq, dk, dv;
};

// q [B,Lq,Hq,D], k/v [B,Lkv,Hkv,D], dout like q; ranges [B,Lq,2] (empty: all).
inline Result attention(const Shape& s, const std::vector<double>& q, const std::vector<double>& k,
                        const std::vector<double>& v, const std::vector<int32_t>& ranges, double scale,
                        const std::vector<double>* dout) {
  Result r;
  r.o.assign(s.B * s.Lq * s.Hq * s.D, 0.0);
  r.lse.assign(s.B * s.Hq * s.Lq, -std::numeric_limits<double>::infinity());
  r.dq.assign(q.size(), 0.0);
  r.dk.assign(k.size(), 0.0);
  r.dv.assign(v.size(), 0.0);
  const int64_t G = s.Hq / s.Hkv;
  std::vector<double> p(s.Lkv), dp(s.Lkv);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.Hq; ++h)
      for (int64_t i = 0; i < s.Lq; ++i) {
        const int64_t g = h / G;
        int64_t lo = 0, hi = s.Lkv;
        if (!ranges.empty()) {
          lo = std::max<int64_t>(0, ranges[(b * s.Lq + i) * 2]);
          hi = std::min<int64_t>(s.Lkv, ranges[(b * s.Lq + i) * 2 + 1]);
        }
        if (hi <= lo) continue;
        const double* qi = &q[((b * s.Lq + i) * s.Hq + h) * s.D];
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t j = lo; j < hi; ++j) {
          const double* kj = &k[((b * s.Lkv + j) * s.Hkv + g) * s.D];
          double acc = 0;
          for (int64_t d = 0; d < s.D; ++d) acc += qi[d] * kj[d];
          p[j] = acc * scale;
          m = std::max(m, p[j]);
        }
        double sum = 0;
        for (int64_t j = lo; j < hi; ++j) sum += std::exp(p[j] - m);
        const double lse = m + std::log(sum);
        r.lse[(b * s.Hq + h) * s.Lq + i] = lse;
        double* oi = &r.o[((b * s.Lq + i) * s.Hq + h) * s.D];
        for (int64_t j = lo; j < hi; ++j) {
          p[j] = std::exp(p[j] - lse);
          const double* vj = &v[((b * s.Lkv + j) * s.Hkv + g) * s.D];
          for (int64_t d = 0; d < s.D; ++d) oi[d] += p[j] * vj[d];
        }
        if (!dout) continue;
        const double* di = &(*dout)[((b * s.Lq + i) * s.Hq + h) * s.D];
        double dl = 0;
        for (int64_t d = 0; d < s.D; ++d) dl += di[d] * oi[d];
        double* dqi = &r.dq[((b * s.Lq + i) * s.Hq + h) * s.D];
        for (int64_t j = lo; j < hi; ++j) {
          const int64_t kv = ((b * s.Lkv + j) * s.Hkv + g) * s.D;
          double dpj = 0;
          for (int64_t d = 0; d < s.D; ++d) dpj += di[d] * v[kv + d];
          const double ds = p[j] * (dpj - dl);
          for (int64_t d = 0; d < s.D; ++d) {
            r.dv[kv + d] += p[j] * di[d];
            r.dk[kv + d] += scale * ds * qi[d];
            dqi[d] += scale * ds * k[kv + d];
          }
        }
      }
  return r;
}

inline std::vector<double> randn(size_t n, std::mt19937& gen) {
  std::normal_distribution<double> dist(0.0, 1.0);
  std::vector<double> x(n);
  for (auto& e : x) e = dist(gen);
  return x;
}

// ‖a − b‖ / ‖b‖ (absolute when ‖b‖ is 0); rows where both are -inf count as equal.
inline double rel_err(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isinf(b[i]) && a[i] == b[i]) continue;
    if (!std::isfinite(a[i]) || std::isinf(b[i])) return std::numeric_limits<double>::infinity();
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace ref
