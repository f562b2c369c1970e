// Small memory-bound kernels of the backend: fill, convert, add, row_dot, merge_lse.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

#include "core/kernels.hpp"

namespace lvx::cuda {

template <typename T> __device__ __forceinline__ float to_f32(T x);
template <> __device__ __forceinline__ float to_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f32<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

void launch_fill(float* p, float value, size_t n, cudaStream_t st);
void launch_add(float* dst, const float* src, size_t n, cudaStream_t st);
void launch_convert(void* dst, DType dst_type, const void* src, DType src_type, size_t n, cudaStream_t st);
void launch_row_dot(const void* dout, const void* o, DType dtype, float* dl, int64_t B, int64_t L, int64_t H,
                    int64_t D, cudaStream_t st);
void launch_merge_lse(float* o, float* lse, const float* o_in, const float* lse_in, int64_t B, int64_t L,
                      int64_t H, int64_t D, cudaStream_t st);

}  // namespace lvx::cuda
