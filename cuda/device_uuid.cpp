// A GPU's identity for the planner: ranks that share one GPU cannot use NCCL.
#include <cuda_runtime.h>

#include <cstdint>

#include "gpu/gpu.hpp"

namespace lvx {

uint64_t gpu::device_uuid_digest(int device) {
  cudaDeviceProp prop{};
  if (device < 0 || cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the 16 bytes of the UUID
  for (char c : prop.uuid.bytes) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h ? h : 1;
}

}  // namespace lvx
