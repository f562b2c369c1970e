// CPU implementations of the kernels in kernels.hpp, threaded over a pool.
#pragma once

#include <cstddef>

#include "core/kernels.hpp"
#include "cpu/thread_pool.hpp"

namespace lvx::cpu {

void attend_fwd_step(const FwdStep& a, ThreadPool& pool);
void attend_bwd_step(const BwdStep& a, ThreadPool& pool);
void row_dot(const RowDot& a, ThreadPool& pool);
void merge_lse(const MergeLse& a, ThreadPool& pool);
void convert(void* dst, DType dst_type, const void* src, DType src_type, size_t n, ThreadPool& pool);

}  // namespace lvx::cpu
