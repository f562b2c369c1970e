#include "ranges.cuh"

#include <climits>

#include "cuda_check.hpp"

namespace lvx::cuda {

namespace {

__global__ void init_summary_kernel(long long* out) {
  out[0] = LLONG_MAX;  // smallest begin
  out[1] = 0;          // rows with begin > end
  out[2] = 0;          // largest end
}

// Grid-stride over the rows, a warp-shuffle reduction, one atomic per warp and value.
__global__ void summarize_ranges_kernel(const int32_t* ranges, long long rows, long long* out) {
  long long lo = LLONG_MAX, reversed = 0, hi = 0;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < rows; i += (long long)gridDim.x * blockDim.x) {
    const long long b = ranges[2 * i], e = ranges[2 * i + 1];
    lo = b < lo ? b : lo;
    reversed += b > e;
    hi = e > hi ? e : hi;
  }
  for (int offset = 16; offset; offset >>= 1) {
    const long long l = __shfl_down_sync(0xffffffffu, lo, offset);
    const long long r = __shfl_down_sync(0xffffffffu, reversed, offset);
    const long long h = __shfl_down_sync(0xffffffffu, hi, offset);
    lo = l < lo ? l : lo;
    reversed += r;
    hi = h > hi ? h : hi;
  }
  if (threadIdx.x % 32 == 0) {
    atomicMin(&out[0], lo);
    atomicAdd(reinterpret_cast<unsigned long long*>(&out[1]), static_cast<unsigned long long>(reversed));
    atomicMax(&out[2], hi);
  }
}

}  // namespace

void launch_summarize_ranges(const int32_t* ranges, long long rows, long long* out, cudaStream_t st) {
  init_summary_kernel<<<1, 1, 0, st>>>(out);
  LVX_CUDA_CHECK_LAUNCH();
  if (rows == 0) return;
  const long long blocks = (rows + 255) / 256;
  summarize_ranges_kernel<<<(unsigned)(blocks < 1024 ? blocks : 1024), 256, 0, st>>>(ranges, rows, out);
  LVX_CUDA_CHECK_LAUNCH();
}

}  // namespace lvx::cuda
