// The CUDA layer's transports for device buffers and what this rank can use (gpu.hpp
// says where they are defined).
#pragma once

#include <mpi.h>

#include <memory>
#include <vector>

#include "core/backend.hpp"
#include "transport/transport.hpp"

namespace lvx::gpu {

// Whether this build has the NCCL transport (CUDA and NCCL at build time).
bool nccl_built();

// Device buffers for the collective probe of CUDA-aware MPI (transport/mpi_device_support.hpp):
// one send and one receive buffer of each size on `device`, the send buffers filled with
// this rank's byte pattern, the receive buffers zeroed. Throws when they cannot be made.
class ProbeBuffers {
 public:
  virtual ~ProbeBuffers() = default;
  virtual void* send(size_t i) = 0;
  virtual void* recv(size_t i) = 0;
  // Whether receive buffer i holds rank `from`'s pattern (copies it back to the host).
  virtual bool holds_pattern(size_t i, int from) = 0;
};
std::unique_ptr<ProbeBuffers> make_probe_buffers(int device, const std::vector<size_t>& bytes, int rank);

// MPI_Isend/Irecv of device buffers, directly (direct: CUDA-aware MPI, which the planner
// confirmed) or staged through pinned host memory; never blocks the host on compute.
std::unique_ptr<Transport> make_mpi_transport(MPI_Comm comm, Backend& backend, int device, bool direct);
// ncclSend/ncclRecv grouped per post; the NCCL communicator is bootstrapped over comm.
// Throws "unsupported" in a build without NCCL.
std::unique_ptr<Transport> make_nccl_transport(MPI_Comm comm, Backend& backend, int device);

}  // namespace lvx::gpu
