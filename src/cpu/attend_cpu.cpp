// CPU attention step kernels (semantics in kernels.hpp).
//
// Both passes work on transposed score tiles Sᵀ[j][i] = scale·K_j·Q_i (KV rows j
// down, query rows i across), so every softmax statistic is a vector over the
// query rows of the tile and every product is a tile_gemm with a contiguous,
// 16-multiple N dimension. Forward: items are (batch, KV head, query tile);
// the KV tiles of a head group are converted once and used by all its query
// heads; the KV range is split over items when there are too few of them.
// Backward: items are (batch, KV head, KV tile) holding dK/dV tiles in local
// accumulators; dQ goes to a per-worker buffer that is summed at the end.
//
// Values a row cannot see never reach its results. A tile (query rows i, KV rows j)
// that every row sees whole needs no care. In a straddling tile, S is set to -inf
// where row i cannot see KV row j, so P = 0 there, and dS = P ∘ (dP − Dl) is a select
// (0 where hidden: dP = dO Vᵀ is NaN wherever V is). The products O += P V,
// dQ += scale·dS K (sum over j) and dV += Pᵀ dO, dK += scale·dSᵀ Q (sum over i) are
// then exact as long as the operand rows some row of the tile cannot see are
// finite (0·x = 0); but 0·NaN = 0·Inf = NaN. So a straddling tile checks those rows
// (V; K; Q, dO of rows not seeing all of the tile) and, only when one holds a
// non-finite value, forms its products with a select per term (select_gemm) instead
// of tile_gemm. The forward's tiles start at the first KV row any row of the query
// tile sees and end at the last, so padding outside every row's interval is never
// loaded.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "convert.hpp"
#include "cpu/attend_cpu.hpp"
#include "simd.hpp"
#include "tile_gemm.hpp"

namespace lvx::cpu {

namespace {

constexpr int64_t kTq = 64;   // query rows per tile (N of the score tiles)
constexpr int64_t kTk = 128;  // KV rows per tile
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int kTqVecs = kTq / kLanes;

int64_t round16(int64_t x) { return (x + 15) / 16 * 16; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Visible KV rows of each query row of a tile, in block-local coordinates.
// Padding rows (beyond nq) and rows that see nothing get the empty [0, 0).
struct RowWindows {
  alignas(64) float lo[kTq];
  alignas(64) float hi[kTq];
  int64_t min_lo = 0, max_hi = 0;  // union of the windows
  int64_t all_lo = 0, all_hi = 0;  // intersection over the rows < nq (empty when one is empty)

  void build(const int32_t* ranges, int64_t nq, int64_t kv_begin, int64_t lkv) {
    min_lo = lkv;
    max_hi = 0;
    all_lo = 0;
    all_hi = lkv;
    for (int64_t i = 0; i < kTq; ++i) {
      int64_t a = 0, b = 0;
      if (i < nq) {
        a = ranges ? std::max<int64_t>(ranges[2 * i] - kv_begin, 0) : 0;
        b = ranges ? std::min<int64_t>(ranges[2 * i + 1] - kv_begin, lkv) : lkv;
        if (b <= a) a = b = 0;
      }
      lo[i] = static_cast<float>(a);
      hi[i] = static_cast<float>(b);
      if (i < nq) {
        all_lo = std::max(all_lo, a);
        all_hi = std::min(all_hi, b);
      }
      if (b > a) {
        min_lo = std::min(min_lo, a);
        max_hi = std::max(max_hi, b);
      }
    }
    if (max_hi <= min_lo) min_lo = max_hi = 0;
  }
  // True when every row of the tile sees all of KV rows [j0, j1).
  bool covers(int64_t j0, int64_t j1, int64_t nq) const {
    for (int64_t i = 0; i < nq; ++i)
      if (!row_covers(i, j0, j1)) return false;
    return true;
  }
  bool row_covers(int64_t i, int64_t j0, int64_t j1) const { return lo[i] <= j0 && hi[i] >= j1; }
  bool sees(int64_t i, int64_t j) const { return lo[i] <= j && j < hi[i]; }
};

bool row_finite(const float* x, int64_t d) {
  bool ok = true;
  for (int64_t c = 0; c < d; ++c) ok &= std::isfinite(x[c]);
  return ok;
}

// Does a KV row j0 + j (j < nk) that some row of the tile cannot see (outside the
// windows' intersection) hold a non-finite value? rows: nk rows of stride ld.
bool hidden_kv_nonfinite(const RowWindows& w, const float* rows, int64_t ld, int64_t d, int64_t j0, int64_t nk) {
  for (int64_t j = 0; j < nk; ++j)
    if ((j0 + j < w.all_lo || j0 + j >= w.all_hi) && !row_finite(rows + j * ld, d)) return true;
  return false;
}

// Does a query row i < nq that does not see all of KV rows [j0, j1) hold a non-finite value?
bool hidden_q_nonfinite(const RowWindows& w, const float* rows, int64_t ld, int64_t d, int64_t nq, int64_t j0,
                        int64_t j1) {
  for (int64_t i = 0; i < nq; ++i)
    if (!w.row_covers(i, j0, j1) && !row_finite(rows + i * ld, d)) return true;
  return false;
}

// C[m][:] += alpha·Σ_k A(m, k)·B[k][:] over the terms with seen(m, k) only: tile_gemm's
// product in select form, for tiles whose hidden operand rows are not all finite.
template <typename Seen>
void select_gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t sam, int64_t sak, const float* b,
                 int64_t ldb, float* c, int64_t ldc, float alpha, Seen seen) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      if (!seen(m, k)) continue;
      const float x = alpha * a[m * sam + k * sak];
      const float* bk = b + k * ldb;
      float* cm = c + m * ldc;
      for (int64_t n = 0; n < N; ++n) cm[n] += x * bk[n];
    }
}

// Sᵀ[j][i] ← -inf where query row i does not see KV row j0 + j.
void mask_scores(float* st, int64_t nk, int64_t j0, const RowWindows& w) {
  for (int64_t j = 0; j < nk; ++j) {
    v16 jv = splat(static_cast<float>(j0 + j));
    for (int v = 0; v < kTqVecs; ++v) {
      float* p = st + j * kTq + v * kLanes;
      auto hidden = (jv < load(w.lo + v * kLanes)) | (jv >= load(w.hi + v * kLanes));
      store(p, hidden ? splat(kNegInf) : load(p));
    }
  }
}

// dst[r][0..D) ← src row r (stride `ld` elements), zero-padded to Dp columns.
template <typename T>
void pack_rows(float* dst, int64_t dp, const T* src, int64_t ld, int64_t rows, int64_t d,
               int64_t rows_padded, float mul = 1.f) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * ld;
    float* o = dst + r * dp;
    for (int64_t c = 0; c < d; ++c) o[c] = to_f32(s[c]) * mul;
    for (int64_t c = d; c < dp; ++c) o[c] = 0.f;
  }
  for (int64_t r = rows; r < rows_padded; ++r)
    for (int64_t c = 0; c < dp; ++c) dst[r * dp + c] = 0.f;
}

// dst[c][r] (kTq columns) ← src row r, column c; missing rows are zero.
template <typename T>
void pack_transposed(float* dst, const T* src, int64_t ld, int64_t rows, int64_t d, float mul) {
  for (int64_t c = 0; c < d; ++c) {
    float* o = dst + c * kTq;
    for (int64_t r = 0; r < rows; ++r) o[r] = to_f32(src[r * ld + c]) * mul;
    for (int64_t r = rows; r < kTq; ++r) o[r] = 0.f;
  }
}

// (o, lse) ← merge((o, lse), (ob, lse_b)) for one row of D values.
inline void merge_row(float* o, float* lse, const float* ob, float lse_b, int64_t d) {
  float la = *lse;
  if (lse_b == kNegInf) return;
  if (la == kNegInf) {
    for (int64_t c = 0; c < d; ++c) o[c] = ob[c];
    *lse = lse_b;
    return;
  }
  float m = std::max(la, lse_b);
  float wa = std::exp(la - m), wb = std::exp(lse_b - m);
  float s = wa + wb;
  wa /= s;
  wb /= s;
  for (int64_t c = 0; c < d; ++c) o[c] = o[c] * wa + ob[c] * wb;
  *lse = m + std::log(s);
}

// Scratch of one worker, grown on demand and reused across calls.
struct Scratch {
  std::vector<float> a, b, c, d, e, f, g, dq;
  static float* need(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  }
};

Scratch& worker_scratch(int /*worker*/) {
  static thread_local Scratch scratch;
  return scratch;
}

// ---------------------------------------------------------------- forward --

template <typename T>
void fwd_typed(const FwdStep& a, ThreadPool& pool) {
  const StepShape& s = a.s;
  const int64_t G = s.Hq / s.Hkv, D = s.D, Dp = round16(D);
  const int64_t q_tiles = ceil_div(s.Lq, kTq), kv_tiles = ceil_div(s.Lkv, kTk);
  const int64_t items = s.B * s.Hkv * q_tiles;
  // Split the KV range when there are too few items to keep every worker busy.
  int64_t chunks = 1;
  if (items < 4 * pool.size()) chunks = std::min(kv_tiles, ceil_div(4 * pool.size(), items));
  const int64_t tiles_per_chunk = ceil_div(kv_tiles, chunks);
  chunks = ceil_div(kv_tiles, tiles_per_chunk);
  const int64_t rows_q = s.B * s.Lq * s.Hq;
  // Split-KV partials live in the calling thread's scratch: grown once, then reused.
  // (Workers see these through the pointers: a thread_local named inside the
  // lambda would be each worker's own, empty copy.)
  static thread_local std::vector<float> part_o_store, part_lse_store;
  float* part_o = nullptr;
  float* part_lse = nullptr;
  if (chunks > 1) {
    if (part_o_store.size() < size_t(chunks * rows_q * Dp)) part_o_store.resize(chunks * rows_q * Dp);
    part_lse_store.assign(chunks * rows_q, kNegInf);  // rows a chunk never reaches stay empty
    part_o = part_o_store.data();
    part_lse = part_lse_store.data();
  }
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const int64_t ldq = s.Hq * D, ldkv = s.Hkv * D;

  pool.parallel_for(items * chunks, [&](int64_t item, int worker) {
    const int64_t chunk = item % chunks;
    const int64_t qt = (item / chunks) % q_tiles;
    const int64_t g = (item / chunks / q_tiles) % s.Hkv;
    const int64_t b = item / chunks / q_tiles / s.Hkv;
    const int64_t i0 = qt * kTq, nq = std::min(kTq, s.Lq - i0);
    RowWindows win;
    win.build(a.q_ranges ? a.q_ranges + (b * s.Lq + i0) * 2 : nullptr, nq, a.kv_begin, s.Lkv);
    int64_t j_begin = std::max(win.min_lo, chunk * tiles_per_chunk * kTk);
    int64_t j_end = std::min(win.max_hi, std::min(s.Lkv, (chunk + 1) * tiles_per_chunk * kTk));

    Scratch& sc = worker_scratch(worker);
    float* qt_all = Scratch::need(sc.a, G * D * kTq);       // Qᵀ per head, scaled
    float* o_all = Scratch::need(sc.b, G * kTq * Dp);       // running O per head
    float* m_all = Scratch::need(sc.c, G * kTq);            // running max
    float* l_all = Scratch::need(sc.d, G * kTq);            // running sum
    float* st = Scratch::need(sc.e, kTk * kTq);             // Sᵀ / Pᵀ tile
    float* kt = Scratch::need(sc.f, kTk * Dp);              // K tile, fp32
    float* vt = Scratch::need(sc.g, kTk * Dp);              // V tile, fp32 padded
    for (int64_t h = 0; h < G; ++h) {
      const int64_t hq = g * G + h;
      pack_transposed(qt_all + h * D * kTq, q + (b * s.Lq + i0) * ldq + hq * D, ldq, nq, D, a.scale);
    }
    std::fill(o_all, o_all + G * kTq * Dp, 0.f);
    std::fill(m_all, m_all + G * kTq, kNegInf);
    std::fill(l_all, l_all + G * kTq, 0.f);

    for (int64_t j0 = j_begin; j0 < j_end; j0 += kTk) {
      const int64_t nk = std::min(kTk, j_end - j0);
      const bool full = win.covers(j0, j0 + nk, nq);
      pack_rows(kt, Dp, k + (b * s.Lkv + j0) * ldkv + g * D, ldkv, nk, D, nk);
      pack_rows(vt, Dp, v + (b * s.Lkv + j0) * ldkv + g * D, ldkv, nk, D, nk);
      const bool select_pv = !full && hidden_kv_nonfinite(win, vt, Dp, D, j0, nk);
      for (int64_t h = 0; h < G; ++h) {
        float* o = o_all + h * kTq * Dp;
        float* m = m_all + h * kTq;
        float* l = l_all + h * kTq;
        tile_gemm<false>(nk, kTq, D, kt, Dp, 1, qt_all + h * D * kTq, kTq, st, kTq);
        if (!full) mask_scores(st, nk, j0, win);
        for (int vv = 0; vv < kTqVecs; ++vv) {
          v16 mt = splat(kNegInf);
          for (int64_t j = 0; j < nk; ++j) {
            v16 x = load(st + j * kTq + vv * kLanes);
            mt = x > mt ? x : mt;
          }
          v16 m_old = load(m + vv * kLanes);
          v16 m_new = mt > m_old ? mt : m_old;
          v16 m_safe = m_new == splat(kNegInf) ? splat(0.f) : m_new;
          v16 sum = v16{};
          for (int64_t j = 0; j < nk; ++j) {
            float* p = st + j * kTq + vv * kLanes;
            v16 e = exp16(load(p) - m_safe);
            store(p, e);
            sum += e;
          }
          v16 alpha = exp16(m_old - m_safe);
          store(l + vv * kLanes, load(l + vv * kLanes) * alpha + sum);
          store(m + vv * kLanes, m_new);
          for (int i = 0; i < kLanes; ++i) {
            float al = alpha[i];
            if (al != 1.f) {
              float* orow = o + (vv * kLanes + i) * Dp;
              for (int64_t c = 0; c < Dp; ++c) orow[c] *= al;
            }
          }
        }
        // O[i][:] += Σ_j Pᵀ[j][i]·V[j][:]
        if (select_pv)
          select_gemm(nq, Dp, nk, st, 1, kTq, vt, Dp, o, Dp, 1.f,
                      [&](int64_t i, int64_t j) { return win.sees(i, j0 + j); });
        else
          tile_gemm<true>(nq, Dp, nk, st, 1, kTq, vt, Dp, o, Dp);
      }
    }
    // Normalize and merge into the accumulator (or this chunk's partial).
    for (int64_t h = 0; h < G; ++h) {
      const int64_t hq = g * G + h;
      for (int64_t i = 0; i < nq; ++i) {
        float l = l_all[h * kTq + i];
        if (l == 0.f) continue;  // saw no key (NaN inputs give NaN l and propagate)
        float* orow = o_all + (h * kTq + i) * Dp;
        float inv = 1.f / l;
        for (int64_t c = 0; c < D; ++c) orow[c] *= inv;
        float lse_b = m_all[h * kTq + i] + std::log(l);
        const int64_t row = (b * s.Lq + i0 + i) * s.Hq + hq;      // O row index
        const int64_t lrow = (b * s.Hq + hq) * s.Lq + i0 + i;     // LSE index
        if (chunks == 1) {
          merge_row(a.o + row * D, a.lse + lrow, orow, lse_b, D);
        } else {
          std::copy(orow, orow + D, part_o + (chunk * rows_q + row) * Dp);
          part_lse[chunk * rows_q + row] = lse_b;
        }
      }
    }
  });

  if (chunks > 1) {
    pool.parallel_for(s.B * s.Hq, [&](int64_t bh, int) {
      const int64_t b = bh / s.Hq, hq = bh % s.Hq;
      for (int64_t i = 0; i < s.Lq; ++i) {
        const int64_t row = (b * s.Lq + i) * s.Hq + hq;
        const int64_t lrow = (b * s.Hq + hq) * s.Lq + i;
        for (int64_t c = 0; c < chunks; ++c)
          merge_row(a.o + row * D, a.lse + lrow, part_o + (c * rows_q + row) * Dp,
                    part_lse[c * rows_q + row], D);
      }
    });
  }
}

// --------------------------------------------------------------- backward --

template <typename T>
void bwd_typed(const BwdStep& a, ThreadPool& pool) {
  const StepShape& s = a.s;
  const int64_t G = s.Hq / s.Hkv, D = s.D, Dp = round16(D);
  const int64_t q_tiles = ceil_div(s.Lq, kTq), kv_tiles = ceil_div(s.Lkv, kTk);
  const int64_t items = s.B * s.Hkv * kv_tiles;
  const int workers = pool.size();
  const int64_t rows_q = s.B * s.Lq * s.Hq;
  // Each worker accumulates dQ in its own scratch (no atomics); summed at the end.
  std::vector<float*> dq_part(workers, nullptr);
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const T* dout = static_cast<const T*>(a.dout);
  const int64_t ldq = s.Hq * D, ldkv = s.Hkv * D;

  pool.parallel_for(items, [&](int64_t item, int worker) {
    const int64_t jt = item % kv_tiles;
    const int64_t g = (item / kv_tiles) % s.Hkv;
    const int64_t b = item / kv_tiles / s.Hkv;
    const int64_t j0 = jt * kTk, nk = std::min(kTk, s.Lkv - j0);
    Scratch& sc = worker_scratch(worker);
    if (!dq_part[worker]) {
      dq_part[worker] = Scratch::need(sc.dq, rows_q * Dp);
      std::fill(dq_part[worker], dq_part[worker] + rows_q * Dp, 0.f);
    }
    float* dq_w = dq_part[worker];

    float* kt = Scratch::need(sc.a, kTk * Dp);
    float* vt = Scratch::need(sc.b, kTk * Dp);
    float* dk = Scratch::need(sc.c, kTk * Dp);
    float* dv = Scratch::need(sc.d, kTk * Dp);
    float* pt = Scratch::need(sc.e, kTk * kTq);   // Pᵀ
    float* dst = Scratch::need(sc.f, kTk * kTq);  // dPᵀ, then dSᵀ
    float* qpack = Scratch::need(sc.g, 2 * D * kTq + 2 * kTq * Dp);
    float* qtr = qpack;                   // scale·Qᵀ [D][Tq]
    float* dotr = qtr + D * kTq;          // dOᵀ [D][Tq]
    float* qrow = dotr + D * kTq;         // Q rows [Tq][Dp]
    float* dorow = qrow + kTq * Dp;       // dO rows [Tq][Dp]
    bool loaded = false;
    std::fill(dk, dk + kTk * Dp, 0.f);
    std::fill(dv, dv + kTk * Dp, 0.f);

    for (int64_t qt = 0; qt < q_tiles; ++qt) {
      const int64_t i0 = qt * kTq, nq = std::min(kTq, s.Lq - i0);
      RowWindows win;
      win.build(a.q_ranges ? a.q_ranges + (b * s.Lq + i0) * 2 : nullptr, nq, a.kv_begin, s.Lkv);
      if (win.max_hi <= j0 || win.min_lo >= j0 + nk) continue;
      const bool full = win.covers(j0, j0 + nk, nq);
      if (!loaded) {
        pack_rows(kt, Dp, k + (b * s.Lkv + j0) * ldkv + g * D, ldkv, nk, D, nk);
        pack_rows(vt, Dp, v + (b * s.Lkv + j0) * ldkv + g * D, ldkv, nk, D, nk);
        loaded = true;
      }
      const bool k_hidden_nonfinite = !full && hidden_kv_nonfinite(win, kt, Dp, D, j0, nk);
      for (int64_t h = 0; h < G; ++h) {
        const int64_t hq = g * G + h;
        const T* qsrc = q + (b * s.Lq + i0) * ldq + hq * D;
        const T* dsrc = dout + (b * s.Lq + i0) * ldq + hq * D;
        pack_transposed(qtr, qsrc, ldq, nq, D, a.scale);
        pack_transposed(dotr, dsrc, ldq, nq, D, 1.f);
        pack_rows(qrow, Dp, qsrc, ldq, nq, D, nq);
        pack_rows(dorow, Dp, dsrc, ldq, nq, D, nq);
        alignas(64) float lse[kTq], dl[kTq];
        for (int64_t i = 0; i < kTq; ++i) {
          const int64_t lrow = (b * s.Hq + hq) * s.Lq + i0 + i;
          lse[i] = i < nq ? a.lse[lrow] : kNegInf;
          dl[i] = i < nq ? a.dl[lrow] : 0.f;
        }
        // Sᵀ = K·(scale·Qᵀ); Pᵀ = exp(Sᵀ − lse), 0 where masked or lse = -inf (below).
        tile_gemm<false>(nk, kTq, D, kt, Dp, 1, qtr, kTq, pt, kTq);
        // dPᵀ = V·dOᵀ
        tile_gemm<false>(nk, kTq, D, vt, Dp, 1, dotr, kTq, dst, kTq);
        for (int vv = 0; vv < kTqVecs; ++vv) {
          v16 lv = load(lse + vv * kLanes);
          auto dead = lv == splat(kNegInf);
          v16 lsafe = dead ? splat(0.f) : lv;
          v16 dlv = load(dl + vv * kLanes);
          v16 lo = load(win.lo + vv * kLanes), hi = load(win.hi + vv * kLanes);
          for (int64_t j = 0; j < nk; ++j) {
            float* pp = pt + j * kTq + vv * kLanes;
            float* dp = dst + j * kTq + vv * kLanes;
            // Selects, not products, where hidden: lse or dP may be NaN there.
            auto zero = dead;
            if (!full) {
              v16 jv = splat(static_cast<float>(j0 + j));
              zero = zero | (jv < lo) | (jv >= hi);
            }
            v16 p = exp16(load(pp) - lsafe);
            p = zero ? v16{} : p;
            store(pp, p);
            v16 ds = p * (load(dp) - dlv);  // dSᵀ
            store(dp, zero ? v16{} : ds);
          }
        }
        float* dq_rows = dq_w + ((b * s.Lq + i0) * s.Hq + hq) * Dp;  // rows of head hq: stride Hq·Dp
        const bool select = k_hidden_nonfinite || (!full && (hidden_q_nonfinite(win, qrow, Dp, D, nq, j0, j0 + nk) ||
                                                             hidden_q_nonfinite(win, dorow, Dp, D, nq, j0, j0 + nk)));
        if (select) {
          auto seen_ji = [&](int64_t j, int64_t i) { return win.sees(i, j0 + j); };
          select_gemm(nk, Dp, nq, pt, kTq, 1, dorow, Dp, dv, Dp, 1.f, seen_ji);
          select_gemm(nk, Dp, nq, dst, kTq, 1, qrow, Dp, dk, Dp, a.scale, seen_ji);
          select_gemm(nq, Dp, nk, dst, 1, kTq, kt, Dp, dq_rows, s.Hq * Dp, a.scale,
                      [&](int64_t i, int64_t j) { return win.sees(i, j0 + j); });
        } else {
          tile_gemm<true>(nk, Dp, nq, pt, kTq, 1, dorow, Dp, dv, Dp);          // dV += Pᵀ dO
          tile_gemm<true>(nk, Dp, nq, dst, kTq, 1, qrow, Dp, dk, Dp, a.scale); // dK += scale dSᵀ Q
          // dQ[i] += scale Σ_j dSᵀ[j][i] K[j]
          tile_gemm<true>(nq, Dp, nk, dst, 1, kTq, kt, Dp, dq_rows, s.Hq * Dp, a.scale);
        }
      }
    }
    if (!loaded) return;
    for (int64_t j = 0; j < nk; ++j) {
      float* dkr = a.dk + ((b * s.Lkv + j0 + j) * s.Hkv + g) * D;
      float* dvr = a.dv + ((b * s.Lkv + j0 + j) * s.Hkv + g) * D;
      for (int64_t c = 0; c < D; ++c) {
        dkr[c] += dk[j * Dp + c];
        dvr[c] += dv[j * Dp + c];
      }
    }
  });

  pool.parallel_for(s.B * s.Lq, [&](int64_t row_block, int) {
    for (int w = 0; w < workers; ++w) {
      if (!dq_part[w]) continue;
      const float* src = dq_part[w] + row_block * s.Hq * Dp;
      float* dst = a.dq + row_block * s.Hq * D;
      for (int64_t h = 0; h < s.Hq; ++h)
        for (int64_t c = 0; c < D; ++c) dst[h * D + c] += src[h * Dp + c];
    }
  });
}

}  // namespace

void attend_fwd_step(const FwdStep& a, ThreadPool& pool) {
  if (a.s.B * a.s.Lq * a.s.Hq == 0 || a.s.Lkv == 0) return;
  with_storage_type(a.dtype, [&](auto tag) { fwd_typed<decltype(tag)>(a, pool); });
}

void attend_bwd_step(const BwdStep& a, ThreadPool& pool) {
  if (a.s.B * a.s.Lq * a.s.Hq == 0 || a.s.Lkv == 0) return;
  with_storage_type(a.dtype, [&](auto tag) { bwd_typed<decltype(tag)>(a, pool); });
}

void row_dot(const RowDot& a, ThreadPool& pool) {
  with_storage_type(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* dout = static_cast<const T*>(a.dout);
    const T* o = static_cast<const T*>(a.o);
    pool.parallel_for(a.B * a.L, [&](int64_t bl, int) {
      const int64_t b = bl / a.L, i = bl % a.L;
      for (int64_t h = 0; h < a.H; ++h) {
        const int64_t base = (bl * a.H + h) * a.D;
        float acc = 0.f;
        for (int64_t c = 0; c < a.D; ++c) acc += to_f32(dout[base + c]) * to_f32(o[base + c]);
        a.dl[(b * a.H + h) * a.L + i] = acc;
      }
    });
  });
}

void merge_lse(const MergeLse& a, ThreadPool& pool) {
  pool.parallel_for(a.B * a.L, [&](int64_t bl, int) {
    const int64_t b = bl / a.L, i = bl % a.L;
    for (int64_t h = 0; h < a.H; ++h) {
      const int64_t row = bl * a.H + h, lrow = (b * a.H + h) * a.L + i;
      merge_row(a.o + row * a.D, a.lse + lrow, a.o_in + row * a.D, a.lse_in[lrow], a.D);
    }
  });
}

void convert(void* dst, DType dst_type, const void* src, DType src_type, size_t n, ThreadPool& pool) {
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = ceil_div(static_cast<int64_t>(n), kChunk);
  with_storage_type(src_type, [&](auto stag) {
    using S = decltype(stag);
    with_storage_type(dst_type, [&](auto dtag) {
      using Dt = decltype(dtag);
      const S* s = static_cast<const S*>(src);
      Dt* d = static_cast<Dt*>(dst);
      pool.parallel_for(chunks, [&](int64_t c, int) {
        const int64_t e = std::min<int64_t>(static_cast<int64_t>(n), (c + 1) * kChunk);
        for (int64_t i = c * kChunk; i < e; ++i) d[i] = from_f32<Dt>(to_f32(s[i]));
      });
    });
  });
}

}  // namespace lvx::cpu
