// Builds with CUDA but without NCCL: asking for the NCCL transport is a clear error.
#include "core/error.hpp"
#include "gpu/transports.hpp"

namespace lvx::gpu {

std::unique_ptr<Transport> make_nccl_transport(MPI_Comm, Backend&, int) {
  LVX_FAIL(Status::unsupported, "this build of lvxattn has no NCCL (nccl.h was not found at build time); "
                                "use transport='mpi'");
}
bool nccl_built() { return false; }

}  // namespace lvx::gpu
