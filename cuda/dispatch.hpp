// Run-time storage types and head dims as template arguments: DType -> float, __half or
// __nv_bfloat16, and a head dim of the table (attend_config.hpp) -> a constant.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "attend_config.hpp"
#include "core/kernels.hpp"

namespace lvx::cuda {

// fn(T* tag) with T the storage type of t.
template <typename Fn>
void with_storage_type(DType t, Fn&& fn) {
  switch (t) {
    case DType::f32: return fn(static_cast<float*>(nullptr));
    case DType::f16: return fn(static_cast<__half*>(nullptr));
    case DType::bf16: return fn(static_cast<__nv_bfloat16*>(nullptr));
  }
}

// fn(std::integral_constant<int, D>) when D is one of the table's head dims; false otherwise.
template <typename Fn, size_t... I>
bool with_head_dim_of(int64_t D, Fn&& fn, std::index_sequence<I...>) {
  return ((D == config::kHeadDims[I] ? (fn(std::integral_constant<int, config::kHeadDims[I]>{}), true) : false) || ...);
}
template <typename Fn>
bool with_head_dim(int64_t D, Fn&& fn) {
  return with_head_dim_of(D, fn, std::make_index_sequence<std::size(config::kHeadDims)>{});
}

}  // namespace lvx::cuda
