// Kernel-side arguments of one attention step (device pointers, sizes as int).
#pragma once

#include <cstdint>

namespace lvx::cuda {

struct FwdParams {
  const void* q;
  const void* k;
  const void* v;
  const int32_t* q_ranges;  // [B, Lq, 2] global KV intervals, or null
  long long kv_begin;
  int B, Lq, Lkv, Hq, Hkv, group;  // group = Hq / Hkv
  float scale_log2;                // scale · log2(e): softmax in base 2
  float* o;                        // running accumulator [B, Lq, Hq, D]
  float* lse;                      // [B, Hq, Lq]
  // Storage-dtype O [B, Lq, Hq, D], or null: the step is the whole sum (FwdStep::o_out):
  // o and the old lse are not read, normalized O goes here and the LSE to lse.
  void* o_out;
  // Split-KV: split s covers KV rows [s·split_len, (s+1)·split_len). With splits > 1
  // the kernel writes normalized partials here and fwd_combine merges them.
  int splits, split_len;
  float* o_part;    // [splits, B, Lq, Hq, D]
  float* lse_part;  // [splits, B, Hq, Lq]
};

struct BwdParams {
  const void* q;
  const void* k;
  const void* v;
  const void* dout;
  const float* lse;
  const float* dl;
  const int32_t* q_ranges;
  long long kv_begin;
  int B, Lq, Lkv, Hq, Hkv, group;
  float scale, scale_log2;
  float* dq;
  float* dk;
  float* dv;
  int kv_fresh;   // ignore the old dk/dv (BwdStep::kv_fresh)
  void* dk_out;   // storage-dtype destinations of the finished sums, or null
  void* dv_out;
  int max_blocks;        // sm_90a backward without q_ranges: at most this many persistent blocks (0: one per KV block)
  int force_persistent;  // ... even where KV blocks have many query tiles (tests: LVX_CUDA_BWD_BLOCKS)
  int kv_store_tma;      // sm_90a backward: dK/dV (fresh, to dk_out/dv_out) by TMA stores (set at launch)
};

// A query row's visible local KV interval [begin, end) within [0, Lkv).
__device__ __forceinline__ int2 local_interval(const int32_t* q_ranges, long long kv_begin, int Lkv,
                                               long long row) {
  if (!q_ranges) return make_int2(0, Lkv);
  int2 r = reinterpret_cast<const int2*>(q_ranges)[row];
  long long b = (long long)r.x - kv_begin, e = (long long)r.y - kv_begin;
  b = b < 0 ? 0 : (b > Lkv ? Lkv : b);
  e = e < 0 ? 0 : (e > Lkv ? Lkv : e);
  if (e < b) e = b;
  return make_int2((int)b, (int)e);
}

}  // namespace lvx::cuda
