// Launch templates shared by the generated instantiation files (gen_instances.cmake).
#pragma once

#include "attend_bwd.cuh"
#include "attend_bwd_sm90.cuh"
#include <cstdio>
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

// Whether an sm_90a kernel can be launched with `bytes` of dynamic shared memory on this
// device (the caller asks once per kernel): when not, it says so on stderr once and the
// caller takes the mma.sync kernels.
template <typename Kernel>
bool sm90_kernel_ready(Kernel kernel, int bytes, const char* what, int D) {
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess) return true;
  cudaGetLastError();  // clear it: the portable kernels run instead
  std::fprintf(stderr, "lvxattn: the sm_90a %s kernel for head dim %d cannot take %d bytes of shared memory (%s); using the mma.sync kernels\n",
               what, D, bytes, cudaGetErrorString(err));
  return false;
}

template <typename T, int D>
void launch_fwd_combine(const FwdParams& p, cudaStream_t stream) {
  const long long rows = (long long)p.B * p.Lq * p.Hq;
  const unsigned blocks = (unsigned)((rows * 32 + 255) / 256);
  fwd_combine_kernel<T, D><<<blocks, 256, 0, stream>>>(p);
  LVX_CUDA_CHECK_LAUNCH();
}

template <typename T, int D>
void launch_attend_fwd(const FwdParams& p, cudaStream_t stream, bool sm90) {
  if (p.B == 0 || p.Lq == 0 || p.Hq == 0) return;
  if constexpr (config::sm90_fwd_built(D) && !std::is_same_v<T, float>) {
    using Cfg = FwdSm90<D>;
    // The kernel without q_ranges compiles none of the masked-value machinery.
    auto kernel = p.q_ranges ? attend_fwd_sm90_kernel<T, D, true> : attend_fwd_sm90_kernel<T, D, false>;
    auto ready = [&] {
      static const bool r = sm90_kernel_ready(attend_fwd_sm90_kernel<T, D, true>, Cfg::kSmemBytes, "forward", D) &&
                            sm90_kernel_ready(attend_fwd_sm90_kernel<T, D, false>, Cfg::kSmemBytes, "forward", D);
      return r;  // asked once
    };
    if (sm90 && ready()) {
      dim3 grid((p.Lq + Cfg::kBlockM - 1) / Cfg::kBlockM, p.Hq, p.B * p.splits);
      constexpr bool bf16 = std::is_same_v<T, __nv_bfloat16>;
      constexpr int box = Cfg::kBoxCols;
      const CUtensorMap tq = rows_tensor_map(p.q, bf16, D, p.Hq, p.Lq, p.B, Cfg::kBlockM, box);
      const CUtensorMap tk = rows_tensor_map(p.k, bf16, D, p.Hkv, p.Lkv, p.B, Cfg::kBlockN, box);
      const CUtensorMap tv = rows_tensor_map(p.v, bf16, D, p.Hkv, p.Lkv, p.B, Cfg::kBlockN, box);
      kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p, tq, tk, tv);
      LVX_CUDA_CHECK_LAUNCH();
      if (p.splits > 1) launch_fwd_combine<T, D>(p, stream);
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
    if (p.splits > 1) launch_fwd_combine<T, D>(p, stream);
  }
}

// The sm_90a backward runs persistent blocks when a KV block has at most this many query
// tiles (all query heads of its group): one H200, 2026-11-29, backward kernel time against
// one block per KV block: 4 tiles (16/16, 256 x 32768, D = 128) -5.1%, 8 (D = 64,
// 1024 x 65536) -4.3%, 16 -1.6% (1024 x 16384), -0.5% (D = 96), +1.7% (32/8, 256 x 131072);
// with all KV blocks persistent, 32-64 tiles took +0.2% to +1.9% (KERNEL_NOTES.md,
// "Persistent backward").
constexpr int kBwdPersistentItems = 16;
// Without q_ranges, the sm_90a backward forms dQ one tile late with its two consumer
// warpgroups taking turns (attend_bwd_sm90.cuh, kLate) where a KV block has at least this
// many query tiles. One H200, 2026-11-29, backward kernel against the warpgroups meeting
// every tile, three A/B calls: 4096 x 65536 -2 to -5%, 1024 x 16384 -1 to -3%, D = 64
// 1024 x 65536 (8 tiles) -3 to -4%, 32/8 256 x 131072 (16) 0 to -4%; with 4 tiles (16/16,
// 256 x 32768) +3 to +7% in the two calls that ran it there, where the last tile's dQ,
// formed after the loop, overlaps nothing (KERNEL_NOTES.md, "Late dQ measured and landed").
constexpr int kBwdLateItems = 8;

template <typename T, int D>
void launch_attend_bwd(const BwdParams& p, cudaStream_t stream, bool sm90) {
  if (p.B == 0 || p.Lq == 0 || p.Lkv == 0 || p.Hq == 0) return;
  if constexpr (config::sm90_bwd_built(D) && !std::is_same_v<T, float>) {
    using Cfg = BwdSm90<D>;
    auto ready = [&] {
      static const bool r = sm90_kernel_ready(attend_bwd_sm90_kernel<T, D, true>, Cfg::kSmemBytes, "backward", D) &&
                            sm90_kernel_ready(attend_bwd_sm90_kernel<T, D, false>, Cfg::kSmemBytes, "backward", D) &&
                            sm90_kernel_ready(attend_bwd_sm90_kernel<T, D, false, true>, Cfg::kSmemBytes, "backward", D);
      return r;  // asked once
    };
    if (sm90 && ready()) {
      // Without q_ranges the kernel is persistent (each block walks KV blocks with a stride
      // of the grid) where a KV block has few query tiles (items) and its fixed costs (K/V
      // loads, dK/dV stores, pipeline fill) weigh; with long item lists, and with
      // q_ranges, one block per KV block. Fits an int: the backend checks B·Lkv·Hkv does.
      const int kv_blocks = (p.Lkv + Cfg::kBlockN - 1) / Cfg::kBlockN, work = kv_blocks * p.Hkv * p.B;
      const int items = (p.Lq + Cfg::kBlockM - 1) / Cfg::kBlockM * p.group;
      // The kernel without q_ranges compiles none of the masked-value machinery.
      auto kernel = p.q_ranges                 ? attend_bwd_sm90_kernel<T, D, true>
                    : items >= kBwdLateItems ? attend_bwd_sm90_kernel<T, D, false, true>
                                             : attend_bwd_sm90_kernel<T, D, false>;
      const bool persistent = !p.q_ranges && p.max_blocks > 0 && (items <= kBwdPersistentItems || p.force_persistent);
      const dim3 grid = p.q_ranges ? dim3(kv_blocks, p.Hkv, p.B) : dim3(persistent ? std::min(work, p.max_blocks) : work);
      constexpr bool bf16 = std::is_same_v<T, __nv_bfloat16>;
      constexpr int box = Cfg::L::kCols;
      const CUtensorMap tq = rows_tensor_map(p.q, bf16, D, p.Hq, p.Lq, p.B, Cfg::kBlockM, box);
      const CUtensorMap tk = rows_tensor_map(p.k, bf16, D, p.Hkv, p.Lkv, p.B, Cfg::kBlockN, box);
      const CUtensorMap tv = rows_tensor_map(p.v, bf16, D, p.Hkv, p.Lkv, p.B, Cfg::kBlockN, box);
      const CUtensorMap tdo = rows_tensor_map(p.dout, bf16, D, p.Hq, p.Lq, p.B, Cfg::kBlockM, box);
      const CUtensorMap tdq = f32_rows_tensor_map(p.dq, D, p.Hq, p.Lq, p.B, 64);  // 64 query rows per dQ part
      // Fresh dK/dV in the storage dtype go out by TMA where the kernel stages them (TMA
      // needs 16-byte aligned bases); the maps are the K/V ones where unused.
      BwdParams pk = p;
      auto aligned = [](const void* x) { return reinterpret_cast<uintptr_t>(x) % 16 == 0; };
      pk.kv_store_tma = Cfg::kKvTma && p.kv_fresh && p.dk_out && aligned(p.dk_out) && aligned(p.dv_out);
      const CUtensorMap tdk = pk.kv_store_tma ? rows_tensor_map(p.dk_out, bf16, D, p.Hkv, p.Lkv, p.B, 64, box) : tk;
      const CUtensorMap tdv = pk.kv_store_tma ? rows_tensor_map(p.dv_out, bf16, D, p.Hkv, p.Lkv, p.B, 64, box) : tv;
      kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(pk, tq, tk, tv, tdo, tdq, tdk, tdv);
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
