#include "core/types.hpp"

#include <utility>

#include "core/error.hpp"
#include "lvx/lvx.h"

namespace lvx {

// The C API's values are the library's (lvx.h is the one home of the codes).
static_assert(int(DType::f32) == LVX_FLOAT32 && int(DType::f16) == LVX_FLOAT16 && int(DType::bf16) == LVX_BFLOAT16);
static_assert(int(Algorithm::lvx) == LVX_ALGO_LVX && int(Algorithm::ring) == LVX_ALGO_RING &&
              int(Algorithm::ulysses) == LVX_ALGO_ULYSSES && int(Algorithm::automatic) == LVX_ALGO_AUTO);
static_assert(int(DeviceKind::cpu) == LVX_DEVICE_CPU && int(DeviceKind::cuda) == LVX_DEVICE_CUDA);
static_assert(int(TransportKind::automatic) == LVX_TRANSPORT_AUTO && int(TransportKind::mpi) == LVX_TRANSPORT_MPI &&
              int(TransportKind::nccl) == LVX_TRANSPORT_NCCL && int(TransportKind::mpi_staged) == LVX_TRANSPORT_MPI_STAGED &&
              int(TransportKind::mpi_direct) == LVX_TRANSPORT_MPI_DIRECT && int(TransportKind::none) == LVX_TRANSPORT_NONE);

namespace {

template <typename E>
using Names = std::pair<E, const char*>;

constexpr Names<DType> kDTypes[] = {{DType::f32, "float32"}, {DType::f16, "float16"}, {DType::bf16, "bfloat16"}};
constexpr Names<Algorithm> kAlgorithms[] = {
    {Algorithm::lvx, "lvx"}, {Algorithm::ring, "ring"}, {Algorithm::ulysses, "ulysses"}, {Algorithm::automatic, "auto"}};
constexpr Names<DeviceKind> kDevices[] = {{DeviceKind::cpu, "cpu"}, {DeviceKind::cuda, "cuda"}};
constexpr Names<TransportKind> kTransports[] = {{TransportKind::automatic, "auto"},       {TransportKind::mpi, "mpi"},
                                            {TransportKind::nccl, "nccl"},            {TransportKind::mpi_staged, "mpi-staged"},
                                            {TransportKind::mpi_direct, "mpi-direct"}, {TransportKind::none, "none"}};
constexpr size_t kTransportsAsked = 5;  // the first five: what a caller may ask for (not none)

template <typename E, size_t N>
const char* name_in(const Names<E> (&table)[N], E v) {
  for (const auto& [value, text] : table)
    if (value == v) return text;
  return "unknown";
}

template <typename E, size_t N>
bool has_value(const Names<E> (&table)[N], E v) {
  for (const auto& [value, text] : table)
    if (value == v) return true;
  return false;
}

template <typename E, size_t N>
E parse_in(const Names<E> (&table)[N], const char* what, const std::string& s, size_t n = N) {
  std::string choices;
  for (size_t i = 0; i < n; ++i) {
    if (s == table[i].second) return table[i].first;
    choices += std::string(i ? ", '" : "'") + table[i].second + "'";
  }
  LVX_FAIL(Status::invalid_argument, std::string(what) + " must be one of " + choices + ", got '" + s + "'");
}

}  // namespace

const char* name(DType v) { return name_in(kDTypes, v); }
const char* name(Algorithm v) { return name_in(kAlgorithms, v); }
const char* name(DeviceKind v) { return name_in(kDevices, v); }
const char* name(TransportKind v) { return name_in(kTransports, v); }

bool is_valid(DType v) { return has_value(kDTypes, v); }
bool is_valid(Algorithm v) { return has_value(kAlgorithms, v); }
bool is_valid(DeviceKind v) { return has_value(kDevices, v); }
bool is_valid(TransportKind v) { return has_value(kTransports, v); }

DType parse_dtype(const std::string& s) { return parse_in(kDTypes, "dtype", s); }
Algorithm parse_algorithm(const std::string& s) { return parse_in(kAlgorithms, "algorithm", s); }
DeviceKind parse_device(const std::string& s) { return parse_in(kDevices, "device", s); }
TransportKind parse_transport(const std::string& s) { return parse_in(kTransports, "transport", s, kTransportsAsked); }

}  // namespace lvx
