// Portable 16-lane fp32 vectors (GCC/Clang vector extensions): one AVX-512
// register, two AVX2 registers elsewhere. Only what the CPU kernels need.
#pragma once

#include <cstdint>
#include <cstring>

namespace lvx::cpu {

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t i16v __attribute__((vector_size(64), aligned(4)));
constexpr int kLanes = 16;

inline v16 splat(float x) { return v16{} + x; }
inline v16 load(const float* p) { v16 v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }

// exp(x) for a vector, relative error ~2e-7 on [-87, 88]; below -87 (and -inf) gives 0.
// Cody–Waite reduction x = n·ln2 + r, |r| ≤ ln2/2, then a degree-6 polynomial.
inline v16 exp16(v16 x) {
  const v16 hi = splat(88.3762626647949f);
  x = x > hi ? hi : x;  // keeps NaN
  i16v underflow = x < splat(-87.0f);
  v16 fx = x * splat(1.44269504088896341f) + splat(0.5f);
  i16v n = __builtin_convertvector(fx, i16v);
  n -= (__builtin_convertvector(n, v16) > fx) & 1;  // floor for negatives
  v16 nf = __builtin_convertvector(n, v16);
  v16 r = x - nf * splat(0.693359375f) + nf * splat(2.12194440e-4f);
  v16 p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  i16v bits = (n + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  v16 y = p * scale;
  i16v ybits;
  std::memcpy(&ybits, &y, sizeof y);
  ybits &= ~underflow;
  std::memcpy(&y, &ybits, sizeof y);
  return y;
}

inline float hmax(v16 v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
inline float hsum(v16 v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

}  // namespace lvx::cpu
