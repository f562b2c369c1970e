// Producer/consumer protocols of the sm_90a attention kernels on mbarriers, reduced to a
// few lines each, for compute-sanitizer racecheck: whether the tool models them. Every
// kernel but the two marked below is race-free by the PTX memory model, so a hazard
// racecheck reports in one of them is the tool's; the negative control must be reported
// (or the tool sees nothing at all).
//   plain      producer lanes store, __syncwarp, lane 0 arrives; consumers wait on the
//              phase parity, read, __syncwarp, lane 0 arrives on the stage's empty barrier
//   tma        lane 0 arrives with expect_tx after the stores and a bulk copy completes
//              the phase (the kernels' plain q_full / k_full / v_full stages)
//   expect_tx  lane 0 announces the bytes and issues the copy first, the lanes store, lane
//              0 arrives last (the backward's q_full since the copy goes first)
//   named_bar  consumer warps meet at a named barrier after their reads, then lane 0 of
//              each arrives (the backward's consumers: bar.sync 1, 256 before q_empty)
//   lane0_only consumers read with every lane and lane 0 arrives with no warp barrier in
//              between: a race by the letter of the model (intra-warp), reported or not
//   no_wait    negative control: consumers read without waiting for the stage (and the
//              producer rewrites it without waiting for the consumers)
// Build: nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -o racecheck_probe
//        cuda/dev/racecheck_probe.cu
// Run:   compute-sanitizer --tool racecheck racecheck_probe   (prints one line per kernel)
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

namespace {

constexpr int kIters = 64, kStages = 2, kConsumers = 2;  // consumer warps

enum Proto { kPlain, kTma, kExpectTx, kNamedBar, kLane0Only, kNoWait };

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count));
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}

template <Proto P>
__device__ __forceinline__ void probe(const int* src, int* out) {
  __shared__ __align__(128) int tile[kStages][32];  // written by the bulk copy (tma, expect_tx)
  __shared__ int buf[kStages][32];                  // written by the producer's lanes
  __shared__ __align__(8) uint64_t full[kStages], empty[kStages];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    for (int st = 0; st < kStages; ++st) {
      mbar_init(&full[st], 1);
      mbar_init(&empty[st], kConsumers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  constexpr bool copy = P == kTma || P == kExpectTx;
  if (warp == 0) {  // producer
    for (int j = 0; j < kIters; ++j) {
      const int st = j % kStages;
      if (P != kNoWait && j >= kStages) mbar_wait(&empty[st], (j / kStages - 1) & 1);
      if (P == kExpectTx && lane == 0) {
        mbar_expect_tx(&full[st], sizeof(tile[st]));
        bulk_copy(tile[st], src + 32 * (j % 4), sizeof(tile[st]), &full[st]);
      }
      buf[st][lane] = j * 32 + lane;
      __syncwarp();
      if (lane == 0) {
        if (P == kTma) {
          mbar_arrive_expect(&full[st], sizeof(tile[st]));
          bulk_copy(tile[st], src + 32 * (j % 4), sizeof(tile[st]), &full[st]);
        } else {
          mbar_arrive(&full[st]);
        }
      }
    }
    return;
  }
  int acc = 0;
  for (int j = 0; j < kIters; ++j) {
    const int st = j % kStages;
    if (P != kNoWait) mbar_wait(&full[st], (j / kStages) & 1);
    acc += buf[st][(lane + warp) % 32];
    if (copy) acc += tile[st][(lane + 3) % 32];
    if (P == kNamedBar) asm volatile("bar.sync 1, %0;\n" ::"n"(32 * kConsumers) : "memory");
    if (P != kLane0Only && P != kNamedBar) __syncwarp();
    if (P != kNoWait && lane == 0) mbar_arrive(&empty[st]);
  }
  out[threadIdx.x] = acc;
}

// One kernel per protocol, so that racecheck's reports name it.
#define LVX_PROBE(name, proto) \
  __global__ void __launch_bounds__(32 * (1 + kConsumers)) probe_##name(const int* src, int* out) { probe<proto>(src, out); }
LVX_PROBE(plain, kPlain)
LVX_PROBE(tma, kTma)
LVX_PROBE(expect_tx, kExpectTx)
LVX_PROBE(named_bar, kNamedBar)
LVX_PROBE(lane0_only, kLane0Only)
LVX_PROBE(no_wait, kNoWait)

bool run(void (*kernel)(const int*, int*), const char* name, const int* src, int* out) {
  kernel<<<1, 32 * (1 + kConsumers)>>>(src, out);
  const cudaError_t err = cudaDeviceSynchronize();
  std::printf("probe_%-10s %s\n", name, err == cudaSuccess ? "ran" : cudaGetErrorString(err));
  return err == cudaSuccess;
}

}  // namespace

int main() {
  int *src = nullptr, *out = nullptr;
  if (cudaMalloc(&src, 4 * 32 * sizeof(int)) != cudaSuccess || cudaMalloc(&out, 128 * sizeof(int)) != cudaSuccess) {
    std::printf("cudaMalloc failed\n");
    return 1;
  }
  cudaMemset(src, 0, 4 * 32 * sizeof(int));
  bool ok = run(probe_plain, "plain", src, out);
  ok = run(probe_tma, "tma", src, out) && ok;
  ok = run(probe_expect_tx, "expect_tx", src, out) && ok;
  ok = run(probe_named_bar, "named_bar", src, out) && ok;
  ok = run(probe_lane0_only, "lane0_only", src, out) && ok;
  ok = run(probe_no_wait, "no_wait", src, out) && ok;
  cudaFree(src);
  cudaFree(out);
  return ok ? 0 : 1;
}
