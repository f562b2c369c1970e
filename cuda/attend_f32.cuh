// fp32 attention on CUDA cores: accurate, simple and slow. One warp per (query row,
// head); lanes split the head dim. Forward keeps an online softmax per row and merges
// into (o, lse); backward adds dQ in registers and dK, dV with atomics.
#pragma once

#include "attend_params.cuh"

namespace lvx::cuda {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int D>
__global__ void attend_fwd_f32_kernel(const FwdParams p) {
  constexpr int kPer = (D + 31) / 32;
  const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= (long long)p.B * p.Lq * p.Hq) return;
  const int h = (int)(w % p.Hq);
  const long long bi = w / p.Hq;
  const int row = (int)(bi % p.Lq), b = (int)(bi / p.Lq), hk = h / p.group;
  const float* q = static_cast<const float*>(p.q) + (size_t)w * D;
  const float* kb = static_cast<const float*>(p.k) + ((size_t)b * p.Lkv * p.Hkv + hk) * D;
  const float* vb = static_cast<const float*>(p.v) + ((size_t)b * p.Lkv * p.Hkv + hk) * D;
  const size_t kv_stride = (size_t)p.Hkv * D;
  const int2 iv = local_interval(p.q_ranges, p.kv_begin, p.Lkv, bi);
  float qr[kPer], acc[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    int d = lane + 32 * i;
    qr[i] = d < D ? q[d] : 0.f;
    acc[i] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int j = iv.x; j < iv.y; ++j) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      int d = lane + 32 * i;
      if (d < D) s += qr[i] * kb[j * kv_stride + d];
    }
    s = warp_sum(s) * p.scale_log2;
    float m_new = fmaxf(m, s), alpha = exp2f(m - m_new), pj = exp2f(s - m_new);
    l = l * alpha + pj;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      int d = lane + 32 * i;
      acc[i] = acc[i] * alpha + (d < D ? pj * vb[j * kv_stride + d] : 0.f);
    }
    m = m_new;
  }
  if (l == 0.f) return;  // saw nothing; a NaN l (the row sees a NaN) goes on as NaN
  const size_t lse_idx = ((size_t)b * p.Hq + h) * p.Lq + row;
  const float lse_b = (m + log2f(l)) * 0.6931471805599453f;
  const float lse_a = p.lse[lse_idx];
  const float mx = fmaxf(lse_a, lse_b), wa = expf(lse_a - mx), wb = expf(lse_b - mx);
  const float inv = 1.f / (wa + wb);
  float* o = p.o + (size_t)w * D;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    int d = lane + 32 * i;
    if (d < D) o[d] = o[d] * wa * inv + acc[i] / l * wb * inv;
  }
  __syncwarp();
  if (lane == 0) p.lse[lse_idx] = mx + logf(wa + wb);
}

template <int D>
__global__ void attend_bwd_f32_kernel(const BwdParams p) {
  constexpr int kPer = (D + 31) / 32;
  const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= (long long)p.B * p.Lq * p.Hq) return;
  const int h = (int)(w % p.Hq);
  const long long bi = w / p.Hq;
  const int row = (int)(bi % p.Lq), b = (int)(bi / p.Lq), hk = h / p.group;
  const size_t lse_idx = ((size_t)b * p.Hq + h) * p.Lq + row;
  const float lse = p.lse[lse_idx];
  if (lse == -INFINITY) return;
  const float lse2 = lse * 1.4426950408889634f, dl = p.dl[lse_idx];
  const float* q = static_cast<const float*>(p.q) + (size_t)w * D;
  const float* dout = static_cast<const float*>(p.dout) + (size_t)w * D;
  const size_t kv_off = ((size_t)b * p.Lkv * p.Hkv + hk) * D, kv_stride = (size_t)p.Hkv * D;
  const float* kb = static_cast<const float*>(p.k) + kv_off;
  const float* vb = static_cast<const float*>(p.v) + kv_off;
  const int2 iv = local_interval(p.q_ranges, p.kv_begin, p.Lkv, bi);
  float qr[kPer], dor[kPer], dq[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    int d = lane + 32 * i;
    qr[i] = d < D ? q[d] : 0.f;
    dor[i] = d < D ? dout[d] : 0.f;
    dq[i] = 0.f;
  }
  for (int j = iv.x; j < iv.y; ++j) {
    float s = 0.f, dpj = 0.f;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      int d = lane + 32 * i;
      if (d < D) {
        s += qr[i] * kb[j * kv_stride + d];
        dpj += dor[i] * vb[j * kv_stride + d];
      }
    }
    s = warp_sum(s);
    dpj = warp_sum(dpj);
    const float pj = exp2f(s * p.scale_log2 - lse2), ds = pj * (dpj - dl);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      int d = lane + 32 * i;
      if (d < D) {
        dq[i] += p.scale * ds * kb[j * kv_stride + d];
        atomicAdd(p.dk + kv_off + j * kv_stride + d, p.scale * ds * qr[i]);
        atomicAdd(p.dv + kv_off + j * kv_stride + d, pj * dor[i]);
      }
    }
  }
  float* dqr = p.dq + (size_t)w * D;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    int d = lane + 32 * i;
    if (d < D) dqr[d] += dq[i];
  }
}

}  // namespace lvx::cuda
