// MPI transport for host memory (the CPU backend): nonblocking Isend/Irecv, one
// request group per post. Device buffers use gpu/transport_mpi_device.cpp.
#pragma once

#include <mpi.h>

#include <memory>

#include "transport/transport.hpp"

namespace lvx {

class Backend;

std::unique_ptr<Transport> make_mpi_transport(MPI_Comm comm, Backend& backend);

}  // namespace lvx
