// What the CUDA layer (cuda/) gives the rest of the library: a backend on one GPU here,
// the transports for device buffers in gpu/transports.hpp. src/ declares both and never
// includes cuda/; the library is linked with cuda/'s definitions, or with no_gpu.cpp's
// stand-ins in a build without CUDA. (No MPI here: the kernel playground includes it.)
#pragma once

#include <cstdint>
#include <memory>

#include "core/backend.hpp"

namespace lvx::gpu {

// Whether this build has the CUDA backend.
bool built();

// Throws "unsupported" in a build without CUDA.
std::unique_ptr<Backend> make_backend(int device);

// A 64-bit digest of the GPU's UUID (0 when unknown or without CUDA): ranks with equal
// digests share one GPU, which NCCL refuses.
uint64_t device_uuid_digest(int device);

}  // namespace lvx::gpu
