// Host entry points of the attention kernels, one explicit instantiation per storage
// type and head dim (inst/*.cu), so that each compiles in its own nvcc process.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "attend_params.cuh"

namespace lvx::cuda {

// Forward step. p.splits / p.split_len / p.o_part / p.lse_part come from plan_fwd_splits
// and the caller's workspace; with splits > 1 the combine kernel runs after the step.
// sm90: the device runs sm_90a code (Hopper); 16-bit D = 128 then takes the wgmma kernels
// (attend_fwd_sm90.cuh, attend_bwd_sm90.cuh).
template <typename T, int D>
void launch_attend_fwd(const FwdParams& p, cudaStream_t stream, bool sm90);

template <typename T, int D>
void launch_attend_bwd(const BwdParams& p, cudaStream_t stream, bool sm90);

// KV splits for a forward step: enough thread blocks to fill `num_sms` multiprocessors
// (at `blocks_per_sm` each) when query tiles × heads × batch alone cannot.
struct SplitPlan {
  int splits = 1;
  int split_len = 0;
};
SplitPlan plan_fwd_splits(int B, int Lq, int Lkv, int Hq, int block_m, int block_n, int num_sms, int blocks_per_sm);

// Tile rows of the 16-bit forward kernel for head dim D (for planning).
int fwd_block_m(int D, bool sm90);
int fwd_block_n(int D, bool sm90);
int fwd_blocks_per_sm(int D, bool sm90);
bool tensor_core_head_dim(int D);

}  // namespace lvx::cuda
