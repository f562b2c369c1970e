// CBLAS behind blas.hpp. scipy-openblas32 (PyPI) prefixes every symbol with
// scipy_ (LVX_BLAS_PREFIX); a system CBLAS has no prefix.
#include "cpu/blas.hpp"

#include <cblas.h>

#include <mutex>

#define LVX_CAT2(a, b) a##b
#define LVX_CAT(a, b) LVX_CAT2(a, b)
#define LVX_BLAS(name) LVX_CAT(LVX_BLAS_PREFIX, name)

#if LVX_BLAS_OPENBLAS
extern "C" {
void LVX_BLAS(openblas_set_num_threads)(int);
char* LVX_BLAS(openblas_get_config)(void);
char* LVX_BLAS(openblas_get_corename)(void);
}
#endif

namespace lvx::cpu {

namespace {

// OpenBLAS keeps one process-wide thread count: set it to 1 once. The library
// copy of scipy-openblas32 is lvxattn's own (NumPy and SciPy wheels ship theirs
// under other names), so no other user of it is affected. Other CBLAS libraries
// take their thread count from their own environment variables
// (MKL_NUM_THREADS=1, BLIS_NUM_THREADS=1).
void single_threaded_once() {
#if LVX_BLAS_OPENBLAS
  static std::once_flag once;
  std::call_once(once, [] { LVX_BLAS(openblas_set_num_threads)(1); });
#endif
}

}  // namespace

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // C = beta·C (BLAS does this too, but not all of them read beta = 0 as "ignore C")
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) c[i * ldc + j] = beta == 0.f ? 0.f : beta * c[i * ldc + j];
    return;
  }
  single_threaded_once();
  LVX_BLAS(cblas_sgemm)(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                        static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, a, static_cast<int>(lda),
                        b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

std::string blas_describe() {
#if LVX_BLAS_OPENBLAS
  std::string cfg = LVX_BLAS(openblas_get_config)();
  while (!cfg.empty() && cfg.back() == ' ') cfg.pop_back();
  return cfg + " [" + LVX_BLAS(openblas_get_corename)() + "]";
#else
  return "CBLAS";
#endif
}

}  // namespace lvx::cpu
