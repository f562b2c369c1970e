// Pieces shared by the forward kernels (mma.sync and sm_90a wgmma). Both hold, per
// thread, two query rows (g and g + 8 of a 16-row slab) in mma.sync's C layout:
// s[n8 block][4] for the scores of a KV tile, acc[D / 8][4] for the output rows.
#pragma once

#include <climits>

#include "attend_params.cuh"
#include "mma.cuh"

namespace lvx::cuda {

// KV rows seen by any row of a query tile [lo, hi), and by every row [full_lo, full_hi),
// clipped to the block's split. `shared4` is four ints of shared memory.
struct KvRange {
  int lo, hi, full_lo, full_hi;
};
template <int BM, int NT>
__device__ __forceinline__ KvRange fwd_kv_range(const FwdParams& p, int m0, int b, int split, int* shared4) {
  const int tid = threadIdx.x, Lkv = p.Lkv;
  KvRange r{0, Lkv, 0, Lkv};
  if (p.q_ranges) {
    if (tid == 0) { shared4[0] = INT_MAX; shared4[1] = 0; shared4[2] = 0; shared4[3] = INT_MAX; }
    __syncthreads();
    for (int i = tid; i < BM; i += NT) {
      if (m0 + i >= p.Lq) continue;
      int2 iv = local_interval(p.q_ranges, p.kv_begin, Lkv, (long long)b * p.Lq + m0 + i);
      if (iv.y > iv.x) { atomicMin(&shared4[0], iv.x); atomicMax(&shared4[1], iv.y); }
      atomicMax(&shared4[2], iv.x);
      atomicMin(&shared4[3], iv.y);
    }
    __syncthreads();
    r = KvRange{shared4[0], shared4[1], shared4[2], shared4[3]};
    if (r.lo >= r.hi) r.lo = r.hi = 0;
  }
  const int split_lo = split * p.split_len, split_hi = min(Lkv, split_lo + p.split_len);
  r.lo = max(r.lo, split_lo);
  r.hi = min(r.hi, split_hi);
  return r;
}

// This thread's two rows and their visible intervals.
__device__ __forceinline__ void fwd_row_intervals(const FwdParams& p, int b, int row0, int2 (&iv)[2]) {
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    const int row = row0 + ri * 8;
    iv[ri] = row < p.Lq ? local_interval(p.q_ranges, p.kv_begin, p.Lkv, (long long)b * p.Lq + row) : make_int2(0, 0);
  }
}

// How far (in base-2 exponent) a row's max may grow before the accumulators are
// rescaled: probabilities then reach at most 2^8 = 256, far inside fp32, bf16 and fp16
// (the final O = acc / l and LSE = m + log2 l use the same m, so the result is exact
// up to rounding whatever m is). Skipping the rescale skips D/2 multiplies per thread
// and two exp2 per tile; long KV sequences settle their max within a few tiles.
constexpr float kFwdRescaleSlack = 8.f;

// One KV tile of the online softmax in base 2: scales and masks the scores in s,
// turns them into probabilities and updates the running row max and sum; alpha is
// the factor the row's output accumulated so far must be scaled by, and the result says
// whether any row of the warp has a factor other than 1 (warp-uniform; a row keeps its
// max, alpha 1, until it grows by more than kFwdRescaleSlack). The running max
// mrow is kept in the scaled domain. A tile every row sees whole (no mask) takes the
// max of the raw scores (the min where scale < 0: the same element wins, since rounding
// is monotonic) and forms each probability with one FFMA, exp2(s·c − m), instead of a
// multiply then a subtract: one instruction less per score where the D = 64 forward is
// instruction-bound. A masked tile scales first, as the hidden scores are set in the
// scaled domain (−inf stays −inf, also when scale is 0), and so does scale 0 (0·inf is
// NaN, which the max skips, as before).
template <int BN>
__device__ __forceinline__ bool fwd_softmax_tile(float (&s)[BN / 8][4], float (&mrow)[2], float (&lrow)[2],
                                                 float (&alpha)[2], float scale_log2, bool need_mask, int n0,
                                                 int hi, const int2 (&iv)[2], int t) {
  float c = scale_log2;  // the factor the exponent applies to s (1 once s is scaled)
  if (need_mask || scale_log2 == 0.f) {  // scale 0: 0·inf must be NaN before the max, as it was
#pragma unroll
    for (int nb = 0; nb < BN / 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[nb][e] * scale_log2;
        if (need_mask) {
          const int col = n0 + nb * 8 + 2 * t + (e & 1);
          const int2 r = iv[e >> 1];
          if (col < r.x || col >= r.y || col >= hi) x = -INFINITY;
        }
        s[nb][e] = x;
      }
    c = 1.f;
  }
  // Per row, not per warp: the exponentials of a row wait for its own max only, so that
  // they can run beside the P·V in flight (a decision over both rows made every
  // exponential wait for both maxima, and ptxas then placed the P·V wait before them).
  bool rescale = false;
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    float mx;
    if (c >= 0.f) {
      mx = -INFINITY;
#pragma unroll
      for (int nb = 0; nb < BN / 8; ++nb) mx = fmaxf(mx, fmaxf(s[nb][2 * ri], s[nb][2 * ri + 1]));
      mx = quad_max(mx);
    } else {
      mx = INFINITY;
#pragma unroll
      for (int nb = 0; nb < BN / 8; ++nb) mx = fminf(mx, fminf(s[nb][2 * ri], s[nb][2 * ri + 1]));
      mx = -quad_max(-mx);
    }
    mx *= c;  // the tile's max in the scaled domain
    const float m_new = fmaxf(mrow[ri], mx);
    const bool grows = m_new > mrow[ri] + kFwdRescaleSlack;
    const float m_next = grows ? m_new : mrow[ri];
    const float m_use = m_next == -INFINITY ? 0.f : m_next;
    alpha[ri] = grows ? exp2f(mrow[ri] - m_use) : 1.f;
    mrow[ri] = m_next;
    rescale = rescale || grows;
    float sum = 0.f;
#pragma unroll
    for (int nb = 0; nb < BN / 8; ++nb) {
      const float p0 = exp2f(fmaf(s[nb][2 * ri], c, -m_use)), p1 = exp2f(fmaf(s[nb][2 * ri + 1], c, -m_use));
      s[nb][2 * ri] = p0;
      s[nb][2 * ri + 1] = p1;
      sum += p0 + p1;
    }
    lrow[ri] = lrow[ri] * alpha[ri] + sum;
  }
  // One decision per warp whether any of its rows' accumulators need the factor (each
  // thread's rows are its own; alpha is 1 for the others).
  rescale = __any_sync(0xffffffffu, rescale);
  return rescale;
}

template <int D>
__device__ __forceinline__ void fwd_rescale(float (&acc)[D / 8][4], const float (&alpha)[2]) {
#pragma unroll
  for (int db = 0; db < D / 8; ++db)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[db][e] *= alpha[e >> 1];
}

template <int BN, int D>
__device__ __forceinline__ void fwd_online_softmax(float (&s)[BN / 8][4], float (&acc)[D / 8][4], float (&mrow)[2],
                                                   float (&lrow)[2], float scale_log2, bool need_mask, int n0,
                                                   int hi, const int2 (&iv)[2], int t) {
  float alpha[2];
  if (fwd_softmax_tile<BN>(s, mrow, lrow, alpha, scale_log2, need_mask, n0, hi, iv, t)) fwd_rescale<D>(acc, alpha);
}

// The probabilities of KV columns 16·kk .. 16·kk + 15 as an m16k16 A fragment.
template <typename T, int NB>
__device__ __forceinline__ void probs_fragment(const float (&s)[NB][4], int kk, uint32_t (&pa)[4]) {
  pa[0] = Pack2<T>::from(s[2 * kk][0], s[2 * kk][1]);
  pa[1] = Pack2<T>::from(s[2 * kk][2], s[2 * kk][3]);
  pa[2] = Pack2<T>::from(s[2 * kk + 1][0], s[2 * kk + 1][1]);
  pa[3] = Pack2<T>::from(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

// Normalizes the tile's rows, then merges them into the running accumulator:
//   lse' = logaddexp(lse, lse_b), o' = o·e^(lse−lse') + O_b·e^(lse_b−lse');
// with split-KV, writes the normalized partial (O_b, lse_b) of the block's slice; with
// o_out (the whole sum in one step, no split), writes O_b in the storage dtype T there
// and lse_b to lse (a row that saw nothing: 0 and -inf).
template <typename T, int D>
__device__ __forceinline__ void fwd_epilogue(const FwdParams& p, const float (&acc)[D / 8][4], const float (&mrow)[2],
                                             const float (&lrow)[2], int row0, int b, int h, int split, int t) {
  constexpr float kLn2 = 0.6931471805599453f;
  const int Lq = p.Lq;
  const bool out = p.o_out != nullptr && p.splits == 1;
  float lse_prev[2] = {-INFINITY, -INFINITY};
  if (p.splits == 1 && !out) {
#pragma unroll
    for (int ri = 0; ri < 2; ++ri)
      if (row0 + ri * 8 < Lq) lse_prev[ri] = p.lse[((size_t)b * p.Hq + h) * Lq + row0 + ri * 8];
    __syncwarp();  // the quad reads lse before its t == 0 lane rewrites it
  }
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    const int row = row0 + ri * 8;
    const float l = quad_sum(lrow[ri]);
    if (row >= Lq) continue;
    const bool empty = l == 0.f;  // saw nothing; a NaN l (the row sees a NaN) goes on as NaN
    const float lse_b = empty ? -INFINITY : (mrow[ri] + __log2f(l)) * kLn2;
    const float inv_l = empty ? 0.f : 1.f / l;
    const size_t lse_idx = ((size_t)b * p.Hq + h) * Lq + row;
    const size_t o_idx = (((size_t)b * Lq + row) * p.Hq + h) * D + 2 * t;
    if (p.splits > 1) {
      const size_t part = (size_t)split * p.B * Lq * p.Hq;
      float* op = p.o_part + part * D + o_idx;
#pragma unroll
      for (int db = 0; db < D / 8; ++db)
        *reinterpret_cast<float2*>(op + db * 8) = make_float2(acc[db][2 * ri] * inv_l, acc[db][2 * ri + 1] * inv_l);
      if (t == 0) p.lse_part[part + lse_idx] = lse_b;
      continue;
    }
    if (out) {
      uint32_t* op = reinterpret_cast<uint32_t*>(static_cast<T*>(p.o_out) + o_idx);
#pragma unroll
      for (int db = 0; db < D / 8; ++db)  // a row that saw nothing: zeros, whatever acc holds
        op[db * 4] = empty ? 0u : Pack2<T>::from(acc[db][2 * ri] * inv_l, acc[db][2 * ri + 1] * inv_l);
      if (t == 0) p.lse[lse_idx] = lse_b;
      continue;
    }
    if (empty) continue;  // nothing seen: the accumulator stays as it is
    const float lse_a = lse_prev[ri];
    const float mx = fmaxf(lse_a, lse_b);
    const float wa = __expf(lse_a - mx), wb = __expf(lse_b - mx);
    const float inv = 1.f / (wa + wb);
    const float ca = wa * inv, cb = wb * inv * inv_l;
    float* op = p.o + o_idx;
#pragma unroll
    for (int db = 0; db < D / 8; ++db) {
      const float2 old = *reinterpret_cast<float2*>(op + db * 8);
      *reinterpret_cast<float2*>(op + db * 8) =
          make_float2(old.x * ca + acc[db][2 * ri] * cb, old.y * ca + acc[db][2 * ri + 1] * cb);
    }
    if (t == 0) p.lse[lse_idx] = mx + __logf(wa + wb);
  }
}

}  // namespace lvx::cuda
