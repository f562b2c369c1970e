// Launch templates shared by the generated instantiation files (gen_instances.cmake).
#pragma once

#include "attend_bwd.cuh"
#include "attend_bwd_sm90.cuh"
#include <type_traits>

#include "attend_dispatch.hpp"
#include "attend_f32.cuh"
#include "attend_fwd.cuh"
#include "attend_fwd_sm90.cuh"
#include "cuda_check.hpp"

namespace lvx::cuda {

template <typename Kernel>
void allow_dynamic_smem(Kernel kernel, int bytes) {
  if (bytes > 48 * 1024)
    LVX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

template <int D>
void launch_fwd_combine(const FwdParams& p, cudaStream_t stream) {
  const long long rows = (long long)p.B * p.Lq * p.Hq;
  const unsigned blocks = (unsigned)((rows * 32 + 255) / 256);
  fwd_combine_kernel<D><<<blocks, 256, 0, stream>>>(p);
  LVX_CUDA_CHECK_LAUNCH();
}

template <typename T, int D>
void launch_attend_fwd(const FwdParams& p, cudaStream_t stream, bool sm90) {
  if (p.B == 0 || p.Lq == 0 || p.Hq == 0) return;
  if constexpr (D == FwdSm90::kHeadDim && !std::is_same_v<T, float>) {
    if (sm90) {
      auto kernel = attend_fwd_sm90_kernel<T>;
      static bool configured = (allow_dynamic_smem(kernel, FwdSm90::kSmemBytes), true);
      (void)configured;
      dim3 grid((p.Lq + FwdSm90::kBlockM - 1) / FwdSm90::kBlockM, p.Hq, p.B * p.splits);
      constexpr bool bf16 = std::is_same_v<T, __nv_bfloat16>;
      const CUtensorMap tq = rows_tensor_map(p.q, bf16, D, p.Hq, p.Lq, p.B, FwdSm90::kBlockM);
      const CUtensorMap tk = rows_tensor_map(p.k, bf16, D, p.Hkv, p.Lkv, p.B, FwdSm90::kBlockN);
      const CUtensorMap tv = rows_tensor_map(p.v, bf16, D, p.Hkv, p.Lkv, p.B, FwdSm90::kBlockN);
      kernel<<<grid, FwdSm90::kThreads, FwdSm90::kSmemBytes, stream>>>(p, tq, tk, tv);
      LVX_CUDA_CHECK_LAUNCH();
      if (p.splits > 1) launch_fwd_combine<D>(p, stream);
      return;
    }
  }
  if constexpr (std::is_same_v<T, float>) {
    const long long rows = (long long)p.B * p.Lq * p.Hq;
    attend_fwd_f32_kernel<D><<<(unsigned)((rows * 32 + 255) / 256), 256, 0, stream>>>(p);
    LVX_CUDA_CHECK_LAUNCH();
  } else {
    using Tr = typename FwdConfig<D>::Traits;
    constexpr int smem = Tr::kSmemElems * (int)sizeof(T);
    auto kernel = attend_fwd_kernel<T, Tr>;
    static bool configured = (allow_dynamic_smem(kernel, smem), true);
    (void)configured;
    dim3 grid((p.Lq + Tr::kBlockM - 1) / Tr::kBlockM, p.Hq, p.B * p.splits);
    kernel<<<grid, Tr::kThreads, smem, stream>>>(p);
    LVX_CUDA_CHECK_LAUNCH();
    if (p.splits > 1) launch_fwd_combine<D>(p, stream);
  }
}

template <typename T, int D>
void launch_attend_bwd(const BwdParams& p, cudaStream_t stream, bool sm90) {
  if (p.B == 0 || p.Lq == 0 || p.Lkv == 0 || p.Hq == 0) return;
  if constexpr (D == BwdSm90::kHeadDim && !std::is_same_v<T, float>) {
    if (sm90) {
      auto kernel = attend_bwd_sm90_kernel<T>;
      static bool configured = (allow_dynamic_smem(kernel, BwdSm90::kSmemBytes), true);
      (void)configured;
      dim3 grid((p.Lkv + BwdSm90::kBlockN - 1) / BwdSm90::kBlockN, p.Hkv, p.B);
      constexpr bool bf16 = std::is_same_v<T, __nv_bfloat16>;
      const CUtensorMap tq = rows_tensor_map(p.q, bf16, D, p.Hq, p.Lq, p.B, BwdSm90::kBlockM);
      const CUtensorMap tk = rows_tensor_map(p.k, bf16, D, p.Hkv, p.Lkv, p.B, BwdSm90::kBlockN);
      const CUtensorMap tv = rows_tensor_map(p.v, bf16, D, p.Hkv, p.Lkv, p.B, BwdSm90::kBlockN);
      const CUtensorMap tdo = rows_tensor_map(p.dout, bf16, D, p.Hq, p.Lq, p.B, BwdSm90::kBlockM);
      const CUtensorMap tdq = f32_rows_tensor_map(p.dq, D, p.Hq, p.Lq, p.B, BwdSm90::kBlockM);
      kernel<<<grid, BwdSm90::kThreads, BwdSm90::kSmemBytes, stream>>>(p, tq, tk, tv, tdo, tdq);
      LVX_CUDA_CHECK_LAUNCH();
      return;
    }
  }
  if constexpr (std::is_same_v<T, float>) {
    const long long rows = (long long)p.B * p.Lq * p.Hq;
    attend_bwd_f32_kernel<D><<<(unsigned)((rows * 32 + 255) / 256), 256, 0, stream>>>(p);
    LVX_CUDA_CHECK_LAUNCH();
  } else {
    using Tr = typename BwdConfig<D>::Traits;
    constexpr int smem = Tr::kSmemElems * (int)sizeof(T);
    auto kernel = attend_bwd_kernel<T, Tr>;
    static bool configured = (allow_dynamic_smem(kernel, smem), true);
    (void)configured;
    dim3 grid((p.Lkv + Tr::kBlockN - 1) / Tr::kBlockN, p.Hkv, p.B);
    kernel<<<grid, Tr::kThreads, smem, stream>>>(p);
    LVX_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace lvx::cuda

#define LVX_INSTANTIATE_ATTEND_FWD(T, D) \
  template void lvx::cuda::launch_attend_fwd<T, D>(const lvx::cuda::FwdParams&, cudaStream_t, bool);
#define LVX_INSTANTIATE_ATTEND_BWD(T, D) \
  template void lvx::cuda::launch_attend_bwd<T, D>(const lvx::cuda::BwdParams&, cudaStream_t, bool);
