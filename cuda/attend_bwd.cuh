// Backward step on tensor cores (mma.sync, sm_80+), one (KV tile, KV head, batch) per
// thread block; its 4 warps own 16 KV rows each and keep dK, dV in registers while
// the block walks every query tile of every query head of the GQA group:
//   Sᵀ = K Qᵀ, Pᵀ = exp(scale·Sᵀ − lse), dV += Pᵀ dO, dPᵀ = V dOᵀ,
//   dSᵀ = Pᵀ ∘ (dPᵀ − Dl), dK += scale·dSᵀ Q, dQ += scale·dS K.
// dQ rows are shared by all KV tiles: dSᵀ goes through shared memory and each block
// adds its dQ contribution with fp32 atomics. Query tiles that see none of the
// block's KV rows are skipped; the element mask applies only where a tile is not
// seen whole. Rows with lse = -inf contribute nothing.
// Values a row cannot see never reach a result (design at the top of attend_fwd.cuh):
// in straddling tiles Pᵀ and dSᵀ are selects, and the B operands of dV += Pᵀ dO,
// dK += dSᵀ Q (query rows) and dQ += dS K (KV rows) take SliceSelect with fix-ups.
#pragma once

#include "attend_bwd_parts.cuh"
#include "kernel_traits.cuh"
#include "visibility.cuh"

namespace lvx::cuda {

// acc += X_aᵀ·R over the query rows of a straddling tile, for one warp's 16 KV rows
// [kw0, kw1) (kv_row0 = kw0 + g): dV += Pᵀ dO (xa = Pᵀ, rows = dO) or dK += dSᵀ Q (xa = dSᵀ, rows = Q).
// X_a is 0 where a query cannot see a KV row; query rows (rows [BM][S], intervals iv,
// tile from query q0) that do not see all of [kw0, kw1) have their NaN/±Inf values
// selected to 0, and the rows that see some of [kw0, kw1) get those terms back for
// exactly the KV rows they see.
template <typename T, int D, int BM, int S>
__device__ __forceinline__ void bwd_kv_product_masked(float (&acc)[D / 8][4], const uint32_t (&xa)[BM / 16][4],
                                                      const T* rows, const int2* iv, int q0, int Lq, int Lkv,
                                                      int kv_row0, int lane) {
  const int g = lane / 4, t = lane % 4;
  const int kw0 = kv_row0 - g, kw1 = min(kw0 + 16, Lkv);
  const int ra = (lane % 8) + ((lane >> 3) & 1) * 8, ca = (lane >> 4) * 8;
#pragma unroll
  for (int kk = 0; kk < BM / 16; ++kk) {
    // Query rows 16kk + c against the warp's KV rows: full (sees them all, or is past Lq
    // and zero) and none (sees none). Past Lkv every row is full: nothing is kept there.
    const int q = kk * 16 + (lane & 15);
    const int2 r = iv[q];
    const bool valid = q0 + q < Lq;
    const bool f = kw0 >= kw1 || !valid || (r.x <= kw0 && r.y >= kw1);
    const bool n = !f && !(r.x < kw1 && r.y > kw0 && r.y > r.x);
    const uint32_t full = __ballot_sync(0xffffffffu, f) & 0xFFFFu, none = __ballot_sync(0xffffffffu, n) & 0xFFFFu;
    if (none == 0xFFFFu) continue;  // X_a is 0 for every (KV row, query) here
    SliceSelect sel(~full & 0xFFFFu, t);
#pragma unroll
    for (int dp2 = 0; dp2 < D / 16; ++dp2) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, rows + (kk * 16 + ra) * S + dp2 * 16 + ca);
      if (full != 0xFFFFu) sel.apply<T>(b);
      mma16816<T>(acc[2 * dp2], xa[kk], b[0], b[1]);
      mma16816<T>(acc[2 * dp2 + 1], xa[kk], b[2], b[3]);
    }
    if (full == 0xFFFFu) continue;
    uint32_t fix = __reduce_or_sync(0xffffffffu, sel.zeroed_rows(t)) & ~none & 0xFFFFu;
    while (fix) {
      const int c = __ffs(fix) - 1;
      fix &= fix - 1;
      const int2 rc = iv[kk * 16 + c];
      const float2 xv = a_frag_pair<T>(xa[kk], c, lane);
      const bool see0 = kv_row0 >= rc.x && kv_row0 < rc.y, see1 = kv_row0 + 8 >= rc.x && kv_row0 + 8 < rc.y;
      const T* rr = rows + (kk * 16 + c) * S + 2 * t;
#pragma unroll
      for (int db = 0; db < D / 8; ++db) {
        const float2 v = Pack2<T>::to_float2(*reinterpret_cast<const uint32_t*>(rr + db * 8));
        if (see0 && nonfinite(v.x)) acc[db][0] += xv.x * v.x;
        if (see0 && nonfinite(v.y)) acc[db][1] += xv.x * v.y;
        if (see1 && nonfinite(v.x)) acc[db][2] += xv.y * v.x;
        if (see1 && nonfinite(v.y)) acc[db][3] += xv.y * v.y;
      }
    }
  }
}

// One dQ unit (16 query rows from ma·16, 32 head-dim columns from dc·32) of a straddling
// tile: a += dS K over the block's KV rows [n0, n0 + BN), dSᵀ in sdS [BN][DS], K in sK
// [BN][S]. dS is 0 where a query cannot see a KV row; K rows not seen by all 16 query
// rows have their NaN/±Inf values selected to 0, and the queries that see them get those
// terms back.
template <typename T, int BN, int S, int DS>
__device__ __forceinline__ void bwd_dq_unit_masked(float (&a)[4][4], const T* sdS, const T* sK, const int2* iv,
                                                   int q0, int Lq, int n0, int kv_hi, int ma, int dc, int lane) {
  const int g = lane / 4, t = lane % 4;
  const int ra = (lane % 8) + ((lane >> 3) & 1) * 8, ca = (lane >> 4) * 8;
  const int rb = (lane % 8) + (lane >> 4) * 8, cb = ((lane >> 3) & 1) * 8;
  // KV rows seen by some query row of the unit (any) and by all of them (all; rows past
  // Lq constrain nothing, KV rows past kv_hi are zero and count as seen).
  const int qr = ma * 16 + (lane & 15);
  const int2 r = iv[qr];
  const bool valid = q0 + qr < Lq;
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    const int c0 = n0 + kk * 16;
    const uint32_t m = valid ? interval_bits(r.x, r.y, c0) & 0xFFFFu : 0u;
    const uint32_t any16 = __reduce_or_sync(0xffffffffu, m);
    const uint32_t all16 = (__reduce_and_sync(0xffffffffu, valid ? m : 0xFFFFu) | ~interval_bits(n0, kv_hi, c0)) & 0xFFFFu;
    if (any16 == 0) continue;  // dS is 0 for every (query, KV row) here
    uint32_t dsa[4];
    ldmatrix_x4_trans(dsa, sdS + (kk * 16 + rb) * DS + ma * 16 + cb);
    SliceSelect sel(~all16 & 0xFFFFu, t);
#pragma unroll
    for (int h2 = 0; h2 < 2; ++h2) {
      uint32_t kb[4];
      ldmatrix_x4_trans(kb, sK + (kk * 16 + ra) * S + dc * 32 + h2 * 16 + ca);
      if (all16 != 0xFFFFu) sel.apply<T>(kb);
      mma16816<T>(a[2 * h2], dsa, kb[0], kb[1]);
      mma16816<T>(a[2 * h2 + 1], dsa, kb[2], kb[3]);
    }
    if (all16 == 0xFFFFu) continue;
    uint32_t fix = __reduce_or_sync(0xffffffffu, sel.zeroed_rows(t)) & any16;
    while (fix) {
      const int c = __ffs(fix) - 1;
      fix &= fix - 1;
      const int k = kk * 16 + c, col = n0 + k;
      const int2 r0 = iv[ma * 16 + g], r1 = iv[ma * 16 + g + 8];
      const bool see0 = q0 + ma * 16 + g < Lq && col >= r0.x && col < r0.y;
      const bool see1 = q0 + ma * 16 + g + 8 < Lq && col >= r1.x && col < r1.y;
      const float ds0 = Pack2<T>::to_float2((uint32_t)*reinterpret_cast<const uint16_t*>(sdS + k * DS + ma * 16 + g)).x;
      const float ds1 =
          Pack2<T>::to_float2((uint32_t)*reinterpret_cast<const uint16_t*>(sdS + k * DS + ma * 16 + g + 8)).x;
      const T* kr = sK + k * S + dc * 32 + 2 * t;
#pragma unroll
      for (int nb = 0; nb < 4; ++nb) {
        const float2 v = Pack2<T>::to_float2(*reinterpret_cast<const uint32_t*>(kr + nb * 8));
        if (see0 && nonfinite(v.x)) a[nb][0] += ds0 * v.x;
        if (see0 && nonfinite(v.y)) a[nb][1] += ds0 * v.y;
        if (see1 && nonfinite(v.x)) a[nb][2] += ds1 * v.x;
        if (see1 && nonfinite(v.y)) a[nb][3] += ds1 * v.y;
      }
    }
  }
}

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
    if (!need_mask) {
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk)
#pragma unroll
        for (int dp2 = 0; dp2 < D / 16; ++dp2) {
          uint32_t ob[4];
          ldmatrix_x4_trans(ob, do_tile + (kk * 16 + ra) * S + dp2 * 16 + ca);
          mma16816<T>(dv[2 * dp2], pa[kk], ob[0], ob[1]);
          mma16816<T>(dv[2 * dp2 + 1], pa[kk], ob[2], ob[3]);
        }
    } else {
      bwd_kv_product_masked<T, D, BM, S>(dv, pa, do_tile, sIv[buf], q0, Lq, Lkv, kv_row0, lane);
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
    if (need_mask) bwd_dscores<T, BM, true>(pa, dp, sDl[buf], sLse[buf], sIv[buf], kv_row0, Lkv, da, t);
    else bwd_dscores<T, BM, false>(pa, dp, sDl[buf], sLse[buf], sIv[buf], kv_row0, Lkv, da, t);

    // dSᵀ to shared memory for the dQ product; dK += dSᵀ Q (scale applied at the end).
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      T* ds_row = sdS + (warp * 16 + g) * DS + kk * 16 + 2 * t;
      *reinterpret_cast<uint32_t*>(ds_row) = da[kk][0];
      *reinterpret_cast<uint32_t*>(ds_row + 8 * DS) = da[kk][1];
      *reinterpret_cast<uint32_t*>(ds_row + 8) = da[kk][2];
      *reinterpret_cast<uint32_t*>(ds_row + 8 * DS + 8) = da[kk][3];
    }
    if (!need_mask) {
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk)
#pragma unroll
        for (int dp2 = 0; dp2 < D / 16; ++dp2) {
          uint32_t qb[4];
          ldmatrix_x4_trans(qb, q_tile + (kk * 16 + ra) * S + dp2 * 16 + ca);
          mma16816<T>(dk[2 * dp2], da[kk], qb[0], qb[1]);
          mma16816<T>(dk[2 * dp2 + 1], da[kk], qb[2], qb[3]);
        }
    } else {
      bwd_kv_product_masked<T, D, BM, S>(dk, da, q_tile, sIv[buf], q0, Lq, Lkv, kv_row0, lane);
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
      if (!need_mask) {
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
      } else {
        bwd_dq_unit_masked<T, BN, S, DS>(a, sdS, sK, sIv[buf], q0, Lq, n0, kv_hi, ma, dc, lane);
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
