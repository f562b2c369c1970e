// MPI transport for buffers the CPU can address (host memory, or device memory
// with a CUDA-aware MPI): nonblocking Isend/Irecv, one request group per post.
#pragma once

#include <mpi.h>

#include <memory>

#include "transport.hpp"

namespace lvx {

class Backend;

std::unique_ptr<Transport> make_mpi_transport(MPI_Comm comm, Backend& backend);

}  // namespace lvx
