// Forward step on tensor cores (mma.sync, sm_80+), one (query tile, head, batch·split)
// per thread block:
//   S = scale·Q Kᵀ (masked by q_ranges), online softmax over KV tiles in base 2,
//   O_b = softmax(S) V, lse_b = logsumexp(S); then, fused, the merge into the running
//   accumulator: lse' = logaddexp(lse, lse_b), o' = o·e^(lse−lse') + O_b·e^(lse_b−lse').
// With split-KV the block writes (O_b, lse_b) of its KV slice to a partial buffer and
// fwd_combine merges the slices and the accumulator.
// A block only visits the KV rows that some of its query rows can see, and applies
// the per-element mask only on tiles not seen whole by every row.
//
// Values a row cannot see never reach a result (both kernel families, forward and
// backward). Query row i sees KV rows j in [b_i, e_i) (q_ranges). Where i cannot see j,
// P and dS are 0 by a select, not a product: S = -inf there, but P = exp(S − lse) is
// NaN when lse is (row i sees a NaN), and dS = P ∘ (dP − Dl) with dP = dO Vᵀ NaN where
// V or dO is. The tile products O += P V, dV += Pᵀ dO, dK += dSᵀ Q and dQ += dS K still
// take the terms 0·x of every hidden pair (i, j), and 0·NaN = 0·Inf = NaN: an operand row
// (V or K row j, Q or dO row i) holding a NaN/±Inf must not meet a hidden pair.
//   - A tile every row sees whole (all columns in every interval): nothing more.
//   - A straddling tile: operand rows that no row of the product sees (padding outside
//     every interval, rows past the block's last visible one or its split, gaps
//     between the rows' intervals; query rows that see none of the tile's KV rows)
//     have their NaN/±Inf values set to 0; every term they take part in is 0·x, so
//     this changes nothing else. Rows only some rows see are found when they hold a
//     NaN/±Inf, and their terms go in exactly for the pairs (i, j) that see each other.
// mma.sync kernels (this file, attend_bwd.cuh), per warp and per 16-row k slice of a
// product: slice rows every row of the warp's mma sees: as before; rows none sees:
// the slice's mma is skipped (its P or dS is 0); otherwise the NaN/±Inf halves of B
// operand registers in rows not every row sees become 0 (SliceSelect, visibility.cuh),
// and for the rows some row sees, those values' terms are added to the accumulators
// after the mma for exactly the rows that see them (read back from shared memory).
// sm_90a kernels (attend_fwd_sm90.cuh, attend_bwd_sm90.cuh): B operands are read from
// shared memory by two consumer warpgroups, so the producer warp fixes a staged tile
// before it signals it: rows no row sees become 0 there, and a NaN/±Inf in a row only
// some rows see marks the tile, whose affected products the consumers then form term
// by term (a select per term) instead of by wgmma.
// Cost: none on tiles every row sees whole; a few masks per straddling tile, and the
// selects and fix-ups only where a straddling tile's operands hold NaN/±Inf.
#pragma once

#include "attend_fwd_parts.cuh"
#include "elementwise.cuh"
#include "kernel_traits.cuh"
#include "visibility.cuh"

namespace lvx::cuda {

// O += P·V of a straddling tile for one warp (rows row0, row0 + 8 per thread; iv their
// intervals; v_tile [BN][S] from KV row n0), exact under the selects described above.
template <typename T, int D, int BN, int S>
__device__ __forceinline__ void fwd_pv_masked(float (&acc)[D / 8][4], const float (&s)[BN / 8][4], const T* v_tile,
                                              int n0, int hi, const int2 (&iv)[2], bool valid0, bool valid1,
                                              int lane) {
  const int g = lane / 4, t = lane % 4;
  const int ra = (lane % 8) + ((lane >> 3) & 1) * 8, ca = (lane >> 4) * 8;
  (void)g;
  // Tile columns seen by some row of the warp (any) and by every row (all); rows past Lq
  // see nothing and constrain nothing.
  uint32_t any[BN / 32], all[BN / 32];
#pragma unroll
  for (int w = 0; w < BN / 32; ++w) {
    const uint32_t m0 = valid0 ? interval_bits(iv[0].x, min(iv[0].y, hi), n0 + 32 * w) : 0u;
    const uint32_t m1 = valid1 ? interval_bits(iv[1].x, min(iv[1].y, hi), n0 + 32 * w) : 0u;
    any[w] = __reduce_or_sync(0xffffffffu, m0 | m1);
    all[w] = __reduce_and_sync(0xffffffffu, (valid0 ? m0 : ~0u) & (valid1 ? m1 : ~0u));
  }
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    const uint32_t any16 = (any[kk / 2] >> (16 * (kk % 2))) & 0xFFFFu;
    const uint32_t all16 = (all[kk / 2] >> (16 * (kk % 2))) & 0xFFFFu;
    if (any16 == 0) continue;  // no row of the warp sees these 16 KV rows: P is 0 there
    uint32_t pa[4];
    probs_fragment<T>(s, kk, pa);
    SliceSelect sel(~all16 & 0xFFFFu, t);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t vb[4];
      ldmatrix_x4_trans(vb, v_tile + (kk * 16 + ra) * S + dp * 16 + ca);
      if (all16 != 0xFFFFu) sel.apply<T>(vb);
      mma16816<T>(acc[2 * dp], pa, vb[0], vb[1]);
      mma16816<T>(acc[2 * dp + 1], pa, vb[2], vb[3]);
    }
    if (all16 == 0xFFFFu) continue;
    // Non-finite V values in rows only some rows see: their terms, for those rows.
    uint32_t fix = __reduce_or_sync(0xffffffffu, sel.zeroed_rows(t)) & any16;
    while (fix) {
      const int c = __ffs(fix) - 1;
      fix &= fix - 1;
      const int col = n0 + kk * 16 + c;
      const float2 pr = a_frag_pair<T>(pa, c, lane);
      const bool see0 = valid0 && col >= iv[0].x && col < iv[0].y && col < hi;
      const bool see1 = valid1 && col >= iv[1].x && col < iv[1].y && col < hi;
      const T* vr = v_tile + (kk * 16 + c) * S + 2 * t;
#pragma unroll
      for (int db = 0; db < D / 8; ++db) {
        const float2 v = Pack2<T>::to_float2(*reinterpret_cast<const uint32_t*>(vr + db * 8));
        if (see0 && nonfinite(v.x)) acc[db][0] += pr.x * v.x;
        if (see0 && nonfinite(v.y)) acc[db][1] += pr.x * v.y;
        if (see1 && nonfinite(v.x)) acc[db][2] += pr.y * v.x;
        if (see1 && nonfinite(v.y)) acc[db][3] += pr.y * v.y;
      }
    }
  }
}

template <typename T, typename Tr>
__global__ void __launch_bounds__(Tr::kThreads) attend_fwd_kernel(const FwdParams p) {
  constexpr int D = Tr::kHeadDim, BM = Tr::kBlockM, BN = Tr::kBlockN, S = Tr::kStride;
  constexpr int NT = Tr::kThreads, kChunks = D / 8;  // 16-byte chunks per row
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * S;      // [2][BN][S]
  T* sV = sK + 2 * BN * S;  // [2][BN][S]
  __shared__ int s_range[4];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z / p.splits, split = blockIdx.z % p.splits;
  const int hk = h / p.group, Lq = p.Lq, Lkv = p.Lkv;
  const int m0 = blockIdx.x * BM;
  const size_t q_stride = (size_t)p.Hq * D, kv_stride = (size_t)p.Hkv * D;
  const T* gQ = static_cast<const T*>(p.q) + ((size_t)b * Lq * p.Hq + h) * D;
  const T* gK = static_cast<const T*>(p.k) + ((size_t)b * Lkv * p.Hkv + hk) * D;
  const T* gV = static_cast<const T*>(p.v) + ((size_t)b * Lkv * p.Hkv + hk) * D;

  const KvRange kr = fwd_kv_range<BM, NT>(p, m0, b, split, s_range);
  const int lo = kr.lo, hi = kr.hi;
  const int n_tiles = hi > lo ? (hi - lo + BN - 1) / BN : 0;
  const int row0 = m0 + warp * 16 + g;  // this thread's rows: row0 and row0 + 8
  int2 iv[2];
  fwd_row_intervals(p, b, row0, iv);

  auto load_kv = [&](int buf, int n0) {
    T* dk = sK + buf * BN * S;
    T* dv = sV + buf * BN * S;
    for (int c = tid; c < BN * kChunks; c += NT) {
      int r = c / kChunks, col = (c % kChunks) * 8;
      bool ok = n0 + r < hi;
      size_t off = (size_t)(ok ? n0 + r : 0) * kv_stride + col;
      cp_async_16(dk + r * S + col, gK + off, ok);
      cp_async_16(dv + r * S + col, gV + off, ok);
    }
  };

  float acc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};

  if (n_tiles > 0) {
    for (int c = tid; c < BM * kChunks; c += NT) {
      int r = c / kChunks, col = (c % kChunks) * 8;
      bool ok = m0 + r < Lq;
      cp_async_16(sQ + r * S + col, gQ + (size_t)(ok ? m0 + r : 0) * q_stride + col, ok);
    }
    load_kv(0, lo);
    cp_async_commit();
  }

  // ldmatrix lane addresses: pattern A (A [m][k], or B from [k][n] transposed) and
  // pattern B (B from [n][k], or A from [k][m] transposed).
  const int ra = (lane % 8) + ((lane >> 3) & 1) * 8, ca = (lane >> 4) * 8;
  const int rb = (lane % 8) + (lane >> 4) * 8, cb = ((lane >> 3) & 1) * 8;
  uint32_t qf[D / 16][4];

  for (int j = 0; j < n_tiles; ++j) {
    const int n0 = lo + j * BN, buf = j & 1;
    cp_async_wait<0>();
    __syncthreads();
    if (j + 1 < n_tiles) load_kv(buf ^ 1, n0 + BN);
    cp_async_commit();
    if (j == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qf[kk], sQ + (warp * 16 + ra) * S + kk * 16 + ca);
    }
    const T* k_tile = sK + buf * BN * S;
    const T* v_tile = sV + buf * BN * S;

    float s[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < BN / 16; ++np) {
        uint32_t kb[4];
        ldmatrix_x4(kb, k_tile + (np * 16 + rb) * S + kk * 16 + cb);
        mma16816<T>(s[2 * np], qf[kk], kb[0], kb[1]);
        mma16816<T>(s[2 * np + 1], qf[kk], kb[2], kb[3]);
      }
    }

    const bool need_mask = n0 < kr.full_lo || n0 + BN > min(kr.full_hi, hi);
    fwd_online_softmax<BN, D>(s, acc, mrow, lrow, p.scale_log2, need_mask, n0, hi, iv, t);

    if (!need_mask) {
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        uint32_t pa[4];
        probs_fragment<T>(s, kk, pa);
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t vb[4];
          ldmatrix_x4_trans(vb, v_tile + (kk * 16 + ra) * S + dp * 16 + ca);
          mma16816<T>(acc[2 * dp], pa, vb[0], vb[1]);
          mma16816<T>(acc[2 * dp + 1], pa, vb[2], vb[3]);
        }
      }
    } else {
      fwd_pv_masked<T, D, BN, S>(acc, s, v_tile, n0, hi, iv, row0 < Lq, row0 + 8 < Lq, lane);
    }
  }

  fwd_epilogue<T, D>(p, acc, mrow, lrow, row0, b, h, split, t);
}

// Merges the split partials and the running accumulator, one warp per (b, row, head).
template <typename T, int D>
__global__ void fwd_combine_kernel(const FwdParams p) {
  const long long rows = (long long)p.B * p.Lq * p.Hq;
  const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= rows) return;
  const int h = (int)(w % p.Hq);
  const long long bi = w / p.Hq;  // b·Lq + row
  const int row = (int)(bi % p.Lq), b = (int)(bi / p.Lq);
  const size_t lse_idx = ((size_t)b * p.Hq + h) * p.Lq + row;
  const size_t part_rows = (size_t)p.B * p.Lq * p.Hq;
  // With o_out the partials are the whole sum: the old o and lse are not read.
  const bool out = p.o_out != nullptr;
  const float lse_a = out ? -INFINITY : p.lse[lse_idx];
  float mx = lse_a;
  bool nan = is_nan(lse_a);
  for (int s = 0; s < p.splits; ++s) {
    const float ls = p.lse_part[s * part_rows + lse_idx];
    mx = fmaxf(mx, ls);
    nan |= is_nan(ls);
  }
  constexpr int kPer = (D + 31) / 32;
  T* orow_out = out ? static_cast<T*>(p.o_out) + (size_t)w * D : nullptr;
  if (mx == -INFINITY && !nan) {  // nothing seen (a NaN, seen by the row, goes on as NaN)
    if (out) {  // O = 0, lse = -inf; otherwise the accumulator stays as it is
#pragma unroll
      for (int i = 0; i < kPer; ++i)
        if (lane + 32 * i < D) orow_out[lane + 32 * i] = from_f32<T>(0.f);
      if (lane == 0) p.lse[lse_idx] = -INFINITY;
    }
    return;
  }
  float wsum = out ? 0.f : __expf(lse_a - mx);
  float o[kPer];
  float* orow = p.o + (size_t)w * D;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    int d = lane + 32 * i;
    o[i] = d < D && !out ? orow[d] * wsum : 0.f;
  }
  for (int s = 0; s < p.splits; ++s) {
    float ls = p.lse_part[s * part_rows + lse_idx];
    if (ls == -INFINITY) continue;
    float ws = __expf(ls - mx);
    wsum += ws;
    const float* prow = p.o_part + (s * part_rows + (size_t)w) * D;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      int d = lane + 32 * i;
      if (d < D) o[i] += prow[d] * ws;
    }
  }
  const float inv = 1.f / wsum;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    int d = lane + 32 * i;
    if (d >= D) continue;
    if (out) orow_out[d] = from_f32<T>(o[i] * inv);
    else orow[d] = o[i] * inv;
  }
  __syncwarp();
  if (lane == 0) p.lse[lse_idx] = mx + __logf(wsum);
}

}  // namespace lvx::cuda
