// Host-side planning of a forward launch: tile rows and how many KV splits fill the GPU.
// Reads the configuration table (attend_config.hpp), never a kernel header.
#pragma once

namespace lvx::cuda {

// KV splits for a forward step: enough thread blocks to fill `num_sms` multiprocessors
// (at `blocks_per_sm` each) when query tiles × heads × batch alone cannot. Split s covers
// KV rows [s·split_len, (s+1)·split_len).
struct SplitPlan {
  int splits = 1;
  int split_len = 0;
};
SplitPlan plan_fwd_splits(int B, int Lq, int Lkv, int Hq, int block_m, int block_n, int num_sms, int blocks_per_sm);

// The 16-bit forward kernel's tile for head dim D: the sm_90a kernel's when sm90 and it
// exists for D, else the mma.sync kernel's.
struct FwdTile {
  int block_m, block_n, blocks_per_sm;
};
FwdTile fwd_tile(int D, bool sm90);

}  // namespace lvx::cuda
