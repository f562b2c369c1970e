// Stand-in for builds without the CUDA backend: asking for it is a clear error.
#include "backend.hpp"
#include "error.hpp"

namespace lvx {

std::unique_ptr<Backend> make_cuda_backend(int) {
  LVX_FAIL(Status::unsupported, "this build of lvxattn has no CUDA backend (nvcc was not found at build time)");
}
bool cuda_backend_built() { return false; }
bool cuda_head_dim_supported(int64_t) { return false; }

}  // namespace lvx
