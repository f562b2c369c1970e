// Tile shapes of the attention kernels, kept apart from the kernel bodies.
// Every warp owns 16 rows (one mma m16 slab): the forward kernel's warps split the
// query tile, the backward kernel's warps split the KV tile. Shared-memory rows are
// padded by 16 bytes so that ldmatrix and cp.async hit all 32 banks.
#pragma once

namespace lvx::cuda {

template <int kHeadDim_, int kWarps_, int kBlockN_>
struct FwdTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockM = 16 * kWarps;  // query rows per block
  static constexpr int kBlockN = kBlockN_;     // KV rows per step
  static constexpr int kStride = kHeadDim + 8; // padded smem row, elements
  static constexpr int kSmemElems = kBlockM * kStride + 4 * kBlockN * kStride;  // Q, 2x(K, V)
};

template <int kHeadDim_, int kBlockM_, int kWarps_ = 4, bool kWithDq_ = true>
struct BwdTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kWarps = kWarps_;
  static constexpr bool kWithDq = kWithDq_;  // false only in the playground: cost of dQ
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockN = 16 * kWarps;  // KV rows per block (dK, dV in registers)
  static constexpr int kBlockM = kBlockM_;     // query rows per step
  static constexpr int kStride = kHeadDim + 8;
  static constexpr int kDsStride = kBlockM + 8;
  // K, V once; Q and dO double-buffered; dSᵀ [kBlockN][kBlockM].
  static constexpr int kSmemElems = 2 * kBlockN * kStride + 4 * kBlockM * kStride + kBlockN * kDsStride;
};

// Chosen per head dim; the playground compares alternatives before one lands here.
// D = 128 was measured (experiments/KERNEL_NOTES.md); 32, 64 and 96 follow by analogy.
template <int D> struct FwdConfig;
// Resident blocks per SM of a forward configuration, for the split-KV planner.
template <> struct FwdConfig<32> { using Traits = FwdTraits<32, 4, 64>; };
template <> struct FwdConfig<64> { using Traits = FwdTraits<64, 4, 64>; };
template <> struct FwdConfig<96> { using Traits = FwdTraits<96, 8, 64>; };
// D=128: 8 warps x 64 KV rows ran 262-274 TFLOP/s on H200 against 223-232 for 4 warps
// (experiments/KERNEL_NOTES.md); it holds one block per SM (223 registers).
template <> struct FwdConfig<128> { using Traits = FwdTraits<128, 8, 64>; };
template <int D> struct BwdConfig;
template <> struct BwdConfig<32> { using Traits = BwdTraits<32, 64>; };
template <> struct BwdConfig<64> { using Traits = BwdTraits<64, 64>; };
template <> struct BwdConfig<96> { using Traits = BwdTraits<96, 64, 8>; };
// D=128: 8 warps (128 KV rows per block) ran 5-10% faster than 4 on H200: half the
// Q/dO tile loads and dQ atomics per KV row (experiments/KERNEL_NOTES.md).
template <> struct BwdConfig<128> { using Traits = BwdTraits<128, 64, 8>; };

}  // namespace lvx::cuda
