// Tile shapes of the attention kernels, kept apart from the kernel bodies.
// Every warp owns 16 rows (one mma m16 slab): the forward kernel's warps split the
// query tile, the backward kernel's warps split the KV tile. Shared-memory rows are
// padded by 16 bytes so that ldmatrix and cp.async hit all 32 banks.
#pragma once

#include "attend_config.hpp"

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

template <int kHeadDim_, int kBlockM_, int kWarps_ = 4>
struct BwdTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockN = 16 * kWarps;  // KV rows per block (dK, dV in registers)
  static constexpr int kBlockM = kBlockM_;     // query rows per step
  static constexpr int kStride = kHeadDim + 8;
  static constexpr int kDsStride = kBlockM + 8;
  // K, V once; Q and dO double-buffered; dSᵀ [kBlockN][kBlockM].
  static constexpr int kSmemElems = 2 * kBlockN * kStride + 4 * kBlockM * kStride + kBlockN * kDsStride;
};

// The library's configuration per head dim: the table in attend_config.hpp.
template <int D>
struct FwdConfig {
  using Traits = FwdTraits<D, config::mma_fwd(D).warps, config::mma_fwd(D).block_n>;
};
template <int D>
struct BwdConfig {
  using Traits = BwdTraits<D, config::mma_bwd(D).block_m, config::mma_bwd(D).warps>;
};

}  // namespace lvx::cuda
