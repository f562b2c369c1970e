// Backward step on tensor cores (mma.sync, sm_80+), one (KV tile, KV head, batch) per
// thread block; its 4 warps own 16 KV rows each and keep dK, dV in registers while
// the block walks every query tile of every query head of the GQA group:
//   Sᵀ = K Qᵀ, Pᵀ = exp(scale·Sᵀ − lse), dV += Pᵀ dO, dPᵀ = V dOᵀ,
//   dSᵀ = Pᵀ ∘ (dPᵀ − Dl), dK += scale·dSᵀ Q, dQ += scale·dS K.
// dQ rows are shared by all KV tiles: dSᵀ goes through shared memory and each block
// adds its dQ contribution with fp32 atomics. Query tiles that see none of the
// block's KV rows are skipped; the element mask applies only where a tile is not
// seen whole. Rows with lse = -inf contribute nothing.
#pragma once

#include "attend_bwd_parts.cuh"
#include "kernel_traits.cuh"

namespace lvx::cuda {

template <typename T, typename Tr>
__global__ void __launch_bounds__(Tr::kThreads) attend_bwd_kernel(const BwdParams p) {
  constexpr int D = Tr::kHeadDim, BM = Tr::kBlockM, BN = Tr::kBlockN, S = Tr::kStride;
  constexpr int DS = Tr::kDsStride, NT = Tr::kThreads, kChunks = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + BN * S;
  T* sQ = sV + BN * S;        // [2][BM][S]
  T* sdO = sQ + 2 * BM * S;   // [2][BM][S]
  T* sdS = sdO + 2 * BM * S;  // [BN][DS]: dSᵀ
  __shared__ float sLse[2][BM], sDl[2][BM];
  __shared__ int2 sIv[2][BM];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int hk = blockIdx.y, b = blockIdx.z, Lq = p.Lq, Lkv = p.Lkv;
  const int n0 = blockIdx.x * BN;
  const size_t q_stride = (size_t)p.Hq * D, kv_stride = (size_t)p.Hkv * D;
  const T* gK = static_cast<const T*>(p.k) + ((size_t)b * Lkv * p.Hkv + hk) * D;
  const T* gV = static_cast<const T*>(p.v) + ((size_t)b * Lkv * p.Hkv + hk) * D;
  const int kv_hi = min(Lkv, n0 + BN);

  for (int c = tid; c < BN * kChunks; c += NT) {
    int r = c / kChunks, col = (c % kChunks) * 8;
    bool ok = n0 + r < Lkv;
    size_t off = (size_t)(ok ? n0 + r : 0) * kv_stride + col;
    cp_async_16(sK + r * S + col, gK + off, ok);
    cp_async_16(sV + r * S + col, gV + off, ok);
  }

  // Work items: (query head of the group, query tile), flattened.
  const int q_tiles = (Lq + BM - 1) / BM, items = p.group * q_tiles;
  // Is any KV row of this block visible to tile `it`; is every one visible to all rows?
  auto visible = [&](int it, bool& whole) {
    return bwd_tile_visible<BM, BN, NT>(p, b, (it % q_tiles) * BM, n0, kv_hi, whole);
  };
  auto next_item = [&](int it, bool& whole) {
    while (it < items && !visible(it, whole)) ++it;
    return it;
  };
  auto load_q_tile = [&](int buf, int it) {
    const int h = hk * p.group + it / q_tiles, q0 = (it % q_tiles) * BM;
    const T* gQ = static_cast<const T*>(p.q) + ((size_t)b * Lq * p.Hq + h) * D;
    const T* gdO = static_cast<const T*>(p.dout) + ((size_t)b * Lq * p.Hq + h) * D;
    for (int c = tid; c < BM * kChunks; c += NT) {
      int r = c / kChunks, col = (c % kChunks) * 8;
      bool ok = q0 + r < Lq;
      size_t off = (size_t)(ok ? q0 + r : 0) * q_stride + col;
      cp_async_16(sQ + buf * BM * S + r * S + col, gQ + off, ok);
      cp_async_16(sdO + buf * BM * S + r * S + col, gdO + off, ok);
    }
    bwd_load_row_stats<BM, NT>(p, b, h, q0, sLse[buf], sDl[buf], sIv[buf]);
  };

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;

  const int ra = (lane % 8) + ((lane >> 3) & 1) * 8, ca = (lane >> 4) * 8;
  const int rb = (lane % 8) + (lane >> 4) * 8, cb = ((lane >> 3) & 1) * 8;
  const int kv_row0 = n0 + warp * 16 + g;  // this thread's KV rows: kv_row0, kv_row0 + 8

  bool whole = true;
  int it = next_item(0, whole);
  if (it < items) load_q_tile(0, it);
  cp_async_commit();
  int buf = 0;
  while (it < items) {
    const bool need_mask = !whole;
    const int h = hk * p.group + it / q_tiles, q0 = (it % q_tiles) * BM;
    bool whole_next = true;
    const int it_next = next_item(it + 1, whole_next);
    cp_async_wait<0>();
    __syncthreads();
    if (it_next < items) load_q_tile(buf ^ 1, it_next);
    cp_async_commit();
    const T* q_tile = sQ + buf * BM * S;
    const T* do_tile = sdO + buf * BM * S;

    // Sᵀ = K Qᵀ for the warp's 16 KV rows, then Pᵀ, packed to 16 bits at once: S and
    // dP are never live together in fp32, which leaves registers for the pipeline.
    uint32_t pa[BM / 16][4];
    {
      float s[BM / 8][4];
#pragma unroll
      for (int i = 0; i < BM / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t ka[4];
        ldmatrix_x4(ka, sK + (warp * 16 + ra) * S + kk * 16 + ca);
#pragma unroll
        for (int np = 0; np < BM / 16; ++np) {
          uint32_t qb[4];
          ldmatrix_x4(qb, q_tile + (np * 16 + rb) * S + kk * 16 + cb);
          mma16816<T>(s[2 * np], ka, qb[0], qb[1]);
          mma16816<T>(s[2 * np + 1], ka, qb[2], qb[3]);
        }
      }
      bwd_probs<T, BM>(s, pa, sLse[buf], sIv[buf], p.scale_log2, need_mask, kv_row0, Lkv, t);
    }

    // dV += Pᵀ dO.
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk)
#pragma unroll
      for (int dp2 = 0; dp2 < D / 16; ++dp2) {
        uint32_t ob[4];
        ldmatrix_x4_trans(ob, do_tile + (kk * 16 + ra) * S + dp2 * 16 + ca);
        mma16816<T>(dv[2 * dp2], pa[kk], ob[0], ob[1]);
        mma16816<T>(dv[2 * dp2 + 1], pa[kk], ob[2], ob[3]);
      }

    // dPᵀ = V dOᵀ, then dSᵀ = Pᵀ ∘ (dPᵀ − Dl) with Pᵀ as rounded for the dV product.
    float dp[BM / 8][4];
#pragma unroll
    for (int i = 0; i < BM / 8; ++i) dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t va[4];
      ldmatrix_x4(va, sV + (warp * 16 + ra) * S + kk * 16 + ca);
#pragma unroll
      for (int np = 0; np < BM / 16; ++np) {
        uint32_t ob[4];
        ldmatrix_x4(ob, do_tile + (np * 16 + rb) * S + kk * 16 + cb);
        mma16816<T>(dp[2 * np], va, ob[0], ob[1]);
        mma16816<T>(dp[2 * np + 1], va, ob[2], ob[3]);
      }
    }
    uint32_t da[BM / 16][4];
    bwd_dscores<T, BM>(pa, dp, sDl[buf], da, t);

    // dSᵀ to shared memory for the dQ product; dK += dSᵀ Q (scale applied at the end).
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      T* ds_row = sdS + (warp * 16 + g) * DS + kk * 16 + 2 * t;
      *reinterpret_cast<uint32_t*>(ds_row) = da[kk][0];
      *reinterpret_cast<uint32_t*>(ds_row + 8 * DS) = da[kk][1];
      *reinterpret_cast<uint32_t*>(ds_row + 8) = da[kk][2];
      *reinterpret_cast<uint32_t*>(ds_row + 8 * DS + 8) = da[kk][3];
#pragma unroll
      for (int dp2 = 0; dp2 < D / 16; ++dp2) {
        uint32_t qb[4];
        ldmatrix_x4_trans(qb, q_tile + (kk * 16 + ra) * S + dp2 * 16 + ca);
        mma16816<T>(dk[2 * dp2], da[kk], qb[0], qb[1]);
        mma16816<T>(dk[2 * dp2 + 1], da[kk], qb[2], qb[3]);
      }
    }
    __syncthreads();

    // dQ[q0 .. q0+BM) += scale · dS K, in (16-row, 32-column) units spread over warps.
    float* gdq = p.dq + ((size_t)b * Lq * p.Hq + h) * D;
    constexpr int kUnits = (BM / 16) * (D / 32);
#pragma unroll 1
    for (int u = warp; u < kUnits; u += Tr::kWarps) {
      const int ma = u / (D / 32), dc = u % (D / 32);
      float a[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i][0] = a[i][1] = a[i][2] = a[i][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        uint32_t dsa[4];
        ldmatrix_x4_trans(dsa, sdS + (kk * 16 + rb) * DS + ma * 16 + cb);
#pragma unroll
        for (int h2 = 0; h2 < 2; ++h2) {
          uint32_t kb[4];
          ldmatrix_x4_trans(kb, sK + (kk * 16 + ra) * S + dc * 32 + h2 * 16 + ca);
          mma16816<T>(a[2 * h2], dsa, kb[0], kb[1]);
          mma16816<T>(a[2 * h2 + 1], dsa, kb[2], kb[3]);
        }
      }
#pragma unroll
      for (int ri = 0; ri < 2; ++ri) {
        const int row = q0 + ma * 16 + g + ri * 8;
        if (row >= Lq) continue;
        float* dst = gdq + (size_t)row * q_stride + dc * 32 + 2 * t;
#pragma unroll
        for (int nb = 0; nb < 4; ++nb)
          atomic_add2(dst + nb * 8, a[nb][2 * ri] * p.scale, a[nb][2 * ri + 1] * p.scale);
      }
    }

    it = it_next;
    whole = whole_next;
    buf ^= 1;
  }

  bwd_store_kv<T, D>(p, dk, dv, kv_row0, b, hk, t);
}

}  // namespace lvx::cuda
