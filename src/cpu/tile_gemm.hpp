// Register-blocked C[M×N] (+)= alpha·A[M×K]·B[K×N] for the CPU attention tiles.
// A is read by element with any strides (A(m,k) = a[m·sam + k·sak]), so Pᵀ and dSᵀ
// need no transpose; B rows are contiguous and N is a multiple of 16 (tiles are
// zero-padded); C rows are contiguous. The micro-kernel keeps an MR×(16·NV)
// block of C in registers across the whole K loop.
#pragma once

#include <cstdint>

#include "simd.hpp"

namespace lvx::cpu {

template <int MR, int NV, bool kAccumulate>
inline void micro_kernel(int64_t K, const float* a, int64_t sam, int64_t sak, const float* b,
                         int64_t ldb, float* c, int64_t ldc, float alpha) {
  v16 acc[MR][NV];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[m][v] = v16{};
  for (int64_t k = 0; k < K; ++k) {
    v16 bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = load(b + k * ldb + v * kLanes);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      v16 av = splat(a[m * sam + k * sak]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[m][v] += av * bv[v];
    }
  }
  v16 al = splat(alpha);
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      float* cp = c + m * ldc + v * kLanes;
      store(cp, kAccumulate ? load(cp) + al * acc[m][v] : al * acc[m][v]);
    }
}

template <int MR, bool kAccumulate>
inline void row_block(int64_t N, int64_t K, const float* a, int64_t sam, int64_t sak,
                      const float* b, int64_t ldb, float* c, int64_t ldc, float alpha) {
  int64_t n = 0;
  for (; n + 64 <= N; n += 64)
    micro_kernel<MR, 4, kAccumulate>(K, a, sam, sak, b + n, ldb, c + n, ldc, alpha);
  switch ((N - n) / kLanes) {
    case 3: micro_kernel<MR, 3, kAccumulate>(K, a, sam, sak, b + n, ldb, c + n, ldc, alpha); break;
    case 2: micro_kernel<MR, 2, kAccumulate>(K, a, sam, sak, b + n, ldb, c + n, ldc, alpha); break;
    case 1: micro_kernel<MR, 1, kAccumulate>(K, a, sam, sak, b + n, ldb, c + n, ldc, alpha); break;
    default: break;
  }
}

// C (+)= alpha·A·B with M rows; N % 16 == 0.
template <bool kAccumulate>
inline void tile_gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t sam, int64_t sak,
                      const float* b, int64_t ldb, float* c, int64_t ldc, float alpha = 1.f) {
  constexpr int MR = 6;
  int64_t m = 0;
  for (; m + MR <= M; m += MR)
    row_block<MR, kAccumulate>(N, K, a + m * sam, sam, sak, b, ldb, c + m * ldc, ldc, alpha);
  const float* ar = a + m * sam;
  float* cr = c + m * ldc;
  switch (M - m) {
    case 5: row_block<5, kAccumulate>(N, K, ar, sam, sak, b, ldb, cr, ldc, alpha); break;
    case 4: row_block<4, kAccumulate>(N, K, ar, sam, sak, b, ldb, cr, ldc, alpha); break;
    case 3: row_block<3, kAccumulate>(N, K, ar, sam, sak, b, ldb, cr, ldc, alpha); break;
    case 2: row_block<2, kAccumulate>(N, K, ar, sam, sak, b, ldb, cr, ldc, alpha); break;
    case 1: row_block<1, kAccumulate>(N, K, ar, sam, sak, b, ldb, cr, ldc, alpha); break;
    default: break;
  }
}

}  // namespace lvx::cpu
