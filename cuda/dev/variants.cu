// Times tile-shape variants of the attention kernels (bf16, D=128) on the five
// single-GPU shapes of experiments/bench_gpu_kernels.py with CUDA events, on random inputs;
// the winner goes into the table in attend_config.hpp. Correctness of the library configuration
// is checked by playground.cu; a variant here is also compared against the library's
// output on each shape (relative difference).
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "attend_bwd.cuh"
#include "attend_dispatch.hpp"
#include "split_kv.hpp"
#include "attend_fwd.cuh"
#include "cuda_check.hpp"

using namespace lvx::cuda;
using T = __nv_bfloat16;
using Fwd8w64 = FwdTraits<128, 8, 64>;
using Fwd4w32 = FwdTraits<128, 4, 32>;
using Fwd8w32 = FwdTraits<128, 8, 32>;
using Bwd32 = BwdTraits<128, 32>;
using Bwd16 = BwdTraits<128, 16>;
using Fwd4w64 = FwdTraits<128, 4, 64>;
using Bwd8w64 = BwdTraits<128, 64, 8>;
using Bwd8w32 = BwdTraits<128, 32, 8>;
using Bwd4w64 = BwdTraits<128, 64, 4>;

__global__ void fill_random(T* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    unsigned x = (unsigned)(i * 2654435761u) ^ seed;
    x ^= x >> 13; x *= 0x5bd1e995u; x ^= x >> 15;
    p[i] = __float2bfloat16((x & 0xffff) / 32768.f - 1.f);
  }
}
__global__ void fill_value(float* p, size_t n, float v) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) p[i] = v;
}

template <typename Fn>
float median_ms(Fn&& fn, int reps = 10) {
  cudaEvent_t a, b;
  LVX_CUDA_CHECK(cudaEventCreate(&a));
  LVX_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 2; ++i) fn();
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    LVX_CUDA_CHECK(cudaEventRecord(a));
    fn();
    LVX_CUDA_CHECK(cudaEventRecord(b));
    LVX_CUDA_CHECK(cudaEventSynchronize(b));
    float ms;
    LVX_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

template <typename Tr>
void run_fwd(FwdParams p, int num_sms, int blocks_per_sm, float* ws) {
  SplitPlan plan = plan_fwd_splits(p.B, p.Lq, p.Lkv, p.Hq, Tr::kBlockM, Tr::kBlockN, num_sms, blocks_per_sm);
  p.splits = plan.splits; p.split_len = plan.split_len;
  size_t rows = (size_t)p.B * p.Lq * p.Hq;
  p.o_part = ws; p.lse_part = ws + (size_t)plan.splits * rows * Tr::kHeadDim;
  constexpr int smem = Tr::kSmemElems * 2;
  static bool once = [] {
    LVX_CUDA_CHECK(cudaFuncSetAttribute(attend_fwd_kernel<T, Tr>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    return true;
  }();
  (void)once;
  dim3 grid((p.Lq + Tr::kBlockM - 1) / Tr::kBlockM, p.Hq, p.B * p.splits);
  attend_fwd_kernel<T, Tr><<<grid, Tr::kThreads, smem>>>(p);
  LVX_CUDA_CHECK_LAUNCH();
  if (p.splits > 1) {
    fwd_combine_kernel<Tr::kHeadDim><<<(unsigned)((rows * 32 + 255) / 256), 256>>>(p);
    LVX_CUDA_CHECK_LAUNCH();
  }
}

template <typename Tr>
void run_bwd(const BwdParams& p) {
  constexpr int smem = Tr::kSmemElems * 2;
  static bool once = [] {
    LVX_CUDA_CHECK(cudaFuncSetAttribute(attend_bwd_kernel<T, Tr>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    return true;
  }();
  (void)once;
  dim3 grid((p.Lkv + Tr::kBlockN - 1) / Tr::kBlockN, p.Hkv, p.B);
  attend_bwd_kernel<T, Tr><<<grid, Tr::kThreads, smem>>>(p);
  LVX_CUDA_CHECK_LAUNCH();
}

int main() {
  struct Shape { int Hq, Hkv, Lq, Lkv; };
  const Shape shapes[] = {{16, 16, 1024, 16384}, {16, 16, 256, 32768}, {32, 8, 1024, 16384},
                          {16, 16, 4096, 65536}, {32, 8, 256, 131072}};
  const int D = 128;
  cudaDeviceProp prop;
  LVX_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);
  std::printf("%-8s %-6s %-7s %-26s %9s %8s %10s\n", "Hq/Hkv", "Lq", "Lkv", "variant", "ms", "TFLOP/s", "rel.diff");
  for (const Shape& s : shapes) {
    const size_t nq = (size_t)s.Lq * s.Hq * D, nkv = (size_t)s.Lkv * s.Hkv * D, nl = (size_t)s.Hq * s.Lq;
    T *q, *k, *v, *dout;
    float *o, *lse, *dl, *dq, *dk, *dv, *ws, *o_ref;
    LVX_CUDA_CHECK(cudaMalloc(&q, nq * 2)); LVX_CUDA_CHECK(cudaMalloc(&dout, nq * 2));
    LVX_CUDA_CHECK(cudaMalloc(&k, nkv * 2)); LVX_CUDA_CHECK(cudaMalloc(&v, nkv * 2));
    LVX_CUDA_CHECK(cudaMalloc(&o, nq * 4)); LVX_CUDA_CHECK(cudaMalloc(&o_ref, nq * 4));
    LVX_CUDA_CHECK(cudaMalloc(&dq, nq * 4));
    LVX_CUDA_CHECK(cudaMalloc(&lse, nl * 4)); LVX_CUDA_CHECK(cudaMalloc(&dl, nl * 4));
    LVX_CUDA_CHECK(cudaMalloc(&dk, nkv * 4)); LVX_CUDA_CHECK(cudaMalloc(&dv, nkv * 4));
    LVX_CUDA_CHECK(cudaMalloc(&ws, 64 * nq * 4 + 64 * nl * 4));
    fill_random<<<1024, 256>>>(q, nq, 1); fill_random<<<1024, 256>>>(k, nkv, 2);
    fill_random<<<1024, 256>>>(v, nkv, 3); fill_random<<<1024, 256>>>(dout, nq, 4);
    fill_value<<<256, 256>>>(dl, nl, 0.1f);
    FwdParams fp{};
    fp.q = q; fp.k = k; fp.v = v; fp.B = 1; fp.Lq = s.Lq; fp.Lkv = s.Lkv; fp.Hq = s.Hq; fp.Hkv = s.Hkv;
    fp.group = s.Hq / s.Hkv; fp.scale_log2 = 1.4426950408889634f / std::sqrt((float)D); fp.o = o; fp.lse = lse;
    const double flops = 4.0 * s.Hq * s.Lq * (double)s.Lkv * D;
    std::vector<float> ref(nq), out(nq);
    auto reset = [&] { fill_value<<<256, 256>>>(o, nq, 0.f); fill_value<<<256, 256>>>(lse, nl, -INFINITY); };
    auto report = [&](const char* name, float ms, double fl, bool check) {
      double diff = 0;
      if (check) {
        LVX_CUDA_CHECK(cudaMemcpy(out.data(), o, nq * 4, cudaMemcpyDeviceToHost));
        double num = 0, den = 0;
        for (size_t i = 0; i < nq; ++i) { num += (out[i] - ref[i]) * (out[i] - ref[i]); den += ref[i] * ref[i]; }
        diff = std::sqrt(num / den);
      }
      std::printf("%3d/%-4d %-6d %-7d %-26s %9.3f %8.0f %10.1e\n", s.Hq, s.Hkv, s.Lq, s.Lkv, name, ms, fl / ms / 1e9, diff);
    };
    // Reference output: the library configuration.
    reset(); run_fwd<FwdConfig<128>::Traits>(fp, prop.multiProcessorCount, 1, ws);
    LVX_CUDA_CHECK(cudaDeviceSynchronize());
    LVX_CUDA_CHECK(cudaMemcpy(ref.data(), o, nq * 4, cudaMemcpyDeviceToHost));
#define FWD_VARIANT(NAME, TR, BPS)                                                              \
  {                                                                                             \
    float ms = median_ms([&] { reset(); run_fwd<TR>(fp, prop.multiProcessorCount, BPS, ws); }); \
    report(NAME, ms, flops, true);                                                              \
  }
    FWD_VARIANT("fwd 8w BN64 (lib)", FwdConfig<128>::Traits, 1)
    FWD_VARIANT("fwd 8w BN64 nosplit", FwdConfig<128>::Traits, 0)

    // Backward (lse from the forward above).
    BwdParams bp{};
    bp.q = q; bp.k = k; bp.v = v; bp.dout = dout; bp.lse = lse; bp.dl = dl; bp.B = 1; bp.Lq = s.Lq;
    bp.Lkv = s.Lkv; bp.Hq = s.Hq; bp.Hkv = s.Hkv; bp.group = s.Hq / s.Hkv;
    bp.scale = 1.f / std::sqrt((float)D); bp.scale_log2 = bp.scale * 1.4426950408889634f;
    bp.dq = dq; bp.dk = dk; bp.dv = dv;
    auto zero = [&] { fill_value<<<256, 256>>>(dq, nq, 0.f); fill_value<<<1024, 256>>>(dk, nkv, 0.f); fill_value<<<1024, 256>>>(dv, nkv, 0.f); };
#define BWD_VARIANT(NAME, TR) { float ms = median_ms([&] { zero(); run_bwd<TR>(bp); }); report(NAME, ms, 2.5 * flops, false); }
    BWD_VARIANT("bwd 8w BM64 (lib)", BwdConfig<128>::Traits)
    BWD_VARIANT("bwd 8w BM32", Bwd8w32)
    float ms_zero = median_ms([&] { zero(); });
    std::printf("%36s %9.3f  (fills included above)\n", "zero dq/dk/dv", ms_zero);
    for (void* p : {(void*)q, (void*)k, (void*)v, (void*)dout, (void*)o, (void*)o_ref, (void*)dq, (void*)lse,
                    (void*)dl, (void*)dk, (void*)dv, (void*)ws})
      LVX_CUDA_CHECK(cudaFree(p));
  }
  return 0;
}
