// The device buffers of the collective probe of CUDA-aware MPI (gpu/transports.hpp): the
// probe itself (transport/mpi_device_support.cpp) is MPI only; this file is its CUDA part.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "core/error.hpp"
#include "cuda_check.hpp"
#include "gpu/transports.hpp"

namespace lvx {

namespace {

// Byte j of rank r's pattern: differs between neighbours and along the buffer.
unsigned char pattern(size_t j, int rank) { return static_cast<unsigned char>(j * 131 + rank * 29 + 7); }

class CudaProbeBuffers final : public gpu::ProbeBuffers {
 public:
  CudaProbeBuffers(int device, const std::vector<size_t>& bytes) : device_(device), bytes_(bytes) {}
  // Apart from the constructor, so that a failure frees what was made.
  void fill(int rank) {
    LVX_CUDA_CHECK(cudaSetDevice(device_));
    LVX_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    for (size_t n : bytes_) {
      std::vector<unsigned char> host(n);
      for (size_t j = 0; j < n; ++j) host[j] = pattern(j, rank);
      void *s = nullptr, *r = nullptr;
      LVX_CUDA_CHECK(cudaMalloc(&s, n));
      send_.push_back(s);
      LVX_CUDA_CHECK(cudaMalloc(&r, n));
      recv_.push_back(r);
      LVX_CUDA_CHECK(cudaMemcpyAsync(s, host.data(), n, cudaMemcpyHostToDevice, stream_));
      LVX_CUDA_CHECK(cudaMemsetAsync(r, 0, n, stream_));
      LVX_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the pattern is in place before MPI sees it
    }
  }
  ~CudaProbeBuffers() override {
    cudaSetDevice(device_);
    for (void* p : send_) cudaFree(p);
    for (void* p : recv_) cudaFree(p);
    if (stream_) cudaStreamDestroy(stream_);
  }
  void* send(size_t i) override { return send_.at(i); }
  void* recv(size_t i) override { return recv_.at(i); }
  bool holds_pattern(size_t i, int from) override {
    std::vector<unsigned char> host(bytes_.at(i));
    LVX_CUDA_CHECK(cudaSetDevice(device_));
    LVX_CUDA_CHECK(cudaMemcpyAsync(host.data(), recv_[i], host.size(), cudaMemcpyDeviceToHost, stream_));
    LVX_CUDA_CHECK(cudaStreamSynchronize(stream_));
    for (size_t j = 0; j < host.size(); ++j)
      if (host[j] != pattern(j, from)) return false;
    return true;
  }

 private:
  int device_;
  std::vector<size_t> bytes_;
  std::vector<void*> send_, recv_;
  cudaStream_t stream_ = nullptr;
};

}  // namespace

std::unique_ptr<gpu::ProbeBuffers> gpu::make_probe_buffers(int device, const std::vector<size_t>& bytes, int rank) {
  LVX_REQUIRE(device >= 0, "the MPI probe needs a CUDA device index");
  auto bufs = std::make_unique<CudaProbeBuffers>(device, bytes);
  bufs->fill(rank);
  return bufs;
}

}  // namespace lvx
