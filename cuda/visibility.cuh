// Pieces that keep values a query row cannot see out of its results (the design is at
// the top of attend_fwd.cuh): column masks of q_ranges intervals, non-finite tests on
// packed 16-bit pairs, the select of mma.sync B operands, element access to mma.sync
// A fragments, and shared-memory row scans of the swizzled sm_90a tiles.
#pragma once

#include <cstdint>

#include "mma.cuh"
#include "wgmma.cuh"

namespace lvx::cuda {

// Bits 15 and 31 set where the low / high 16-bit value of x is NaN or ±Inf (exponent
// all ones): adding one unit below the exponent field carries into the sign bit only then.
template <typename T> __device__ __forceinline__ uint32_t nonfinite_halves(uint32_t x);
template <> __device__ __forceinline__ uint32_t nonfinite_halves<__nv_bfloat16>(uint32_t x) {
  return ((x & 0x7F807F80u) + 0x00800080u) & 0x80008000u;
}
template <> __device__ __forceinline__ uint32_t nonfinite_halves<__half>(uint32_t x) {
  return ((x & 0x7C007C00u) + 0x04000400u) & 0x80008000u;
}
// 0xFFFF in each half whose bit 15 / 31 is set in m (a nonfinite_halves result).
__device__ __forceinline__ uint32_t halves_of(uint32_t m) { return (m >> 15) * 0xFFFFu; }
// NaN or ±Inf / NaN, by the bits (independent of fast-math assumptions).
__device__ __forceinline__ bool nonfinite(float x) { return (__float_as_uint(x) & 0x7F800000u) == 0x7F800000u; }
__device__ __forceinline__ bool is_nan(float x) { return (__float_as_uint(x) & 0x7FFFFFFFu) > 0x7F800000u; }

// Bit c set when column c0 + c (c < 32) lies in [a, b).
__device__ __forceinline__ uint32_t interval_bits(int a, int b, int c0) {
  const int lo = min(max(a - c0, 0), 32), hi = min(max(b - c0, 0), 32);
  const uint32_t below_hi = hi >= 32 ? 0xFFFFFFFFu : (1u << hi) - 1u;
  const uint32_t below_lo = lo >= 32 ? 0xFFFFFFFFu : (1u << lo) - 1u;
  return hi > lo ? below_hi & ~below_lo : 0u;
}

// Select of one k16 slice of an mma.sync B operand loaded by ldmatrix_x4_trans from
// [k][n] rows (mma.cuh): registers 0 and 2 hold slice rows 2t, 2t + 1, registers 1 and 3
// rows 2t + 8, 2t + 9. Values in `hidden` rows (bit c: slice row c is not seen by every
// row of the product) that are NaN or ±Inf become 0; zeroed_rows() says where that
// happened, so that the rows which do see them can add their terms back.
struct SliceSelect {
  uint32_t rows_lo, rows_hi;        // bits 15 / 31: hidden rows 2t / 2t + 1, 2t + 8 / 2t + 9
  uint32_t zeroed_lo = 0, zeroed_hi = 0;
  __device__ __forceinline__ SliceSelect(uint32_t hidden, int t)
      : rows_lo((((hidden >> (2 * t)) & 1u) << 15) | (((hidden >> (2 * t + 1)) & 1u) << 31)),
        rows_hi((((hidden >> (2 * t + 8)) & 1u) << 15) | (((hidden >> (2 * t + 9)) & 1u) << 31)) {}
  template <typename T>
  __device__ __forceinline__ void apply(uint32_t (&b)[4]) {
    const uint32_t z0 = nonfinite_halves<T>(b[0]) & rows_lo, z2 = nonfinite_halves<T>(b[2]) & rows_lo;
    const uint32_t z1 = nonfinite_halves<T>(b[1]) & rows_hi, z3 = nonfinite_halves<T>(b[3]) & rows_hi;
    b[0] &= ~halves_of(z0);
    b[1] &= ~halves_of(z1);
    b[2] &= ~halves_of(z2);
    b[3] &= ~halves_of(z3);
    zeroed_lo |= z0 | z2;
    zeroed_hi |= z1 | z3;
  }
  // Slice rows (bit c) in which this thread zeroed a value; OR over the warp for all.
  __device__ __forceinline__ uint32_t zeroed_rows(int t) const {
    return (((zeroed_lo >> 15) & 1u) << (2 * t)) | (((zeroed_lo >> 31) & 1u) << (2 * t + 1)) |
           (((zeroed_hi >> 15) & 1u) << (2 * t + 8)) | (((zeroed_hi >> 31) & 1u) << (2 * t + 9));
  }
};

// Elements (row g, column c) and (row g + 8, column c) of m16k16 A fragments a[c / 16]
// (mma.cuh layout), c the same in every lane (every lane calls): the quad's lane
// 4g + (c % 8) / 2 holds them in registers (c % 16 >= 8 ? 2 : 0) + {0, 1}, half c % 2.
template <typename T, int K16>
__device__ __forceinline__ float2 a_frag_pair(const uint32_t (&a)[K16][4], int c, int lane) {
  uint32_t r0 = 0, r1 = 0;
  const int kk = c >> 4;
  const bool upper = (c & 8) != 0;
#pragma unroll
  for (int i = 0; i < K16; ++i) {
    const uint32_t x0 = upper ? a[i][2] : a[i][0], x1 = upper ? a[i][3] : a[i][1];
    r0 = i == kk ? x0 : r0;
    r1 = i == kk ? x1 : r1;
  }
  const int src = (lane & ~3) | ((c >> 1) & 3);
  r0 = __shfl_sync(0xffffffffu, r0, src);
  r1 = __shfl_sync(0xffffffffu, r1, src);
  const float2 f0 = Pack2<T>::to_float2(r0), f1 = Pack2<T>::to_float2(r1);
  return (c & 1) ? make_float2(f0.y, f1.y) : make_float2(f0.x, f1.x);
}
template <typename T>
__device__ __forceinline__ float2 a_frag_pair(const uint32_t (&a)[4], int c, int lane) {
  return a_frag_pair<T, 1>(reinterpret_cast<const uint32_t(&)[1][4]>(a), c, lane);
}

// Shared-memory access by byte address (the sm_90a kernels' tiles).
__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ uint16_t lds16(uint32_t addr) {
  uint16_t v;
  asm volatile("ld.shared.b16 %0, [%1];\n" : "=h"(v) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ uint4 lds128(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr)
               : "memory");
  return v;
}
__device__ __forceinline__ void sts128_zero(uint32_t addr) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};\n" ::"r"(addr), "r"(0u) : "memory");
}

// Row `row` of a swizzled-rows tile (layout L of wgmma.cuh) of `rows` rows and kChunks
// 16-byte chunks per row (8 per 64 16-bit columns, over all column blocks): set to zero;
// or whether it holds a NaN or ±Inf.
template <typename L = Swz128, int kChunks = 16>
__device__ __forceinline__ void zero_tile_row(uint32_t tile, int rows, int row) {
#pragma unroll
  for (int ch = 0; ch < kChunks; ++ch) sts128_zero(tile + L::offset(rows, row, ch));
}
// The scan takes one packed fma per 32-bit word: acc = x·0 + acc is NaN from the first x
// that holds a NaN or ±Inf (0·±Inf is NaN) and ±0 otherwise, so the four accumulators
// hold only ±0 or NaN and their OR has an all-ones exponent exactly when one is NaN.
// (nonfinite_halves per word takes three integer operations.)
template <typename T> __device__ __forceinline__ uint32_t fma_zero2(uint32_t x, uint32_t acc);
template <> __device__ __forceinline__ uint32_t fma_zero2<__nv_bfloat16>(uint32_t x, uint32_t acc) {
  uint32_t d;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(x), "r"(0u), "r"(acc));
  return d;
}
template <> __device__ __forceinline__ uint32_t fma_zero2<__half>(uint32_t x, uint32_t acc) {
  uint32_t d;
  asm("fma.rn.f16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(x), "r"(0u), "r"(acc));
  return d;
}
template <typename T, typename L = Swz128, int kChunks = 16>
__device__ __forceinline__ bool tile_row_nonfinite(uint32_t tile, int rows, int row) {
  uint32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma unroll
  for (int ch = 0; ch < kChunks; ++ch) {
    const uint4 v = lds128(tile + L::offset(rows, row, ch));
    a0 = fma_zero2<T>(v.x, a0);
    a1 = fma_zero2<T>(v.y, a1);
    a2 = fma_zero2<T>(v.z, a2);
    a3 = fma_zero2<T>(v.w, a3);
  }
  return nonfinite_halves<T>(a0 | a1 | a2 | a3) != 0;
}
// Two 16-bit values (row, columns 8·chunk + 2q, + 1; q < 4) of such a tile, as floats.
template <typename T, typename L = Swz128>
__device__ __forceinline__ float2 tile_pair(uint32_t tile, int rows, int row, int chunk, int q) {
  return Pack2<T>::to_float2(lds32(tile + L::offset(rows, row, chunk) + 4 * q));
}
// One 16-bit value (row, column 8·chunk + e; e < 8) of such a tile, as a float.
template <typename T, typename L = Swz128>
__device__ __forceinline__ float tile_elem(uint32_t tile, int rows, int row, int chunk, int e) {
  const uint16_t h = lds16(tile + L::offset(rows, row, chunk) + 2 * e);
  return Pack2<T>::to_float2((uint32_t)h).x;
}

}  // namespace lvx::cuda
