// The CPU backend: host memory, kernels on a thread pool, wall-clock marks.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "core/backend.hpp"
#include "cpu/attend_cpu.hpp"
#include "core/error.hpp"

namespace lvx {

namespace {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : pool_(threads) {}

  DeviceKind kind() const override { return DeviceKind::cpu; }
  std::string describe() const override {
    return "cpu (" + std::to_string(pool_.size()) + " threads; " + cpu::cpu_kernels_describe() + ")";
  }

  void* allocate(size_t bytes) override {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    if (!p) LVX_FAIL(Status::out_of_memory, "cannot allocate " + std::to_string(bytes) + " bytes");
    return p;
  }
  void release(void* p) override { std::free(p); }

  void fill(float* p, float value, size_t n) override {
    for (size_t i = 0; i < n; ++i) p[i] = value;
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
               size_t rows) override {
    auto* d = static_cast<char*>(dst);
    auto* s = static_cast<const char*>(src);
    for (size_t r = 0; r < rows; ++r) std::memcpy(d + r * dst_pitch, s + r * src_pitch, width);
  }
  void convert(void* dst, DType dst_type, const void* src, DType src_type, size_t n) override {
    cpu::convert(dst, dst_type, src, src_type, n, pool_);
  }
  void add(float* dst, const float* src, size_t n) override {
    for (size_t i = 0; i < n; ++i) dst[i] += src[i];
  }

  // The write mode of O (FwdStep::o_out) around the accumulating kernel.
  void attend_fwd_step(const FwdStep& a) override {
    if (!a.o_out) return cpu::attend_fwd_step(a, pool_);
    const size_t n_o = static_cast<size_t>(a.s.B * a.s.Lq * a.s.Hq * a.s.D);
    const size_t n_lse = static_cast<size_t>(a.s.B * a.s.Hq * a.s.Lq);
    FwdStep st = a;
    st.o_out = nullptr;
    scratch_o_.assign(n_o, 0.f);
    st.o = scratch_o_.data();
    std::fill(a.lse, a.lse + n_lse, -std::numeric_limits<float>::infinity());
    cpu::attend_fwd_step(st, pool_);
    convert(a.o_out, a.dtype, st.o, DType::f32, n_o);
  }
  // The write modes of dK/dV (BwdStep) around the accumulating kernel.
  void attend_bwd_step(const BwdStep& a) override {
    const size_t n = static_cast<size_t>(a.s.B * a.s.Lkv * a.s.Hkv * a.s.D);
    BwdStep st = a;
    if (a.dk_out && a.kv_fresh) {  // the fp32 sums are not kept: sum in scratch
      scratch_.resize(2 * n);
      st.dk = scratch_.data();
      st.dv = scratch_.data() + n;
    }
    if (a.kv_fresh) {
      std::fill(st.dk, st.dk + n, 0.f);
      std::fill(st.dv, st.dv + n, 0.f);
    }
    cpu::attend_bwd_step(st, pool_);
    if (a.dk_out) {
      convert(a.dk_out, a.dtype, st.dk, DType::f32, n);
      convert(a.dv_out, a.dtype, st.dv, DType::f32, n);
    }
  }
  void row_dot(const RowDot& a) override { cpu::row_dot(a, pool_); }
  void merge_lse(const MergeLse& a) override { cpu::merge_lse(a, pool_); }

  void synchronize() override {}

  int mark() override {
    int id;
    if (!free_marks_.empty()) {
      id = free_marks_.back();
      free_marks_.pop_back();
    } else {
      id = static_cast<int>(marks_.size());
      marks_.emplace_back();
    }
    marks_[id] = std::chrono::steady_clock::now();
    return id;
  }
  double elapsed_s(int from, int to) override {
    return std::chrono::duration<double>(marks_.at(to) - marks_.at(from)).count();
  }
  void release_mark(int mark) override {
    if (mark >= 0 && static_cast<size_t>(mark) < marks_.size()) free_marks_.push_back(mark);
  }

 private:
  ThreadPool pool_;
  std::vector<std::chrono::steady_clock::time_point> marks_;
  std::vector<int> free_marks_;
  std::vector<float> scratch_;
  std::vector<float> scratch_o_;  // attend_fwd_step's fp32 O when it writes o_out
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  return std::make_unique<CpuBackend>(threads < 1 ? 1 : threads);
}

}  // namespace lvx
