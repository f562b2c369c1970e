// Kernel playground: checks the CUDA backend's attention kernels against a float64
// CPU reference (fresh random inputs and accumulators, masks, GQA, odd lengths, B > 1,
// split-KV) and prints one line per case. Exit status 1 if any case fails.
// Poisoned cases put NaN/±Inf where some rows cannot see them (KV rows no row sees,
// KV rows only some rows see, Q/dO of rows that see nothing or only part of the KV);
// the reference computes each row from its visible KV rows only, and the check asks
// for the reference's NaN/±Inf pattern exactly, and for no change at all where no
// visible (query row, KV row) pair reaches an entry (O/LSE of rows that see nothing,
// their dQ, dK/dV of KV rows no row sees). A failing case prints its first mismatch.
// Build and run: cuda/dev/run_playground.sh [small] [dims=64,96] [dtypes=bf16,f16]
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.hpp"
#include "gpu/gpu.hpp"
#include "cuda_check.hpp"

using namespace lvx;

namespace {

std::mt19937_64 rng(12345);

float round_to(DType t, float x) {
  if (t == DType::bf16) return __bfloat162float(__float2bfloat16_rn(x));
  if (t == DType::f16) return __half2float(__float2half_rn(x));
  return x;
}

// Host tensor in storage type: values kept as float (already rounded) + raw bytes.
struct Stored {
  std::vector<float> val;
  std::vector<uint16_t> raw16;
  DType t;
  Stored(DType t_, size_t n, float scale) : val(n), raw16(n), t(t_) {
    std::normal_distribution<float> nd(0.f, scale);
    for (size_t i = 0; i < n; ++i) {
      float x = round_to(t, nd(rng));
      val[i] = x;
      if (t == DType::bf16) { __nv_bfloat16 b = __float2bfloat16_rn(x); std::memcpy(&raw16[i], &b, 2); }
      if (t == DType::f16) { __half b = __float2half_rn(x); std::memcpy(&raw16[i], &b, 2); }
    }
  }
  const void* bytes() const { return t == DType::f32 ? (const void*)val.data() : (const void*)raw16.data(); }
  size_t nbytes() const { return val.size() * dtype_size(t); }
};

struct Dev {
  Backend& be;
  std::vector<void*> ptrs;
  void* up(const void* h, size_t bytes) {
    void* p = be.allocate(bytes);
    LVX_CUDA_CHECK(cudaMemcpy(p, h, bytes, cudaMemcpyHostToDevice));
    ptrs.push_back(p);
    return p;
  }
  template <typename T> void* up(const std::vector<T>& v) { return up(v.data(), v.size() * sizeof(T)); }
  template <typename T> std::vector<T> down(const void* p, size_t n) {
    std::vector<T> h(n);
    LVX_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  ~Dev() { for (void* p : ptrs) be.release(p); }
};

// Mismatches that the relative error does not measure: a NaN/±Inf pattern that is not the
// reference's, and an entry that no visible (query row, KV row) pair reaches but that
// changed. Keeps the first one, so that a failing case says where and what.
struct Mismatch {
  bool any = false;
  char first[256] = "";
  // x is [d0, d1, d2, d3] row-major (names say what each index is).
  void note(const char* tensor, const char* names, const int (&dims)[4], size_t i, double ours, double ref,
            const char* why) {
    if (any) return;
    any = true;
    int idx[4];
    size_t rest = i;
    for (int a = 3; a >= 0; --a) { idx[a] = (int)(rest % dims[a]); rest /= dims[a]; }
    std::snprintf(first, sizeof first, "%s[%s = %d,%d,%d,%d] ours %.9g reference %.9g (%s)", tensor, names, idx[0],
                  idx[1], idx[2], idx[3], ours, ref, why);
  }
};

// Relative error over the entries where the reference is finite. Notes a mismatch where
// the output is not the reference's NaN, its ±Inf, or finite where it is, and where
// `untouched` (one flag per entry; may be empty) says that no visible pair reaches the
// entry but the output is not exactly `base`. Only such structural entries are held to
// exactness: elsewhere a reference value can be exactly the base by cancellation (a row
// that sees one KV row has dS = dP - Dl = 0 in exact arithmetic; its float64 reference is
// then often exactly 0 at bf16 inputs, the kernel's a rounding residual).
double rel_err(const char* tensor, const char* names, const int (&dims)[4], const std::vector<float>& out,
               const std::vector<double>& ref, Mismatch& bad, const std::vector<char>& untouched = {},
               double base = 0.0) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double o = out[i], r = ref[i];
    if (std::isnan(r) != std::isnan(o) || (std::isinf(r) && o != r) || (std::isfinite(r) && !std::isfinite(o))) {
      bad.note(tensor, names, dims, i, o, r, "non-finite pattern");
      continue;
    }
    if (!untouched.empty() && untouched[i] && !(o == base || (std::isnan(o) && std::isnan(base))))
      bad.note(tensor, names, dims, i, o, r, "no visible pair reaches it: must stay exactly as it was");
    if (!std::isfinite(r)) continue;
    num += (o - r) * (o - r);
    den += r * r;
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

// Where a case puts NaN/±Inf (Poison), all heads of the rows named.
enum Poison { kNone, kKvHidden, kVPartial, kKPartial, kQEmpty, kQPartial };

struct Case {
  const char* name;
  int B, Lq, Lkv, Hq, Hkv, D;
  int mask;  // 0 none, 1 all_previous, 2 latest (interleaved images), 3 random intervals,
             // 4 layout (below), 5 every row sees [kv_total / 2, kv_total), 6 random
             // intervals within the first 90% of the KV rows, every seventh row empty
  long long kv_begin, kv_total;
  Poison poison = kNone;
};

// Mask 4 over global KV rows: pad | image 1 | image 2 | gap | image 3 | tail; query row
// i of batch b sees, by (i + b) % 6: nothing, images 1-2, image 2, image 2 less its last
// row, image 3, image 3 from its second row. So tiles hold rows that see different
// parts of them, KV rows no row sees (pad, gap, tail) and rows only some rows see.
void layout_interval(long long T, int kind, long long& beg, long long& end) {
  const long long pad = std::max(1LL, T / 10), tail = std::max(1LL, T / 10), gap = std::max(2LL, T / 10);
  const long long body = T - pad - tail - gap, i1 = pad + body / 4, i2 = i1 + body / 3, g = i2 + gap;
  const long long kinds[6][2] = {{pad + 1, pad + 1}, {pad, i2}, {i1, i2}, {i1, i2 - 1}, {g, T - tail}, {g + 1, T - tail}};
  beg = kinds[kind][0];
  end = kinds[kind][1];
}

// q_ranges like lvxattn.masks.interleaved_ranges over the global KV length.
std::vector<int32_t> make_ranges(const Case& c) {
  std::vector<int32_t> r((size_t)c.B * c.Lq * 2);
  const int images = 5, lead = 3;
  std::uniform_int_distribution<long long> u(0, c.kv_total);
  for (int b = 0; b < c.B; ++b)
    for (int i = 0; i < c.Lq; ++i) {
      long long beg = 0, end = 0;
      if (c.mask == 3 || c.mask == 6) {
        beg = u(rng); end = u(rng);
        if (end < beg) std::swap(beg, end);
        if (c.mask == 6) {
          beg = beg * 9 / 10;
          end = i % 7 == 0 ? beg : end * 9 / 10;
        }
      } else if (c.mask == 4) {
        layout_interval(c.kv_total, (i + b) % 6, beg, end);
      } else if (c.mask == 5) {
        beg = c.kv_total / 2;
        end = c.kv_total;
      } else {
        int n = i < lead ? 0 : std::min(images, 1 + (int)((long long)(i - lead) * images / std::max(c.Lq - lead, 1)));
        auto bound = [&](int k) { return (long long)k * c.kv_total / images; };
        end = bound(n);
        beg = c.mask == 1 || n == 0 ? 0 : bound(n - 1);
      }
      r[((size_t)b * c.Lq + i) * 2] = (int32_t)beg;
      r[((size_t)b * c.Lq + i) * 2 + 1] = (int32_t)end;
    }
  return r;
}

// Sets every head of row `row` of x ([B, L, H, D]) to `value`, in both representations.
void set_row(Stored& x, const Case& c, int b, int row, int L, int H, float value) {
  for (int h = 0; h < H; ++h)
    for (int d = 0; d < c.D; ++d) {
      const size_t i = (((size_t)b * L + row) * H + h) * c.D + d;
      x.val[i] = value;
      if (x.t == DType::bf16) { __nv_bfloat16 v = __float2bfloat16_rn(value); std::memcpy(&x.raw16[i], &v, 2); }
      if (x.t == DType::f16) { __half v = __float2half_rn(value); std::memcpy(&x.raw16[i], &v, 2); }
    }
}

// Puts NaN, +Inf or -Inf (by case and dtype) where c.poison says, batch by batch.
void poison(const Case& c, DType t, const std::vector<int32_t>& ranges, Stored& q, Stored& k, Stored& v,
            Stored& dout) {
  static int calls = 0;
  const float values[3] = {NAN, INFINITY, -INFINITY};
  const float value = values[calls++ % 3];
  for (int b = 0; b < c.B; ++b) {
    // Local KV rows each query row sees; how many rows see each KV row.
    std::vector<int> seen(c.Lkv, 0);
    std::vector<std::pair<long long, long long>> iv(c.Lq);
    for (int i = 0; i < c.Lq; ++i) {
      long long lo = 0, hi = c.Lkv;
      if (c.mask) {
        lo = std::max<long long>(0, ranges[((size_t)b * c.Lq + i) * 2] - c.kv_begin);
        hi = std::min<long long>(c.Lkv, ranges[((size_t)b * c.Lq + i) * 2 + 1] - c.kv_begin);
      }
      iv[i] = {lo, std::max(lo, hi)};
      for (long long j = lo; j < hi; ++j) ++seen[j];
    }
    if (c.poison == kKvHidden || c.poison == kVPartial || c.poison == kKPartial)
      for (int j = 0; j < c.Lkv; ++j)
        if (seen[j] == 0) {
          set_row(k, c, b, j, c.Lkv, c.Hkv, value);
          set_row(v, c, b, j, c.Lkv, c.Hkv, value);
        }
    if (c.poison == kVPartial || c.poison == kKPartial) {
      // The last KV row only some rows see, and one in the middle of the shard.
      int last = -1, mid = -1;
      for (int j = 0; j < c.Lkv; ++j)
        if (seen[j] > 0 && seen[j] < c.Lq) {
          last = j;
          if (mid < 0 && j >= c.Lkv / 2) mid = j;
        }
      for (int j : {last, mid})
        if (j >= 0) set_row(c.poison == kVPartial ? v : k, c, b, j, c.Lkv, c.Hkv, value);
    }
    if (c.poison == kQEmpty || c.poison == kQPartial) {
      int partial = 0;
      for (int i = 0; i < c.Lq; ++i) {
        const bool empty = iv[i].second <= iv[i].first;
        const bool part = !empty && (iv[i].first > 0 || iv[i].second < c.Lkv);
        if (c.poison == kQEmpty && empty) {
          set_row(q, c, b, i, c.Lq, c.Hq, value);
          set_row(dout, c, b, i, c.Lq, c.Hq, value);
        }
        // Q of one row, dO of another, of the rows that see part of the shard.
        if (c.poison == kQPartial && part && partial < 2)
          set_row(partial++ ? dout : q, c, b, i, c.Lq, c.Hq, value);
      }
    }
  }
  (void)t;
}

bool run_case(Backend& be, const Case& c, DType t) {
  const size_t nq = (size_t)c.B * c.Lq * c.Hq * c.D, nkv = (size_t)c.B * c.Lkv * c.Hkv * c.D;
  const size_t nl = (size_t)c.B * c.Hq * c.Lq;
  const int group = c.Hq / c.Hkv;
  const float scale = 1.f / std::sqrt((float)c.D) * 1.1f;
  Stored q(t, nq, 1.f), k(t, nkv, 1.f), v(t, nkv, 1.f), dout(t, nq, 1.f);
  std::vector<int32_t> ranges = c.mask ? make_ranges(c) : std::vector<int32_t>();
  if (c.poison != kNone) poison(c, t, ranges, q, k, v, dout);
  // Running accumulator: half the rows fresh (0, -inf), half from an earlier step.
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> o0(nq), lse0(nl), dq0(nq), dk0(nkv), dv0(nkv), dl(nl);
  for (size_t i = 0; i < nl; ++i) lse0[i] = (i % 2) ? -INFINITY : 2.f + nd(rng);
  for (size_t i = 0; i < nq; ++i) {
    size_t row = i / c.D, h = row % c.Hq, bi = row / c.Hq, b = bi / c.Lq, r = bi % c.Lq;
    o0[i] = std::isinf(lse0[(b * c.Hq + h) * c.Lq + r]) ? 0.f : nd(rng);
    dq0[i] = nd(rng);
  }
  for (size_t i = 0; i < nkv; ++i) { dk0[i] = nd(rng); dv0[i] = nd(rng); }

  // ---- float64 reference ----
  std::vector<double> o_ref(o0.begin(), o0.end()), lse_ref(lse0.begin(), lse0.end());
  std::vector<double> lse_b(nl, -INFINITY), dq_ref(dq0.begin(), dq0.end()), dk_ref(dk0.begin(), dk0.end()),
      dv_ref(dv0.begin(), dv0.end());
  std::vector<double> s(c.Lkv), ob(c.D);
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.Hq; ++h) {
      const int hk = h / group;
      for (int i = 0; i < c.Lq; ++i) {
        long long lo = 0, hi = c.Lkv;
        if (c.mask) {
          lo = std::max<long long>(0, ranges[((size_t)b * c.Lq + i) * 2] - c.kv_begin);
          hi = std::min<long long>(c.Lkv, ranges[((size_t)b * c.Lq + i) * 2 + 1] - c.kv_begin);
        }
        const float* qr = &q.val[(((size_t)b * c.Lq + i) * c.Hq + h) * c.D];
        const float* dor = &dout.val[(((size_t)b * c.Lq + i) * c.Hq + h) * c.D];
        double mx = -INFINITY;
        for (long long j = lo; j < hi; ++j) {
          const float* kr = &k.val[(((size_t)b * c.Lkv + j) * c.Hkv + hk) * c.D];
          double a = 0;
          for (int d = 0; d < c.D; ++d) a += (double)qr[d] * kr[d];
          s[j] = a * scale;
          mx = std::max(mx, s[j]);
        }
        const size_t li = ((size_t)b * c.Hq + h) * c.Lq + i;
        if (hi <= lo) { dl[li] = nd(rng); continue; }
        double sum = 0;
        for (long long j = lo; j < hi; ++j) sum += std::exp(s[j] - mx);
        const double lb = mx + std::log(sum);
        lse_b[li] = lb;
        std::fill(ob.begin(), ob.end(), 0.0);
        for (long long j = lo; j < hi; ++j) {
          const double pj = std::exp(s[j] - lb);
          const float* vr = &v.val[(((size_t)b * c.Lkv + j) * c.Hkv + hk) * c.D];
          for (int d = 0; d < c.D; ++d) ob[d] += pj * vr[d];
        }
        double dlv = 0;
        for (int d = 0; d < c.D; ++d) dlv += ob[d] * dor[d];
        dl[li] = (float)dlv;
        const double la = lse_ref[li], m2 = std::max(la, lb), ln = m2 + std::log(std::exp(la - m2) + std::exp(lb - m2));
        double* orow = &o_ref[(((size_t)b * c.Lq + i) * c.Hq + h) * c.D];
        for (int d = 0; d < c.D; ++d) orow[d] = orow[d] * std::exp(la - ln) + ob[d] * std::exp(lb - ln);
        lse_ref[li] = ln;
        // backward with lse = lse_b (this block's own), Dl as computed
        double* dqr = &dq_ref[(((size_t)b * c.Lq + i) * c.Hq + h) * c.D];
        for (long long j = lo; j < hi; ++j) {
          const size_t kvo = (((size_t)b * c.Lkv + j) * c.Hkv + hk) * c.D;
          const double pj = std::exp(s[j] - lb);
          double dpj = 0;
          for (int d = 0; d < c.D; ++d) dpj += (double)dor[d] * v.val[kvo + d];
          const double ds = pj * (dpj - (double)dl[li]);
          for (int d = 0; d < c.D; ++d) {
            dqr[d] += scale * ds * k.val[kvo + d];
            dk_ref[kvo + d] += scale * ds * qr[d];
            dv_ref[kvo + d] += pj * dor[d];
          }
        }
      }
    }
  std::vector<float> lse_in(nl);
  for (size_t i = 0; i < nl; ++i) lse_in[i] = (float)lse_b[i];

  // ---- device ----
  Dev dev{be, {}};
  void* dq_ = dev.up(q.bytes(), q.nbytes());
  void* dk_ = dev.up(k.bytes(), k.nbytes());
  void* dv_ = dev.up(v.bytes(), v.nbytes());
  void* ddo = dev.up(dout.bytes(), dout.nbytes());
  int32_t* dr = c.mask ? static_cast<int32_t*>(dev.up(ranges)) : nullptr;
  float* o = static_cast<float*>(dev.up(o0));
  float* lse = static_cast<float*>(dev.up(lse0));
  float* gdq = static_cast<float*>(dev.up(dq0));
  float* gdk = static_cast<float*>(dev.up(dk0));
  float* gdv = static_cast<float*>(dev.up(dv0));
  float* glse = static_cast<float*>(dev.up(lse_in));
  float* gdl = static_cast<float*>(dev.up(dl));
  StepShape sh{c.B, c.Lq, c.Lkv, c.Hq, c.Hkv, c.D};
  FwdStep f;
  f.s = sh; f.dtype = t; f.q = dq_; f.k = dk_; f.v = dv_; f.q_ranges = dr; f.kv_begin = c.kv_begin; f.scale = scale;
  f.o = o; f.lse = lse;
  be.attend_fwd_step(f);
  BwdStep g;
  g.s = sh; g.dtype = t; g.q = dq_; g.k = dk_; g.v = dv_; g.dout = ddo; g.lse = glse; g.dl = gdl; g.q_ranges = dr;
  g.kv_begin = c.kv_begin; g.scale = scale; g.dq = gdq; g.dk = gdk; g.dv = gdv;
  be.attend_bwd_step(g);
  be.synchronize();

  // Entries no visible (query row, KV row) pair reaches, from the intervals alone: O and
  // LSE of query rows that see no KV row of the shard stay exactly as they were, their dQ
  // increments are exactly 0, and so are the dK/dV increments of KV rows no row sees.
  std::vector<char> row_sees((size_t)c.B * c.Lq, 0), kv_seen((size_t)c.B * c.Lkv, 0);
  for (int b = 0; b < c.B; ++b)
    for (int i = 0; i < c.Lq; ++i) {
      long long lo = 0, hi = c.Lkv;
      if (c.mask) {
        lo = std::max<long long>(0, ranges[((size_t)b * c.Lq + i) * 2] - c.kv_begin);
        hi = std::min<long long>(c.Lkv, ranges[((size_t)b * c.Lq + i) * 2 + 1] - c.kv_begin);
      }
      row_sees[(size_t)b * c.Lq + i] = hi > lo;
      for (long long j = lo; j < hi; ++j) kv_seen[(size_t)b * c.Lkv + j] = 1;
    }
  std::vector<char> q_free(nq), kv_free(nkv), lse_free(nl);
  for (size_t i = 0; i < nq; ++i) q_free[i] = !row_sees[i / c.D / c.Hq];
  for (size_t i = 0; i < nkv; ++i) kv_free[i] = !kv_seen[i / c.D / c.Hkv];
  for (size_t i = 0; i < nl; ++i) {
    const size_t bh = i / c.Lq, b = bh / c.Hq;
    lse_free[i] = !row_sees[b * c.Lq + i % c.Lq];
  }
  const int q_dims[4] = {c.B, c.Lq, c.Hq, c.D}, kv_dims[4] = {c.B, c.Lkv, c.Hkv, c.D}, l_dims[4] = {c.B, c.Hq, c.Lq, 1};
  Mismatch bad;
  // O and LSE: measured on the merged values; structural entries compared with the
  // accumulator as it was (o0, lse0), entry by entry.
  auto merged_err = [&](const char* name, const char* names, const int (&dims)[4], float* p,
                        const std::vector<float>& before, const std::vector<double>& ref, const std::vector<char>& free) {
    std::vector<float> out = dev.down<float>(p, before.size());
    for (size_t i = 0; i < out.size(); ++i)
      if (free[i] && !(out[i] == before[i] || (std::isnan(out[i]) && std::isnan(before[i]))))
        bad.note(name, names, dims, i, out[i], before[i], "row sees nothing: must stay exactly as it was");
    return rel_err(name, names, dims, out, ref, bad);
  };
  const double e_o = merged_err("O", "b,i,h,d", q_dims, o, o0, o_ref, q_free);
  const double e_l = merged_err("LSE", "b,h,i,-", l_dims, lse, lse0, lse_ref, lse_free);
  // Gradient errors measured on the increments (the += target starts random).
  auto inc_err = [&](const char* name, const char* names, const int (&dims)[4], float* p,
                     const std::vector<float>& base, const std::vector<double>& ref, const std::vector<char>& free) {
    std::vector<float> out = dev.down<float>(p, base.size());
    std::vector<double> r(ref.size());
    for (size_t i = 0; i < out.size(); ++i) { out[i] -= base[i]; r[i] = ref[i] - base[i]; }
    return rel_err(name, names, dims, out, r, bad, free, 0.0);
  };
  const double e_dq = inc_err("dQ", "b,i,h,d", q_dims, gdq, dq0, dq_ref, q_free);
  const double e_dk = inc_err("dK", "b,j,h,d", kv_dims, gdk, dk0, dk_ref, kv_free);
  const double e_dv = inc_err("dV", "b,j,h,d", kv_dims, gdv, dv0, dv_ref, kv_free);
  const double tol = t == DType::bf16 ? 1e-2 : t == DType::f16 ? 5e-3 : 1e-4;
  const bool ok = !bad.any && e_o < tol && e_l < tol && e_dq < tol && e_dk < tol && e_dv < tol;
  std::printf("%-5s %-26s B=%d Lq=%-4d Lkv=%-5d H=%d/%d D=%-3d mask=%d | o %.2e lse %.2e dq %.2e dk %.2e dv %.2e %s\n",
              t == DType::bf16 ? "bf16" : t == DType::f16 ? "f16" : "f32", c.name, c.B, c.Lq, c.Lkv, c.Hq, c.Hkv, c.D,
              c.mask, e_o, e_l, e_dq, e_dk, e_dv, ok ? "ok" : "FAIL");
  if (bad.any) std::printf("      first mismatch: %s\n", bad.first);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  const bool small = argc > 1 && std::string(argv[1]) == "small";
  auto be = gpu::make_backend(0);
  std::printf("%s\n", be->describe().c_str());
  std::vector<Case> cases = {
      {"odd lengths GQA", 2, 77, 300, 4, 2, 64, 0, 0, 300},
      {"D128 no mask", 1, 130, 257, 4, 4, 128, 0, 0, 257},
      {"all_previous kv_begin", 2, 130, 257, 8, 2, 128, 1, 100, 600},
      {"latest", 2, 93, 411, 4, 1, 64, 2, 0, 411},
      {"random intervals", 1, 150, 333, 6, 3, 128, 3, 50, 500},
      {"split-KV short query", 1, 40, 4100, 2, 1, 128, 0, 0, 4100},
      {"split-KV masked", 2, 70, 3000, 2, 2, 64, 2, 0, 3000},
      {"empty rows all", 1, 20, 64, 2, 1, 64, 1, 64, 128},
      {"D32 latest GQA", 2, 50, 200, 4, 2, 32, 2, 0, 200},
      {"D96 random intervals", 1, 70, 300, 4, 1, 96, 3, 20, 400},
      {"D96 split-KV", 1, 30, 2500, 2, 2, 96, 0, 0, 2500},
      {"D128 tiles GQA", 1, 300, 1000, 8, 2, 128, 0, 0, 1000},
      {"D128 tiles random", 2, 260, 900, 4, 4, 128, 3, 30, 1000},
      {"D128 tiles latest", 1, 517, 1100, 2, 1, 128, 2, 0, 1100},
      // NaN/±Inf where some rows cannot see them.
      {"issue: shared edge, K/V pad", 1, 4, 10, 1, 1, 32, 5, 0, 10, kKvHidden},
      {"shared edge tiles K/V pad", 1, 300, 1000, 2, 1, 128, 5, 0, 1000, kKvHidden},
      {"layout K/V hidden", 2, 150, 700, 4, 2, 128, 4, 0, 700, kKvHidden},
      {"layout V partial", 2, 150, 700, 4, 2, 128, 4, 0, 700, kVPartial},
      {"layout K partial", 2, 150, 700, 4, 2, 128, 4, 0, 700, kKPartial},
      {"layout Q/dO empty rows", 2, 150, 700, 4, 4, 128, 4, 0, 700, kQEmpty},
      {"layout Q/dO partial rows", 1, 150, 700, 4, 2, 128, 4, 0, 700, kQPartial},
      {"layout D64 V partial shard", 2, 93, 411, 4, 1, 64, 4, 100, 700, kVPartial},
      {"layout D64 K partial shard", 2, 93, 411, 4, 1, 64, 4, 100, 700, kKPartial},
      {"layout D64 Q/dO partial", 2, 77, 300, 4, 2, 64, 4, 0, 300, kQPartial},
      {"split-KV layout K/V hidden", 1, 40, 4100, 2, 1, 128, 4, 0, 4100, kKvHidden},
      {"split-KV layout V partial", 1, 40, 4100, 2, 1, 128, 4, 0, 4100, kVPartial},
      {"D96 split-KV V partial", 1, 30, 2500, 2, 2, 96, 4, 0, 2500, kVPartial},
      {"D32 random K partial", 2, 50, 200, 4, 2, 32, 3, 0, 200, kKPartial},
      {"random K/V hidden", 1, 150, 333, 6, 3, 128, 3, 50, 500, kKvHidden},
      {"latest Q/dO empty rows", 2, 93, 411, 4, 1, 64, 2, 0, 411, kQEmpty},
      {"D128 many tiles V partial", 1, 517, 1300, 2, 1, 128, 4, 0, 1300, kVPartial},
      {"D128 many tiles K partial", 1, 517, 1300, 2, 1, 128, 4, 0, 1300, kKPartial},
      // D = 64 and 96 over many tiles (sm_90a: forward 128 x 128 tiles; backward 128
      // query rows per tile at D = 64, 64 at D = 96 with dQ in 64 + 32 column parts):
      // odd and even tile counts, lengths no multiple of them, GQA, B = 2, every mask,
      // split-KV, and NaN/±Inf where some rows cannot see them.
      {"D64 tiles GQA", 2, 517, 1300, 8, 2, 64, 0, 0, 1300},
      {"D64 tiles all_previous", 1, 300, 1000, 4, 2, 64, 1, 100, 1300},
      {"D64 tiles random", 2, 260, 900, 4, 4, 64, 3, 30, 1000},
      {"D64 tiles latest", 1, 517, 1100, 2, 1, 64, 2, 0, 1100},
      {"D64 split-KV", 2, 40, 4100, 2, 1, 64, 0, 0, 4100},
      {"D64 split-KV latest", 1, 130, 3000, 4, 2, 64, 2, 0, 3000},
      {"D96 tiles GQA", 2, 300, 1100, 6, 2, 96, 0, 0, 1100},
      {"D96 tiles all_previous", 1, 300, 1000, 4, 2, 96, 1, 100, 1300},
      {"D96 tiles random", 2, 260, 900, 4, 4, 96, 3, 30, 1000},
      {"D96 tiles latest", 1, 517, 1100, 2, 1, 96, 2, 0, 1100},
      {"D96 split-KV B2", 2, 40, 4100, 2, 1, 96, 0, 0, 4100},
      {"D64 shared edge K/V pad", 1, 300, 1000, 2, 1, 64, 5, 0, 1000, kKvHidden},
      {"D64 layout V partial", 2, 150, 700, 4, 2, 64, 4, 0, 700, kVPartial},
      {"D64 layout K partial", 2, 150, 700, 4, 2, 64, 4, 0, 700, kKPartial},
      {"D64 layout Q/dO empty", 2, 260, 700, 4, 4, 64, 4, 0, 700, kQEmpty},
      {"D64 layout Q/dO partial", 1, 260, 700, 4, 2, 64, 4, 0, 700, kQPartial},
      {"D64 split-KV V partial", 1, 40, 4100, 2, 1, 64, 4, 0, 4100, kVPartial},
      {"D96 shared edge K/V pad", 1, 300, 1000, 2, 1, 96, 5, 0, 1000, kKvHidden},
      {"D96 layout V partial", 2, 150, 700, 4, 2, 96, 4, 0, 700, kVPartial},
      {"D96 layout K partial", 2, 150, 700, 4, 2, 96, 4, 0, 700, kKPartial},
      {"D96 layout Q/dO empty", 2, 150, 700, 4, 4, 96, 4, 0, 700, kQEmpty},
      {"D96 layout Q/dO partial", 1, 150, 700, 4, 2, 96, 4, 0, 700, kQPartial},
      // The 'latest' mask over many KV tiles: query tiles of two images, so most KV tiles
      // are seen whole by some rows and not at all by the others (every one of them fixed
      // and scanned, in a pipeline of several stages), NaN/±Inf in such tiles.
      {"D128 latest tiles V partial", 1, 300, 2600, 2, 1, 128, 2, 0, 2600, kVPartial},
      {"D128 latest tiles K partial", 1, 300, 2600, 2, 1, 128, 2, 0, 2600, kKPartial},
      {"D128 latest tiles Q/dO empty", 2, 300, 2600, 2, 1, 128, 2, 0, 2600, kQEmpty},
      {"D64 latest tiles V partial", 1, 300, 2600, 4, 2, 64, 2, 0, 2600, kVPartial},
      {"D96 latest tiles K partial", 1, 300, 2600, 2, 1, 96, 2, 0, 2600, kKPartial},
      // The sm_90a forward's ping-pong of its consumer warpgroups (turns per KV tile after
      // the first): one tile (no turn), two tiles (one), odd and even counts, query tiles
      // whose second warpgroup (rows 64-127) or both have no row (Lq < 64, Lq = 150),
      // masked and not, split-KV.
      {"D128 one tile Lq < 64", 1, 50, 100, 2, 1, 128, 0, 0, 100},
      {"D128 two tiles Lq < 64", 1, 33, 200, 2, 2, 128, 0, 0, 200},
      {"D128 odd tiles Lq 150", 2, 150, 1100, 4, 2, 128, 0, 0, 1100},
      {"D128 even tiles Lq 150 random", 1, 150, 1000, 2, 1, 128, 3, 0, 1000},
      {"D64 one tile random", 1, 40, 120, 2, 1, 64, 3, 0, 120},
      {"D96 odd tiles Lq 150", 1, 150, 1100, 2, 1, 96, 0, 0, 1100},
      {"D128 split-KV Lq < 64 odd tiles", 1, 20, 5000, 2, 1, 128, 0, 0, 5000},
      // Random intervals over many KV tiles (bench_ab.py's 'random' mask): nearly every
      // query tile has rows that see a KV tile whole, rows that see none of it and rows
      // whose interval edge lies inside it, so every tile is masked and its Q/dO fixed;
      // mask 6 adds rows that see nothing and a tail no row sees. NaN/±Inf in K/V rows
      // no row sees, in K or V rows some rows see, in Q/dO of rows that see nothing and
      // of rows that see part of the shard; GQA, B = 2, odd query and KV tile counts.
      {"D128 random tiles K/V hidden", 2, 300, 2600, 4, 2, 128, 6, 0, 2600, kKvHidden},
      {"D128 random tiles V partial", 1, 300, 2600, 4, 2, 128, 3, 0, 2600, kVPartial},
      {"D128 random tiles K partial", 2, 300, 2600, 4, 2, 128, 6, 0, 2600, kKPartial},
      {"D128 random tiles Q/dO empty", 2, 300, 2600, 4, 2, 128, 6, 0, 2600, kQEmpty},
      {"D128 random tiles Q/dO part", 1, 300, 2600, 4, 2, 128, 3, 100, 2900, kQPartial},
      {"D64 random tiles V partial", 2, 300, 2600, 4, 2, 64, 6, 0, 2600, kVPartial},
      {"D64 random tiles K partial", 1, 300, 2600, 4, 2, 64, 3, 0, 2600, kKPartial},
      {"D64 random tiles Q/dO empty", 2, 300, 2600, 4, 2, 64, 6, 0, 2600, kQEmpty},
      {"D64 random tiles Q/dO part", 1, 300, 2600, 4, 2, 64, 3, 100, 2900, kQPartial},
      {"D96 random tiles K/V hidden", 1, 300, 2600, 4, 2, 96, 6, 0, 2600, kKvHidden},
      {"D96 random tiles V partial", 1, 300, 2600, 4, 2, 96, 6, 0, 2600, kVPartial},
      {"D96 random tiles K partial", 2, 300, 2600, 4, 2, 96, 3, 0, 2600, kKPartial},
      {"D96 random tiles Q/dO empty", 1, 300, 2600, 4, 2, 96, 6, 0, 2600, kQEmpty},
      {"D96 random tiles Q/dO part", 2, 300, 2600, 4, 2, 96, 3, 100, 2900, kQPartial},
  };
  if (small)
    cases = {{"small", 1, 37, 150, 2, 1, 64, 2, 0, 150}, {"small D128", 1, 20, 140, 4, 2, 128, 1, 0, 140},
             {"small D96 split", 1, 9, 600, 1, 1, 96, 0, 0, 600},
             {"small D128 V partial", 1, 70, 300, 2, 1, 128, 4, 0, 300, kVPartial},
             {"small D64 K partial", 1, 37, 150, 2, 1, 64, 4, 0, 150, kKPartial},
             {"small D64 tiles", 1, 150, 300, 2, 1, 64, 3, 0, 300},
             {"small D96 tiles", 1, 150, 300, 2, 1, 96, 3, 0, 300},
             {"small D64 Q/dO partial", 1, 150, 300, 2, 1, 64, 4, 0, 300, kQPartial},
             {"small D96 V partial", 1, 150, 300, 2, 1, 96, 4, 0, 300, kVPartial},
             {"small D128 latest V partial", 1, 150, 1100, 2, 1, 128, 2, 0, 1100, kVPartial},
             // The sm_90a backward's late dQ (at least kBwdLateItems query tiles per KV block).
             {"small D128 late dQ", 1, 520, 300, 2, 1, 128, 0, 0, 300},
             {"small D96 late dQ GQA", 1, 70, 300, 4, 1, 96, 0, 0, 300},
             {"small D64 late dQ", 1, 1000, 150, 1, 1, 64, 0, 0, 150},
             {"small D128 one tile", 1, 50, 100, 1, 1, 128, 0, 0, 100},
             {"small D128 odd tiles", 1, 150, 300, 1, 1, 128, 0, 0, 300},
             {"small D128 random Q/dO empty", 1, 150, 700, 2, 1, 128, 6, 0, 700, kQEmpty},
             {"small D64 random K partial", 1, 150, 700, 2, 1, 64, 6, 0, 700, kKPartial},
             {"small D96 random Q/dO part", 1, 150, 700, 2, 1, 96, 3, 0, 700, kQPartial}};
  // Optional filters: dims=64,96 (head dims), dtypes=bf16,f16,f32.
  std::vector<int> dims;
  std::vector<DType> dtypes = {DType::bf16, DType::f16, DType::f32};
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    auto list = [&](const std::string& prefix) {
      std::vector<std::string> items;
      std::string rest = arg.substr(prefix.size());
      for (size_t pos = 0; pos <= rest.size();) {
        const size_t end = std::min(rest.find(',', pos), rest.size());
        items.push_back(rest.substr(pos, end - pos));
        pos = end + 1;
      }
      return items;
    };
    if (arg.rfind("dims=", 0) == 0)
      for (const std::string& d : list("dims=")) dims.push_back(std::atoi(d.c_str()));
    if (arg.rfind("dtypes=", 0) == 0) {
      dtypes.clear();
      for (const std::string& d : list("dtypes="))
        dtypes.push_back(d == "bf16" ? DType::bf16 : d == "f16" ? DType::f16 : DType::f32);
    }
  }
  if (!dims.empty()) {
    std::vector<Case> kept;
    for (const Case& c : cases)
      if (std::find(dims.begin(), dims.end(), c.D) != dims.end()) kept.push_back(c);
    cases = kept;
  }
  int fails = 0;
  for (DType t : dtypes)
    for (const Case& c : cases) fails += !run_case(*be, c, t);
  std::printf("%s: %d failing\n", fails ? "FAIL" : "PASS", fails);
  return fails ? 1 : 0;
}
