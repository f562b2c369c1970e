#include "plan/settings.hpp"

#include <cstdlib>

namespace lvx {

namespace {

GatherMode gather_mode_from_env(std::string* error) {
  const char* v = std::getenv("LVX_LVX_GATHER");
  if (!v || !*v) return GatherMode::automatic;
  const std::string s(v);
  if (s == "auto") return GatherMode::automatic;
  if (s == "ring") return GatherMode::ring;
  if (s == "gather") return GatherMode::any;
  if (s == "overlap") return GatherMode::overlap;
  if (s == "single") return GatherMode::single;
  if (error->empty()) *error = "LVX_LVX_GATHER must be auto, ring, gather, overlap or single, got '" + s + "'";
  return GatherMode::automatic;
}

int64_t gather_max_bytes_from_env(int64_t fallback, std::string* error) {
  const char* v = std::getenv("LVX_GATHER_MAX_MB");
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const double mb = std::strtod(v, &end);
  if (end == v || *end || !(mb >= 0) || mb > 1e12) {
    if (error->empty()) *error = std::string("LVX_GATHER_MAX_MB must be a number of MiB, got '") + v + "'";
    return fallback;
  }
  return static_cast<int64_t>(mb * (1 << 20));
}

int mpi_cuda_aware_from_env(std::string* error) {
  const char* v = std::getenv("LVX_MPI_CUDA_AWARE");
  if (!v || !*v) return -1;
  const std::string s(v);
  if (s == "0" || s == "1") return s == "1";
  if (error->empty()) *error = "LVX_MPI_CUDA_AWARE must be 0 or 1, got '" + s + "'";
  return -1;
}

}  // namespace

Settings read_settings(std::string* error) {
  Settings s;
  s.gather_mode = gather_mode_from_env(error);
  s.gather_max_bytes = gather_max_bytes_from_env(s.gather_max_bytes, error);
  s.mpi_cuda_aware = mpi_cuda_aware_from_env(error);
  return s;
}

}  // namespace lvx
