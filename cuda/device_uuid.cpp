// A GPU's identity for the planner: ranks that share one GPU cannot use NCCL.
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>

#include "gpu/gpu.hpp"

namespace lvx {

uint64_t gpu::device_uuid_digest(int device) {
  static std::mutex mutex;
  static std::map<int, uint64_t> known;  // cudaGetDeviceProperties is slow: once per device
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = known.find(device); it != known.end()) return it->second;
  cudaDeviceProp prop{};
  if (device < 0 || cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the 16 bytes of the UUID
  for (char c : prop.uuid.bytes) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return known[device] = h ? h : 1;
}

}  // namespace lvx
