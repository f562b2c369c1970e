// Backward step on Hopper warpgroup MMA (sm_90a), 16-bit storage, head dims of the table
// (attend_config.hpp: 64, 96, 128): the computation of attend_bwd_kernel (attend_bwd.cuh)
// with
//   - warp specialization: a producer warp walks the block's (query head, query tile)
//     items, skips the invisible ones, stages lse, Dl and the row intervals, and
//     issues the TMA loads of K, V (once) and of Q and dO (a ring of `stages`, tiles of
//     block_m query rows); two consumer warpgroups own 64 KV rows each (128 per block)
//     with dK, dV in registers; tiles in the swizzled-rows layout of wgmma.cuh (128-byte
//     swizzle for D = 64, 128; 64-byte for D = 96);
//   - per tile, wgmma m64n{block_m} for Sᵀ = K Qᵀ and dPᵀ = V dOᵀ, m64nD with A from
//     registers for dV += Pᵀ dO and dK += dSᵀ Q (Q, dO read MN-major), and dQ = dS K
//     with dSᵀ (double-buffered) and K read MN-major from shared memory: each warpgroup
//     forms one part of the tile's dQ (block_m = 128: its 64 query rows; block_m = 64:
//     a part of the head dim, BwdSm90::kDqCols), stages it in shared memory and adds it
//     to the fp32 dQ in global memory with TMA reduce-adds (the memory system does the
//     adds in whole lines, where per-thread atomics capped the kernel), which one thread
//     of the warpgroup issues or, in the late kernels at D = 96 and 128, a writer warp of
//     the producer warpgroup (one per consumer warpgroup, BwdSm90::kHandBar). The consumers
//     meet once per tile (dSᵀ complete), at a named barrier; or (kLate, without q_ranges,
//     where a KV block has many query tiles) each forms dQ of a tile during the next one,
//     after a one-way signal that the other's half of dSᵀ is stored, and the two take
//     turns issuing their GEMMs (details at "Late dQ" below).
//   - without q_ranges, where a KV block has few query tiles, persistent blocks (one per
//     SM, attend_launch.cuh) that walk KV blocks in turn: the producer loads the next
//     KV block's first Q/dO tile as soon as the last tile's stage is free and its K/V as
//     soon as the consumers release them (kv_empty), while the consumers store dK/dV.
//   - fresh dK/dV in the storage dtype (the public call's one step): staged in the
//     warpgroup's dQ staging area and stored by TMA (BwdSm90::kKvTma; dK, then dV where
//     both do not fit at once); accumulated or fp32 results are stored (added to the fp32
//     sums) by the threads, bwd_store_kv.
// Values a row cannot see never reach a result (design at the top of attend_fwd.cuh):
// Pᵀ and dSᵀ are selects in straddling tiles. With q_ranges, K lands on kv_land and a
// second producer warp sets K rows no query row of the step sees to 0 where they hold
// NaN/±Inf (the first warp walks the items and issues their loads meanwhile); the
// other such K rows (sKpart) mark every tile whose rows do not all see them. A Q/dO
// tile whose rows do not all see every KV row of the block lands on q_land: rows that
// see none of them become 0, and a NaN/±Inf in a row that sees only part of them marks
// the tile (a row that sees all of them reaches every KV row of the block anyway).
// A marked tile (sFlags bit 1) forms dV, dK and dQ term by term over the (KV row, query)
// pairs that see each other (kv_exact, dq_exact), with no wgmma in flight; Sᵀ and
// dPᵀ = V dOᵀ stay on wgmma (V needs nothing: dSᵀ is a select). Only a tile some row does
// not see whole can be exact or need the selects; such tiles branch off once per tile, and
// a kernel without q_ranges (kRanges false: every row sees every KV row) is compiled
// without any of it.
#pragma once

#include <type_traits>

#include "attend_bwd_parts.cuh"
#include "attend_config.hpp"
#include "tma.cuh"
#include "visibility.cuh"

namespace lvx::cuda {

template <int D>
struct BwdSm90 {
  static constexpr config::Sm90Tile kRow = config::sm90_bwd(D);
  static_assert(kRow.head_dim == D, "no sm_90a backward row for this head dim in attend_config.hpp");
  static constexpr int kHeadDim = D, kBlockN = kRow.block_n, kBlockM = kRow.block_m, kStages = kRow.stages;
  static constexpr int kThreads = kRow.threads;  // producer + 2 consumer warpgroups
  static_assert(kBlockN == 128 && kThreads == 384, "two consumer warpgroups of 64 KV rows");
  static_assert(kBlockM == 64 || kBlockM == 128, "Q/dO tile rows: wgmma N of the scores, 64 per dQ part");
  using L = SwzRows<D % 64 == 0 ? 128 : 64>;  // Q, K, V, dO tiles (wgmma.cuh)
  static_assert(D % L::kCols == 0, "head dim: whole column blocks");
  static constexpr int kColBlocks = D / L::kCols;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per tile row
  // dQ = dS K in two parts, one per consumer warpgroup w: 64 query rows (from 64·w when
  // block_m = 128, else all) x kDqCols[w] head-dim columns from kDqCol[w]. A part's
  // columns are whole column blocks of K (an MN-major operand) and whole 32-column fp32
  // boxes of the dQ tensor map.
  static constexpr bool kDqRowSplit = kBlockM == 128;
  static constexpr int kDqCols0 = kDqRowSplit ? D : (D / 2 + L::kCols - 1) / L::kCols * L::kCols;
  static constexpr int kDqCols1 = kDqRowSplit ? D : D - kDqCols0;
  static constexpr int kDqCol1 = kDqRowSplit ? 0 : kDqCols0;
  static_assert(kDqCols0 % L::kCols == 0 && kDqCols1 % L::kCols == 0 && kDqCols1 > 0, "dQ parts");
  static_assert(kDqCols0 % 32 == 0 && kDqCols1 % 32 == 0, "dQ parts: whole fp32 boxes");
  static constexpr int kKvBytes = kBlockN * D * 2;     // a K or V tile
  static constexpr int kQBytes = kBlockM * D * 2;      // a Q or dO tile
  static constexpr int kDsBytes = kBlockN * kBlockM * 2;  // dSᵀ
  static constexpr int kDqBytes = 64 * kDqCols0 * 4;   // one warpgroup's fp32 dQ part (the wider)
  static_assert(kKvBytes % 1024 == 0 && kQBytes % 1024 == 0 && kDsBytes % 1024 == 0, "aligned swizzle patterns");
  // Late dQ (the kernel's kLate, launch_attend_bwd picks it): a warpgroup forms dQ of tile
  // j during tile j + 1, so that it waits for the other warpgroup's half of dSᵀ_j one tile
  // later than it was stored and the two can drift apart instead of meeting at a barrier
  // every tile (kernels without q_ranges; the exact tiles of the masked ones read their
  // stage in dQ). Named barriers kLateBar .. + 3.
  static constexpr int kLateBar = 4;
  // With late dQ, turns: each warpgroup issues its two GEMM bursts of a tile (dPᵀ and dV;
  // the late dQ and the next Sᵀ) between bar.sync on its own barrier and bar.arrive on the
  // other's, so that the bursts alternate and one warpgroup's ALU work runs under the
  // other's GEMMs, as in the forward's ping-pong. Barriers kTurnBar (warpgroup 0's), + 1.
  static constexpr bool kTurns = true;
  static constexpr int kTurnBar = 8;
  // Staging-area hand-offs (dQ reduce-adds, dK/dV stores) through a writer warp per
  // consumer warpgroup (producer warps 2 and 3), in the kernels with the kernel's kWriter:
  // barrier kHandBar + w (the warpgroup's writes are fenced and its job set: consumers
  // arrive, the writer syncs) and kHandBar + 2 + w (the writer's TMA has read the area:
  // the writer arrives, consumers sync); 160 threads each.
  static constexpr int kHandBar = 10;
  // dK/dV of a warpgroup's 64 KV rows in the storage dtype, staged in its dQ staging area
  // (16 KB) and stored by TMA (BwdParams::kv_store_tma): both at once at D = 64 (16 KB), dK
  // then dV at D = 96 (12 KB each) and 128 (16 KB each); accumulated or fp32 results by the
  // threads.
  static constexpr bool kKvTma = 64 * D * 2 <= kDqBytes;
  static constexpr int kSmemBytes = 2 * kKvBytes + 2 * kStages * kQBytes + 2 * kDsBytes + 2 * kDqBytes + 1024;
  static constexpr int kStaticBytes = kStages * kBlockM * 16 + 512;  // row statistics, flags, barriers
  static_assert(kSmemBytes + kStaticBytes <= 232448, "shared memory of one block");
};

// A staging-area hand-off from a consumer warpgroup to its writer warp: int4 {kind, head,
// first row, batch}, for a dQ part with its 32-column boxes in bits 4-7 of the kind's word
// and its first column from bit 8; a dQ part (reduce-add of those columns at query rows
// from `first row`), dK, dV or both (stores of its 64 KV rows from `first row`), nothing
// (rows past Lkv only), or the last one (the writer completes its operations and leaves).
enum BwdJob : int { kJobDq, kJobK, kJobV, kJobKv, kJobNone, kJobDone };

// kRanges: the step has q_ranges (masked-value machinery compiled in). kLate (only without
// q_ranges): late dQ with turns (BwdSm90::kLateBar, kTurns) instead of the warpgroups
// meeting at one barrier per tile.
template <typename T, int D, bool kRanges, bool kLate = false>
__global__ void __launch_bounds__(BwdSm90<D>::kThreads, 1)
    attend_bwd_sm90_kernel(const BwdParams p, const __grid_constant__ CUtensorMap tq,
                           const __grid_constant__ CUtensorMap tk, const __grid_constant__ CUtensorMap tv,
                           const __grid_constant__ CUtensorMap tdo, const __grid_constant__ CUtensorMap tdq,
                           const __grid_constant__ CUtensorMap tdk, const __grid_constant__ CUtensorMap tdv) {
#ifdef LVX_SM90A
  using Cfg = BwdSm90<D>;
  using L = typename Cfg::L;
  constexpr int BM = Cfg::kBlockM, BN = Cfg::kBlockN, S = Cfg::kStages, kChunks = Cfg::kChunks;
  constexpr uint32_t kQ = Cfg::kQBytes;
  extern __shared__ __align__(128) unsigned char smem_sm90[];
  __shared__ float sLse[S][BM], sDl[S][BM];
  __shared__ int2 sIv[S][BM];
  __shared__ int sItem[S];    // the stage's item (-1: no more)
  __shared__ int2 sTile[S];   // its query head and first query row
  __shared__ int sFlags[S];  // bit 0: every row sees the block whole (no mask); bit 1: exact tile
  __shared__ uint32_t sKpart[BN / 32];  // producer: K rows with a NaN/±Inf some query sees
  __shared__ int4 sJob[2];  // per consumer warpgroup: the hand-off its writer warp issues (BwdJob)
  __shared__ __align__(8) uint64_t bars[3 + 3 * S];
  const uint32_t sK = (smem_addr(smem_sm90) + 1023u) & ~1023u, sV = sK + Cfg::kKvBytes;
  const uint32_t sQ = sV + Cfg::kKvBytes, sdO = sQ + S * kQ;  // [S] each
  const uint32_t sdS = sdO + S * kQ;                          // [2]
  const uint32_t sdQ = sdS + 2 * Cfg::kDsBytes;               // [consumer warpgroup]
  // One tile (rows x D) by TMA: one box per column block.
  auto load_tile = [](uint32_t dst, const CUtensorMap* map, int rows, int h, int row, int b, uint32_t bar) {
#pragma unroll
    for (int c = 0; c < Cfg::kColBlocks; ++c) tma_load_rows(dst + c * rows * L::kBytes, map, c * L::kCols, h, row, b, bar);
  };
  // Barriers: K and V ready; a stage's Q, dO and row inputs ready; a stage read by every
  // consumer warp; K and V, or a stage's Q and dO, landed where the producer fixes them
  // before they are ready; K and V read by every consumer warp (the next block's may load).
  const uint32_t kv_full = smem_addr(bars);
  auto q_full = [&](int st) { return kv_full + 8 * (1 + st); };
  auto q_empty = [&](int st) { return kv_full + 8 * (1 + S + st); };
  auto q_land = [&](int st) { return kv_full + 8 * (1 + 2 * S + st); };
  const uint32_t kv_land = kv_full + 8 * (1 + 3 * S), kv_empty = kv_full + 8 * (2 + 3 * S);

  // The warpgroup and warp indices through a shuffle from lane 0: values ptxas knows to be
  // the same across the warp, so that what derives from them (the wgmma descriptors) is
  // formed in uniform registers instead of per thread and moved over (R2UR).
  const int tid = threadIdx.x, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0), warp = __shfl_sync(0xffffffffu, (tid / 32) % 4, 0);
  const int Lq = p.Lq, Lkv = p.Lkv;
  const int q_tiles = (Lq + BM - 1) / BM, items = p.group * q_tiles;
  // Without q_ranges the kernel is persistent: this block takes KV blocks w = blockIdx.x,
  // + gridDim.x, ... of the step's kv_blocks · Hkv · B (KV block fastest, so that blocks
  // running together share a head's Q and dO in L2), and the next KV block's K/V and first
  // Q/dO tile load while the consumers finish the last tiles and store dK/dV of this one.
  // With q_ranges each block takes one KV block (the launch gives one block per KV block):
  // the producer's walk is its critical path there, and with the KV block's coordinates
  // loop-carried instead of read from blockIdx its 24 registers spilled 6x as much
  // (masked backward 8-16% slower on one H200, KERNEL_NOTES.md).
  constexpr bool kPersistent = !kRanges;
  const int kv_blocks = (Lkv + BN - 1) / BN, work = kv_blocks * p.Hkv * p.B;
  int n0 = 0, hk = 0, b = 0;
  auto take = [&](int w) {
    if constexpr (kPersistent) {
      n0 = (w % kv_blocks) * BN;
      hk = (w / kv_blocks) % p.Hkv;
      b = w / (kv_blocks * p.Hkv);
    } else {  // grid (kv_blocks, Hkv, B): values the compiler can read again instead of keeping
      n0 = blockIdx.x * BN;
      hk = blockIdx.y;
      b = blockIdx.z;
    }
  };
  if (tid == 0) {
    mbar_init(kv_full, 1);
    mbar_init(kv_land, 1);
    mbar_init(kv_empty, 8);
    for (int st = 0; st < S; ++st) {
      mbar_init(q_full(st), 1);
      mbar_init(q_empty(st), 8);
      mbar_init(q_land(st), 1);
    }
    mbar_fence_init();
  }
  __syncthreads();

  // kWriter: staging-area hand-offs through writer warps (BwdSm90::kHandBar), in the late
  // kernels at D = 96 and 128. Elsewhere one thread of the consumer warpgroup issues them:
  // one H200, 2026-11-30, backward kernel against that, in one A/B call: late D = 128
  // 0.95-0.98x, D = 96 0.97x, but late D = 64 1.06x, the per-tile kernel (16/16, 256 x 32768)
  // 1.07x, with q_ranges 1.04x (KERNEL_NOTES.md, "Writer warps measured").
  constexpr bool kWriter = kLate && D != 64;
  // The TMA operations of a hand-off (BwdJob) from the staging area `stage`, by one thread,
  // committed as one group.
  auto issue_job = [&](uint32_t stage, const int4& job) {
    constexpr uint32_t kKvTile = 64 * D * 2;
    const int kind = job.x & 15;
    if (kind == kJobDq) {
      for (int box = 0; box < ((job.x >> 4) & 15); ++box)
        tma_reduce_add_rows(&tdq, stage + box * 64 * 128, (job.x >> 8) + 32 * box, job.y, job.z, job.w);
    } else {
#pragma unroll
      for (int c = 0; c < Cfg::kColBlocks; ++c) {
        const uint32_t src = stage + c * 64 * L::kBytes;
        if (kind == kJobK || kind == kJobKv) tma_store_rows(&tdk, src, c * L::kCols, job.y, job.z, job.w);
        if (kind == kJobV) tma_store_rows(&tdv, src, c * L::kCols, job.y, job.z, job.w);
        if (kind == kJobKv) tma_store_rows(&tdv, src + kKvTile, c * L::kCols, job.y, job.z, job.w);
      }
    }
    bulk_commit();
  };
  // Writer warp of consumer warpgroup w (producer warps 2, 3; kWriter): per hand-off
  // (through_staging below) it waits until the warpgroup's writes are fenced, issues the
  // job's TMA operations from the warpgroup's staging area (lane 0), waits until they have
  // read it and hands the area back. The area starts free.
  auto dq_writer = [&](int w) {
    const uint32_t stage = sdQ + w * Cfg::kDqBytes;
    named_barrier_arrive(Cfg::kHandBar + 2 + w, 160);
    for (;;) {
      named_barrier(Cfg::kHandBar + w, 160);
      const int4 job = sJob[w];
      const int kind = job.x & 15;
      if (kind == kJobDone) break;
      if (lane == 0 && kind != kJobNone) {
        issue_job(stage, job);
        bulk_wait_read();
      }
      __syncwarp();
      named_barrier_arrive(Cfg::kHandBar + 2 + w, 160);
    }
    if (lane == 0) bulk_wait();
  };

  if (wg == 0) {
    regs_dealloc<24>();
    // Producer: warp 0 (lane 0 issues the loads; the warp walks the items and fixes Q/dO
    // tiles) and, with q_ranges, warp 1, which scans K while warp 0 finds the first items
    // and their loads fly (design at the top).
    if (warp >= 2) {
      // Writer warp of consumer warpgroup warp - 2: issues the TMA operations of that
      // warpgroup's staging-area hand-offs (dQ reduce-adds, dK/dV stores), so that the
      // consumers only arrive once their writes are fenced instead of meeting at a barrier
      // before one of them issues (KERNEL_NOTES.md, "Where the backward waits now").
      if constexpr (kWriter) dq_writer(warp - 2);
      return;
    }
    if (tid >= (kRanges ? 64 : 32)) return;
    if constexpr (kRanges) {
      if (warp == 1) {
        for (int w = blockIdx.x, kb = 0; w < work; w += gridDim.x, ++kb) {
          take(w);
          // K rows with a NaN/±Inf: those no query row of the step sees become 0; the
          // others (sKpart, bit r of word r / 32) make every tile whose rows do not all
          // see them exact. sKpart is written before the release of K (kv_full), which
          // warp 0 waits for before it reads it (and warp 0 reads it only while it walks
          // this KV block, before the next one's K can land).
          uint32_t kpart[BN / 32];
          mbar_wait(kv_land, kb & 1);
          bool any_bad = false;
#pragma unroll
          for (int i = 0; i < BN / 32; ++i) {
            const int r = 32 * i + lane;
            kpart[i] = __ballot_sync(0xffffffffu, n0 + r < Lkv && tile_row_nonfinite<T, L, kChunks>(sK, BN, r));
            any_bad |= kpart[i] != 0;
          }
          if (any_bad) {
            uint32_t seen[BN / 32];
#pragma unroll
            for (int i = 0; i < BN / 32; ++i) seen[i] = 0;
            for (int q = lane; q < Lq; q += 32) {
              const int2 iv = local_interval(p.q_ranges, p.kv_begin, Lkv, (long long)b * Lq + q);
#pragma unroll
              for (int i = 0; i < BN / 32; ++i) seen[i] |= interval_bits(iv.x, iv.y, n0 + 32 * i);
            }
#pragma unroll
            for (int i = 0; i < BN / 32; ++i) {
              seen[i] = __reduce_or_sync(0xffffffffu, seen[i]);
              if (((kpart[i] & ~seen[i]) >> lane) & 1u) zero_tile_row<L, kChunks>(sK, BN, 32 * i + lane);
              kpart[i] &= seen[i];
            }
            fence_proxy_async();
          }
          __syncwarp();  // every lane's zeros before lane 0's release
          if (lane == 0) {
#pragma unroll
            for (int i = 0; i < BN / 32; ++i) sKpart[i] = kpart[i];
            mbar_arrive(kv_full);
          }
          if constexpr (!kPersistent) break;
        }
        return;
      }
    }
    uint32_t land_phase = 0;  // bit st: parity of stage st's next q_land completion
    int j = 0;                // stage uses so far, over all of this block's KV blocks
    for (int w = blockIdx.x, kb = 0; w < work; w += gridDim.x, ++kb) {
      take(w);
      const int kv_hi = min(Lkv, n0 + BN);
      // K and V go in once the consumers are done with the last KV block's, after the
      // first Q/dO tile's loads (its stage is free earlier: the last tile's dQ released it).
      bool kv_loaded = false;
      auto load_kv = [&] {
        if (kb > 0) mbar_wait(kv_empty, (kb - 1) & 1);
        if (lane == 0) {
          const uint32_t bar = kRanges ? kv_land : kv_full;
          mbar_arrive_expect(bar, 2 * Cfg::kKvBytes);
          load_tile(sK, &tk, BN, hk, n0, b, bar);
          load_tile(sV, &tv, BN, hk, n0, b, bar);
        }
        kv_loaded = true;
      };
      if constexpr (!kPersistent) load_kv();  // one KV block: K/V first, as they are needed first
      [[maybe_unused]] bool k_scanned = !kRanges;  // sKpart visible to this warp (kv_full waited for)
      int it = 0;
      for (;; ++j) {
        bool whole = true;
        int all_lo = 0, all_hi = Lkv;
        while (it < items &&
               !bwd_tile_rows_warp<BM, BN, kRanges>(p, b, (it % q_tiles) * BM, n0, kv_hi, whole, all_lo, all_hi))
          ++it;
        const int st = j % S;
        if (j >= S) mbar_wait(q_empty(st), (j / S - 1) & 1);
        if (it >= items) {  // no more items of this KV block: a stage use without loads says so
          if (kPersistent && !kv_loaded) load_kv();  // the consumers wait for K/V before they look
          if (lane == 0) {
            sItem[st] = -1;
            mbar_arrive(q_full(st));
          }
          ++j;
          break;
        }
        const int h = hk * p.group + it / q_tiles, q0 = (it % q_tiles) * BM;
        // Q and dO rows of rows that do not see every KV row of the block are fixed.
        const bool qfix = kRanges && !(all_lo <= n0 && all_hi >= kv_hi);
        // The tile loads first, so that they fly while the warp stages the row inputs. On
        // q_full they are expected bytes and the stage completes with lane 0's arrival
        // below; a tile to fix lands on q_land.
        if (lane == 0) {
          const uint32_t bar = qfix ? q_land(st) : q_full(st);
          if (qfix) mbar_arrive_expect(bar, 2 * kQ);
          else mbar_expect_tx(bar, 2 * kQ);
          load_tile(sQ + st * kQ, &tq, BM, h, q0, b, bar);
          load_tile(sdO + st * kQ, &tdo, BM, h, q0, b, bar);
        }
        if (kPersistent && !kv_loaded) load_kv();
        bwd_row_stats_warp<BM>(p, b, h, q0, sLse[st], sDl[st], sIv[st]);
        // Exact tile: a K row with a NaN/±Inf that not every row of the tile sees.
        bool exact = false;
        if constexpr (kRanges) {
          if (!k_scanned) {
            mbar_wait(kv_full, kb & 1);  // warp 1's scan of K (sKpart), once per KV block
            k_scanned = true;
          }
#pragma unroll
          for (int i = 0; i < BN / 32; ++i) exact |= (sKpart[i] & ~interval_bits(all_lo, all_hi, n0 + 32 * i)) != 0;
        }
        if (lane == 0) {
          sItem[st] = it;
          sTile[st] = make_int2(h, q0);
          sFlags[st] = (whole ? 1 : 0) | (exact ? 2 : 0);
        }
        __syncwarp();  // the warp's row inputs before lane 0 arrives
        if (!qfix && lane == 0) mbar_arrive(q_full(st));
        if (qfix) {
          // Rows that see no KV row of the block: Q and dO become 0. A NaN/±Inf in a row
          // that sees some of them makes the tile exact.
          mbar_wait(q_land(st), (land_phase >> st) & 1u);
          land_phase ^= 1u << st;
          bool bad = false;
          for (int r = lane; r < BM; r += 32) {
            const int2 iv = sIv[st][r];
            if (q0 + r >= Lq || (iv.x <= n0 && iv.y >= kv_hi)) continue;  // TMA zeros; sees every KV row
            if (!(iv.x < kv_hi && iv.y > n0 && iv.y > iv.x)) {
              zero_tile_row<L, kChunks>(sQ + st * kQ, BM, r);
              zero_tile_row<L, kChunks>(sdO + st * kQ, BM, r);
            } else {
              bad |= tile_row_nonfinite<T, L, kChunks>(sQ + st * kQ, BM, r) ||
                     tile_row_nonfinite<T, L, kChunks>(sdO + st * kQ, BM, r);
            }
          }
          fence_proxy_async();
          __syncwarp();
          bad = __any_sync(0xffffffffu, bad);
          if (lane == 0) {
            if (bad) sFlags[st] |= 2;
            mbar_arrive(q_full(st));
          }
        }
        ++it;
      }
      if constexpr (!kPersistent) break;
    }
    return;
  }

  // Consumers: warpgroup cw owns KV rows [n0 + 64·cw, n0 + 64·cw + 64).
  regs_alloc<240>();
  const int cw = wg - 1;
  float dk[D / 8][4], dv[D / 8][4];
  float(&dk_flat)[D / 2] = reinterpret_cast<float(&)[D / 2]>(dk);
  float(&dv_flat)[D / 2] = reinterpret_cast<float(&)[D / 2]>(dv);
  int kv_row0 = 0;  // this thread's KV rows of the current KV block: kv_row0, kv_row0 + 8
  // This warpgroup's dQ part: query rows from dq_row0 of the tile (64 of them).
  const int dq_row0 = Cfg::kDqRowSplit ? 64 * cw : 0;

  // K-major descriptors of this warpgroup's 64 K / V rows and of a Q / dO tile (k16
  // step kk along the head dim); MN-major ones of 16-row slabs (step kk along rows).
  // Late-dQ kernels form each tile's descriptor once and add the k16 step's offset (the
  // per-tile and masked kernels spill that way: they keep the per-use form).
  // At D = 64 (BM = 128) the late kernel keeps the per-use form too: there the formed-once
  // form took 1.07-1.10x its backward time on one H200 (experiments/KERNEL_NOTES.md, "The
  // call of 2026-11-30").
  constexpr bool kPlusDesc = kLate && D != 64;
  auto kv_rows = [&](uint32_t tile, int kk) { return L::template kmajor<kPlusDesc>(tile, BN, cw * 64, kk); };
  auto q_rows = [&](uint32_t tile, int kk) { return L::template kmajor<kPlusDesc>(tile, BM, 0, kk); };
  auto q_slab = [&](uint32_t tile, int kk) { return L::template mnmajor<kPlusDesc>(tile, BM, 0, kk); };
  // Sᵀ = K Qᵀ of the tile in stage st (K-major operands).
  float s[BM / 8][4];
  float(&s_flat)[BM / 2] = reinterpret_cast<float(&)[BM / 2]>(s);
  auto issue_scores = [&](int st) {
    const uint32_t q_tile = sQ + st * kQ, k_tile = sK;
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      Wgmma<T>::template ss<BM, 0, 0>(s_flat, kv_rows(k_tile, kk), q_rows(q_tile, kk), kk);
    wg_commit();
  };
  // The item in stage st of use j (-1: no more).
  auto next_item = [&](int j) {
    mbar_wait(q_full(j % S), (j / S) & 1);
    return sItem[j % S];
  };

  // This warpgroup's dQ staging area (sdQ + cw · kDqBytes) through one hand-off: wait until
  // the last one's TMA operations have read the area, write() it (every thread), fence the
  // writes for the TMA, then issue the job's operations: its writer warp does (kWriter:
  // the consumers set the job and arrive), or one thread of the warpgroup after the
  // warpgroup meets.
  auto through_staging = [&](auto&& write, int4 job) {
    if constexpr (kWriter) {
      named_barrier(Cfg::kHandBar + 2 + cw, 160);
      write();
      fence_proxy_async();
      if (tid % 128 == 0) sJob[cw] = job;
      named_barrier_arrive(Cfg::kHandBar + cw, 160);
    } else {
      const bool issuer = tid % 128 == 0;
      if (issuer) bulk_wait_read();
      named_barrier(2 + cw, 128);
      write();
      fence_proxy_async();
      named_barrier(2 + cw, 128);
      if (issuer && (job.x & 15) != kJobNone) issue_job(sdQ + cw * Cfg::kDqBytes, job);
    }
  };
  // A dQ part (dq[n8 block][4], columns from col0) → shared memory (32-column boxes,
  // 128-byte swizzle) → one TMA reduce-add per box.
  auto add_dq = [&](const auto& dq, int col0, int h, int q0) {
    constexpr int NB = (int)(sizeof(dq) / sizeof(dq[0]));  // n8 blocks
    const uint32_t dq_stage = opaque(sdQ) + cw * Cfg::kDqBytes;
    through_staging(
        [&] {
          // Row warp·16 + g + 8·ri, chunk (nb % 4)·2 + t / 2 of box nb / 4, at chunk position
          // chunk ^ (row % 8) = ((nb % 4)·2) ^ (t / 2 ^ g): one base per ri, and per nb an XOR
          // of bits 5-6 (the base holds none there) plus the box's offset.
          const uint32_t base0 = dq_stage + (warp * 16 + g) * 128 + (((t / 2) ^ g) << 4) + (t % 2) * 8;
#pragma unroll
          for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int ri = 0; ri < 2; ++ri) {
              const uint32_t addr = ((base0 + ri * 8 * 128) ^ ((uint32_t)(nb % 4) << 5)) + (nb / 4) * 64 * 128;
              asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(dq[nb][2 * ri] * p.scale),
                           "f"(dq[nb][2 * ri + 1] * p.scale));
            }
        },
        make_int4(kJobDq | (NB / 4) << 4 | col0 << 8, h, q0 + dq_row0, b));
  };
  // dK (scaled) and dV of this warpgroup's 64 KV rows, finished and fresh, in the storage
  // dtype → its dQ staging area (64-row tiles in L's swizzle: dK and dV in one hand-off
  // where both fit, D = 64; else dK, then dV) → TMA stores (Cfg::kKvTma).
  auto store_kv_tma = [&] {
    if constexpr (Cfg::kKvTma) {
      const uint32_t stage = opaque(sdQ) + cw * Cfg::kDqBytes;
      constexpr uint32_t kTile = 64 * D * 2;  // one 64-row tile
      constexpr bool kTogether = 2 * kTile <= (uint32_t)Cfg::kDqBytes;
      const bool rows_in = n0 + 64 * cw < Lkv;  // else rows past Lkv only: nothing to store
      auto write_tile = [&](const float (&acc)[D / 8][4], uint32_t dst, float scale) {
#pragma unroll
        for (int ri = 0; ri < 2; ++ri) {
          const int row = warp * 16 + g + 8 * ri;
#pragma unroll
          for (int db = 0; db < D / 8; ++db)
            asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(dst + L::offset(64, row, db) + 4 * t),
                         "r"(Pack2<T>::from(acc[db][2 * ri] * scale, acc[db][2 * ri + 1] * scale)));
        }
      };
      auto job = [&](int kind) { return make_int4(rows_in ? kind : kJobNone, hk, n0 + 64 * cw, b); };
      if constexpr (kTogether) {
        through_staging(
            [&] {
              write_tile(dk, stage, p.scale);
              write_tile(dv, stage + kTile, 1.f);
            },
            job(kJobKv));
      } else {
        through_staging([&] { write_tile(dk, stage, p.scale); }, job(kJobK));
        through_staging([&] { write_tile(dv, stage, 1.f); }, job(kJobV));
      }
    }
  };
  // dSᵀ of this warpgroup's KV rows → shared memory (the A operand of dQ = dS K).
  // da[kk][r] holds the 8x8 matrix of KV rows cw·64 + 16·warp + 8·(r & 1) + 0..7 and the
  // 16-byte chunk 2kk + (r >> 1) of queries, in the fragment layout stmatrix takes: one
  // stmatrix.x4 per kk, lane 8m + j giving row j of matrix m. In the 128-byte swizzle the
  // chunk sits at (chunk ^ row % 8) · 16 within its block (swz_offset), and row % 8 = j.
  auto store_ds = [&](const uint32_t (&da)[BM / 16][4], uint32_t ds_tile) {
    const int m = lane / 8, j = lane % 8;
    const int row = cw * 64 + warp * 16 + 8 * (m & 1) + j;
    const uint32_t a0 = ds_tile + row * 128 + (((m >> 1) ^ j) << 4);  // chunk m >> 1 of block 0
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      // chunk 2kk + (m >> 1): block kk / 4, position ((2kk % 8) + (m >> 1)) ^ j
      const uint32_t addr = (a0 ^ ((uint32_t)(kk % 4) << 5)) + (uint32_t)(kk / 4) * BN * 128;
      stmatrix_x4(addr, da[kk][0], da[kk][1], da[kk][2], da[kk][3]);
    }
  };
  // The exact products of a tile the producer marked, term by term over the (KV row,
  // query) pairs that see each other; no wgmma is in flight during them.
  // acc (dV or dK of this thread's KV rows) += Xᵀ · rows (dO or Q tile), Xᵀ = Pᵀ from its
  // A fragments xa, or (from_ds) dSᵀ from its shared-memory tile ds_tile:
  auto kv_exact = [&](float (&acc)[D / 8][4], const uint32_t (&xa)[BM / 16][4], bool from_ds, uint32_t ds_tile,
                      uint32_t rows_tile, const int2* iv) {
    const int ds_row = cw * 64 + warp * 16 + g;
#pragma unroll 1
    for (int i = 0; i < BM; ++i) {
      const int2 r = iv[i];
      float2 x;
      if (from_ds) {
        const uint32_t dsb = opaque(ds_tile);
        x = make_float2(tile_elem<T>(dsb, BN, ds_row, i / 8, i % 8), tile_elem<T>(dsb, BN, ds_row + 8, i / 8, i % 8));
      } else {
        x = a_frag_pair<T, BM / 16>(xa, i, lane);
      }
      const bool see0 = kv_row0 >= r.x && kv_row0 < r.y, see1 = kv_row0 + 8 >= r.x && kv_row0 + 8 < r.y;
      const uint32_t base = opaque(rows_tile);
#pragma unroll
      for (int jj = 0; jj < D / 8; ++jj) {
        const float2 v = tile_pair<T, L>(base, BM, i, jj, t);
        if (see0) {
          acc[jj][0] += x.x * v.x;
          acc[jj][1] += x.x * v.y;
        }
        if (see1) {
          acc[jj][2] += x.y * v.x;
          acc[jj][3] += x.y * v.y;
        }
      }
    }
  };
  // dq (this warpgroup's dQ part, columns from col0) = dS K.
  auto dq_exact = [&](auto& dq, int col0, uint32_t ds_tile, const int2* iv) {
    constexpr int NB = (int)(sizeof(dq) / sizeof(dq[0]));
    const int i0 = dq_row0 + warp * 16 + g;
    const int2 r0 = iv[i0], r1 = iv[i0 + 8];
#pragma unroll 1
    for (int k = 0; k < BN; ++k) {
      const int col = n0 + k;
      const bool see0 = col >= r0.x && col < r0.y, see1 = col >= r1.x && col < r1.y;
      const uint32_t dsb = opaque(ds_tile), kb = opaque(sK);
      const float ds0 = tile_elem<T>(dsb, BN, k, i0 / 8, i0 % 8), ds1 = tile_elem<T>(dsb, BN, k, i0 / 8 + 1, i0 % 8);
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
        const float2 v = tile_pair<T, L>(kb, BN, k, col0 / 8 + nb, t);
        if (see0) {
          dq[nb][0] += ds0 * v.x;
          dq[nb][1] += ds0 * v.y;
        }
        if (see1) {
          dq[nb][2] += ds1 * v.x;
          dq[nb][3] += ds1 * v.y;
        }
      }
    }
  };
  // Issues this warpgroup's dQ part (kCols columns from col0) += dS K from the dSᵀ tile
  // in ds_tile, as one commit group.
  // plus: std::integral_constant<bool, kPlus>, the descriptor form (wg_desc_plus).
  auto issue_dq = [&](auto& dq_flat, uint32_t ds_tile, uint32_t k_tile, int col0, auto plus) {
    constexpr int kCols = 2 * (int)(sizeof(dq_flat) / sizeof(dq_flat[0]));
    constexpr bool kPlus = decltype(plus)::value;
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
      Wgmma<T>::template ss<kCols, 1, 1>(
          dq_flat, Swz128::template mnmajor<kPlus>(ds_tile, BN, Cfg::kDqRowSplit ? cw : 0, kk),
          L::template mnmajor<kPlus>(k_tile, BN, col0 / L::kCols, kk), kk);
    wg_commit();
  };
  // The end of tile j (stage st), once both warpgroups' dSᵀ are in ds_tile: this
  // warpgroup's dQ part (kCols columns from col0), the next tile's Sᵀ, the stage handed
  // back. Returns the next item.
  auto finish_tile = [&](auto cols, int col0, int j, int st, int h, int q0, uint32_t ds_tile, auto exact_tile) {
    constexpr int kCols = decltype(cols)::value;
    constexpr bool exact = decltype(exact_tile)::value;
    float dq[kCols / 8][4];
    float(&dq_flat)[kCols / 2] = reinterpret_cast<float(&)[kCols / 2]>(dq);
    if constexpr (exact) {
#pragma unroll
      for (int i = 0; i < kCols / 8; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;
      dq_exact(dq, col0, ds_tile, sIv[st]);
      const int it_next = next_item(j + 1);
      __syncwarp();  // every lane's reads of the stage (sIv in dq_exact) before lane 0 frees it
      if (lane == 0) mbar_arrive(q_empty(st));  // this warp is done with the stage
      add_dq(dq, col0, h, q0);
      issue_scores((j + 1) % S);  // also past the last tile (unused then)
      wg_wait<0>();
      wg_fence_regs(s_flat);
      return it_next;
    } else {
      // dQ part += scale · dS K; the next tile's Sᵀ behind it.
      issue_dq(dq_flat, ds_tile, sK, col0, std::false_type{});
      const int it_next = next_item(j + 1);
      issue_scores((j + 1) % S);  // also past the last tile (unused then): one path for ptxas
      wg_wait<1>();
      wg_fence_regs(dq_flat);
      if (lane == 0) mbar_arrive(q_empty(st));  // this warp is done with the stage
      add_dq(dq, col0, h, q0);
      wg_wait<0>();  // the next tile's Sᵀ (past the last tile: unused)
      wg_fence_regs(s_flat);
      return it_next;
    }
  };
  // f(columns of this warpgroup's dQ part as a type, its first column).
  auto with_dq_part = [&](auto&& f) {
    if constexpr (Cfg::kDqCols0 == Cfg::kDqCols1)
      return f(std::integral_constant<int, Cfg::kDqCols0>{}, cw * Cfg::kDqCol1);
    else if (cw == 0)
      return f(std::integral_constant<int, Cfg::kDqCols0>{}, 0);
    else
      return f(std::integral_constant<int, Cfg::kDqCols1>{}, Cfg::kDqCol1);
  };
  auto finish = [&](int j, int st, int h, int q0, uint32_t ds_tile, auto exact) {
    return with_dq_part([&](auto cols, int col0) { return finish_tile(cols, col0, j, st, h, q0, ds_tile, exact); });
  };

  // Late dQ (kLate). Per tile t (t counts over KV blocks) warpgroup w: forms dSᵀ_t;
  // waits on ds_ready(other, t − 1) when dQ_{t−1} is still to do (the other's half of
  // dSᵀ_{t−1} is stored and its dQ_{t−2} has read dSᵀ buffer t % 2); stores its half of
  // dSᵀ_t in buffer t % 2; forms dQ_{t−1} from buffer (t − 1) % 2; then signals
  // ds_ready(w, t) (bar.arrive: its half of dSᵀ_t stored, its dQ_{t−1} done). A KV block's
  // last dQ is formed after its loop (late(..., flush), after waiting on ds_ready(other, last)),
  // before K goes back. Each ds_ready phase joins one arrival (128 threads) and one wait
  // (128): a warpgroup's next arrival on the same barrier (tile t + 2) comes after its wait
  // on the other's t + 1, which the other signals after its own wait on t; and a buffer is
  // written again (tile t + 2) only after that same wait, which follows both warpgroups' dQ_t.
  // Immediate barrier ids (ids in registers spilled in the forward's loop).
  static_assert(!(kRanges && kLate), "late dQ: kernels without q_ranges only");
  constexpr bool kTurns = kLate && Cfg::kTurns;
  // Turns (Cfg::kTurns): warpgroup 1 arrives once ahead so that warpgroup 0 goes first, and
  // warpgroup 0 waits once more at the end for warpgroup 1's last pass; both run two bursts
  // per tile, so every phase joins one arrival and one wait (cuda/dev/late_dq_protocol_model.py
  // --turns).
  auto turn_wait = [&] {  // this warpgroup's turn barrier
    if constexpr (kTurns) {
      if (cw == 0) named_barrier_imm<true, Cfg::kTurnBar, 256>();
      else named_barrier_imm<true, Cfg::kTurnBar + 1, 256>();
    }
  };
  auto turn_pass = [&] {  // the other's
    if constexpr (kTurns) {
      if (cw == 0) named_barrier_imm<false, Cfg::kTurnBar + 1, 256>();
      else named_barrier_imm<false, Cfg::kTurnBar, 256>();
    }
  };
  // ds_ready(owner, parity): barrier kLateBar + 2 · owner + parity (owner0: owner 0),
  // arrived at (kSync false: the owner's signal) or waited on (the other warpgroup).
  auto ds_ready = [&](auto sync, bool owner0, int parity) {
    constexpr bool kSync = decltype(sync)::value;
    if (owner0) {
      if (parity == 0) named_barrier_imm<kSync, Cfg::kLateBar, 256>();
      else named_barrier_imm<kSync, Cfg::kLateBar + 1, 256>();
    } else {
      if (parity == 0) named_barrier_imm<kSync, Cfg::kLateBar + 2, 256>();
      else named_barrier_imm<kSync, Cfg::kLateBar + 3, 256>();
    }
  };
  auto ds_ready_arrive = [&](int parity) { ds_ready(std::false_type{}, cw == 0, parity); };  // this warpgroup's
  auto ds_ready_wait = [&](int parity) { ds_ready(std::true_type{}, cw == 1, parity); };     // the other's
  // This warpgroup's dQ part of a finished tile (dSᵀ in ds_tile, its head h and first
  // query row q0): issued, then (pending only) the next tile's Sᵀ behind it; the part is
  // added once complete. Returns the next item (with flush: -2, no next tile looked at).
  auto late_dq = [&](auto cols, int col0, bool pending, uint32_t ds_tile, int h, int q0, int j, auto flush) {
    constexpr int kCols = decltype(cols)::value;
    constexpr bool kFlush = decltype(flush)::value;
    // Two straight paths (with dQ, without), so that ptxas sees which groups are in flight
    // where (one path with two tests of `pending` made it serialize every wgmma, C7514).
    if (!pending) {
      if constexpr (kFlush) return -2;
      const int it_next = next_item(j + 1);
      turn_wait();
      issue_scores((j + 1) % S);  // also past the last tile (unused then)
      turn_pass();
      return it_next;
    }
    float dq[kCols / 8][4];
    float(&dq_flat)[kCols / 2] = reinterpret_cast<float(&)[kCols / 2]>(dq);
    const uint32_t k_tile = sK;
    int it_next = -2;
    if constexpr (!kFlush) {
      it_next = next_item(j + 1);
      turn_wait();
    }
    issue_dq(dq_flat, ds_tile, k_tile, col0, std::integral_constant<bool, kPlusDesc>{});
    if constexpr (kFlush) {
      wg_wait<0>();
    } else {
      issue_scores((j + 1) % S);  // also past the last tile (unused then)
      turn_pass();
      wg_wait<1>();
    }
    wg_fence_regs(dq_flat);
    add_dq(dq, col0, h, q0);
    return it_next;
  };
  auto late = [&](bool pending, uint32_t ds_tile, int h, int q0, int j, auto flush) {
    return with_dq_part([&](auto cols, int col0) { return late_dq(cols, col0, pending, ds_tile, h, q0, j, flush); });
  };

  int j = 0;   // stage uses so far (the producer's count)
  int nt = 0;  // tiles so far: dSᵀ alternates between its two buffers by it
  // Late dQ: the last tile's dQ still to do, its head and first query row (its dSᵀ is in
  // the buffer of tile nt − 1).
  bool pending = false;
  int h_prev = 0, q0_prev = 0;
  if (kTurns && cw == 1) turn_pass();  // warpgroup 0 goes first
  auto ds_buffer = [&](int tile) { return sdS + (tile & 1) * Cfg::kDsBytes; };
  for (int w = blockIdx.x, kb = 0; w < work; w += gridDim.x, ++kb) {
    take(w);
    kv_row0 = n0 + cw * 64 + warp * 16 + g;
#pragma unroll
    for (int i = 0; i < D / 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;
    mbar_wait(kv_full, kb & 1);
    int it = next_item(j);
    issue_scores(j % S);
    wg_wait<0>();
    wg_fence_regs(s_flat);
    for (; it >= 0; ++j, ++nt) {
      const int st = j % S;
      const int flags = sFlags[st];
      const bool need_mask = !(flags & 1);
      const int2 tile = sTile[st];  // the producer's division, not the consumers'
      const int h = tile.x, q0 = tile.y;
      const uint32_t q_tile = sQ + st * kQ, do_tile = sdO + st * kQ;
      const uint32_t v_tile = sV, ds_tile = sdS + (nt % 2) * Cfg::kDsBytes;

      if (kRanges && (flags & 2)) {
        // Sᵀ (complete), Pᵀ and dPᵀ = V dOᵀ as below (selects keep them exact); dV, dK and
        // dQ term by term.
        uint32_t pa[BM / 16][4];
        bwd_probs<T, BM, true, true>(s, pa, sLse[st], sIv[st], p.scale_log2, kv_row0, Lkv, t);
        float dp[BM / 8][4];
        float(&dp_flat)[BM / 2] = reinterpret_cast<float(&)[BM / 2]>(dp);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
          Wgmma<T>::template ss<BM, 0, 0>(dp_flat, kv_rows(v_tile, kk), q_rows(do_tile, kk), kk);
        wg_commit();
        wg_wait<0>();
        wg_fence_regs(dp_flat);
        uint32_t da[BM / 16][4];
        bwd_dscores<T, BM, true>(pa, dp, sDl[st], sLse[st], sIv[st], kv_row0, Lkv, da, t);
        store_ds(da, ds_tile);
        __syncwarp();  // kv_exact below reads the dSᵀ values the quad's other lanes stored
        kv_exact(dv, pa, false, ds_tile, do_tile, sIv[st]);
        kv_exact(dk, pa, true, ds_tile, q_tile, sIv[st]);
        fence_proxy_async();
        named_barrier(1, 256);  // dSᵀ of both warpgroups in place
        it = finish(j, st, h, q0, ds_tile, std::true_type{});
        continue;
      }

      // Sᵀ (complete: issued before this tile's turn), then Pᵀ.
      uint32_t pa[BM / 16][4];
      if (need_mask) bwd_probs<T, BM, true, true>(s, pa, sLse[st], sIv[st], p.scale_log2, kv_row0, Lkv, t);
      else bwd_probs<T, BM, false, true, !kRanges>(s, pa, sLse[st], sIv[st], p.scale_log2, kv_row0, Lkv, t);

      // dPᵀ = V dOᵀ and dV += Pᵀ dO, issued back to back.
      float dp[BM / 8][4];
      float(&dp_flat)[BM / 2] = reinterpret_cast<float(&)[BM / 2]>(dp);
      wg_fence_regs(dv_flat);
      turn_wait();
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        Wgmma<T>::template ss<BM, 0, 0>(dp_flat, kv_rows(v_tile, kk), q_rows(do_tile, kk), kk);
      wg_commit();
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) Wgmma<T>::template rs<D, 1>(dv_flat, pa[kk], q_slab(do_tile, kk), 1);
      wg_commit();
      turn_pass();
      wg_wait<1>();
      wg_fence_regs(dp_flat);

      // dSᵀ, then dK += dSᵀ Q, and dSᵀ to shared memory for dQ.
      uint32_t da[BM / 16][4];
      if (need_mask) bwd_dscores<T, BM, true>(pa, dp, sDl[st], sLse[st], sIv[st], kv_row0, Lkv, da, t);
      else bwd_dscores<T, BM, false>(pa, dp, sDl[st], sLse[st], sIv[st], kv_row0, Lkv, da, t);
      wg_fence_regs(dk_flat);
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) Wgmma<T>::template rs<D, 1>(dk_flat, da[kk], q_slab(q_tile, kk), 1);
      wg_commit();
      if constexpr (kLate) {
        if (pending) ds_ready_wait((nt - 1) & 1);  // the other's dSᵀ_{t−1}; its dQ_{t−2} done
        store_ds(da, ds_tile);
        fence_proxy_async();
        wg_wait<0>();  // dV, dK: Pᵀ and dSᵀ registers free, the stage read
        wg_fence_regs(pa);
        wg_fence_regs(da);
        wg_fence_regs(dk_flat);
        wg_fence_regs(dv_flat);
        if (lane == 0) mbar_arrive(q_empty(st));  // this warp is done with the stage
        it = late(pending, ds_buffer(nt - 1), h_prev, q0_prev, j, std::false_type{});
        ds_ready_arrive(nt & 1);
        wg_wait<0>();  // the next tile's Sᵀ (past the last tile: unused)
        wg_fence_regs(s_flat);
        pending = true;
        h_prev = h;
        q0_prev = q0;
        continue;
      }
      store_ds(da, ds_tile);
      fence_proxy_async();
      named_barrier(1, 256);  // dSᵀ of both warpgroups in place
      wg_wait<0>();           // dV, dK: Pᵀ and dSᵀ registers free
      wg_fence_regs(pa);
      wg_fence_regs(da);
      wg_fence_regs(dk_flat);
      wg_fence_regs(dv_flat);

      it = finish(j, st, h, q0, ds_tile, std::false_type{});
    }
    if constexpr (kLate) {
      if (pending) {  // the KV block's last dQ, while K is still there
        ds_ready_wait((nt - 1) & 1);
        late(true, ds_buffer(nt - 1), h_prev, q0_prev, j, std::true_type{});
        pending = false;
      }
    }
    // Use j said "no more items"; every wgmma of this KV block (the last dQ and the Sᵀ
    // issued past the last tile) has completed (finish waits for them): the stage and
    // K/V go back to the producer, which loads the next KV block's while dK/dV are stored.
    __syncwarp();
    if (lane == 0) {
      mbar_arrive(q_empty(j % S));
      mbar_arrive(kv_empty);
    }
    ++j;
    if (Cfg::kKvTma && p.kv_store_tma) store_kv_tma();
    else bwd_store_kv<T, D>(p, dk, dv, kv_row0, b, hk, t);
    if constexpr (!kPersistent) break;
  }
  if (kTurns && cw == 0) turn_wait();  // warpgroup 1's last pass
  if constexpr (kWriter) through_staging([] {}, make_int4(kJobDone, 0, 0, 0));  // the writer completes its operations and leaves
  else if (tid % 128 == 0) bulk_wait();
#endif
}

}  // namespace lvx::cuda
