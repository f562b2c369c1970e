#include "core/error.hpp"

#include <cstring>

namespace lvx {

namespace {
int g_error_rank = -1;
}

void set_error_rank(int rank) { g_error_rank = rank; }
int error_rank() { return g_error_rank; }

const char* status_name(Status s) {
  switch (s) {
    case Status::ok: return "ok";
    case Status::invalid_argument: return "invalid argument";
    case Status::mismatch: return "ranks disagree";
    case Status::mpi: return "MPI error";
    case Status::cuda: return "CUDA error";
    case Status::nccl: return "NCCL error";
    case Status::unsupported: return "unsupported";
    case Status::out_of_memory: return "out of memory";
    case Status::internal: return "internal error";
  }
  return "unknown";
}

void raise_error(Status s, const char* file, int line, const std::string& text) {
  const char* base = std::strrchr(file, '/');
  std::string where = std::string(base ? base + 1 : file) + ":" + std::to_string(line);
  std::string rank = g_error_rank >= 0 ? "rank " + std::to_string(g_error_rank) + ", " : "";
  // Argument errors read best without the source location; library failures need it.
  if (s == Status::invalid_argument || s == Status::mismatch || s == Status::unsupported)
    throw Error(s, text);
  throw Error(s, std::string("lvx ") + status_name(s) + " (" + rank + where + "): " + text);
}

}  // namespace lvx
