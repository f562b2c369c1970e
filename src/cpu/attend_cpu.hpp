// CPU implementations of the kernels in kernels.hpp, threaded over a pool.
// The elementwise code is built once per x86-64 level (baseline, AVX2, AVX-512;
// attend_cpu.cpp) and the best level this CPU supports runs (isa_dispatch.cpp);
// the tile products go to BLAS (blas.hpp) in every variant.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "core/kernels.hpp"
#include "cpu/thread_pool.hpp"

namespace lvx::cpu {

void attend_fwd_step(const FwdStep& a, ThreadPool& pool);
void attend_bwd_step(const BwdStep& a, ThreadPool& pool);
void row_dot(const RowDot& a, ThreadPool& pool);
void merge_lse(const MergeLse& a, ThreadPool& pool);
void convert(void* dst, DType dst_type, const void* src, DType src_type, size_t n, ThreadPool& pool);

// Kernel variants: "avx512bf16" (avx512 plus AVX-512 BF16 products for bf16 inputs),
// "avx512", "avx2", "baseline" (x86-64), or "baseline" alone elsewhere.
// The environment variable LVX_CPU_ISA picks one at start (an unknown or unsupported
// name is an error); set_cpu_isa switches later (false when not built or not supported).
std::vector<std::string> cpu_isas_available();  // built and supported here, best first
std::string cpu_isa();                           // the one that runs
bool set_cpu_isa(const std::string& name);
std::string cpu_kernels_describe();  // e.g. "avx512 kernels, OpenBLAS 0.3.34 ... [SkylakeX]"

}  // namespace lvx::cpu
