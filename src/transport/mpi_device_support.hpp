// Whether this rank's MPI can take device (CUDA) buffers in point-to-point calls, found
// without ever handing MPI a device pointer, and the collective probe that confirms it.
//
// A CUDA-aware MPI is either built so (Open MPI or MPICH with CUDA, MVAPICH2-GDR, Cray
// MPICH with its GPU library) or gets the awareness from its transport layer (Open MPI
// built without CUDA over a UCX that has CUDA transports: MPIX_Query_cuda_support() then
// says 0, yet contiguous point-to-point on device buffers works). Handing a device pointer
// to an MPI that is neither crashes inside MPI, so the evidence comes first and a small
// collective exchange of device buffers (probe_mpi_device) confirms it before first use.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>

namespace lvx {

// What a rank knows, weakest first.
enum class MpiDeviceAccess : int32_t {
  none = 0,      // no evidence, the probe failed, or LVX_MPI_CUDA_AWARE=0
  evidence = 1,  // the MPI says it can: safe to probe, not yet used
  yes = 2,       // LVX_MPI_CUDA_AWARE=1 (the user is trusted), or the probe passed
};
const char* name(MpiDeviceAccess a);

struct MpiDeviceSupport {
  MpiDeviceAccess access = MpiDeviceAccess::none;
  std::string how;  // the evidence, or why there is none, in one line
};

// This rank's answer. `forced` (LVX_MPI_CUDA_AWARE, plan/settings.hpp) decides when 0 or 1;
// else (-1) the evidence, gathered once per process (MPI must be initialized), first that
// holds:
//   - MPIX_Query_cuda_support() == 1 (Open MPI built with CUDA, MVAPICH2 >= 2.3.4,
//     MPICH >= 4.1), or MPIX_GPU_query_support(MPIX_GPU_SUPPORT_CUDA) (MPICH >= 4.0; it
//     honours MPIR_CVAR_ENABLE_GPU);
//   - Open MPI whose pml is ucx (the MPI_T control variable "pml", set by --mca pml ucx or
//     OMPI_MCA_pml=ucx; when it is unset Open MPI may pick another pml) and whose loaded
//     UCX reports CUDA memory (ucp_context_query of the libucp already in this process);
//   - Cray MPICH with MPICH_GPU_SUPPORT_ENABLED=1 (its MPI_Init fails without the GPU
//     transfer library when that is set);
//   - MVAPICH2 with MV2_USE_CUDA=1.
// The symbols are looked up in the libmpi this library is linked with, at run time, so
// the answer is the running MPI's, whatever headers the build saw.
MpiDeviceSupport mpi_device_support(int forced);

// Collective over comm (every rank calls it at the same point; it uses tag 0 of comm's
// point-to-point space, so comm must carry no other messages meanwhile): each rank sends
// two device buffers (a small and a 4 MiB one) on `device` to the next rank and receives
// the previous rank's, checks every byte, and all ranks agree (MPI_Allreduce on host
// memory). Call it only where every rank's evidence says MPI may be handed device
// pointers. Returns whether every rank received intact data; *why names each rank that
// failed and how (it could not allocate, an MPI error, altered data, no transfer within
// 30 s). Never throws; the same answer and text on every rank.
bool probe_mpi_device(MPI_Comm comm, int device, std::string* why);

}  // namespace lvx
