// Storage types of the CPU kernels and their conversion to and from fp32.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/kernels.hpp"
#include "cpu/isa.hpp"

namespace lvx::cpu {
inline namespace LVX_CPU_ISA {

struct Bf16 {
  uint16_t bits;
};

inline float to_f32(float x) { return x; }
inline float to_f32(_Float16 x) { return static_cast<float>(x); }
inline float to_f32(Bf16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <typename T>
inline T from_f32(float x);
template <>
inline float from_f32<float>(float x) { return x; }
template <>
inline _Float16 from_f32<_Float16>(float x) { return static_cast<_Float16>(x); }
template <>
inline Bf16 from_f32<Bf16>(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return Bf16{static_cast<uint16_t>((u >> 16) | 0x40)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return Bf16{static_cast<uint16_t>(u >> 16)};
}

// Calls fn(T{}) with T the C++ storage type of `t`.
template <typename Fn>
inline void with_storage_type(DType t, Fn&& fn) {
  switch (t) {
    case DType::f32: fn(float{}); break;
    case DType::f16: fn(_Float16{}); break;
    case DType::bf16: fn(Bf16{}); break;
  }
}

}  // namespace LVX_CPU_ISA
}  // namespace lvx::cpu
