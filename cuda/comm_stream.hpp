// The stream the GPU transports move data on.
#pragma once

#include <cuda_runtime.h>

namespace lvx::cuda {

// A non-blocking stream for transfers, at the device's greatest priority unless
// LVX_COMM_PRIORITY=normal: NCCL's kernels then take the next free SM ahead of
// queued attention blocks instead of waiting for a whole kernel to drain, which is
// what lets a large transfer overlap compute.
cudaStream_t make_comm_stream();

}  // namespace lvx::cuda
