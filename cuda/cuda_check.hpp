// One macro for every CUDA runtime call, one for every kernel launch.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "core/error.hpp"

#define LVX_CUDA_CHECK(call)                                                                   \
  do {                                                                                         \
    cudaError_t lvx_cuda_err_ = (call);                                                        \
    if (lvx_cuda_err_ != cudaSuccess)                                                          \
      ::lvx::raise_error(::lvx::Status::cuda, __FILE__, __LINE__,                              \
                         std::string(cudaGetErrorString(lvx_cuda_err_)) + " in " #call);       \
  } while (0)

// After a <<<...>>> launch: configuration errors surface here, not at the next call.
#define LVX_CUDA_CHECK_LAUNCH() LVX_CUDA_CHECK(cudaGetLastError())
