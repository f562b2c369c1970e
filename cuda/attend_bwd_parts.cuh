// Pieces shared by the backward kernels (mma.sync and sm_90a wgmma). Both walk the
// (query head of the GQA group, query tile) items of one KV tile, and hold dK, dV of
// two KV rows per thread (g and g + 8 of a 16-row slab) in mma.sync's C layout.
#pragma once

#include "attend_params.cuh"
#include "mma.cuh"

namespace lvx::cuda {

__device__ __forceinline__ void atomic_add2(float* p, float x, float y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(x, y));
#else
  atomicAdd(p, x);
  atomicAdd(p + 1, y);
#endif
}

// Does query tile [q0, q0 + BM) see any of the KV rows [n0, kv_hi)? `whole` becomes
// whether every row sees all of them (and the KV tile is full): no element mask then.
// All NT threads of the block call it (it synchronizes).
template <int BM, int BN, int NT>
__device__ __forceinline__ bool bwd_tile_visible(const BwdParams& p, int b, int q0, int n0, int kv_hi, bool& whole) {
  whole = kv_hi - n0 == BN;
  if (!p.q_ranges) return true;
  bool vis = false, all = true;
  for (int r = threadIdx.x; r < BM; r += NT) {
    if (q0 + r >= p.Lq) continue;
    const int2 iv = local_interval(p.q_ranges, p.kv_begin, p.Lkv, (long long)b * p.Lq + q0 + r);
    vis |= iv.x < kv_hi && iv.y > n0 && iv.y > iv.x;
    all &= iv.x <= n0 && iv.y >= kv_hi;
  }
  vis = __syncthreads_or(vis);
  whole = whole && __syncthreads_and(all);
  return vis;
}

// bwd_tile_visible for one warp (no block barrier): the sm_90a kernel's producer warp.
template <int BM, int BN>
__device__ __forceinline__ bool bwd_tile_visible_warp(const BwdParams& p, int b, int q0, int n0, int kv_hi,
                                                      bool& whole) {
  whole = kv_hi - n0 == BN;
  if (!p.q_ranges) return true;
  bool vis = false, all = true;
  for (int r = threadIdx.x % 32; r < BM; r += 32) {
    if (q0 + r >= p.Lq) continue;
    const int2 iv = local_interval(p.q_ranges, p.kv_begin, p.Lkv, (long long)b * p.Lq + q0 + r);
    vis |= iv.x < kv_hi && iv.y > n0 && iv.y > iv.x;
    all &= iv.x <= n0 && iv.y >= kv_hi;
  }
  whole = whole && __all_sync(0xffffffffu, all);
  return __any_sync(0xffffffffu, vis);
}

// bwd_tile_visible_warp, also giving the KV rows every row of the tile sees, [all_lo,
// all_hi) (empty when a row sees none). kRanges false: the kernel has no q_ranges.
template <int BM, int BN, bool kRanges>
__device__ __forceinline__ bool bwd_tile_rows_warp(const BwdParams& p, int b, int q0, int n0, int kv_hi, bool& whole,
                                                   int& all_lo, int& all_hi) {
  whole = kv_hi - n0 == BN;
  all_lo = 0;
  all_hi = p.Lkv;
  if (!kRanges || !p.q_ranges) return true;
  bool vis = false;
  int lo = 0, hi = p.Lkv;
  for (int r = threadIdx.x % 32; r < BM; r += 32) {
    if (q0 + r >= p.Lq) continue;
    const int2 iv = local_interval(p.q_ranges, p.kv_begin, p.Lkv, (long long)b * p.Lq + q0 + r);
    vis |= iv.x < kv_hi && iv.y > n0 && iv.y > iv.x;
    lo = max(lo, iv.x);
    hi = min(hi, iv.y);
  }
  all_lo = __reduce_max_sync(0xffffffffu, lo);
  all_hi = __reduce_min_sync(0xffffffffu, hi);
  whole = whole && all_lo <= n0 && all_hi >= kv_hi;
  return __any_sync(0xffffffffu, vis);
}

// Per-row inputs of query tile [q0, q0 + BM) of head h, written by one warp with plain
// loads (the sm_90a kernel's producer, ahead of the consumers): as below, but the LSE in
// log2 units (LSE · log2 e; −inf and NaN stay what they are), as bwd_probs<..., true> reads it.
template <int BM>
__device__ __forceinline__ void bwd_row_stats_warp(const BwdParams& p, int b, int h, int q0, float* lse, float* dl,
                                                   int2* iv) {
  for (int r = threadIdx.x % 32; r < BM; r += 32) {
    const bool ok = q0 + r < p.Lq;
    const size_t li = ((size_t)b * p.Hq + h) * p.Lq + q0 + r;
    lse[r] = ok ? p.lse[li] * 1.4426950408889634f : 0.f;
    dl[r] = ok ? p.dl[li] : 0.f;
    iv[r] = ok ? local_interval(p.q_ranges, p.kv_begin, p.Lkv, (long long)b * p.Lq + q0 + r) : make_int2(0, 0);
  }
}

// Per-row inputs of query tile [q0, q0 + BM) of head h: lse and Dl by cp.async (in
// the caller's next commit group; rows past Lq read 0, harmless since their Q and dO
// rows are zero), and the visible interval (a load only with q_ranges).
template <int BM, int NT>
__device__ __forceinline__ void bwd_load_row_stats(const BwdParams& p, int b, int h, int q0, float* lse, float* dl,
                                                   int2* iv) {
  for (int r = threadIdx.x; r < BM; r += NT) {
    const bool ok = q0 + r < p.Lq;
    const size_t li = ((size_t)b * p.Hq + h) * p.Lq + (ok ? q0 + r : 0);
    cp_async_4(lse + r, p.lse + li, ok);
    cp_async_4(dl + r, p.dl + li, ok);
    iv[r] = ok ? local_interval(p.q_ranges, p.kv_begin, p.Lkv, (long long)b * p.Lq + q0 + r) : make_int2(0, 0);
  }
}

// Whether score s[nb][e] of a (16 KV rows x BM queries) slab (KV row kv_row0 + 8·(e / 2),
// query 8nb + 2t + e % 2) is hidden: the query cannot see the KV row, or sees nothing.
__device__ __forceinline__ bool bwd_hidden(const float* lse, const int2* iv, int kv_row0, int Lkv, int nb, int e,
                                           int t) {
  const int qc = nb * 8 + 2 * t + (e & 1), kv = kv_row0 + (e >> 1) * 8;
  const int2 r = iv[qc];
  return lse[qc] == -INFINITY || kv < r.x || kv >= r.y || kv >= Lkv;
}

// Pᵀ of one (16 KV rows x BM queries) slab from the scores Sᵀ in place, then packed as
// m16k16 A fragments (pa[kk] = queries 16kk .. 16kk + 15). kMask (a tile not every row
// sees whole): P is 0 by a select where the score is hidden (exp2 of -inf − lse is NaN
// when lse is NaN); otherwise only where the row saw nothing. A compile-time choice: the
// caller branches once per tile, so tiles without a mask run none of the select.
// kLog2Lse: lse holds LSE · log2 e (bwd_row_stats_warp), which saves a multiply per row.
// kFinite (with kMask false): the caller knows every row's LSE is finite or NaN, none −inf
// (a kernel without q_ranges: every row sees every KV row of the step, rows past Lq hold
// 0), so the per-element select for rows that saw nothing is left out.
template <typename T, int BM, bool kMask, bool kLog2Lse = false, bool kFinite = false>
__device__ __forceinline__ void bwd_probs(float (&s)[BM / 8][4], uint32_t (&pa)[BM / 16][4], const float* lse,
                                          const int2* iv, float scale_log2, int kv_row0, int Lkv, int t) {
  constexpr float kLog2e = kLog2Lse ? 1.f : 1.4426950408889634f;
#pragma unroll
  for (int nb = 0; nb < BM / 8; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int qc = nb * 8 + 2 * t + (e & 1);
      const float l2 = lse[qc] * kLog2e;
      const float pv = exp2f(s[nb][e] * scale_log2 - l2);
      if constexpr (!kMask && kFinite) {
        s[nb][e] = pv;
      } else {
        const bool zero = kMask ? bwd_hidden(lse, iv, kv_row0, Lkv, nb, e, t) : l2 == -INFINITY;
        s[nb][e] = zero ? 0.f : pv;
      }
    }
#pragma unroll
  for (int kk = 0; kk < BM / 16; ++kk) {
    pa[kk][0] = Pack2<T>::from(s[2 * kk][0], s[2 * kk][1]);
    pa[kk][1] = Pack2<T>::from(s[2 * kk][2], s[2 * kk][3]);
    pa[kk][2] = Pack2<T>::from(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    pa[kk][3] = Pack2<T>::from(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
}

// dSᵀ = Pᵀ ∘ (dPᵀ − Dl), with Pᵀ as rounded for the dV product, packed like pa. kSelect:
// 0 by a select where the score is hidden (bwd_hidden): there dPᵀ = V dOᵀ may be NaN (a
// V or dO row the query cannot see), and 0·NaN = NaN.
template <typename T, int BM, bool kSelect>
__device__ __forceinline__ void bwd_dscores(const uint32_t (&pa)[BM / 16][4], const float (&dp)[BM / 8][4],
                                            const float* dl, const float* lse, const int2* iv, int kv_row0, int Lkv,
                                            uint32_t (&da)[BM / 16][4], int t) {
#pragma unroll
  for (int kk = 0; kk < BM / 16; ++kk)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      // register r of step kk holds columns nb = 2kk + (r >> 1), rows e = 2·(r & 1) + {0, 1}
      const int nb = 2 * kk + (r >> 1), e0 = 2 * (r & 1);
      const float2 pv = Pack2<T>::to_float2(pa[kk][r]);
      const int qc = nb * 8 + 2 * t;
      float x = pv.x * (dp[nb][e0] - dl[qc]), y = pv.y * (dp[nb][e0 + 1] - dl[qc + 1]);
      if (kSelect) {
        x = bwd_hidden(lse, iv, kv_row0, Lkv, nb, e0, t) ? 0.f : x;
        y = bwd_hidden(lse, iv, kv_row0, Lkv, nb, e0 + 1, t) ? 0.f : y;
      }
      da[kk][r] = Pack2<T>::from(x, y);
    }
}

// dK, dV of this thread's rows: the block is the only writer of its rows. The old fp32
// sums are read unless kv_fresh; the new ones go to dk/dv, or as T to dk_out/dv_out.
template <typename T, int D>
__device__ __forceinline__ void bwd_store_kv(const BwdParams& p, const float (&dk)[D / 8][4],
                                             const float (&dv)[D / 8][4], int kv_row0, int b, int hk, int t) {
  const size_t kv_stride = (size_t)p.Hkv * D;
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    const int row = kv_row0 + ri * 8;
    if (row >= p.Lkv) continue;
    const size_t off = ((size_t)b * p.Lkv + row) * kv_stride + (size_t)hk * D + 2 * t;
#pragma unroll
    for (int db = 0; db < D / 8; ++db) {
      float2 k1 = make_float2(dk[db][2 * ri] * p.scale, dk[db][2 * ri + 1] * p.scale);
      float2 v1 = make_float2(dv[db][2 * ri], dv[db][2 * ri + 1]);
      if (!p.kv_fresh) {
        const float2 k0 = *reinterpret_cast<const float2*>(p.dk + off + db * 8);
        const float2 v0 = *reinterpret_cast<const float2*>(p.dv + off + db * 8);
        k1.x += k0.x; k1.y += k0.y;
        v1.x += v0.x; v1.y += v0.y;
      }
      if (p.dk_out) {
        *reinterpret_cast<uint32_t*>(static_cast<T*>(p.dk_out) + off + db * 8) = Pack2<T>::from(k1.x, k1.y);
        *reinterpret_cast<uint32_t*>(static_cast<T*>(p.dv_out) + off + db * 8) = Pack2<T>::from(v1.x, v1.y);
      } else {
        *reinterpret_cast<float2*>(p.dk + off + db * 8) = k1;
        *reinterpret_cast<float2*>(p.dv + off + db * 8) = v1;
      }
    }
  }
}

}  // namespace lvx::cuda
