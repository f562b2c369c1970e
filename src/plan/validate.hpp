// The front door's one check of a rank's call, shared by the C API and the Python
// bindings (both reach it through Context::plan). Python adds only what only Python can
// check (tensor types, devices and layouts); the C API only its buffer pointers.
#pragma once

#include <cstdint>
#include <string>

#include "core/backend.hpp"
#include "plan/planner.hpp"

namespace lvx {

// A rank's call as a caller describes it.
struct Problem {
  int64_t B = 0, Lq = 0, Lkv = 0, Hq = 0, Hkv = 0, D = 0;  // Lq, Lkv: this rank's rows
  DType dtype = DType::f32;
  Algorithm algorithm = Algorithm::lvx;
  float scale = 0.f;                 // NaN: 1/sqrt(D)
  const int32_t* q_ranges = nullptr; // [B, Lq, 2] in the backend's memory; null: no mask
};

// Largest head dim any backend takes.
constexpr int64_t kMaxHeadDim = 256;

// "" or what is wrong with the call; fills *out (scale resolved, q_ranges summarized with
// one host read through the backend, so device ranges are checked like host ones). Never
// throws: a rank with bad input still joins the plan's allgather and every rank fails.
std::string validate(const Problem& call, Backend& backend, LocalProblem* out);

}  // namespace lvx
