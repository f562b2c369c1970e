// What the CUDA layer (cuda/) gives the rest of the library: a backend on one GPU and
// the transports for device buffers. src/ declares it and never includes cuda/; the
// library is linked with cuda/'s definitions, or with no_gpu.cpp's stand-ins in a build
// without CUDA.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>

#include "core/backend.hpp"
#include "transport/transport.hpp"

namespace lvx::gpu {

// Whether this build has the CUDA backend, and the NCCL transport (CUDA and NCCL at build time).
bool built();
bool nccl_built();

// Throws "unsupported" in a build without CUDA.
std::unique_ptr<Backend> make_backend(int device);

// Whether this rank's MPI takes device pointers: LVX_MPI_CUDA_AWARE=0/1 if set, else
// MPIX_Query_cuda_support() where the MPI has it, else false.
bool mpi_cuda_aware();

// MPI_Isend/Irecv of device buffers, directly (direct: CUDA-aware MPI) or staged through
// pinned host memory; never blocks the host on compute.
std::unique_ptr<Transport> make_mpi_transport(MPI_Comm comm, Backend& backend, int device, bool direct);
// ncclSend/ncclRecv grouped per post; the NCCL communicator is bootstrapped over comm.
// Throws "unsupported" in a build without NCCL.
std::unique_ptr<Transport> make_nccl_transport(MPI_Comm comm, Backend& backend, int device);

}  // namespace lvx::gpu
