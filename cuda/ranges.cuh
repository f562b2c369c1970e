// The front door's check of q_ranges in device memory (lvx::Backend::summarize_ranges).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace lvx::cuda {

// out[0] = smallest begin (LLONG_MAX without rows), out[1] = rows with begin > end,
// out[2] = largest end (at least 0), over `rows` [begin, end) pairs; issued on st.
void launch_summarize_ranges(const int32_t* ranges, long long rows, long long* out, cudaStream_t st);

}  // namespace lvx::cuda
