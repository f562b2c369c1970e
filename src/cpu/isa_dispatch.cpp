// Picks the kernel variant (attend_cpu.cpp built per x86-64 level) for this CPU
// at run time, and holds the pieces every variant shares (parallel.hpp).
#include <atomic>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <vector>

#include "cpu/attend_cpu.hpp"
#include "cpu/blas.hpp"
#include "cpu/fp_env.hpp"
#include "cpu/parallel.hpp"
#include "core/error.hpp"

#define LVX_DECLARE_VARIANT(ns)                                                                 \
  namespace lvx::cpu::ns {                                                                       \
  void attend_fwd_step(const FwdStep& a, ThreadPool& pool);                                      \
  void attend_bwd_step(const BwdStep& a, ThreadPool& pool);                                      \
  void row_dot(const RowDot& a, ThreadPool& pool);                                               \
  void merge_lse(const MergeLse& a, ThreadPool& pool);                                           \
  void convert(void* dst, DType dst_type, const void* src, DType src_type, size_t n, ThreadPool& pool); \
  }
#if LVX_CPU_HAVE_BASELINE
LVX_DECLARE_VARIANT(isa_baseline)
#endif
#if LVX_CPU_HAVE_AVX2
LVX_DECLARE_VARIANT(isa_avx2)
#endif
#if LVX_CPU_HAVE_AVX512
LVX_DECLARE_VARIANT(isa_avx512)
#endif
#if LVX_CPU_HAVE_AVX512BF16
LVX_DECLARE_VARIANT(isa_avx512bf16)
#endif

namespace lvx::cpu {

namespace {

struct Variant {
  const char* name;
  bool (*supported)();
  void (*fwd)(const FwdStep&, ThreadPool&);
  void (*bwd)(const BwdStep&, ThreadPool&);
  void (*row_dot)(const RowDot&, ThreadPool&);
  void (*merge_lse)(const MergeLse&, ThreadPool&);
  void (*convert)(void*, DType, const void*, DType, size_t, ThreadPool&);
};

#define LVX_VARIANT(name, ns, test) \
  Variant { name, test, ns::attend_fwd_step, ns::attend_bwd_step, ns::row_dot, ns::merge_lse, ns::convert}

#if LVX_CPU_HAVE_AVX2 || LVX_CPU_HAVE_AVX512
// The x86-64 psABI levels the variants are built for (-march=x86-64-v3 / -v4); the
// compiler's checks include the operating system's support for the register state.
bool has_x86_64_v3() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
         __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
}
bool has_x86_64_v4() {
  return has_x86_64_v3() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#endif
#if LVX_CPU_HAVE_AVX512BF16
bool has_avx512bf16() { return has_x86_64_v4() && __builtin_cpu_supports("avx512bf16"); }
#endif

bool always() { return true; }

// Best first.
const std::vector<Variant>& variants() {
  static const std::vector<Variant> v = {
#if LVX_CPU_HAVE_AVX512BF16
      // = avx512, plus AVX-512 BF16 products for bf16 inputs (gemm_bf16.hpp)
      LVX_VARIANT("avx512bf16", isa_avx512bf16, has_avx512bf16),
#endif
#if LVX_CPU_HAVE_AVX512
      LVX_VARIANT("avx512", isa_avx512, has_x86_64_v4),
#endif
#if LVX_CPU_HAVE_AVX2
      LVX_VARIANT("avx2", isa_avx2, has_x86_64_v3),
#endif
      LVX_VARIANT("baseline", isa_baseline, always),
  };
  return v;
}

const Variant* find_supported(const std::string& name) {
  for (const auto& v : variants())
    if (name == v.name && v.supported()) return &v;
  return nullptr;
}

const Variant* initial_variant() {
  if (const char* env = std::getenv("LVX_CPU_ISA"); env && *env) {
    if (const Variant* v = find_supported(env)) return v;
    std::string have;
    for (const auto& n : cpu_isas_available()) have += (have.empty() ? "" : ", ") + n;
    LVX_FAIL(Status::invalid_argument,
             std::string("LVX_CPU_ISA=") + env + " is not built or not supported by this CPU (available: " + have + ")");
  }
  for (const auto& v : variants())
    if (v.supported()) return &v;
  return &variants().back();
}

std::atomic<const Variant*>& current() {
  static std::atomic<const Variant*> v{initial_variant()};
  return v;
}

const Variant& active() { return *current().load(std::memory_order_relaxed); }

}  // namespace

void attend_fwd_step(const FwdStep& a, ThreadPool& pool) { active().fwd(a, pool); }
void attend_bwd_step(const BwdStep& a, ThreadPool& pool) { active().bwd(a, pool); }
void row_dot(const RowDot& a, ThreadPool& pool) { active().row_dot(a, pool); }
void merge_lse(const MergeLse& a, ThreadPool& pool) { active().merge_lse(a, pool); }
void convert(void* dst, DType dst_type, const void* src, DType src_type, size_t n, ThreadPool& pool) {
  active().convert(dst, dst_type, src, src_type, n, pool);
}

std::vector<std::string> cpu_isas_available() {
  std::vector<std::string> out;
  for (const auto& v : variants())
    if (v.supported()) out.emplace_back(v.name);
  return out;
}

std::string cpu_isa() { return active().name; }

bool set_cpu_isa(const std::string& name) {
  const Variant* v = find_supported(name);
  if (v) current().store(v);
  return v != nullptr;
}

std::string cpu_kernels_describe() { return cpu_isa() + " kernels, " + blas_describe(); }

int pool_workers(const ThreadPool& pool) { return pool.size(); }

void parallel_items(ThreadPool& pool, int64_t n, void (*fn)(void*, int64_t, int), void* ctx) {
  auto body = [fn, ctx](int64_t item, int worker) {
    FlushDenormals ftz;
    fn(ctx, item, worker);
  };
  // std::ref: the std::function holds a reference (no allocation per call).
  pool.parallel_for(n, std::ref(body));
}

float* thread_scratch(int slot, size_t n) {
  static thread_local std::vector<float> slots[kScratchSlots];
  std::vector<float>& v = slots[slot];
  if (v.size() < n) v.resize(n);
  return v.data();
}

uint32_t* thread_scratch_u32(int slot, size_t n) {
  static thread_local std::vector<uint32_t> slots[kScratchSlots];
  std::vector<uint32_t>& v = slots[slot];
  if (v.size() < n) v.resize(n);
  return v.data();
}

}  // namespace lvx::cpu
