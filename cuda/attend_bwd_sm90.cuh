// Backward step on Hopper warpgroup MMA (sm_90a), head dim 128, 16-bit storage: the
// computation of attend_bwd_kernel (attend_bwd.cuh) with
//   - 128 KV rows per block, 64 per warpgroup (two warpgroups, 256 threads), dK and dV
//     of its rows in each warpgroup's registers across the whole walk;
//   - query tiles of 64 rows (Q, dO double-buffered by cp.async), K, V, Q, dO and dSᵀ
//     in the swizzled-rows layout of wgmma.cuh;
//   - per tile, wgmma m64n64 for Sᵀ = K Qᵀ and dPᵀ = V dOᵀ, m64n128
//     with A from registers for dV += Pᵀ dO and dK += dSᵀ Q (Q, dO read MN-major), and
//     m64n64 for dQ = dS K with dSᵀ and K read MN-major from shared memory: warpgroup
//     w forms dQ's head-dim half w and adds it to global memory with fp32 atomics.
#pragma once

#include "attend_bwd_parts.cuh"
#include "wgmma.cuh"

namespace lvx::cuda {

struct BwdSm90 {
  static constexpr int kHeadDim = 128, kBlockN = 128, kBlockM = 64, kThreads = 256;
  static constexpr int kKvBytes = kBlockN * kHeadDim * 2;  // a K or V tile
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;   // a Q or dO tile
  static constexpr int kDsBytes = kBlockN * kBlockM * 2;   // dSᵀ
  static constexpr int kSmemBytes = 2 * kKvBytes + 4 * kQBytes + kDsBytes + 1024;
};

template <typename T>
__global__ void __launch_bounds__(BwdSm90::kThreads, 1) attend_bwd_sm90_kernel(const BwdParams p) {
#ifdef LVX_SM90A
  constexpr int D = BwdSm90::kHeadDim, BM = BwdSm90::kBlockM, BN = BwdSm90::kBlockN, NT = BwdSm90::kThreads;
  extern __shared__ __align__(128) unsigned char smem_sm90[];
  __shared__ float sLse[2][BM], sDl[2][BM];
  __shared__ int2 sIv[2][BM];
  const uint32_t sK = (smem_addr(smem_sm90) + 1023u) & ~1023u, sV = sK + BwdSm90::kKvBytes;
  const uint32_t sQ = sV + BwdSm90::kKvBytes, sdO = sQ + 2 * BwdSm90::kQBytes;  // [2] each
  const uint32_t sdS = sdO + 2 * BwdSm90::kQBytes;

  const int tid = threadIdx.x, wg = tid / 128, warp = (tid / 32) % 4, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int hk = blockIdx.y, b = blockIdx.z, Lq = p.Lq, Lkv = p.Lkv;
  const int n0 = blockIdx.x * BN;
  const size_t q_stride = (size_t)p.Hq * D, kv_stride = (size_t)p.Hkv * D;
  const T* gK = static_cast<const T*>(p.k) + ((size_t)b * Lkv * p.Hkv + hk) * D;
  const T* gV = static_cast<const T*>(p.v) + ((size_t)b * Lkv * p.Hkv + hk) * D;
  const int kv_hi = min(Lkv, n0 + BN);
  load_swizzled<BN, D, NT>(sK, gK, kv_stride, n0, Lkv);
  load_swizzled<BN, D, NT>(sV, gV, kv_stride, n0, Lkv);

  const int q_tiles = (Lq + BM - 1) / BM, items = p.group * q_tiles;
  auto next_item = [&](int it, bool& whole) {
    while (it < items && !bwd_tile_visible<BM, BN, NT>(p, b, (it % q_tiles) * BM, n0, kv_hi, whole)) ++it;
    return it;
  };
  auto load_q_tile = [&](int buf, int it) {
    const int h = hk * p.group + it / q_tiles, q0 = (it % q_tiles) * BM;
    const size_t head = ((size_t)b * Lq * p.Hq + h) * D;
    load_swizzled<BM, D, NT>(sQ + buf * BwdSm90::kQBytes, static_cast<const T*>(p.q) + head, q_stride, q0, Lq);
    load_swizzled<BM, D, NT>(sdO + buf * BwdSm90::kQBytes, static_cast<const T*>(p.dout) + head, q_stride, q0, Lq);
    bwd_load_row_stats<BM, NT>(p, b, h, q0, sLse[buf], sDl[buf], sIv[buf]);
  };

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;
  float(&dk_flat)[D / 2] = reinterpret_cast<float(&)[D / 2]>(dk);
  float(&dv_flat)[D / 2] = reinterpret_cast<float(&)[D / 2]>(dv);
  const int kv_row0 = n0 + wg * 64 + warp * 16 + g;  // this thread's KV rows: kv_row0, kv_row0 + 8

  bool whole = true;
  int it = next_item(0, whole);
  if (it < items) load_q_tile(0, it);
  cp_async_commit();
  int buf = 0;
  // K-major descriptors of this warpgroup's 64 K / V rows and of a Q / dO tile (k16
  // step kk along the head dim); MN-major ones of 16-row slabs (step kk along rows).
  auto kv_rows = [&](uint32_t tile, int kk) {
    return wg_desc(tile + (kk / 4) * BN * 128 + wg * 64 * 128 + (kk % 4) * 32, 16, 1024);
  };
  auto q_rows = [&](uint32_t tile, int kk) { return wg_desc(tile + (kk / 4) * BM * 128 + (kk % 4) * 32, 16, 1024); };
  auto q_slab = [&](uint32_t tile, int kk) { return wg_desc(tile + kk * 16 * 128, BM * 128, 1024); };
  while (it < items) {
    const bool need_mask = !whole;
    const int h = hk * p.group + it / q_tiles, q0 = (it % q_tiles) * BM;
    bool whole_next = true;
    const int it_next = next_item(it + 1, whole_next);
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    if (it_next < items) load_q_tile(buf ^ 1, it_next);
    cp_async_commit();
    const uint32_t q_tile = opaque(sQ) + buf * BwdSm90::kQBytes, do_tile = opaque(sdO) + buf * BwdSm90::kQBytes;
    const uint32_t k_tile = opaque(sK), v_tile = opaque(sV), ds_tile = opaque(sdS);

    // Sᵀ = K Qᵀ, then Pᵀ.
    float s[BM / 8][4];
    float(&s_flat)[BM / 2] = reinterpret_cast<float(&)[BM / 2]>(s);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) Wgmma<T>::template ss64<0, 0>(s_flat, kv_rows(k_tile, kk), q_rows(q_tile, kk), kk);
    wg_commit();
    wg_wait<0>();
    wg_fence_regs(s_flat);
    uint32_t pa[BM / 16][4];
    bwd_probs<T, BM>(s, pa, sLse[buf], sIv[buf], p.scale_log2, need_mask, kv_row0, Lkv, t);

    // dPᵀ = V dOᵀ and dV += Pᵀ dO, issued back to back.
    float dp[BM / 8][4];
    float(&dp_flat)[BM / 2] = reinterpret_cast<float(&)[BM / 2]>(dp);
    wg_fence_regs(dv_flat);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      Wgmma<T>::template ss64<0, 0>(dp_flat, kv_rows(v_tile, kk), q_rows(do_tile, kk), kk);
    wg_commit();
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) Wgmma<T>::template rs128<1>(dv_flat, pa[kk], q_slab(do_tile, kk), 1);
    wg_commit();
    wg_wait<1>();
    wg_fence_regs(dp_flat);

    // dSᵀ, then dK += dSᵀ Q, and dSᵀ to shared memory for dQ.
    uint32_t da[BM / 16][4];
    bwd_dscores<T, BM>(pa, dp, sDl[buf], da, t);
    wg_fence_regs(dk_flat);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) Wgmma<T>::template rs128<1>(dk_flat, da[kk], q_slab(q_tile, kk), 1);
    wg_commit();
    const int ds_row = wg * 64 + warp * 16 + g;
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        // da[kk][r]: KV row ds_row + 8·(r & 1), queries 16kk + 8·(r >> 1) + 2t, +1
        const int row = ds_row + 8 * (r & 1), chunk = 2 * kk + (r >> 1);
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(ds_tile + swz_offset(BN, row, chunk) + 4 * t), "r"(da[kk][r]));
      }
    fence_proxy_async();
    __syncthreads();

    // dQ[q0 .. q0 + 64, 64·wg .. 64·wg + 64) += scale · dS K.
    float dq[BM / 8][4];
    float(&dq_flat)[BM / 2] = reinterpret_cast<float(&)[BM / 2]>(dq);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
      Wgmma<T>::template ss64<1, 1>(dq_flat, wg_desc(ds_tile + kk * 16 * 128, BN * 128, 1024),
                                    wg_desc(k_tile + wg * BN * 128 + kk * 16 * 128, BN * 128, 1024), kk);
    wg_commit();
    wg_wait<0>();
    wg_fence_regs(dq_flat);
    wg_fence_regs(dk_flat);
    wg_fence_regs(dv_flat);
    float* gdq = p.dq + ((size_t)b * Lq * p.Hq + h) * D + wg * 64 + 2 * t;
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
      const int row = q0 + warp * 16 + g + ri * 8;
      if (row >= Lq) continue;
#pragma unroll
      for (int nb = 0; nb < BM / 8; ++nb)
        atomic_add2(gdq + (size_t)row * q_stride + nb * 8, dq[nb][2 * ri] * p.scale, dq[nb][2 * ri + 1] * p.scale);
    }

    it = it_next;
    whole = whole_next;
    buf ^= 1;
  }
  cp_async_wait<0>();
  bwd_store_kv<T, D>(p, dk, dv, kv_row0, b, hk, t);
#endif
}

}  // namespace lvx::cuda
