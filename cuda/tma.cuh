// Hopper (sm_90) asynchronous copies: tensor-memory-access (TMA) tile loads that
// complete on shared-memory mbarriers, the mbarrier operations, warpgroup register
// reallocation and named barriers; and, on the host, the tensor maps the loads read.
//
// Tensor maps describe a [B, L, H, D] 16-bit tensor (the layout of q, k, v, dout) as
// four dimensions {D, H, L, B}; one box is one column block of the swizzled-rows layout
// of wgmma.cuh: 64 head-dim elements (128 bytes, 128-byte swizzle) or 32 (64 bytes,
// 64-byte swizzle) of one head for `rows` consecutive rows. Rows past L read as zeros.
#pragma once

#include <cuda.h>
#include <cstdint>

#include "wgmma.cuh"

namespace lvx::cuda {

// The tensor map of a [B, L, H, D] tensor with boxes of `rows` rows x `box_cols` columns
// (64: 128-byte swizzle; 32: 64-byte swizzle). D is a multiple of box_cols.
CUtensorMap rows_tensor_map(const void* base, bool bf16, int D, int H, long long L, int B, int rows, int box_cols);
// Likewise for fp32 (the dQ accumulator): boxes of 32 columns (128 bytes) x `rows`,
// 128-byte swizzle: row r's 16-byte chunk c sits at chunk position c ^ (r % 8).
CUtensorMap f32_rows_tensor_map(const float* base, int D, int H, long long L, int B, int rows);

#ifdef LVX_SM90A
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
// Makes the initialized barriers visible to the async proxy (before a block barrier).
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrives and announces `bytes` more to come from asynchronous copies.
__device__ __forceinline__ void mbar_arrive_expect(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Announces `bytes` more to come from asynchronous copies, without arriving (the phase
// then also waits for the arrivals still pending).
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Waits until the barrier's phase of the given parity (0 for its first completion,
// 1 for the second, ...) has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// One box of `map` at coordinates {d0, h, row, b} into shared memory `dst` (1024-aligned).
__device__ __forceinline__ void tma_load_rows(uint32_t dst, const CUtensorMap* map, int d0, int h, int row, int b,
                                              uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(d0), "r"(h), "r"(row), "r"(b), "r"(bar)
      : "memory");
}
// Adds a box of shared memory `src` (1024-aligned) into `map` at {d0, h, row, b}
// (element-wise fp32 add, done by the memory system; rows past L are dropped).
__device__ __forceinline__ void tma_reduce_add_rows(const CUtensorMap* map, uint32_t src, int d0, int h, int row, int b) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group [%0, {%1, %2, %3, %4}], [%5];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(d0), "r"(h), "r"(row), "r"(b), "r"(src)
      : "memory");
}
// Stores a box of shared memory `src` (1024-aligned, the map's swizzle) into `map` at
// {d0, h, row, b} (rows past L are dropped).
__device__ __forceinline__ void tma_store_rows(const CUtensorMap* map, uint32_t src, int d0, int h, int row, int b) {
  asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group [%0, {%1, %2, %3, %4}], [%5];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(d0), "r"(h), "r"(row), "r"(b), "r"(src)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Waits until the committed bulk operations have read their shared-memory sources.
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
// Waits until they are complete.
__device__ __forceinline__ void bulk_wait() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void regs_dealloc() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N>
__device__ __forceinline__ void regs_alloc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
// Barrier `id` (1..15) among `threads` threads (whole warps).
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Arrives at barrier `id` (1..15) of `threads` threads (whole warps) without waiting: a
// one-way signal to the threads that bar.sync on it (ordered after this thread's earlier
// memory operations, as bar.sync is).
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Named barrier kId (an immediate) of kThreads threads (whole warps): waited for (kSync)
// or arrived at without waiting (a one-way signal).
template <bool kSync, int kId, int kThreads>
__device__ __forceinline__ void named_barrier_imm() {
  if constexpr (kSync) asm volatile("bar.sync %0, %1;\n" ::"n"(kId), "n"(kThreads) : "memory");
  else asm volatile("bar.arrive %0, %1;\n" ::"n"(kId), "n"(kThreads) : "memory");
}
// Named barrier `id` of `threads` threads (whole warps) that returns whether `pred` holds
// in any of them. Not .aligned: the threads of a warp may reach it apart (a producer
// lane that issues the loads alone between two barriers).
__device__ __forceinline__ bool named_barrier_or(int id, int threads, bool pred) {
  uint32_t any;
  asm volatile(
      "{\n.reg .pred p, q;\n"
      "setp.ne.u32 p, %1, 0;\n"
      "barrier.red.or.pred q, %2, %3, p;\n"
      "selp.u32 %0, 1, 0, q;\n}\n"
      : "=r"(any)
      : "r"((uint32_t)pred), "r"(id), "r"(threads)
      : "memory");
  return any != 0;
}
#endif

}  // namespace lvx::cuda
