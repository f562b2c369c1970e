// The CUDA layer's transports for device buffers and what this rank can use (gpu.hpp
// says where they are defined).
#pragma once

#include <mpi.h>

#include <memory>

#include "core/backend.hpp"
#include "transport/transport.hpp"

namespace lvx::gpu {

// Whether this build has the NCCL transport (CUDA and NCCL at build time).
bool nccl_built();

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
