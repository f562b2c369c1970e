// Kernel interface shared by the CPU (src/cpu) and CUDA (cuda/) backends.
//
// Notation (DESIGN.md): Q, O, dO, dQ are [B, Lq, Hq, D]; K, V, dK, dV are
// [B, Lkv, Hkv, D]; LSE and Dl are [B, Hq, Lq]; all contiguous. Query head h
// reads KV head h / (Hq / Hkv). q_ranges [B, Lq, 2] int32 holds, per query row,
// the visible KV interval [begin, end) in global KV coordinates; this block's
// first KV row is global row kv_begin. A null q_ranges means every KV row is
// visible.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/types.hpp"

namespace lvx {

// Sizes of one step: a Q block of Lq rows against a KV block of Lkv rows.
struct StepShape {
  int64_t B = 0, Lq = 0, Lkv = 0, Hq = 0, Hkv = 0, D = 0;
};

// Forward step: S = scale·Q Kᵀ (masked), lse_b = logsumexp(S), O_b = softmax(S) V,
// merged in place into the running accumulator (o, lse):
//   lse' = logaddexp(lse, lse_b);  o' = o·exp(lse − lse') + O_b·exp(lse_b − lse').
// A fresh accumulator is o = 0, lse = -inf. Rows that see no key keep it.
struct FwdStep {
  StepShape s;
  DType dtype = DType::f32;  // storage type of q, k, v
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const int32_t* q_ranges = nullptr;
  int64_t kv_begin = 0;
  float scale = 1.f;
  float* o = nullptr;    // fp32 [B, Lq, Hq, D]
  float* lse = nullptr;  // fp32 [B, Hq, Lq]
  // o_out (storage dtype f16/bf16, [B, Lq, Hq, D]): the step is the whole sum (one step
  // over all of K/V). The old o and lse are ignored, o is not used; the normalized O goes
  // to o_out and the LSE to lse, rows that see no key getting O = 0 and lse = -inf (no
  // fill before and no conversion pass after).
  void* o_out = nullptr;
};

// Backward step, accumulating (+=) into fp32 dq, dk, dv:
//   P = exp(S − lse), dV += Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP − Dl),
//   dQ += scale·dS K, dK += scale·dSᵀ Q.
// lse is the final forward LSE of the rows; rows with lse = -inf contribute nothing.
struct BwdStep {
  StepShape s;
  DType dtype = DType::f32;  // storage type of q, k, v, dout
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* dout = nullptr;
  const float* lse = nullptr;  // [B, Hq, Lq]
  const float* dl = nullptr;   // [B, Hq, Lq]
  const int32_t* q_ranges = nullptr;
  int64_t kv_begin = 0;
  float scale = 1.f;
  float* dq = nullptr;  // fp32 [B, Lq, Hq, D]
  float* dk = nullptr;  // fp32 [B, Lkv, Hkv, D]
  float* dv = nullptr;  // fp32 [B, Lkv, Hkv, D]
  // How dK/dV are written. By default the step adds into dk/dv. kv_fresh: their old
  // contents are ignored (the first step of a sum; no fill needed). dk_out/dv_out
  // (storage dtype, [B, Lkv, Hkv, D]): the finished sums go there and dk/dv are left
  // alone (the last step of a sum; no conversion pass). Both: dk/dv are not used.
  bool kv_fresh = false;
  void* dk_out = nullptr;
  void* dv_out = nullptr;
};

// Dl[b, h, i] = Σ_d dO[b, i, h, d]·O[b, i, h, d], both in storage type `dtype`.
struct RowDot {
  int64_t B = 0, L = 0, H = 0, D = 0;
  DType dtype = DType::f32;
  const void* dout = nullptr;
  const void* o = nullptr;
  float* dl = nullptr;  // fp32 [B, H, L]
};

// (o, lse) ← merge((o, lse), (o_in, lse_in)); o [B, L, H, D], lse [B, H, L], fp32.
struct MergeLse {
  int64_t B = 0, L = 0, H = 0, D = 0;
  float* o = nullptr;
  float* lse = nullptr;
  const float* o_in = nullptr;
  const float* lse_in = nullptr;
};

}  // namespace lvx
