// Tile products with bf16 operands and fp32 sums on AVX-512 BF16 (vdpbf16ps: per
// fp32 lane, acc += a0·b0 + a1·b1 over a pair of bf16). Only the avx512bf16
// variant includes this (CMakeLists.txt; chosen at run time). No BLAS on PyPI
// ships a bf16 product (the scipy-openblas wheels are built without sbgemm), so
// this is lvxattn's own code; it is used for bf16 inputs, where it is ~2x the
// fp32 rate.
//
// Operands, with K counted in pairs (K2 = ⌈K/2⌉, an odd K padded with a zero):
//   A  row pairs         A[m][p] = {a(m, 2p), a(m, 2p+1)} in one uint32 (low half first)
//   B  pair-interleaved  B[p][n] = {b(2p, n), b(2p+1, n)}, rows of ≥ round16(N) + 16 uint32
// C[M×N] = alpha·A·B (+ C), fp32 row-major; only the N real columns are written.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/isa.hpp"

namespace lvx::cpu {
inline namespace LVX_CPU_ISA {

inline int64_t round16(int64_t x) { return (x + 15) / 16 * 16; }
// Row stride (uint32) of a pair-interleaved B of N columns: micro-kernel loads run
// up to 15 columns past the last one, and B may be entered at any column offset.
inline int64_t pair_ld(int64_t n) { return round16(n) + 16; }

template <int MR, int NV>
inline void dot_micro(int64_t k2, const uint32_t* a, int64_t sam, int64_t sap, const uint32_t* b, int64_t ldb,
                      float* c, int64_t ldc, float alpha, bool accumulate, __mmask16 tail) {
  __m512 s[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) s[m][v] = _mm512_setzero_ps();
  for (int64_t p = 0; p < k2; ++p) {
    __m512bh bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + p * ldb + 16 * v);
    for (int m = 0; m < MR; ++m) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[m * sam + p * sap]));
      for (int v = 0; v < NV; ++v) s[m][v] = _mm512_dpbf16_ps(s[m][v], av, bv[v]);
    }
  }
  const __m512 al = _mm512_set1_ps(alpha);
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) {
      float* cp = c + m * ldc + 16 * v;
      const __mmask16 k = v == NV - 1 ? tail : __mmask16(0xffff);
      __m512 r = _mm512_mul_ps(al, s[m][v]);
      if (accumulate) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(k, cp));
      _mm512_mask_storeu_ps(cp, k, r);
    }
}

template <int NV>
inline void dot_rows(int64_t M, int64_t k2, const uint32_t* a, int64_t sam, int64_t sap, const uint32_t* b,
                     int64_t ldb, float* c, int64_t ldc, float alpha, bool accumulate, __mmask16 tail) {
  constexpr int MR = 6;
  int64_t m = 0;
  for (; m + MR <= M; m += MR)
    dot_micro<MR, NV>(k2, a + m * sam, sam, sap, b, ldb, c + m * ldc, ldc, alpha, accumulate, tail);
  const uint32_t* ar = a + m * sam;
  float* cr = c + m * ldc;
  switch (M - m) {
    case 5: dot_micro<5, NV>(k2, ar, sam, sap, b, ldb, cr, ldc, alpha, accumulate, tail); break;
    case 4: dot_micro<4, NV>(k2, ar, sam, sap, b, ldb, cr, ldc, alpha, accumulate, tail); break;
    case 3: dot_micro<3, NV>(k2, ar, sam, sap, b, ldb, cr, ldc, alpha, accumulate, tail); break;
    case 2: dot_micro<2, NV>(k2, ar, sam, sap, b, ldb, cr, ldc, alpha, accumulate, tail); break;
    case 1: dot_micro<1, NV>(k2, ar, sam, sap, b, ldb, cr, ldc, alpha, accumulate, tail); break;
    default: break;
  }
}

// C[M×N] = alpha·A·B (+ C when accumulate); B as above, A's pair (m, p) at a[m·sam + p·sap]:
// row pairs (sam = K2, sap = 1) or, for Aᵀ of a pair-interleaved X, (sam = 1, sap = ld of X).
inline void gemm_bf16(int64_t M, int64_t N, int64_t k2, const uint32_t* a, int64_t sam, int64_t sap,
                      const uint32_t* b, int64_t ldb, float* c, int64_t ldc, float alpha, bool accumulate) {
  for (int64_t n = 0; n < N; n += 64) {
    const int64_t left = N - n;
    const int nv = left >= 64 ? 4 : static_cast<int>((left + 15) / 16);
    const int64_t rem = left - 16 * (nv - 1);  // 1..16 columns in the last vector
    const __mmask16 tail = rem >= 16 ? __mmask16(0xffff) : __mmask16((1u << rem) - 1);
    switch (nv) {
      case 4: dot_rows<4>(M, k2, a, sam, sap, b + n, ldb, c + n, ldc, alpha, accumulate, tail); break;
      case 3: dot_rows<3>(M, k2, a, sam, sap, b + n, ldb, c + n, ldc, alpha, accumulate, tail); break;
      case 2: dot_rows<2>(M, k2, a, sam, sap, b + n, ldb, c + n, ldc, alpha, accumulate, tail); break;
      default: dot_rows<1>(M, k2, a, sam, sap, b + n, ldb, c + n, ldc, alpha, accumulate, tail); break;
    }
  }
}

inline uint32_t pair(uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); }

// A row pairs from bf16 rows: rows × k of x (stride ldx) → dst rows of k2 = ⌈k/2⌉.
inline void pack_a_bf16(const uint16_t* x, int64_t ldx, int64_t rows, int64_t k, uint32_t* dst) {
  const int64_t k2 = (k + 1) / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* s = x + r * ldx;
    uint32_t* d = dst + r * k2;
    std::memcpy(d, s, (k / 2) * sizeof(uint32_t));
    if (k & 1) d[k2 - 1] = pair(s[k - 1], 0);
  }
}

// A row pairs from fp32 rows (rounded to nearest even bf16): rows × k of x (stride ldx).
inline void pack_a_f32(const float* x, int64_t ldx, int64_t rows, int64_t k, uint32_t* dst) {
  const int64_t k2 = (k + 1) / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = x + r * ldx;
    uint16_t* d = reinterpret_cast<uint16_t*>(dst + r * k2);
    int64_t c = 0;
    for (; c + 16 <= k; c += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + c), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(s + c)));
    if (c < k) {
      const __mmask16 m = __mmask16((1u << (k - c)) - 1);
      const __m256i v = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, s + c));
      _mm256_mask_storeu_epi16(d + c, m, v);
    }
    if (k & 1) d[k] = 0;
  }
}

// B = Xᵀ pair-interleaved from bf16 rows: X is n × k (stride ldx); B[p][j] = {x(j, 2p), x(j, 2p+1)}.
inline void pack_bt_bf16(const uint16_t* x, int64_t ldx, int64_t n, int64_t k, uint32_t* dst, int64_t ldd) {
  const int64_t k2 = (k + 1) / 2;
  for (int64_t j = 0; j < n; ++j) {
    const uint16_t* s = x + j * ldx;
    for (int64_t p = 0; p < k / 2; ++p) {
      uint32_t w;
      std::memcpy(&w, s + 2 * p, sizeof w);
      dst[p * ldd + j] = w;
    }
    if (k & 1) dst[(k2 - 1) * ldd + j] = pair(s[k - 1], 0);
  }
  for (int64_t p = 0; p < k2; ++p)
    for (int64_t j = n; j < ldd; ++j) dst[p * ldd + j] = 0;
}

// B pair-interleaved from bf16 rows: X is k × n (stride ldx); B[p][j] = {x(2p, j), x(2p+1, j)}.
inline void pack_b_bf16(const uint16_t* x, int64_t ldx, int64_t k, int64_t n, uint32_t* dst, int64_t ldd) {
  const int64_t k2 = (k + 1) / 2;
  for (int64_t p = 0; p < k2; ++p) {
    const uint16_t* r0 = x + 2 * p * ldx;
    const uint16_t* r1 = 2 * p + 1 < k ? r0 + ldx : nullptr;
    uint32_t* d = dst + p * ldd;
    for (int64_t j = 0; j < n; ++j) d[j] = pair(r0[j], r1 ? r1[j] : uint16_t(0));
    for (int64_t j = n; j < ldd; ++j) d[j] = 0;
  }
}

// (GCC 12 warns, wrongly, that the intrinsics' own undefined pass-through is uninitialized.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Pair-interleaved from fp32 rows (rounded to nearest even bf16): X is k × n (stride ldx);
// dst[p][j] = {x(2p, j), x(2p+1, j)}, n columns then zeros up to ldd.
inline void pack_b_f32(const float* x, int64_t ldx, int64_t k, int64_t n, uint32_t* dst, int64_t ldd) {
  const int64_t k2 = (k + 1) / 2;
  for (int64_t p = 0; p < k2; ++p) {
    const float* r0 = x + 2 * p * ldx;
    const float* r1 = 2 * p + 1 < k ? r0 + ldx : nullptr;
    uint32_t* d = dst + p * ldd;
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 m = n - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - j)) - 1);
      const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, r0 + j)));
      const __m512i hi = r1 ? _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, r1 + j)))
                            : _mm512_setzero_si512();
      _mm512_mask_storeu_epi32(d + j, m, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
    for (int64_t j = n; j < ldd; ++j) d[j] = 0;
  }
}
#pragma GCC diagnostic pop

}  // namespace LVX_CPU_ISA
}  // namespace lvx::cpu
