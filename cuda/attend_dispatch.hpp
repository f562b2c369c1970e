// Host entry points of the attention kernels, one explicit instantiation per storage
// type and head dim of the table (attend_config.hpp), each in its own generated file
// (gen_instances.cmake) so that each compiles in its own nvcc process.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "attend_params.cuh"

namespace lvx::cuda {

// Forward step. p.splits / p.split_len / p.o_part / p.lse_part come from plan_fwd_splits
// (split_kv.hpp) and the caller's workspace; with splits > 1 the combine kernel runs after
// the step.
// sm90: the device runs sm_90a code (Hopper); 16-bit D = 128 then takes the wgmma kernels
// (attend_fwd_sm90.cuh, attend_bwd_sm90.cuh).
template <typename T, int D>
void launch_attend_fwd(const FwdParams& p, cudaStream_t stream, bool sm90);

template <typename T, int D>
void launch_attend_bwd(const BwdParams& p, cudaStream_t stream, bool sm90);

}  // namespace lvx::cuda
