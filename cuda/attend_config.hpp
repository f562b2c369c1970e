// The one table of the attention kernels' configuration: the head dims they are built
// for and the tile shapes of each kernel family. The launchers (through
// kernel_traits.cuh and the sm_90a kernel headers), the split-KV planner (split_kv.cpp),
// the backend's head-dim dispatch and the generator of the instantiation files
// (gen_instances.cmake, which reads the LVX_ATTEND_HEAD_DIMS line) all read it.
// Plain C++, no CUDA headers: host code includes it instead of a kernel header.
#pragma once

// Head dims every storage type is built for (fp32 kernels and the mma.sync family).
#define LVX_ATTEND_HEAD_DIMS 32, 64, 96, 128

namespace lvx::cuda::config {

inline constexpr int kHeadDims[] = {LVX_ATTEND_HEAD_DIMS};

constexpr bool head_dim_built(long long D) {
  for (int d : kHeadDims)
    if (d == D) return true;
  return false;
}

// sm_80 (mma.sync) forward: `warps` warps own 16 query rows each (block_m = 16·warps),
// KV tiles of block_n rows.
struct MmaFwdTile {
  int head_dim, warps, block_n;
};
// sm_80 (mma.sync) backward: `warps` warps own 16 KV rows each (block_n = 16·warps),
// query tiles of block_m rows.
struct MmaBwdTile {
  int head_dim, block_m, warps;
};

// Chosen per head dim; the playground (dev/variants.cu) compares alternatives before one
// lands here. D = 128 was measured on H200 (experiments/KERNEL_NOTES.md); 32, 64 and 96
// follow by analogy. Forward D = 128: 8 warps x 64 KV rows ran 262-274 TFLOP/s against
// 223-232 for 4 warps (one block per SM, 223 registers). Backward D = 128: 8 warps (128
// KV rows per block) ran 5-10% faster than 4 (half the Q/dO tile loads and dQ atomics).
inline constexpr MmaFwdTile kMmaFwd[] = {{32, 4, 64}, {64, 4, 64}, {96, 8, 64}, {128, 8, 64}};
inline constexpr MmaBwdTile kMmaBwd[] = {{32, 64, 4}, {64, 64, 4}, {96, 64, 8}, {128, 64, 8}};

constexpr MmaFwdTile mma_fwd(int D) {
  for (const MmaFwdTile& t : kMmaFwd)
    if (t.head_dim == D) return t;
  return {0, 0, 0};
}
constexpr MmaBwdTile mma_bwd(int D) {
  for (const MmaBwdTile& t : kMmaBwd)
    if (t.head_dim == D) return t;
  return {0, 0, 0};
}

// Resident forward blocks per SM, for the split-KV planner: registers bound them (4 warps
// fit twice, 8 warps once).
constexpr int mma_fwd_blocks_per_sm(int D) { return mma_fwd(D).warps >= 8 ? 1 : 2; }

// sm_90a (wgmma, warp-specialized) kernels for 16-bit storage, one row per head dim: one
// producer warpgroup and two consumer warpgroups (threads = 384), `stages` tiles in flight.
// Forward: block_m query rows per block (64 per consumer warpgroup), KV tiles of block_n
// rows. Backward: block_n KV rows per block (64 per consumer warpgroup, dK and dV in
// registers), Q/dO tiles of block_m query rows.
//
// Budgets (per SM, one block per SM; sm_90: 65,536 registers, 227 KB = 232,448 bytes of
// shared memory per block). Registers: setmaxnreg gives the producer 40 (forward) / 24
// (backward) and each consumer thread 232 / 240: 128·40 + 256·232 = 128·24 + 256·240 =
// 64,512. Consumer fp32 values per thread, the peak of each kernel (64 rows x N columns of
// a warpgroup = N / 2 per thread; P and dS fragments packed two per register):
//   forward  O (D / 2) + S (BN / 2) + two P sets (2 · BN / 4):
//     D = 64, BN = 160: 32 + 80 + 80 = 192; D = 96, BN = 128: 176; D = 128, BN = 128: 192
//     (ptxas: 168 at entry, no spills). BN = 192 at D = 64 (224) spills 88 bytes, BN = 160
//     at D = 96 (208) 48; D = 64 at 160 rather than 128: forward kernel 0.92-0.95x on one
//     H200 (experiments/KERNEL_NOTES.md, "Forward KV tiles of 160 rows at D = 64");
//   backward dK + dV (D) + dPᵀ (BM / 2) + Pᵀ (BM / 4) + dSᵀ (BM / 4):
//     D = 64, BM = 128: 64 + 64 + 32 + 32 = 192; D = 96, BM = 64: 96 + 32 + 16 + 16 = 160;
//     D = 128, BM = 64: 128 + 32 + 16 + 16 = 192.
// Shared memory (bytes; + 1,024 alignment; tiles of 16-bit elements):
//   forward  Q (BM·D·2) + stages · (K + V) (2·BN·D·2):
//     D = 64:  16,384 + 4 · 40,960 = 180,224;  D = 96: 24,576 + 4 · 49,152 = 221,184;
//     D = 128: 32,768 + 3 · 65,536 = 229,376 (4 stages would not fit).
//   backward K + V (2·BN·D·2) + stages · (Q + dO) (2·BM·D·2) + 2 dSᵀ (2·BN·BM·2) + 2 fp32
//   dQ staging tiles (2 · 64 · Dq · 4, Dq = the widest dQ part of a warpgroup), plus
//   static row statistics (stages · BM · 16):
//     D = 64, BM = 128, 2 stages: 32,768 + 65,536 + 65,536 + 32,768 = 196,608 (+ 4,096):
//       a third stage would need 32,768 more, past the limit;
//     D = 96, BM = 64, 3 stages: 49,152 + 73,728 + 32,768 + 32,768 = 188,416 (+ 3,072);
//     D = 128, BM = 64, 2 stages: 65,536 + 65,536 + 32,768 + 32,768 = 196,608 (+ 2,048).
// Backward dQ = dS K (64 query rows x N per warpgroup): with BM = 128 each warpgroup takes
// 64 query rows and all D columns; with BM = 64 each takes a part of the columns (D = 128:
// 64 + 64; D = 96: 64 + 32, as an MN-major operand spans whole 32-column blocks).
// Why BM = 128 at D = 64: the work of a tile is BM·BN·D, its fixed costs (barriers, the dQ
// reduce-add, Sᵀ/dPᵀ elementwise per BM·BN) do not shrink with D; at D = 64, BM = 128 keeps
// the per-tile work of D = 128 (and its register peak, 192). D = 96 and 128 cannot take BM =
// 128: shared memory (D = 96: K/V + 2 stages of 128-row Q/dO tiles + dSᵀ + dQ staging
// come to 262,144).
// D = 256: the forward would fit (O 128 + S 32 + P 32 = 192 registers with BN = 64); the
// backward would not (dK + dV alone are 256 registers per thread for 64 KV rows per
// warpgroup), so it is not built.
struct Sm90Tile {
  int head_dim, block_m, block_n, stages, threads;
};
inline constexpr Sm90Tile kSm90Fwd[] = {{64, 128, 160, 4, 384}, {96, 128, 128, 4, 384}, {128, 128, 128, 3, 384}};
inline constexpr Sm90Tile kSm90Bwd[] = {{64, 128, 128, 2, 384}, {96, 64, 128, 3, 384}, {128, 64, 128, 2, 384}};

// The row of head dim D, or all zeros when the sm_90a kernels are not built for it.
constexpr Sm90Tile sm90_fwd(int D) {
  for (const Sm90Tile& t : kSm90Fwd)
    if (t.head_dim == D) return t;
  return {0, 0, 0, 0, 0};
}
constexpr Sm90Tile sm90_bwd(int D) {
  for (const Sm90Tile& t : kSm90Bwd)
    if (t.head_dim == D) return t;
  return {0, 0, 0, 0, 0};
}
constexpr bool sm90_fwd_built(int D) { return D > 0 && sm90_fwd(D).head_dim == D; }
constexpr bool sm90_bwd_built(int D) { return D > 0 && sm90_bwd(D).head_dim == D; }

constexpr bool table_complete() {
  for (int d : kHeadDims)
    if (mma_fwd(d).head_dim != d || mma_bwd(d).head_dim != d) return false;
  for (const Sm90Tile& t : kSm90Fwd)
    if (!head_dim_built(t.head_dim)) return false;
  for (const Sm90Tile& t : kSm90Bwd)
    if (!head_dim_built(t.head_dim)) return false;
  return true;
}
static_assert(table_complete(), "every head dim needs a forward and a backward tile");

}  // namespace lvx::cuda::config
