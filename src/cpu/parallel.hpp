// What the per-ISA kernels (attend_cpu.cpp) take from code compiled once
// (isa_dispatch.cpp): the pool loop and per-thread scratch. Both are plain
// functions so the variants share no template code (see isa.hpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/thread_pool.hpp"

namespace lvx::cpu {

// The pool's thread count (pool.size(), compiled once: see isa.hpp).
int pool_workers(const ThreadPool& pool);

// Runs fn(ctx, item, worker) for item in [0, n) on the pool, each item with
// denormals flushed to zero in its thread (fp_env.hpp); the caller's mode is kept.
void parallel_items(ThreadPool& pool, int64_t n, void (*fn)(void*, int64_t, int), void* ctx);

// A float buffer of at least n elements owned by the calling thread, slot 0..kScratchSlots-1;
// grown on demand and kept, so steady-state calls allocate nothing.
constexpr int kScratchSlots = 16;
float* thread_scratch(int slot, size_t n);
uint32_t* thread_scratch_u32(int slot, size_t n);  // the same for bf16 pairs

}  // namespace lvx::cpu
