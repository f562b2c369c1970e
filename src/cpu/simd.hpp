// Portable fp32 vectors (GCC/Clang vector extensions) as wide as the instruction
// set this file is compiled for: 16 lanes with AVX-512, 8 with AVX2, 4 otherwise.
// Only what the CPU kernels need.
#pragma once

#include <cstdint>
#include <cstring>

#include "cpu/isa.hpp"

#if defined(__AVX512F__)
#define LVX_LANES 16
#elif defined(__AVX__)
#define LVX_LANES 8
#else
#define LVX_LANES 4
#endif

namespace lvx::cpu {
inline namespace LVX_CPU_ISA {

typedef float vf __attribute__((vector_size(4 * LVX_LANES), aligned(4)));
typedef int32_t vi __attribute__((vector_size(4 * LVX_LANES), aligned(4)));
constexpr int kLanes = LVX_LANES;

inline vf splat(float x) { return vf{} + x; }
inline vi splat_i(int32_t x) { return vi{} + x; }
inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vi lane_index() {
  vi v;
  for (int i = 0; i < kLanes; ++i) v[i] = i;
  return v;
}

// exp(x) per lane, relative error ~2e-7 on [-87, 88]; below -87 (and -inf) gives 0.
// Cody–Waite reduction x = n·ln2 + r, |r| ≤ ln2/2, then a degree-6 polynomial.
inline vf vexp(vf x) {
  const vf hi = splat(88.3762626647949f);
  x = x > hi ? hi : x;  // keeps NaN
  vi underflow = x < splat(-87.0f);
  vf fx = x * splat(1.44269504088896341f) + splat(0.5f);
  vi n = __builtin_convertvector(fx, vi);
  n -= (__builtin_convertvector(n, vf) > fx) & 1;  // floor for negatives
  vf nf = __builtin_convertvector(n, vf);
  vf r = x - nf * splat(0.693359375f) + nf * splat(2.12194440e-4f);
  vf p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  vi bits = (n + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof scale);
  vf y = p * scale;
  vi ybits;
  std::memcpy(&ybits, &y, sizeof y);
  ybits &= ~underflow;
  std::memcpy(&y, &ybits, sizeof y);
  return y;
}

// Largest lane, ignoring NaN lanes (as `x > m ? x : m` does).
inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
inline float hsum(vf v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

}  // namespace LVX_CPU_ISA
}  // namespace lvx::cpu
