// The library's enumerations, each with one table of names (messages, Python) and the
// values of the C API (lvx.h; types.cpp checks them at compile time), so that a value
// crosses the C and Python boundaries unchanged.
#pragma once

#include <cstdint>
#include <string>

namespace lvx {

enum class DType : int32_t { f32 = 0, f16 = 1, bf16 = 2 };
enum class Algorithm : int32_t { lvx = 0, ring = 1, ulysses = 2, automatic = 3 };
enum class DeviceKind : int32_t { cpu = 0, cuda = 1 };
// What moves the data between ranks. A caller asks for automatic, mpi (the best MPI path),
// nccl, mpi_staged or mpi_direct; a plan holds the path that runs: none (one rank), mpi
// (host buffers), mpi_staged (device buffers through pinned host memory), mpi_direct
// (device buffers handed to a CUDA-aware MPI) or nccl.
enum class TransportKind : int32_t { automatic = 0, mpi = 1, nccl = 2, mpi_staged = 3, mpi_direct = 4, none = 5 };

inline size_t dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }

// One name per value: "float32", "lvx", "cuda", "mpi-staged", ...
const char* name(DType v);
const char* name(Algorithm v);
const char* name(DeviceKind v);
const char* name(TransportKind v);

// Whether v is one of the enumeration's values (a C caller may pass any integer).
bool is_valid(DType v);
bool is_valid(Algorithm v);
bool is_valid(DeviceKind v);
bool is_valid(TransportKind v);

// By name, or an "invalid argument" error naming the choices ("algorithm must be one of
// 'lvx', 'ring', 'ulysses', 'auto', got 'flash'"). parse_transport accepts what a caller
// may ask for: auto, mpi, nccl, mpi-staged, mpi-direct.
DType parse_dtype(const std::string& s);
Algorithm parse_algorithm(const std::string& s);
DeviceKind parse_device(const std::string& s);
TransportKind parse_transport(const std::string& s);

}  // namespace lvx
