// Forward step on Hopper warpgroup MMA (sm_90a), head dim 128, 16-bit storage: the
// same computation and epilogue as attend_fwd_kernel (attend_fwd.cuh), with
//   - 128 query rows per block, 64 per warpgroup (two warpgroups, 256 threads);
//   - KV tiles of 128 rows, double-buffered in shared memory (cp.async) in the
//     swizzled-rows layout of wgmma.cuh;
//   - S = Q·Kᵀ as 8 wgmma m64n128k16 with both operands in shared memory, and
//     O += P·V with P from registers and V read MN-major (no transpose pass).
#pragma once

#include "attend_fwd_parts.cuh"
#include "wgmma.cuh"

namespace lvx::cuda {

struct FwdSm90 {
  static constexpr int kHeadDim = 128, kBlockM = 128, kBlockN = 128, kThreads = 256;
  static constexpr int kTileBytes = 128 * kHeadDim * 2;                 // one 128-row tile
  static constexpr int kSmemBytes = 5 * kTileBytes + 1024;              // Q, 2x(K, V), alignment
};

template <typename T>
__global__ void __launch_bounds__(FwdSm90::kThreads, 1) attend_fwd_sm90_kernel(const FwdParams p) {
#ifdef LVX_SM90A
  constexpr int D = FwdSm90::kHeadDim, BM = FwdSm90::kBlockM, BN = FwdSm90::kBlockN, NT = FwdSm90::kThreads;
  constexpr uint32_t kTile = FwdSm90::kTileBytes;
  extern __shared__ __align__(128) unsigned char smem_sm90[];
  __shared__ int s_range[4];
  const uint32_t sQ = (smem_addr(smem_sm90) + 1023u) & ~1023u, sK = sQ + kTile, sV = sK + 2 * kTile;

  const int tid = threadIdx.x, wg = tid / 128, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z / p.splits, split = blockIdx.z % p.splits;
  const int hk = h / p.group;
  const int m0 = blockIdx.x * BM;
  const size_t q_stride = (size_t)p.Hq * D, kv_stride = (size_t)p.Hkv * D;
  const T* gQ = static_cast<const T*>(p.q) + ((size_t)b * p.Lq * p.Hq + h) * D;
  const T* gK = static_cast<const T*>(p.k) + ((size_t)b * p.Lkv * p.Hkv + hk) * D;
  const T* gV = static_cast<const T*>(p.v) + ((size_t)b * p.Lkv * p.Hkv + hk) * D;

  const KvRange kr = fwd_kv_range<BM, NT>(p, m0, b, split, s_range);
  const int lo = kr.lo, hi = kr.hi;
  const int n_tiles = hi > lo ? (hi - lo + BN - 1) / BN : 0;
  const int row0 = m0 + wg * 64 + ((tid / 32) % 4) * 16 + g;  // this thread's rows: row0, row0 + 8
  int2 iv[2];
  fwd_row_intervals(p, b, row0, iv);

  float acc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};
  float(&acc_flat)[D / 2] = reinterpret_cast<float(&)[D / 2]>(acc);

  if (n_tiles > 0) {
    load_swizzled<BM, D, NT>(sQ, gQ, q_stride, m0, p.Lq);
    load_swizzled<BN, D, NT>(sK, gK, kv_stride, lo, hi);
    load_swizzled<BN, D, NT>(sV, gV, kv_stride, lo, hi);
    cp_async_commit();
  }

  // Descriptors (k16 step kk): Q and K K-major (two 64-column blocks, 32 bytes per
  // step), V MN-major (16 KV rows = 2048 bytes per step, d-blocks BN·128 apart).
  const uint32_t q_base = sQ + wg * 64 * 128;
  for (int j = 0; j < n_tiles; ++j) {
    const int n0 = lo + j * BN, buf = j & 1;
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    if (j + 1 < n_tiles) {
      load_swizzled<BN, D, NT>(sK + (buf ^ 1) * kTile, gK, kv_stride, n0 + BN, hi);
      load_swizzled<BN, D, NT>(sV + (buf ^ 1) * kTile, gV, kv_stride, n0 + BN, hi);
    }
    cp_async_commit();
    const uint32_t k_tile = sK + buf * kTile, v_tile = sV + buf * kTile;

    float s[BN / 8][4];
    float(&s_flat)[BN / 2] = reinterpret_cast<float(&)[BN / 2]>(s);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t step = (kk % 4) * 32;
      Wgmma<T>::template ss128<0, 0>(s_flat, wg_desc(q_base + (kk / 4) * BM * 128 + step, 16, 1024),
                                     wg_desc(k_tile + (kk / 4) * BN * 128 + step, 16, 1024), kk);
    }
    wg_commit();
    wg_wait<0>();
    wg_fence_regs(s_flat);

    const bool need_mask = n0 < kr.full_lo || n0 + BN > min(kr.full_hi, hi);
    fwd_online_softmax<BN, D>(s, acc, mrow, lrow, p.scale_log2, need_mask, n0, hi, iv, t);

    uint32_t pa[BN / 16][4];
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) probs_fragment<T>(s, kk, pa[kk]);
    wg_fence_regs(acc_flat);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
      Wgmma<T>::template rs128<1>(acc_flat, pa[kk], wg_desc(v_tile + kk * 16 * 128, BN * 128, 1024), 1);
    wg_commit();
    wg_wait<0>();
    wg_fence_regs(acc_flat);
  }

  fwd_epilogue<D>(p, acc, mrow, lrow, row0, b, h, split, t);
#endif
}

}  // namespace lvx::cuda
