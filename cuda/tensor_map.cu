// Tensor maps of the sm_90a kernels' TMA loads (tma.cuh): rows of a [B, L, H, D] tensor
// in 128-byte swizzled boxes.
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
