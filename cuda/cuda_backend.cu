// lvx::Backend on one CUDA device: every method issues work on one stream and returns
// without waiting, except synchronize(), elapsed_s() and a set_stream() that changes
// the stream.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <utility>

#include <string>
#include <vector>

#include "attend_dispatch.hpp"
#include "split_kv.hpp"
#include "core/backend.hpp"
#include "cuda_check.hpp"
#include "dispatch.hpp"
#include "elementwise.cuh"
#include "gpu/gpu.hpp"
#include "ranges.cuh"

namespace lvx {
namespace {

using cuda::BwdParams;
using cuda::FwdParams;

constexpr float kLog2e = 1.4426950408889634f;

int checked_int(int64_t v, const char* what) {
  if (v < 0 || v > (int64_t)INT32_MAX) LVX_FAIL(Status::invalid_argument, std::string(what) + " out of range");
  return (int)v;
}

void check_shape(const StepShape& s) {
  LVX_REQUIRE(s.Hkv > 0 && s.Hq % s.Hkv == 0, "Hq must be a multiple of Hkv");
  checked_int(s.B * s.Lq * s.Hq, "B*Lq*Hq");
  checked_int(s.B * s.Lkv * s.Hkv, "B*Lkv*Hkv");
}

// The tensor-core kernels copy rows in 16-byte pieces (cp.async, TMA).
void require_aligned(std::initializer_list<std::pair<const void*, const char*>> ptrs) {
  for (const auto& [p, name] : ptrs)
    LVX_REQUIRE(reinterpret_cast<uintptr_t>(p) % 16 == 0,
                std::string(name) + " must be 16-byte aligned for the CUDA attention kernels");
}

// The head dims the sm_90a kernels run for, from LVX_CUDA_SM90 (see CudaBackend).
std::vector<int> sm90_head_dims(const char* env) {
  std::vector<int> all;
  for (int d : cuda::config::kHeadDims)
    if (cuda::config::sm90_fwd_built(d) || cuda::config::sm90_bwd_built(d)) all.push_back(d);
  const std::string v = env ? env : "";
  if (v.empty() || v == "1") return all;
  if (v == "0") return {};
  std::vector<int> dims;
  size_t pos = 0;
  while (pos <= v.size()) {
    const size_t end = std::min(v.find(',', pos), v.size());
    const std::string item = v.substr(pos, end - pos);
    char* stop = nullptr;
    const long d = std::strtol(item.c_str(), &stop, 10);
    if (item.empty() || *stop != '\0' || std::find(all.begin(), all.end(), (int)d) == all.end()) {
      std::string have;
      for (int a : all) have += (have.empty() ? "" : ",") + std::to_string(a);
      LVX_FAIL(Status::invalid_argument, "LVX_CUDA_SM90='" + v + "': expected 0, 1 or a comma-separated list of head dims from {" +
                                             have + "}");
    }
    dims.push_back((int)d);
    pos = end + 1;
  }
  return dims;
}

std::string built_head_dims() {
  std::string s;
  for (int d : cuda::config::kHeadDims) s += (s.empty() ? "" : ", ") + std::to_string(d);
  return s;
}

[[noreturn]] void unsupported_head_dim(int64_t D) {
  LVX_FAIL(Status::unsupported,
           "CUDA attention supports head dims " + built_head_dims() + ", got " + std::to_string(D));
}

// fn(T* tag, std::integral_constant<int, D>) for the step's storage type and head dim.
template <typename Fn>
void dispatch(DType dtype, int64_t D, Fn&& fn) {
  cuda::with_storage_type(dtype, [&](auto* tag) {
    if (!cuda::with_head_dim(D, [&](auto d) { fn(tag, d); })) unsupported_head_dim(D);
  });
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    int count = 0;
    LVX_CUDA_CHECK(cudaGetDeviceCount(&count));
    if (device < 0 || device >= count)
      LVX_FAIL(Status::invalid_argument, "CUDA device " + std::to_string(device) + " does not exist (" +
                                             std::to_string(count) + " visible)");
    LVX_CUDA_CHECK(cudaSetDevice(device));
    cudaDeviceProp prop{};
    LVX_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    name_ = prop.name;
    num_sms_ = prop.multiProcessorCount;
    cc_ = prop.major * 10 + prop.minor;
    if (cc_ < 80) LVX_FAIL(Status::unsupported, "CUDA backend needs compute capability 8.0+, device has " + std::to_string(cc_));
    // Hopper runs the sm_90a (wgmma) kernels where they exist (16-bit, the head dims of
    // the table's sm_90a rows). LVX_CUDA_SM90: unset or "1" for all of them, "0" for none
    // (the sm_80 mma.sync kernels, for comparison), or a comma-separated list of head dims
    // ("64,128") for those only.
    if (cc_ == 90) sm90_dims_ = sm90_head_dims(std::getenv("LVX_CUDA_SM90"));
    // The sm_90a backward without q_ranges is persistent where KV blocks have few query
    // tiles, one block per SM; LVX_CUDA_BWD_BLOCKS=n runs it persistent on n blocks at every
    // shape (tests use a few, so that each block walks many KV blocks).
    bwd_blocks_ = num_sms_;
    if (const char* env = std::getenv("LVX_CUDA_BWD_BLOCKS"); env && *env) {
      char* end = nullptr;
      const long n = std::strtol(env, &end, 10);
      LVX_REQUIRE(*end == '\0' && n > 0 && n <= (1L << 30),
                  std::string("LVX_CUDA_BWD_BLOCKS must be a positive integer, got '") + env + "'");
      bwd_blocks_ = (int)n;
      bwd_blocks_forced_ = 1;
    }
    LVX_CUDA_CHECK(cudaStreamCreateWithFlags(&own_stream_, cudaStreamNonBlocking));
    stream_ = own_stream_;
  }

  ~CudaBackend() override {
    cudaSetDevice(device_);
    if (workspace_) cudaFreeAsync(workspace_, stream_);
    cudaStreamSynchronize(stream_);
    if (summary_dev_) cudaFree(summary_dev_);
    if (summary_host_) cudaFreeHost(summary_host_);
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
    cudaStreamDestroy(own_stream_);
  }

  DeviceKind kind() const override { return DeviceKind::cuda; }
  std::string describe() const override {
    return "cuda:" + std::to_string(device_) + " (" + name_ + ", sm_" + std::to_string(cc_) + ", " +
           std::to_string(num_sms_) + " SMs" + sm90_describe() + ")";
  }

  void* allocate(size_t bytes) override {
    void* p = nullptr;
    if (bytes == 0) return nullptr;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      LVX_FAIL(Status::out_of_memory, "cudaMalloc of " + std::to_string(bytes) + " bytes failed on " + describe());
    }
    LVX_CUDA_CHECK(err);
    return p;
  }
  void release(void* p) override {
    if (p) LVX_CUDA_CHECK(cudaFree(p));
  }

  void fill(float* p, float value, size_t n) override { cuda::launch_fill(p, value, n, stream_); }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes) LVX_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
  }
  void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows) override {
    if (width && rows)
      LVX_CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows, cudaMemcpyDeviceToDevice, stream_));
  }
  void convert(void* dst, DType dst_type, const void* src, DType src_type, size_t n) override {
    if (dst_type == src_type) return copy(dst, src, n * dtype_size(src_type));
    cuda::launch_convert(dst, dst_type, src, src_type, n, stream_);
  }
  void add(float* dst, const float* src, size_t n) override { cuda::launch_add(dst, src, n, stream_); }

  std::string head_dim_error(int64_t D) const override {
    if (cuda::config::head_dim_built(D)) return "";
    return "head dim " + std::to_string(D) + " is not built for the CUDA backend (supported: " + built_head_dims() + ")";
  }

  // One reduction kernel and one 24-byte read: the host waits for the stream here.
  RangeSummary summarize_ranges(const int32_t* ranges, int64_t rows) override {
    if (!summary_dev_) {
      LVX_CUDA_CHECK(cudaMalloc(&summary_dev_, 3 * sizeof(long long)));
      LVX_CUDA_CHECK(cudaMallocHost(&summary_host_, 3 * sizeof(long long)));
    }
    cuda::launch_summarize_ranges(ranges, rows, summary_dev_, stream_);
    LVX_CUDA_CHECK(cudaMemcpyAsync(summary_host_, summary_dev_, 3 * sizeof(long long), cudaMemcpyDeviceToHost, stream_));
    LVX_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return RangeSummary{rows ? summary_host_[0] : 0, summary_host_[1], summary_host_[2]};
  }

  void attend_fwd_step(const FwdStep& a) override {
    const StepShape& s = a.s;
    check_shape(s);
    LVX_REQUIRE(!a.o_out || a.dtype != DType::f32, "attend_fwd_step: o_out is for 16-bit storage types");
    if (s.B == 0 || s.Lq == 0 || s.Hq == 0) return;
    if (s.Lkv == 0) {  // nothing visible: the accumulator stays; written outputs are O = 0, lse = -inf
      if (a.o_out) {
        const size_t n_lse = (size_t)(s.B * s.Hq * s.Lq);
        copy_zero(a.o_out, n_lse * s.D * dtype_size(a.dtype));
        fill(a.lse, -std::numeric_limits<float>::infinity(), n_lse);
      }
      return;
    }
    FwdParams p{};
    p.q = a.q; p.k = a.k; p.v = a.v; p.q_ranges = a.q_ranges; p.kv_begin = a.kv_begin;
    p.B = (int)s.B; p.Lq = (int)s.Lq; p.Lkv = (int)s.Lkv; p.Hq = (int)s.Hq; p.Hkv = (int)s.Hkv;
    p.group = (int)(s.Hq / s.Hkv);
    p.scale_log2 = a.scale * kLog2e;
    p.o = a.o; p.lse = a.lse; p.o_out = a.o_out;
    p.splits = 1; p.split_len = p.Lkv;
    if (a.dtype != DType::f32) {
      if (!cuda::config::head_dim_built(s.D)) unsupported_head_dim(s.D);
      require_aligned({{a.q, "q"}, {a.k, "k"}, {a.v, "v"}});
      const int D = (int)s.D;
      const cuda::FwdTile tile = cuda::fwd_tile(D, sm90_for(D));
      cuda::SplitPlan plan =
          cuda::plan_fwd_splits(p.B, p.Lq, p.Lkv, p.Hq, tile.block_m, tile.block_n, num_sms_, tile.blocks_per_sm);
      if (plan.splits > 1) {
        const size_t rows = (size_t)p.B * p.Lq * p.Hq;
        float* ws = workspace((size_t)plan.splits * rows * (D + 1) * sizeof(float));
        p.splits = plan.splits; p.split_len = plan.split_len;
        p.o_part = ws; p.lse_part = ws + (size_t)plan.splits * rows * D;
      }
    }
    dispatch(a.dtype, s.D, [&](auto* tag, auto d) {
      using T = std::remove_pointer_t<decltype(tag)>;
      cuda::launch_attend_fwd<T, decltype(d)::value>(p, stream_, sm90_for(decltype(d)::value));
    });
  }

  void attend_bwd_step(const BwdStep& a) override {
    const StepShape& s = a.s;
    check_shape(s);
    if (s.B == 0 || s.Lkv == 0 || s.Hkv == 0) return;
    if (s.Lq == 0 || s.Hq == 0) return finish_kv_without_queries(a);
    BwdParams p{};
    p.q = a.q; p.k = a.k; p.v = a.v; p.dout = a.dout; p.lse = a.lse; p.dl = a.dl;
    p.q_ranges = a.q_ranges; p.kv_begin = a.kv_begin;
    p.B = (int)s.B; p.Lq = (int)s.Lq; p.Lkv = (int)s.Lkv; p.Hq = (int)s.Hq; p.Hkv = (int)s.Hkv;
    p.group = (int)(s.Hq / s.Hkv);
    p.scale = a.scale; p.scale_log2 = a.scale * kLog2e;
    p.dq = a.dq; p.dk = a.dk; p.dv = a.dv;
    p.max_blocks = bwd_blocks_;
    p.force_persistent = bwd_blocks_forced_;
    const size_t n_kv = (size_t)s.B * s.Lkv * s.Hkv * s.D;
    if (a.dtype == DType::f32) {
      // The fp32 kernel adds with atomics and dk/dv are its outputs.
      LVX_REQUIRE(!a.dk_out && !a.dv_out, "attend_bwd_step: dk_out/dv_out need a 16-bit dtype");
      if (a.kv_fresh) {
        fill(a.dk, 0.f, n_kv);
        fill(a.dv, 0.f, n_kv);
      }
    } else {
      LVX_REQUIRE(!a.dk_out == !a.dv_out, "attend_bwd_step: dk_out and dv_out go together");
      require_aligned({{a.q, "q"}, {a.k, "k"}, {a.v, "v"}, {a.dout, "dout"}, {a.dq, "dq"}});
      p.kv_fresh = a.kv_fresh;
      p.dk_out = a.dk_out;
      p.dv_out = a.dv_out;
    }
    dispatch(a.dtype, s.D, [&](auto* tag, auto d) {
      using T = std::remove_pointer_t<decltype(tag)>;
      cuda::launch_attend_bwd<T, decltype(d)::value>(p, stream_, sm90_for(decltype(d)::value));
    });
  }

  // A step that sees no query still owes dK/dV its write modes.
  void finish_kv_without_queries(const BwdStep& a) {
    const size_t n = (size_t)a.s.B * a.s.Lkv * a.s.Hkv * a.s.D;
    if (a.dk_out) {
      if (a.kv_fresh) {
        copy_zero(a.dk_out, n * dtype_size(a.dtype));
        copy_zero(a.dv_out, n * dtype_size(a.dtype));
      } else {
        convert(a.dk_out, a.dtype, a.dk, DType::f32, n);
        convert(a.dv_out, a.dtype, a.dv, DType::f32, n);
      }
    } else if (a.kv_fresh) {
      fill(a.dk, 0.f, n);
      fill(a.dv, 0.f, n);
    }
  }
  void copy_zero(void* p, size_t bytes) { LVX_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_)); }

  void row_dot(const RowDot& a) override {
    cuda::launch_row_dot(a.dout, a.o, a.dtype, a.dl, a.B, a.L, a.H, a.D, stream_);
  }
  void merge_lse(const MergeLse& a) override {
    cuda::launch_merge_lse(a.o, a.lse, a.o_in, a.lse_in, a.B, a.L, a.H, a.D, stream_);
  }

  void synchronize() override { LVX_CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  void release_cached() override {
    if (!workspace_) return;
    LVX_CUDA_CHECK(cudaFreeAsync(workspace_, stream_));
    LVX_CUDA_CHECK(cudaStreamSynchronize(stream_));
    workspace_ = nullptr;
    workspace_bytes_ = 0;
  }
  void* stream() const override { return stream_; }
  // Null selects the backend's own stream (lvx.h). CUDA's legacy default stream is
  // cudaStreamLegacy (0x1): callers holding torch's default stream (handle 0) pass that.
  // Calls return without waiting for their work, and the buffers a context keeps
  // are reused by the next call: work still queued on the old stream finishes first.
  void set_stream(void* stream) override {
    cudaStream_t next = stream ? static_cast<cudaStream_t>(stream) : own_stream_;
    if (next != stream_) LVX_CUDA_CHECK(cudaStreamSynchronize(stream_));
    stream_ = next;
  }

  int mark() override {
    int id;
    if (!free_marks_.empty()) {
      id = free_marks_.back();
      free_marks_.pop_back();
    } else {
      cudaEvent_t e;
      LVX_CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
      id = (int)events_.size() - 1;
    }
    LVX_CUDA_CHECK(cudaEventRecord(events_[id], stream_));
    return id;
  }
  double elapsed_s(int from_mark, int to_mark) override {
    LVX_REQUIRE(from_mark >= 0 && to_mark >= 0 && (size_t)from_mark < events_.size() &&
                    (size_t)to_mark < events_.size(),
                "elapsed_s: unknown mark");
    LVX_CUDA_CHECK(cudaEventSynchronize(events_[to_mark]));
    float ms = 0.f;
    LVX_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[from_mark], events_[to_mark]));
    return ms * 1e-3;
  }
  void release_mark(int mark) override {
    if (mark >= 0 && (size_t)mark < events_.size()) free_marks_.push_back(mark);
  }

 private:
  // Split-KV partials; grows stream-ordered, so no host wait.
  float* workspace(size_t bytes) {
    if (bytes > workspace_bytes_) {
      if (workspace_) LVX_CUDA_CHECK(cudaFreeAsync(workspace_, stream_));
      workspace_ = nullptr;
      LVX_CUDA_CHECK(cudaMallocAsync(&workspace_, bytes, stream_));
      workspace_bytes_ = bytes;
    }
    return static_cast<float*>(workspace_);
  }

  int device_;
  std::string name_;
  int num_sms_ = 0, cc_ = 0, bwd_blocks_ = 0, bwd_blocks_forced_ = 0;
  std::vector<int> sm90_dims_;  // head dims that take the sm_90a kernels on this device
  bool sm90_for(int64_t D) const { return std::find(sm90_dims_.begin(), sm90_dims_.end(), (int)D) != sm90_dims_.end(); }
  std::string sm90_describe() const {
    std::string s;
    for (int d : sm90_dims_) s += (s.empty() ? ", wgmma kernels for D=" : ",") + std::to_string(d);
    return s;
  }
  cudaStream_t own_stream_ = nullptr, stream_ = nullptr;
  std::vector<cudaEvent_t> events_;
  std::vector<int> free_marks_;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  long long* summary_dev_ = nullptr;   // summarize_ranges: device result
  long long* summary_host_ = nullptr;  // and its pinned host copy
};

}  // namespace

std::unique_ptr<Backend> gpu::make_backend(int device) { return std::make_unique<CudaBackend>(device); }
bool gpu::built() { return true; }

}  // namespace lvx
