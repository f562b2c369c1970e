// Forward step on Hopper warpgroup MMA (sm_90a), 16-bit storage, head dims of the table
// (attend_config.hpp: 64, 96, 128): the same computation and epilogue as
// attend_fwd_kernel (attend_fwd.cuh), with
//   - warp specialization: one producer warpgroup (one thread issuing TMA tile loads,
//     registers handed to the others) and two consumer warpgroups of 64 query rows
//     each (128 per block), synchronized only by mbarriers;
//   - KV tiles of block_n rows in a ring of `stages`, in the swizzled-rows layout of
//     wgmma.cuh (128-byte swizzle for D = 64, 128; 64-byte for D = 96), one TMA box per
//     column block;
//   - S = Q·Kᵀ as D / 16 wgmma m64n128k16 with both operands in shared memory, and
//     O += P·V as m64nDk16 with P from registers and V read MN-major (no transpose pass);
//   - software pipelining inside each warpgroup: S_j = Q·K_jᵀ and O += P_{j-1}·V_{j-1}
//     are issued together, and the softmax of S_j runs while P_{j-1}·V_{j-1} is on the
//     tensor cores (the rescale of O waits for it);
//   - ping-pong of the two consumer warpgroups (the warp-scheduler barriers of
//     FlashAttention-3, Shah et al. 2024, sec. 3.1): they take turns at issuing a tile's
//     GEMMs, so that one warpgroup's GEMMs run on the tensor cores while the other
//     computes its softmax, instead of both warpgroups' GEMMs interleaving and both
//     softmaxes then falling into the same gap (see the consumers' part).
// Values a row cannot see never reach a result (design at the top of attend_fwd.cuh):
// a V tile not every row of the block sees whole lands on v_land; the producer
// warpgroup's four warps set its rows no row sees (past hi included) to 0 in shared
// memory, scan the rows only some rows see for NaN/±Inf, mark the stage (s_slow) if one
// holds any, and then signal v_full. A marked tile's O += P V is formed term by term
// over the KV rows each row sees (pv_exact), with no wgmma in flight; K needs nothing
// (S is masked by a select). Only tiles whose scores are masked can need either (an
// interval edge inside the tile, or rows that see all of it beside rows that see none):
// the consumers look at a tile's mark only then, and a kernel without q_ranges (kRanges
// false: every row sees every KV row) is compiled without any of it. The fixes run a
// step behind the loads (see the producer loop), so with no NaN/±Inf present a fixed
// tile costs the consumers nothing beyond the mask and the producer's scan.
#pragma once

#include "attend_config.hpp"
#include "attend_fwd_parts.cuh"
#include "tma.cuh"
#include "visibility.cuh"

// 0 builds the forward without the consumers' ping-pong (for A/B timing of it alone).
#ifndef LVX_FWD_PINGPONG
#define LVX_FWD_PINGPONG 1
#endif

namespace lvx::cuda {

template <int D>
struct FwdSm90 {
  static constexpr config::Sm90Tile kRow = config::sm90_fwd(D);
  static_assert(kRow.head_dim == D, "no sm_90a forward row for this head dim in attend_config.hpp");
  static constexpr int kHeadDim = D, kBlockM = kRow.block_m, kBlockN = kRow.block_n, kStages = kRow.stages;
  static constexpr int kThreads = kRow.threads;  // producer + 2 consumer warpgroups
  static_assert(kBlockM == 128 && kThreads == 384, "two consumer warpgroups of 64 query rows");
  static_assert(kBlockN % 32 == 0 && kBlockN <= 256, "KV tile rows: wgmma N of S, 32-row producer scans");
  using L = SwzRows<D % 64 == 0 ? 128 : 64>;  // Q, K, V tiles (wgmma.cuh)
  static_assert(D % L::kCols == 0, "head dim: whole column blocks");
  static constexpr int kBoxCols = L::kCols;             // TMA box columns (one column block)
  static constexpr int kColBlocks = D / L::kCols;
  static constexpr int kChunks = D / 8;                 // 16-byte chunks per tile row
  static constexpr int kQBytes = kBlockM * D * 2, kKvBytes = kBlockN * D * 2;
  static_assert(kQBytes % 1024 == 0 && kKvBytes % 1024 == 0, "tiles keep their swizzle patterns aligned");
  static constexpr int kSmemBytes = kQBytes + 2 * kStages * kKvBytes + 1024;  // Q, stages x (K, V), alignment
  static_assert(kSmemBytes + 2048 <= 232448, "shared memory of one block (static part included)");
  // Named barriers of the kernel: 0 is __syncthreads (fwd_kv_range); kProducerBar joins
  // the producer warpgroup's 128 threads (q_ranges only); kTurnBar + cw is consumer
  // warpgroup cw's turn to issue its GEMMs (256 threads: its own 128 wait there, the
  // other warpgroup's 128 arrive).
  static constexpr int kProducerBar = 1, kTurnBar = 2;
  static constexpr bool kPingPong = LVX_FWD_PINGPONG != 0;
};

template <typename T, int D, bool kRanges>
__global__ void __launch_bounds__(FwdSm90<D>::kThreads, 1)
    attend_fwd_sm90_kernel(const FwdParams p, const __grid_constant__ CUtensorMap tq,
                           const __grid_constant__ CUtensorMap tk, const __grid_constant__ CUtensorMap tv) {
#ifdef LVX_SM90A
  using Cfg = FwdSm90<D>;
  using L = typename Cfg::L;
  constexpr int BM = Cfg::kBlockM, BN = Cfg::kBlockN, NT = Cfg::kThreads;
  constexpr int kStages = Cfg::kStages, kChunks = Cfg::kChunks;
  constexpr uint32_t kQTile = Cfg::kQBytes, kKvTile = Cfg::kKvBytes;
  // One tile (rows x D) by TMA: one box per column block.
  auto load_tile = [](uint32_t dst, const CUtensorMap* map, int rows, int h, int row, int b, uint32_t bar) {
#pragma unroll
    for (int c = 0; c < Cfg::kColBlocks; ++c) tma_load_rows(dst + c * rows * L::kBytes, map, c * L::kCols, h, row, b, bar);
  };
  extern __shared__ __align__(128) unsigned char smem_sm90[];
  __shared__ __align__(8) uint64_t bars[1 + 4 * kStages];
  __shared__ int s_range[4];
  __shared__ int s_slow[kStages];  // the stage's V tile needs the exact product (below)
  __shared__ int2 s_rows[BM];      // the block's query rows' intervals (producer)
  const uint32_t sQ = (smem_addr(smem_sm90) + 1023u) & ~1023u, sKV = sQ + kQTile;  // stage st: K, then V
  // Barriers: Q landed; K / V of a stage ready; a stage's K and V read by every consumer
  // warp; V of a stage landed, for a tile the producer fixes before it is ready.
  const uint32_t q_full = smem_addr(bars);
  auto k_full = [&](int st) { return q_full + 8 * (1 + st); };
  auto v_full = [&](int st) { return q_full + 8 * (1 + kStages + st); };
  auto kv_empty = [&](int st) { return q_full + 8 * (1 + 2 * kStages + st); };
  auto v_land = [&](int st) { return q_full + 8 * (1 + 3 * kStages + st); };

  // The warpgroup index through a shuffle from lane 0: a value ptxas knows to be the same
  // across the warp, so that the wgmma descriptors derived from it are formed in uniform
  // registers (attend_bwd_sm90.cuh likewise).
  const int tid = threadIdx.x, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
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
    // Producer warpgroup: thread 0 issues every tile load, up to kStages tiles ahead; with
    // q_ranges its four warps fix the V tiles that not every row sees whole (design at
    // the top of the file).
    regs_dealloc<40>();
    if (n_tiles == 0) return;
    if constexpr (!kRanges) {
      // Every row sees every KV row: no tile to fix (splits are whole tiles; rows past
      // the end of K/V land as zeros), thread 0 alone issues the loads.
      if (tid != 0) return;
      mbar_arrive_expect(q_full, kQTile);
      load_tile(sQ, &tq, BM, h, m0, b, q_full);
      for (int j = 0; j < n_tiles; ++j) {
        const int st = j % kStages, n0 = lo + j * BN;
        if (j >= kStages) mbar_wait(kv_empty(st), (j / kStages - 1) & 1);
        const uint32_t k_dst = sKV + st * 2 * kKvTile, v_dst = k_dst + kKvTile;
        mbar_arrive_expect(k_full(st), kKvTile);
        load_tile(k_dst, &tk, BN, hk, n0, b, k_full(st));
        mbar_arrive_expect(v_full(st), kKvTile);
        load_tile(v_dst, &tv, BN, hk, n0, b, v_full(st));
      }
    } else {
      constexpr int kProducerBar = Cfg::kProducerBar, kProducers = 128;
      const int pw = tid / 32;  // producer warp: V rows 32·w + lane of a tile, w = pw, pw + 4, ...
      for (int r = tid; r < BM; r += kProducers) {
        const int row = m0 + r;
        s_rows[r] = row < p.Lq ? local_interval(p.q_ranges, p.kv_begin, p.Lkv, (long long)b * p.Lq + row)
                               : make_int2(0, 0);
      }
      named_barrier_or(kProducerBar, kProducers, false);  // s_rows complete
      const int all_lo = kr.full_lo, all_hi = min(kr.full_hi, hi);  // KV rows every row sees
      auto needs_fix = [&](int n0) { return n0 < all_lo || min(n0 + BN, p.Lkv) > all_hi; };
      uint32_t land_phase = 0;  // bit st: parity of stage st's next v_land completion
      // V rows of tile j no row of the block sees (past hi included) become 0; a NaN/±Inf
      // in a row only some rows see marks the tile for the exact product. Each warp takes
      // its 32-row slices; the barrier puts every warp's stores (and its proxy fence)
      // before thread 0's release of the stage, and ORs the marks.
      auto fix = [&](int j) {
        const int st = j % kStages, n0 = lo + j * BN;
        if (!needs_fix(n0)) return;
        mbar_wait(v_land(st), (land_phase >> st) & 1u);
        land_phase ^= 1u << st;
        const uint32_t v_tile = sKV + st * 2 * kKvTile + kKvTile;
        bool bad = false;
        for (int w = pw; w < BN / 32; w += kProducers / 32) {
          uint32_t any = 0;  // bit c: some row of the block sees KV row n0 + 32·w + c
          for (int r = lane; r < BM; r += 32) {
            const int2 iv = s_rows[r];
            any |= interval_bits(iv.x, min(iv.y, hi), n0 + 32 * w);
          }
          any = __reduce_or_sync(0xffffffffu, any);
          const int r = 32 * w + lane, col = n0 + r;
          if (col >= p.Lkv || (col >= all_lo && col < all_hi)) continue;  // TMA zeros; seen by every row
          if (!((any >> lane) & 1u)) zero_tile_row<L, kChunks>(v_tile, BN, r);
          else bad |= tile_row_nonfinite<T, L, kChunks>(v_tile, BN, r);
        }
        fence_proxy_async();
        bad = named_barrier_or(kProducerBar, kProducers, bad);
        if (tid == 0) {
          s_slow[st] = bad;
          mbar_arrive(v_full(st));
        }
      };
      if (tid == 0) {
        mbar_arrive_expect(q_full, kQTile);
        load_tile(sQ, &tq, BM, h, m0, b, q_full);
      }
      // Before tile j's load the producer fixes the tiles up to j − kStages + 1, then waits
      // for tile j − kStages to free its stage. The consumers free that stage only once
      // they have tile j − kStages fixed, and they need tile j − kStages + 1 a step later:
      // its fix overlaps that step, on a tile that landed kStages − 1 loads ago, while the
      // loads after it are in flight. (Fixing tile j − 1 there, as before, left one load
      // in flight: each waited for the previous tile to land and be scanned.)
      int fixed = 0;
      for (int j = 0; j < n_tiles; ++j) {
        const int st = j % kStages, n0 = lo + j * BN;
        if (j >= kStages) {
          while (fixed <= j - kStages + 1) fix(fixed++);
          if (pw == 0) mbar_wait(kv_empty(st), (j / kStages - 1) & 1);
        }
        if (tid == 0) {
          const uint32_t k_dst = sKV + st * 2 * kKvTile, v_dst = k_dst + kKvTile;
          mbar_arrive_expect(k_full(st), kKvTile);
          load_tile(k_dst, &tk, BN, hk, n0, b, k_full(st));
          s_slow[st] = 0;
          const uint32_t v_bar = needs_fix(n0) ? v_land(st) : v_full(st);
          mbar_arrive_expect(v_bar, kKvTile);
          load_tile(v_dst, &tv, BN, hk, n0, b, v_bar);
        }
      }
      while (fixed < n_tiles) fix(fixed++);
    }
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

  // S = Q·K_jᵀ (Q and K K-major: 32 bytes per k16 step along the head dim).
  // Without q_ranges each tile's descriptor is formed once plus the k16 step's offset
  // (wg_desc_plus); the q_ranges kernel keeps the per-use form (fewer registers held).
  auto issue_scores = [&](float (&s_flat)[BN / 2], int j) {
    const uint32_t q_tile = kRanges ? opaque(sQ) : sQ, k_tile = (kRanges ? opaque(sKV) : sKV) + (j % kStages) * 2 * kKvTile;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      Wgmma<T>::template ss<BN, 0, 0>(s_flat, L::template kmajor<!kRanges>(q_tile, BM, cw * 64, kk),
                                      L::template kmajor<!kRanges>(k_tile, BN, 0, kk), kk);
    wg_commit();
  };
  // O += P·V_j (V MN-major: 16 KV rows per k16 step, column blocks BN rows apart).
  auto issue_pv = [&](uint32_t (&pa)[BN / 16][4], int j) {
    const uint32_t v_tile = (kRanges ? opaque(sKV) : sKV) + (j % kStages) * 2 * kKvTile + kKvTile;
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
      Wgmma<T>::template rs<D, 1>(acc_flat, pa[kk], L::template mnmajor<!kRanges>(v_tile, BN, 0, kk), 1);
    wg_commit();
  };
  auto need_mask = [&](int n0) { return n0 < kr.full_lo || n0 + BN > min(kr.full_hi, hi); };
  auto parity = [&](int j) { return (uint32_t)((j / kStages) & 1); };
  // Ping-pong. Each step j = 1 .. n_tiles − 1 below issues S_j and P_{j-1}·V_{j-1} between
  // turn_wait (bar.sync on this warpgroup's barrier) and turn_pass (bar.arrive on the
  // other's), so the issues alternate: warpgroup 0 step 1, 1 step 1, 0 step 2, ... (S_0
  // and the last P·V are issued outside the turns, as in FlashAttention-3). Warpgroup 1
  // arrives once ahead, before its first step, so that warpgroup 0 goes first; warpgroup
  // 0 waits once more after its last P·V, for warpgroup 1's last pass: each barrier then
  // completes exactly as often as it is arrived at (n_tiles − 1 times for warpgroup 1's,
  // n_tiles for warpgroup 0's; nothing is pending at exit), each completion joining one
  // waiting and one arriving warpgroup. A warpgroup cannot arrive twice on one barrier
  // before the other has passed it (its next arrive follows its next wait, which needs
  // the other's arrive, issued after the other's own wait returned), so every completion
  // joins the right 256 threads. n_tiles is the block's, and a step waits and passes once
  // on either of its paths (wgmma or exact product), so both warpgroups run the same
  // number of turns, also when one has no valid rows (Lq past the end: it computes on
  // TMA's zero rows) and when n_tiles is odd (the steps go in pairs, the count does not).
  // Immediate barrier ids (a branch on cw) keep the loop's registers free: with the ids in
  // registers ptxas spilled 16 bytes in the consumers' loop.
  auto bar_sync = [](int id) {
    if (id == 0) asm volatile("bar.sync %0, 256;\n" ::"n"(Cfg::kTurnBar) : "memory");
    else asm volatile("bar.sync %0, 256;\n" ::"n"(Cfg::kTurnBar + 1) : "memory");
  };
  auto bar_arrive = [](int id) {
    if (id == 0) asm volatile("bar.arrive %0, 256;\n" ::"n"(Cfg::kTurnBar) : "memory");
    else asm volatile("bar.arrive %0, 256;\n" ::"n"(Cfg::kTurnBar + 1) : "memory");
  };
  auto turn_wait = [&] {
    if constexpr (Cfg::kPingPong) bar_sync(cw);
  };
  auto turn_pass = [&] {
    if constexpr (Cfg::kPingPong) bar_arrive(1 - cw);
  };
  // Whether tile j (its V ready) is marked for the exact product. Only a tile whose
  // scores are masked can be (the producer fixes a subset of them); lane 0 reads the
  // mark and hands it to the warp, so that no other lane reads the stage's shared memory
  // before lane 0 frees the stage.
  auto slow = [&](int j) -> bool {
    if constexpr (!kRanges) {
      return false;
    } else {
      if (!need_mask(lo + j * BN)) return false;
      const int mark = lane == 0 ? s_slow[j % kStages] : 0;
      return __shfl_sync(0xffffffffu, mark, 0) != 0;
    }
  };
  // O += P·V_j term by term, each row over the KV rows it sees: for a tile the producer
  // marked (a NaN/±Inf in a V row only some rows see). No wgmma is in flight here.
  auto pv_exact = [&](const uint32_t (&pt)[BN / 16][4], int j) {
    const uint32_t v_tile = opaque(sKV) + (j % kStages) * 2 * kKvTile + kKvTile;
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
        const float2 v = tile_pair<T, L>(row, BN, k, db, t);
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
    if constexpr (Cfg::kPingPong)
      if (cw == 1 && n_tiles > 1) bar_arrive(0);  // warpgroup 0 takes the first turn
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
      if (slow(j - 1)) {
        // P_{j-1}·V_{j-1} term by term, then S_j alone.
        pv_exact(p_prev, j - 1);
        __syncwarp();  // every lane's reads of V_{j-1} before lane 0 frees the stage
        if (lane == 0) mbar_arrive(kv_empty((j - 1) % kStages));
        turn_wait();
        wg_fence();
        issue_scores(s_flat, j);
        turn_pass();
        wg_wait<0>();
        wg_fence_regs(s_flat);
        const int n0 = lo + j * BN;
        const bool rescale = fwd_softmax_tile<BN>(s, mrow, lrow, alpha, p.scale_log2, need_mask(n0), n0, hi, iv, t);
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) probs_fragment<T>(s, kk, p_next[kk]);
        if (rescale) fwd_rescale<D>(acc, alpha);
        return;
      }
      turn_wait();
      wg_fence();
      issue_scores(s_flat, j);
      issue_pv(p_prev, j - 1);
      turn_pass();
      wg_wait<1>();
      wg_fence_regs(s_flat);
      const int n0 = lo + j * BN;
      const bool rescale = fwd_softmax_tile<BN>(s, mrow, lrow, alpha, p.scale_log2, need_mask(n0), n0, hi, iv, t);
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) probs_fragment<T>(s, kk, p_next[kk]);
      wg_wait<0>();
      wg_fence_regs(acc_flat);
      wg_fence_regs(p_prev);
      if (lane == 0) mbar_arrive(kv_empty((j - 1) % kStages));  // K_{j-1}, V_{j-1} read by this warp
      if (rescale) fwd_rescale<D>(acc, alpha);
    };
    for (int j = 1; j < n_tiles; j += 2) {
      step(j, pe, po);
      if (j + 1 < n_tiles) step(j + 1, po, pe);
    }
    auto last_pv = [&](uint32_t (&p_last)[BN / 16][4]) {
      mbar_wait(v_full((n_tiles - 1) % kStages), parity(n_tiles - 1));
      if (slow(n_tiles - 1)) {
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
    if constexpr (Cfg::kPingPong)
      if (cw == 0 && n_tiles > 1) bar_sync(0);  // warpgroup 1's last pass (above)
  }

  fwd_epilogue<T, D>(p, acc, mrow, lrow, row0, b, h, split, t);
#endif
}

}  // namespace lvx::cuda
