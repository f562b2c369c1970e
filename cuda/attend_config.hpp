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

// sm_90a (wgmma, warp-specialized) kernels for 16-bit storage: one producer and two
// consumer warpgroups; `stages` tiles in flight. One head dim; one block per SM (shared
// memory bounds it).
struct Sm90Tile {
  int head_dim, block_m, block_n, stages, threads;
};
inline constexpr Sm90Tile kSm90Fwd{128, 128, 128, 3, 384};  // Q tile rows, KV tile rows
inline constexpr Sm90Tile kSm90Bwd{128, 64, 128, 2, 384};   // Q/dO tile rows, K/V rows per block

constexpr bool table_complete() {
  for (int d : kHeadDims)
    if (mma_fwd(d).head_dim != d || mma_bwd(d).head_dim != d) return false;
  return head_dim_built(kSm90Fwd.head_dim) && head_dim_built(kSm90Bwd.head_dim);
}
static_assert(table_complete(), "every head dim needs a forward and a backward tile");

}  // namespace lvx::cuda::config
