// Transports for buffers in GPU memory (built with the CUDA backend).
#pragma once

#include <cuda_runtime.h>
#include <mpi.h>

#include <memory>
#include <string>

#include "transport.hpp"

namespace lvx {

class Backend;

// MPI_Isend/Irecv of device buffers, either directly (CUDA-aware MPI) or staged
// through pinned host memory in chunks; never blocks the host on compute.
std::unique_ptr<Transport> make_mpi_device_transport(MPI_Comm comm, Backend& backend, int device, bool cuda_aware);
// Whether the MPI library takes device pointers: LVX_MPI_CUDA_AWARE=0/1 if set,
// else MPIX_Query_cuda_support() where the MPI has it, else false.
bool mpi_is_cuda_aware();

// ncclSend/ncclRecv grouped per post on a communication stream; the NCCL
// communicator is bootstrapped over comm. Throws "unsupported" without NCCL.
std::unique_ptr<Transport> make_nccl_transport(MPI_Comm comm, Backend& backend, int device);
bool nccl_built();

// A non-blocking stream for transfers, at the device's greatest priority unless
// LVX_COMM_PRIORITY=normal: NCCL's kernels then take the next free SM ahead of
// queued attention blocks instead of waiting for a whole kernel to drain, which is
// what lets a large transfer overlap compute.
cudaStream_t make_comm_stream();

}  // namespace lvx
