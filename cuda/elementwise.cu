#include "elementwise.cuh"

#include <algorithm>

#include "cuda_check.hpp"
#include "dispatch.hpp"

namespace lvx::cuda {
namespace {

constexpr int kThreads = 256;
unsigned grid_for(size_t n, int per_thread = 1) {
  size_t blocks = (n + (size_t)kThreads * per_thread - 1) / ((size_t)kThreads * per_thread);
  return (unsigned)std::min<size_t>(std::max<size_t>(blocks, 1), 1u << 20);
}

__global__ void fill_kernel(float* p, float value, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = value;
}

__global__ void add_kernel(float* dst, const float* src, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    dst[i] += src[i];
}

template <typename To, typename From>
__global__ void convert_kernel(To* dst, const From* src, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    dst[i] = from_f32<To>(to_f32<From>(src[i]));
}

// Dl[b, h, i] = Σ_d dO·O: one warp per row of D elements.
template <typename T>
__global__ void row_dot_kernel(const T* dout, const T* o, float* dl, int64_t B, int64_t L, int64_t H, int64_t D) {
  const int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= B * L * H) return;
  const T* a = dout + w * D;
  const T* c = o + w * D;
  float s = 0.f;
  for (int64_t d = lane; d < D; d += 32) s += to_f32(a[d]) * to_f32(c[d]);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (lane == 0) {
    const int64_t h = w % H, bi = w / H, i = bi % L, b = bi / L;
    dl[(b * H + h) * L + i] = s;
  }
}

__global__ void merge_lse_kernel(float* o, float* lse, const float* o_in, const float* lse_in, int64_t B, int64_t L,
                                 int64_t H, int64_t D) {
  const int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= B * L * H) return;
  const int64_t h = w % H, bi = w / H, i = bi % L, b = bi / L;
  const int64_t li = (b * H + h) * L + i;
  const float la = lse[li], lb = lse_in[li];
  const float mx = fmaxf(la, lb);
  if (lb == -INFINITY) return;  // a NaN lb (the row sees a NaN) goes on as NaN
  const float wa = __expf(la - mx), wb = __expf(lb - mx), inv = 1.f / (wa + wb);
  float* orow = o + w * D;
  const float* irow = o_in + w * D;
  for (int64_t d = lane; d < D; d += 32) orow[d] = (orow[d] * wa + irow[d] * wb) * inv;
  __syncwarp();
  if (lane == 0) lse[li] = mx + __logf(wa + wb);
}

unsigned warp_grid(int64_t rows) { return (unsigned)((rows * 32 + kThreads - 1) / kThreads); }

}  // namespace

void launch_fill(float* p, float value, size_t n, cudaStream_t st) {
  if (n == 0) return;
  fill_kernel<<<grid_for(n, 4), kThreads, 0, st>>>(p, value, n);
  LVX_CUDA_CHECK_LAUNCH();
}

void launch_add(float* dst, const float* src, size_t n, cudaStream_t st) {
  if (n == 0) return;
  add_kernel<<<grid_for(n, 4), kThreads, 0, st>>>(dst, src, n);
  LVX_CUDA_CHECK_LAUNCH();
}

void launch_convert(void* dst, DType dst_type, const void* src, DType src_type, size_t n, cudaStream_t st) {
  if (n == 0) return;
  with_storage_type(dst_type, [&](auto* to) {
    with_storage_type(src_type, [&](auto* from) {
      using To = std::remove_pointer_t<decltype(to)>;
      using From = std::remove_pointer_t<decltype(from)>;
      convert_kernel<<<grid_for(n, 4), kThreads, 0, st>>>(static_cast<To*>(dst), static_cast<const From*>(src), n);
    });
  });
  LVX_CUDA_CHECK_LAUNCH();
}

void launch_row_dot(const void* dout, const void* o, DType dtype, float* dl, int64_t B, int64_t L, int64_t H,
                    int64_t D, cudaStream_t st) {
  const int64_t rows = B * L * H;
  if (rows == 0) return;
  with_storage_type(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    row_dot_kernel<<<warp_grid(rows), kThreads, 0, st>>>(static_cast<const T*>(dout), static_cast<const T*>(o), dl, B, L,
                                                         H, D);
  });
  LVX_CUDA_CHECK_LAUNCH();
}

void launch_merge_lse(float* o, float* lse, const float* o_in, const float* lse_in, int64_t B, int64_t L, int64_t H,
                      int64_t D, cudaStream_t st) {
  const int64_t rows = B * L * H;
  if (rows == 0) return;
  merge_lse_kernel<<<warp_grid(rows), kThreads, 0, st>>>(o, lse, o_in, lse_in, B, L, H, D);
  LVX_CUDA_CHECK_LAUNCH();
}

}  // namespace lvx::cuda
