// Host-side planning of the forward launch: tile sizes and the split-KV count.
#include <algorithm>

#include "attend_dispatch.hpp"
#include "attend_fwd_sm90.cuh"
#include "kernel_traits.cuh"

namespace lvx::cuda {

bool tensor_core_head_dim(int D) { return D == 32 || D == 64 || D == 96 || D == 128; }

namespace {
template <typename Fn>
int by_head_dim(int D, Fn fn) {
  switch (D) {
    case 32: return fn(FwdConfig<32>::Traits{});
    case 64: return fn(FwdConfig<64>::Traits{});
    case 96: return fn(FwdConfig<96>::Traits{});
    default: return fn(FwdConfig<128>::Traits{});
  }
}
bool uses_sm90_fwd(int D, bool sm90) { return sm90 && D == FwdSm90::kHeadDim; }
}  // namespace

int fwd_block_m(int D, bool sm90) {
  if (uses_sm90_fwd(D, sm90)) return FwdSm90::kBlockM;
  return by_head_dim(D, [](auto tr) { return decltype(tr)::kBlockM; });
}
int fwd_block_n(int D, bool sm90) {
  if (uses_sm90_fwd(D, sm90)) return FwdSm90::kBlockN;
  return by_head_dim(D, [](auto tr) { return decltype(tr)::kBlockN; });
}
// Resident blocks per SM (registers bound them: 4 warps fit twice, 8 warps once; the
// sm_90a kernel's 161 KB of shared memory once).
int fwd_blocks_per_sm(int D, bool sm90) {
  if (uses_sm90_fwd(D, sm90)) return 1;
  return by_head_dim(D, [](auto tr) { return decltype(tr)::kWarps >= 8 ? 1 : 2; });
}

SplitPlan plan_fwd_splits(int B, int Lq, int Lkv, int Hq, int block_m, int block_n, int num_sms, int blocks_per_sm) {
  SplitPlan plan;
  plan.split_len = std::max(Lkv, 1);
  const long long blocks = (long long)B * Hq * ((Lq + block_m - 1) / block_m);
  const long long slots = (long long)num_sms * blocks_per_sm;
  const int kv_tiles = (Lkv + block_n - 1) / block_n;
  if (blocks == 0 || kv_tiles < 8) return plan;
  // Each split keeps at least 4 KV tiles; pick the count whose last wave is fullest
  // (also past one wave: 192 blocks on 132 slots leave the second wave half empty).
  const int max_splits = std::min<long long>(std::min(kv_tiles / 4, 128), (4 * slots + blocks - 1) / blocks);
  double best_eff = 0.0;
  int best = 1;
  for (int s = 1; s <= max_splits; ++s) {
    const long long total = blocks * s;
    const long long waves = (total + slots - 1) / slots;
    const double eff = (double)total / (double)(waves * slots);
    if (eff > best_eff + 0.02) { best_eff = eff; best = s; }
  }
  const int tiles_per_split = (kv_tiles + best - 1) / best;
  plan.split_len = tiles_per_split * block_n;
  plan.splits = (kv_tiles + tiles_per_split - 1) / tiles_per_split;
  return plan;
}

}  // namespace lvx::cuda

// ---- tensor maps (tma.cuh) ----
#include <cuda_runtime.h>

#include "cuda_check.hpp"
#include "tma.cuh"

namespace lvx::cuda {
namespace {
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
EncodeTiled encode_tiled() {
  static EncodeTiled fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    LVX_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess || !p)
      LVX_FAIL(Status::unsupported, "the CUDA driver has no cuTensorMapEncodeTiled (needed by the sm_90a kernels)");
    return reinterpret_cast<EncodeTiled>(p);
  }();
  return fn;
}
}  // namespace

namespace {
CUtensorMap tensor_map_4d(const void* base, CUtensorMapDataType type, int elem_bytes, int D, int H, long long L, int B,
                          int box_cols, int rows) {
  CUtensorMap map;
  const cuuint64_t dims[4] = {(cuuint64_t)D, (cuuint64_t)H, (cuuint64_t)L, (cuuint64_t)B};
  const cuuint64_t strides[3] = {(cuuint64_t)D * elem_bytes, (cuuint64_t)H * D * elem_bytes,
                                 (cuuint64_t)L * H * D * elem_bytes};
  const cuuint32_t box[4] = {(cuuint32_t)box_cols, 1, (cuuint32_t)rows, 1};
  const cuuint32_t elem[4] = {1, 1, 1, 1};
  const CUresult r = encode_tiled()(&map, type, 4, const_cast<void*>(base), dims, strides, box, elem,
                                    CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    LVX_FAIL(Status::internal, "cuTensorMapEncodeTiled failed (" + std::to_string((int)r) + ") for a [" +
                                   std::to_string(B) + ", " + std::to_string(L) + ", " + std::to_string(H) + ", " +
                                   std::to_string(D) + "] tensor");
  return map;
}
}  // namespace

CUtensorMap rows_tensor_map(const void* base, bool bf16, int D, int H, long long L, int B, int rows) {
  return tensor_map_4d(base, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, D, H, L, B,
                       64, rows);
}

CUtensorMap f32_rows_tensor_map(const float* base, int D, int H, long long L, int B, int rows) {
  return tensor_map_4d(base, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, D, H, L, B, 32, rows);
}

}  // namespace lvx::cuda
