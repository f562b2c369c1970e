// One macro for every MPI call: a failing call becomes an lvx::Error with the
// library's own text, the call, the file, the line and the rank.
#pragma once

#include <mpi.h>

#include <string>

#include "core/error.hpp"

namespace lvx {

inline std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, len);
}

}  // namespace lvx

#define LVX_MPI_CHECK(call)                                                          \
  do {                                                                               \
    int lvx_mpi_rc_ = (call);                                                        \
    if (lvx_mpi_rc_ != MPI_SUCCESS)                                                  \
      ::lvx::raise_error(::lvx::Status::mpi, __FILE__, __LINE__,                     \
                         std::string(#call) + ": " + ::lvx::mpi_error_text(lvx_mpi_rc_)); \
  } while (0)
