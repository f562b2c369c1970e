// Forward step on Hopper warpgroup MMA (sm_90a), head dim 128, 16-bit storage: the
// same computation and epilogue as attend_fwd_kernel (attend_fwd.cuh), with
//   - warp specialization: one producer warpgroup (one thread issuing TMA tile loads,
//     registers handed to the others) and two consumer warpgroups of 64 query rows
//     each (128 per block), synchronized only by mbarriers;
//   - KV tiles of 128 rows in a 3-stage ring, in the swizzled-rows layout of wgmma.cuh;
//   - S = Q·Kᵀ as 8 wgmma m64n128k16 with both operands in shared memory, and
//     O += P·V with P from registers and V read MN-major (no transpose pass);
//   - software pipelining inside each warpgroup: S_j = Q·K_jᵀ and O += P_{j-1}·V_{j-1}
//     are issued together, and the softmax of S_j runs while P_{j-1}·V_{j-1} is on the
//     tensor cores (the rescale of O waits for it).
// Values a row cannot see never reach a result (design at the top of attend_fwd.cuh):
// a V tile not every row of the block sees whole lands on v_land; the producer warp
// sets its rows no row sees (past hi included) to 0 in shared memory, scans the rows
// only some rows see for NaN/±Inf, marks the stage (s_slow) if one holds any, and then
// signals v_full. A marked tile's O += P V is formed term by term over the KV rows each
// row sees (pv_exact), with no wgmma in flight; K needs nothing (S is masked by a select).
#pragma once

#include "attend_config.hpp"
#include "attend_fwd_parts.cuh"
#include "tma.cuh"
#include "visibility.cuh"

namespace lvx::cuda {

struct FwdSm90 {
  static constexpr int kHeadDim = config::kSm90Fwd.head_dim, kBlockM = config::kSm90Fwd.block_m,
                       kBlockN = config::kSm90Fwd.block_n, kStages = config::kSm90Fwd.stages;
  static constexpr int kThreads = config::kSm90Fwd.threads;                // producer + 2 consumer warpgroups
  static constexpr int kTileBytes = 128 * kHeadDim * 2;                    // one 128-row tile
  static constexpr int kSmemBytes = (1 + 2 * kStages) * kTileBytes + 1024;  // Q, stages x (K, V), alignment
};

template <typename T>
__global__ void __launch_bounds__(FwdSm90::kThreads, 1)
    attend_fwd_sm90_kernel(const FwdParams p, const __grid_constant__ CUtensorMap tq,
                           const __grid_constant__ CUtensorMap tk, const __grid_constant__ CUtensorMap tv) {
#ifdef LVX_SM90A
  constexpr int D = FwdSm90::kHeadDim, BM = FwdSm90::kBlockM, BN = FwdSm90::kBlockN, NT = FwdSm90::kThreads;
  constexpr int kStages = FwdSm90::kStages;
  constexpr uint32_t kTile = FwdSm90::kTileBytes;
  extern __shared__ __align__(128) unsigned char smem_sm90[];
  __shared__ __align__(8) uint64_t bars[1 + 4 * kStages];
  __shared__ int s_range[4];
  __shared__ int s_slow[kStages];  // the stage's V tile needs the exact product (below)
  __shared__ int2 s_rows[BM];      // the block's query rows' intervals (producer)
  const uint32_t sQ = (smem_addr(smem_sm90) + 1023u) & ~1023u, sKV = sQ + kTile;  // stage st: K, then V
  // Barriers: Q landed; K / V of a stage ready; a stage's K and V read by every consumer
  // warp; V of a stage landed, for a tile the producer fixes before it is ready.
  const uint32_t q_full = smem_addr(bars);
  auto k_full = [&](int st) { return q_full + 8 * (1 + st); };
  auto v_full = [&](int st) { return q_full + 8 * (1 + kStages + st); };
  auto kv_empty = [&](int st) { return q_full + 8 * (1 + 2 * kStages + st); };
  auto v_land = [&](int st) { return q_full + 8 * (1 + 3 * kStages + st); };

  const int tid = threadIdx.x, wg = tid / 128, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z / p.splits, split = blockIdx.z % p.splits;
  const int hk = h / p.group;
  const int m0 = blockIdx.x * BM;
  if (tid == 0) {
    mbar_init(q_full, 1);
    for (int st = 0; st < kStages; ++st) {
      mbar_init(k_full(st), 1);
      mbar_init(v_full(st), 1);
      mbar_init(kv_empty(st), 8);
      mbar_init(v_land(st), 1);
    }
    mbar_fence_init();
  }
  __syncthreads();
  const KvRange kr = fwd_kv_range<BM, NT>(p, m0, b, split, s_range);
  const int lo = kr.lo, hi = kr.hi;
  const int n_tiles = hi > lo ? (hi - lo + BN - 1) / BN : 0;

  if (wg == 0) {
    // Producer warp: lane 0 issues every tile load, up to kStages tiles ahead; the warp
    // fixes the V tiles that not every row sees whole (design at the top of the file).
    regs_dealloc<40>();
    if (tid >= 32 || n_tiles == 0) return;
    for (int r = lane; r < BM; r += 32) {
      const int row = m0 + r;
      s_rows[r] = row < p.Lq ? local_interval(p.q_ranges, p.kv_begin, p.Lkv, (long long)b * p.Lq + row)
                             : make_int2(0, 0);
    }
    __syncwarp();
    const int all_lo = kr.full_lo, all_hi = min(kr.full_hi, hi);  // KV rows every row sees
    auto needs_fix = [&](int n0) { return n0 < all_lo || min(n0 + BN, p.Lkv) > all_hi; };
    uint32_t land_phase = 0;  // bit st: parity of stage st's next v_land completion
    // V rows of tile j no row of the block sees (past hi included) become 0; a NaN/±Inf
    // in a row only some rows see marks the tile for the exact product.
    auto fix = [&](int j) {
      const int st = j % kStages, n0 = lo + j * BN;
      if (!needs_fix(n0)) return;
      mbar_wait(v_land(st), (land_phase >> st) & 1u);
      land_phase ^= 1u << st;
      uint32_t any[BN / 32];
#pragma unroll
      for (int w = 0; w < BN / 32; ++w) any[w] = 0;
      for (int r = lane; r < BM; r += 32) {
        const int2 iv = s_rows[r];
#pragma unroll
        for (int w = 0; w < BN / 32; ++w) any[w] |= interval_bits(iv.x, min(iv.y, hi), n0 + 32 * w);
      }
#pragma unroll
      for (int w = 0; w < BN / 32; ++w) any[w] = __reduce_or_sync(0xffffffffu, any[w]);
      const uint32_t v_tile = sKV + st * 2 * kTile + kTile;
      bool bad = false;
#pragma unroll
      for (int i = 0; i < BN / 32; ++i) {
        const int r = 32 * i + lane, col = n0 + r;
        if (col >= p.Lkv || (col >= all_lo && col < all_hi)) continue;  // TMA zeros; seen by every row
        if (!((any[i] >> lane) & 1u)) zero_tile_row(v_tile, BN, r);
        else bad |= tile_row_nonfinite<T>(v_tile, BN, r);
      }
      fence_proxy_async();
      __syncwarp();
      bad = __any_sync(0xffffffffu, bad);
      if (lane == 0) {
        s_slow[st] = bad;
        mbar_arrive(v_full(st));
      }
    };
    if (lane == 0) {
      mbar_arrive_expect(q_full, kTile);
      tma_load_rows(sQ, &tq, 0, h, m0, b, q_full);
      tma_load_rows(sQ + BM * 128, &tq, 64, h, m0, b, q_full);
    }
    int fixed = 0;
    for (int j = 0; j < n_tiles; ++j) {
      const int st = j % kStages, n0 = lo + j * BN;
      if (j >= kStages) {
        while (fixed < j) fix(fixed++);  // the consumers need them before they free this stage
        mbar_wait(kv_empty(st), (j / kStages - 1) & 1);
      }
      if (lane == 0) {
        const uint32_t k_dst = sKV + st * 2 * kTile, v_dst = k_dst + kTile;
        mbar_arrive_expect(k_full(st), kTile);
        tma_load_rows(k_dst, &tk, 0, hk, n0, b, k_full(st));
        tma_load_rows(k_dst + BN * 128, &tk, 64, hk, n0, b, k_full(st));
        s_slow[st] = 0;
        const uint32_t v_bar = needs_fix(n0) ? v_land(st) : v_full(st);
        mbar_arrive_expect(v_bar, kTile);
        tma_load_rows(v_dst, &tv, 0, hk, n0, b, v_bar);
        tma_load_rows(v_dst + BN * 128, &tv, 64, hk, n0, b, v_bar);
      }
    }
    while (fixed < n_tiles) fix(fixed++);
    return;
  }

  // Consumers: warpgroup cw owns query rows [64·cw, 64·cw + 64) of the tile.
  regs_alloc<232>();
  const int cw = wg - 1;
  const int row0 = m0 + cw * 64 + ((tid / 32) % 4) * 16 + g;  // this thread's rows: row0, row0 + 8
  int2 iv[2];
  fwd_row_intervals(p, b, row0, iv);

  float acc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};
  float(&acc_flat)[D / 2] = reinterpret_cast<float(&)[D / 2]>(acc);

  // S = Q·K_jᵀ (Q and K K-major: two 64-column blocks, 32 bytes per k16 step).
  auto issue_scores = [&](float (&s_flat)[BN / 2], int j) {
    const uint32_t q_base = opaque(sQ) + cw * 64 * 128, k_tile = opaque(sKV) + (j % kStages) * 2 * kTile;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t step = (kk % 4) * 32;
      Wgmma<T>::template ss128<0, 0>(s_flat, wg_desc(q_base + (kk / 4) * BM * 128 + step, 16, 1024),
                                     wg_desc(k_tile + (kk / 4) * BN * 128 + step, 16, 1024), kk);
    }
    wg_commit();
  };
  // O += P·V_j (V MN-major: 16 KV rows = 2048 bytes per k16 step, d-blocks BN·128 apart).
  auto issue_pv = [&](uint32_t (&pa)[BN / 16][4], int j) {
    const uint32_t v_tile = opaque(sKV) + (j % kStages) * 2 * kTile + kTile;
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
      Wgmma<T>::template rs128<1>(acc_flat, pa[kk], wg_desc(v_tile + kk * 16 * 128, BN * 128, 1024), 1);
    wg_commit();
  };
  auto need_mask = [&](int n0) { return n0 < kr.full_lo || n0 + BN > min(kr.full_hi, hi); };
  auto parity = [&](int j) { return (uint32_t)((j / kStages) & 1); };
  // O += P·V_j term by term, each row over the KV rows it sees: for a tile the producer
  // marked (a NaN/±Inf in a V row only some rows see). No wgmma is in flight here.
  auto pv_exact = [&](const uint32_t (&pt)[BN / 16][4], int j) {
    const uint32_t v_tile = opaque(sKV) + (j % kStages) * 2 * kTile + kTile;
    const int n0 = lo + j * BN;
#pragma unroll 1
    for (int k = 0; k < BN; ++k) {
      const int col = n0 + k;
      const float2 pr = a_frag_pair<T, BN / 16>(pt, k, lane);
      const bool see0 = col >= iv[0].x && col < iv[0].y && col < hi;
      const bool see1 = col >= iv[1].x && col < iv[1].y && col < hi;
      const uint32_t row = opaque(v_tile);
#pragma unroll
      for (int db = 0; db < D / 8; ++db) {
        const float2 v = tile_pair<T>(row, BN, k, db, t);
        if (see0) {
          acc[db][0] += pr.x * v.x;
          acc[db][1] += pr.x * v.y;
        }
        if (see1) {
          acc[db][2] += pr.y * v.x;
          acc[db][3] += pr.y * v.y;
        }
      }
    }
  };

  if (n_tiles > 0) {
    float s[BN / 8][4];
    float(&s_flat)[BN / 2] = reinterpret_cast<float(&)[BN / 2]>(s);
    float alpha[2];
    // P of even and odd tiles: a tile's P stays in place until its P·V is complete
    // (copying it would make ptxas serialize the wgmma pipeline).
    uint32_t pe[BN / 16][4], po[BN / 16][4];
    mbar_wait(q_full, 0);
    mbar_wait(k_full(0), 0);
    wg_fence();
    issue_scores(s_flat, 0);
    wg_wait<0>();
    wg_fence_regs(s_flat);
    fwd_softmax_tile<BN>(s, mrow, lrow, alpha, p.scale_log2, need_mask(lo), lo, hi, iv, t);
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) probs_fragment<T>(s, kk, pe[kk]);

    // Tile j: S_j and P_{j-1}·V_{j-1} on the tensor cores, softmax of S_j beside the latter.
    auto step = [&](int j, uint32_t (&p_prev)[BN / 16][4], uint32_t (&p_next)[BN / 16][4]) {
      mbar_wait(k_full(j % kStages), parity(j));
      mbar_wait(v_full((j - 1) % kStages), parity(j - 1));
      if (s_slow[(j - 1) % kStages]) {
        // P_{j-1}·V_{j-1} term by term, then S_j alone.
        pv_exact(p_prev, j - 1);
        if (lane == 0) mbar_arrive(kv_empty((j - 1) % kStages));
        wg_fence();
        issue_scores(s_flat, j);
        wg_wait<0>();
        wg_fence_regs(s_flat);
        const int n0 = lo + j * BN;
        fwd_softmax_tile<BN>(s, mrow, lrow, alpha, p.scale_log2, need_mask(n0), n0, hi, iv, t);
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) probs_fragment<T>(s, kk, p_next[kk]);
        fwd_rescale<D>(acc, alpha);
        return;
      }
      wg_fence();
      issue_scores(s_flat, j);
      issue_pv(p_prev, j - 1);
      wg_wait<1>();
      wg_fence_regs(s_flat);
      const int n0 = lo + j * BN;
      fwd_softmax_tile<BN>(s, mrow, lrow, alpha, p.scale_log2, need_mask(n0), n0, hi, iv, t);
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) probs_fragment<T>(s, kk, p_next[kk]);
      wg_wait<0>();
      wg_fence_regs(acc_flat);
      wg_fence_regs(p_prev);
      if (lane == 0) mbar_arrive(kv_empty((j - 1) % kStages));  // K_{j-1}, V_{j-1} read by this warp
      fwd_rescale<D>(acc, alpha);
    };
    for (int j = 1; j < n_tiles; j += 2) {
      step(j, pe, po);
      if (j + 1 < n_tiles) step(j + 1, po, pe);
    }
    auto last_pv = [&](uint32_t (&p_last)[BN / 16][4]) {
      mbar_wait(v_full((n_tiles - 1) % kStages), parity(n_tiles - 1));
      if (s_slow[(n_tiles - 1) % kStages]) {
        pv_exact(p_last, n_tiles - 1);
        return;
      }
      wg_fence();
      issue_pv(p_last, n_tiles - 1);
      wg_wait<0>();
      wg_fence_regs(acc_flat);
      wg_fence_regs(p_last);
    };
    if ((n_tiles - 1) % 2) last_pv(po);
    else last_pv(pe);
  }

  fwd_epilogue<D>(p, acc, mrow, lrow, row0, b, h, split, t);
#endif
}

}  // namespace lvx::cuda
