// Stand-ins for builds without the CUDA layer: asking for it is a clear error.
#include "core/error.hpp"
#include "gpu/gpu.hpp"
#include "gpu/transports.hpp"

namespace lvx::gpu {

namespace {
[[noreturn]] void no_cuda() {
  LVX_FAIL(Status::unsupported, "this build of lvxattn has no CUDA backend (nvcc was not found at build time)");
}
}  // namespace

bool built() { return false; }
bool nccl_built() { return false; }
std::unique_ptr<Backend> make_backend(int) { no_cuda(); }
uint64_t device_uuid_digest(int) { return 0; }
std::unique_ptr<ProbeBuffers> make_probe_buffers(int, const std::vector<size_t>&, int) { no_cuda(); }
std::unique_ptr<Transport> make_mpi_transport(MPI_Comm, Backend&, int, bool) { no_cuda(); }
std::unique_ptr<Transport> make_nccl_transport(MPI_Comm, Backend&, int) { no_cuda(); }

}  // namespace lvx::gpu
