// The environment settings a plan depends on. Each rank reads its own at every plan; they
// travel in the plan's allgather, where rank 0's decide (LVX_MPI_CUDA_AWARE: every rank's
// counts), and a bad value on any rank fails every rank.
#pragma once

#include <cstdint>
#include <string>

namespace lvx {

// LVX_LVX_GATHER=auto|ring|gather|overlap|single: how lvx moves the query side (plan.hpp).
enum class GatherMode : int32_t { automatic = -1, ring = 0, any = 1, overlap = 2, single = 3 };

struct Settings {
  GatherMode gather_mode = GatherMode::automatic;
  int64_t gather_max_bytes = int64_t(1024) << 20;  // LVX_GATHER_MAX_MB (MiB; default 1024)
  // LVX_MPI_CUDA_AWARE=0|1: whether this rank's MPI takes device buffers, over what the
  // MPI says (1 is trusted: no probe); -1 when unset or empty.
  int mpi_cuda_aware = -1;
};

// This rank's settings; a bad value leaves the default and sets *error (never throws:
// the error is reported through the plan's allgather, so that no rank is left waiting).
Settings read_settings(std::string* error);

}  // namespace lvx
