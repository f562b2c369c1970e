// The CBLAS calls of the CPU kernels. Which library is configured in
// CMakeLists.txt (LVX_BLAS); it picks its own kernels for the CPU at run time.
// Every call here runs single-threaded in the calling thread: the parallelism is
// lvxattn's pool (one BLAS call per tile per worker), so the cores are never
// oversubscribed.
#pragma once

#include <cstdint>
#include <string>

namespace lvx::cpu {

// C[M×N] = alpha·op(A)·op(B) + beta·C, row-major fp32; op(X) = Xᵀ when trans_x.
// op(A) is M×K with leading dimension lda, op(B) K×N with ldb, C M×N with ldc.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// The library, its version and the kernel set it chose for this CPU, in words.
std::string blas_describe();

}  // namespace lvx::cpu
