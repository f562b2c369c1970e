// extern "C" entry points over the CUDA backend for ctypes (experiments/bench_gpu_kernels.py):
// device pointers from tensor.data_ptr(), work issued on the caller's stream.
#include <cstdio>
#include <memory>

#include "core/backend.hpp"
#include "gpu/gpu.hpp"
#include "core/error.hpp"

namespace {
std::unique_ptr<lvx::Backend> g_backend;
lvx::Backend& backend(void* stream) {
  if (!g_backend) g_backend = lvx::gpu::make_backend(0);
  g_backend->set_stream(stream);
  return *g_backend;
}
template <typename Fn>
int guarded(Fn&& fn) {
  try {
    fn();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lvx shim: %s\n", e.what());
    return 1;
  }
}
}  // namespace

extern "C" {

int lvx_dev_fwd(void* stream, int dtype, long long B, long long Lq, long long Lkv, long long Hq, long long Hkv,
                long long D, const void* q, const void* k, const void* v, const int* q_ranges, long long kv_begin,
                float scale, float* o, float* lse) {
  return guarded([&] {
    lvx::FwdStep a;
    a.s = {B, Lq, Lkv, Hq, Hkv, D};
    a.dtype = static_cast<lvx::DType>(dtype);
    a.q = q; a.k = k; a.v = v; a.q_ranges = q_ranges; a.kv_begin = kv_begin; a.scale = scale; a.o = o; a.lse = lse;
    backend(stream).attend_fwd_step(a);
  });
}

int lvx_dev_bwd(void* stream, int dtype, long long B, long long Lq, long long Lkv, long long Hq, long long Hkv,
                long long D, const void* q, const void* k, const void* v, const void* dout, const float* lse,
                const float* dl, const int* q_ranges, long long kv_begin, float scale, float* dq, float* dk, float* dv) {
  return guarded([&] {
    lvx::BwdStep a;
    a.s = {B, Lq, Lkv, Hq, Hkv, D};
    a.dtype = static_cast<lvx::DType>(dtype);
    a.q = q; a.k = k; a.v = v; a.dout = dout; a.lse = lse; a.dl = dl; a.q_ranges = q_ranges; a.kv_begin = kv_begin;
    a.scale = scale; a.dq = dq; a.dk = dk; a.dv = dv;
    backend(stream).attend_bwd_step(a);
  });
}

int lvx_dev_row_dot(void* stream, int dtype, long long B, long long L, long long H, long long D, const void* dout,
                    const void* o, float* dl) {
  return guarded([&] {
    lvx::RowDot a;
    a.B = B; a.L = L; a.H = H; a.D = D; a.dtype = static_cast<lvx::DType>(dtype); a.dout = dout; a.o = o; a.dl = dl;
    backend(stream).row_dot(a);
  });
}

int lvx_dev_fill(void* stream, float* p, float value, long long n) {
  return guarded([&] { backend(stream).fill(p, value, (size_t)n); });
}

}  // extern "C"
