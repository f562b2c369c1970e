// A backend runs kernels and moves memory on one device (the CPU or one GPU).
// Schedules are written against this interface only. Work is ordered as it is
// issued (a CUDA backend issues everything on one stream); `synchronize` waits
// for all of it.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "core/kernels.hpp"

namespace lvx {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual DeviceKind kind() const = 0;
  virtual std::string describe() const = 0;

  // Memory that kernels of this backend can read and write.
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* p) = 0;

  virtual void fill(float* p, float value, size_t n) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  // rows × width bytes between pitched buffers (packing for all-to-all).
  virtual void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
                       size_t width, size_t rows) = 0;
  virtual void convert(void* dst, DType dst_type, const void* src, DType src_type, size_t n) = 0;
  virtual void add(float* dst, const float* src, size_t n) = 0;  // dst += src

  // Why this backend cannot run head dim D, or "" (the CUDA kernels are built for a few).
  virtual std::string head_dim_error(int64_t /*D*/) const { return ""; }

  // Over `rows` q_ranges rows [begin, end) in this backend's memory: the smallest begin,
  // the rows with begin > end and the largest end (0 when larger ones are absent), with
  // one host read (the front door's check, validate.hpp). Host memory by default.
  struct RangeSummary {
    int64_t min_begin = 0, reversed_rows = 0, max_end = 0;
  };
  virtual RangeSummary summarize_ranges(const int32_t* ranges, int64_t rows);

  virtual void attend_fwd_step(const FwdStep& a) = 0;
  virtual void attend_bwd_step(const BwdStep& a) = 0;
  virtual void row_dot(const RowDot& a) = 0;
  virtual void merge_lse(const MergeLse& a) = 0;

  virtual void synchronize() = 0;
  // Frees memory the backend keeps between calls (after finishing its work).
  virtual void release_cached() {}
  // The CUDA stream work is issued on (cudaStream_t), or null for the CPU.
  virtual void* stream() const { return nullptr; }
  virtual void set_stream(void* /*stream*/) {}

  // Timing marks, in issue order. elapsed_s() may wait for the later mark; a
  // mark stays valid until released, so timings can be read long after the work.
  virtual int mark() = 0;
  virtual double elapsed_s(int from_mark, int to_mark) = 0;
  virtual void release_mark(int mark) = 0;
};

std::unique_ptr<Backend> make_cpu_backend(int threads);

}  // namespace lvx
