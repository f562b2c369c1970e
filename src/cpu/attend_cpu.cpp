// CPU attention step kernels (semantics in kernels.hpp), compiled once per
// x86-64 level into lvx::cpu::isa_<level> (LVX_CPU_ISA; CMakeLists.txt) and
// chosen at run time by isa_dispatch.cpp.
//
// Tiles are kTq query rows × kTk KV rows; the products are BLAS sgemm calls
// (blas.hpp), one per tile (and run, below), in the pool's threads:
//   forward   S = scale·Q Kᵀ,  online softmax,  O += P V
//   backward  S, P = exp(S − lse),  dP = dO Vᵀ,  dS = P ∘ (dP − Dl),
//             dV += Pᵀ dO,  dK += scale·dSᵀ Q,  dQ += scale·dS K
// Input tiles are copied or widened (exactly) into compact fp32 tiles, so every
// product accumulates in fp32; in the avx512bf16 variant, bf16 inputs take the
// products through AVX-512 BF16 instead (gemm_bf16.hpp): S and dP always, the
// others on tiles every row sees alike, with P and dS rounded to bf16 (as torch
// does for bf16); sums stay fp32.
// Forward items are (batch, KV head, query tile): the KV tiles of a head group are
// widened once for all its query heads, whose rows are stacked into one product,
// and the KV range is split over items when there are too few of them. Backward
// items are (batch, KV head, KV tile): they own their rows of dK/dV; dQ goes to a
// per-worker buffer summed at the end.
//
// Masks. Within a tile, each query row sees one interval of columns; consecutive
// rows that see the same interval form a run. Every product that sums over KV rows
// (P V, dS K) or over query rows (Pᵀ dO, dSᵀ Q) is issued per run, over the run's
// rows and columns only, so no K, V, Q or dO row enters a sum for a (query row, KV
// row) pair the row does not see (a 0 weight would still let NaN/Inf through:
// 0·NaN = NaN). S and dP (one term per pair) are computed over the union of the
// intervals and masked by selection, never multiplication. In the common tile that
// every row sees alike, each product is one call.
#include <cmath>
#include <limits>
#include <type_traits>

#include "core/kernels.hpp"
#include "cpu/blas.hpp"
#include "cpu/convert.hpp"
#include "cpu/parallel.hpp"
#include "cpu/simd.hpp"
#include "cpu/thread_pool.hpp"
#if defined(__AVX512BF16__)
#include "cpu/gemm_bf16.hpp"
#endif

#ifndef LVX_CPU_ISA
#error "attend_cpu.cpp is compiled once per ISA level with -DLVX_CPU_ISA=<name> (CMakeLists.txt)"
#endif
#define LVX_CAT2(a, b) a##b
#define LVX_CAT(a, b) LVX_CAT2(a, b)

namespace lvx::cpu::LVX_CAT(isa_, LVX_CPU_ISA) {

// Everything here has internal linkage: the variants share no code (isa.hpp).
namespace {

constexpr int64_t kTq = 128;        // query rows per tile
constexpr int64_t kTk = 256;        // KV rows per tile (a multiple of every vector width)
constexpr int64_t kStackRows = 256;  // forward: query heads of a group stacked up to this many rows
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline void fill(float* p, int64_t n, float x) {
  for (int64_t i = 0; i < n; ++i) p[i] = x;
}

// Runs fn(item, worker) for item in [0, n) on the pool (parallel.hpp).
template <typename F>
void for_items(ThreadPool& pool, int64_t n, F& fn) {
  parallel_items(pool, n, [](void* c, int64_t item, int worker) { (*static_cast<F*>(c))(item, worker); }, &fn);
}

// A row-major fp32 matrix view: element (r, c) at p[r·ld + c].
struct Mat {
  const float* p;
  int64_t ld;
  const float* row(int64_t r) const { return p + r * ld; }
};

// rows × d elements of src (row stride ld) as a compact fp32 copy in buf. fp32 is copied
// too: BLAS reads compact tiles faster than rows H·D apart (measured: backward +8%).
template <typename T>
Mat as_f32(const T* src, int64_t ld, int64_t rows, int64_t d, float* buf) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < d; ++c) buf[r * d + c] = to_f32(src[r * ld + c]);
  return Mat{buf, d};
}

// Visible KV rows of each query row of a query tile, in block-local coordinates
// (rows that see nothing and rows past nq get [0, 0)), and their union.
struct RowWindows {
  int64_t lo[kTq], hi[kTq];
  int64_t min_lo = 0, max_hi = 0;

  void build(const int32_t* ranges, int64_t nq, int64_t kv_begin, int64_t lkv) {
    min_lo = lkv;
    max_hi = 0;
    for (int64_t i = 0; i < kTq; ++i) {
      int64_t a = 0, b = 0;
      if (i < nq) {
        a = ranges ? max64(ranges[2 * i] - kv_begin, 0) : 0;
        b = ranges ? min64(ranges[2 * i + 1] - kv_begin, lkv) : lkv;
        if (b <= a) a = b = 0;
      }
      lo[i] = a;
      hi[i] = b;
      if (b > a) {
        min_lo = min64(min_lo, a);
        max_hi = max64(max_hi, b);
      }
    }
    if (max_hi <= min_lo) min_lo = max_hi = 0;
  }
};

// A KV tile [j0, j0 + nk) seen from a query tile: each row's visible tile columns
// [lo, hi), the runs of consecutive rows that see the same non-empty columns, and
// the union [c0, c1) of all rows' columns.
struct TileView {
  struct Run {
    int64_t r0, r1, c0, c1;
  };
  int32_t lo[kTq], hi[kTq];
  Run runs[kTq];
  int n_runs = 0;
  int64_t c0 = 0, c1 = 0;

  void build(const RowWindows& w, int64_t nq, int64_t j0, int64_t nk) {
    n_runs = 0;
    c0 = nk;
    c1 = 0;
    for (int64_t i = 0; i < nq; ++i) {
      int64_t a = min64(max64(w.lo[i] - j0, 0), nk), b = min64(max64(w.hi[i] - j0, 0), nk);
      if (b <= a) a = b = 0;
      lo[i] = static_cast<int32_t>(a);
      hi[i] = static_cast<int32_t>(b);
      if (b <= a) continue;
      c0 = min64(c0, a);
      c1 = max64(c1, b);
      Run* last = n_runs ? &runs[n_runs - 1] : nullptr;
      if (last && last->r1 == i && last->c0 == a && last->c1 == b)
        last->r1 = i + 1;
      else
        runs[n_runs++] = Run{i, i + 1, a, b};
    }
    if (c1 <= c0) c0 = c1 = 0;
  }
};

// One row of the online softmax over the scores p[a, b) (masked lanes are selected
// away, never multiplied): the running max m and sum l are updated, p[a, b) becomes
// exp(S − m), and the row's running output is rescaled by exp(m_old − m).
inline void softmax_row(float* p, int64_t a, int64_t b, float* m, float* l, float* orow, int64_t d) {
  const vi lanes = lane_index();
  const vi va = splat_i(static_cast<int32_t>(a)), vb = splat_i(static_cast<int32_t>(b));
  const int64_t v0 = a - a % kLanes;
  vf mx = splat(kNegInf);
  for (int64_t v = v0; v < b; v += kLanes) {
    vi idx = lanes + static_cast<int32_t>(v);
    vf x = load(p + v);
    x = (idx >= va && idx < vb) ? x : splat(kNegInf);
    mx = x > mx ? x : mx;
  }
  const float m_old = *m, mt = hmax(mx);
  const float m_new = mt > m_old ? mt : m_old;
  const float m_safe = m_new == kNegInf ? 0.f : m_new;
  vf sum = vf{};
  for (int64_t v = v0; v < b; v += kLanes) {
    vi idx = lanes + static_cast<int32_t>(v);
    vf x = load(p + v);
    x = (idx >= va && idx < vb) ? x : splat(kNegInf);
    vf e = vexp(x - splat(m_safe));
    store(p + v, e);
    sum += e;
  }
  const float alpha = std::exp(m_old - m_safe);
  *l = *l * alpha + hsum(sum);
  *m = m_new;
  if (alpha != 1.f)
    for (int64_t c = 0; c < d; ++c) orow[c] *= alpha;
}

// (o, lse) ← merge((o, lse), (ob, lse_b)) for one row of D values.
inline void merge_row(float* o, float* lse, const float* ob, float lse_b, int64_t d) {
  const float la = *lse;
  if (lse_b == kNegInf) return;
  if (la == kNegInf) {
    for (int64_t c = 0; c < d; ++c) o[c] = ob[c];
    *lse = lse_b;
    return;
  }
  const float m = la > lse_b ? la : lse_b;
  float wa = std::exp(la - m), wb = std::exp(lse_b - m);
  const float s = wa + wb;
  wa /= s;
  wb /= s;
  for (int64_t c = 0; c < d; ++c) o[c] = o[c] * wa + ob[c] * wb;
  *lse = m + std::log(s);
}

// Scratch slots (parallel.hpp): fp32 per item, then the caller's per-call buffers;
// bf16 pairs (uint32) per item.
enum Slot { kO, kM, kL, kS, kDs, kKt, kVt, kQt, kDot, kTouched, kDqAll, kPartO, kPartLse, kSlots };
enum PairSlot { kQ2, kDo2, kKt2, kVt2, kV2, kP2, kPi2, kDsi2, kDsa2, kQb2, kDob2, kKb2, kPairSlots };
static_assert(kSlots <= kScratchSlots && kPairSlots <= kScratchSlots, "parallel.hpp: more scratch slots");

// bf16 inputs use the AVX-512 BF16 products (gemm_bf16.hpp) where this variant has them.
#if defined(__AVX512BF16__)
template <typename T>
constexpr bool kBf16Dot = std::is_same_v<T, Bf16>;
#else
template <typename T>
constexpr bool kBf16Dot = false;
#endif

// ---------------------------------------------------------------- forward --

template <typename T>
void fwd_typed(const FwdStep& a, ThreadPool& pool) {
  const StepShape& s = a.s;
  const int64_t G = s.Hq / s.Hkv, D = s.D;
  const int64_t q_tiles = ceil_div(s.Lq, kTq), kv_tiles = ceil_div(s.Lkv, kTk);
  const int64_t items = s.B * s.Hkv * q_tiles;
  // Split the KV range when there are too few items to keep every worker busy.
  int64_t chunks = 1;
  const int workers = pool_workers(pool);
  if (items < 4 * workers) chunks = min64(kv_tiles, ceil_div(4 * workers, items));
  const int64_t tiles_per_chunk = ceil_div(kv_tiles, chunks);
  chunks = ceil_div(kv_tiles, tiles_per_chunk);
  const int64_t rows_q = s.B * s.Lq * s.Hq;
  // Split-KV partials live in the calling thread's scratch; workers see them by pointer.
  float* part_o = nullptr;
  float* part_lse = nullptr;
  if (chunks > 1) {
    part_o = thread_scratch(kPartO, chunks * rows_q * D);
    part_lse = thread_scratch(kPartLse, chunks * rows_q);
    fill(part_lse, chunks * rows_q, kNegInf);  // rows a chunk never reaches stay empty
  }
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const int64_t ldq = s.Hq * D, ldkv = s.Hkv * D;

  auto item_fn = [&](int64_t item, int) {
    const int64_t chunk = item % chunks;
    const int64_t qt = (item / chunks) % q_tiles;
    const int64_t g = (item / chunks / q_tiles) % s.Hkv;
    const int64_t b = item / chunks / q_tiles / s.Hkv;
    const int64_t i0 = qt * kTq, nq = min64(kTq, s.Lq - i0);
    RowWindows win;
    win.build(a.q_ranges ? a.q_ranges + (b * s.Lq + i0) * 2 : nullptr, nq, a.kv_begin, s.Lkv);
    const int64_t j_begin = max64(win.min_lo, chunk * tiles_per_chunk * kTk);
    const int64_t j_end = min64(win.max_hi, min64(s.Lkv, (chunk + 1) * tiles_per_chunk * kTk));
    if (j_begin >= j_end) return;

    // The G query heads of the group are stacked (row h·nq + i) so that one product
    // covers up to kStackRows rows: heads go in sub-groups of gs.
    const int64_t gs = max64(1, min64(G, kStackRows / nq));
    // (Scratch sizes do not depend on the item, so each is allocated once.)
    constexpr int64_t kMaxRows = kStackRows > kTq ? kStackRows : kTq;  // ≥ gs·nq
    float* o_all = thread_scratch(kO, G * kTq * D);  // running O
    float* m_all = thread_scratch(kM, G * kTq);      // running max
    float* l_all = thread_scratch(kL, G * kTq);      // running sum
    float* st = thread_scratch(kS, kMaxRows * kTk);  // S, then P, of a sub-group
    float* qs = thread_scratch(kQt, G * kTq * D);    // Q rows of the group, fp32
    float* kbuf = thread_scratch(kKt, kTk * D);
    float* vbuf = thread_scratch(kVt, kTk * D);
    const int64_t d2 = (D + 1) / 2;  // D in bf16 pairs
    [[maybe_unused]] uint32_t* q2 = nullptr;
    [[maybe_unused]] uint32_t* kt2 = nullptr;
    [[maybe_unused]] uint32_t* v2 = nullptr;
    [[maybe_unused]] uint32_t* p2 = nullptr;
    if constexpr (kBf16Dot<T>) {
      q2 = thread_scratch_u32(kQ2, G * kTq * d2);
      kt2 = thread_scratch_u32(kKt2, d2 * (kTk + 16));
      v2 = thread_scratch_u32(kV2, (kTk / 2) * (D + 32));
      p2 = thread_scratch_u32(kP2, kMaxRows * (kTk / 2));
    }
    for (int64_t h = 0; h < G; ++h) {
      const T* src = q + (b * s.Lq + i0) * ldq + (g * G + h) * D;
#if defined(__AVX512BF16__)
      if constexpr (kBf16Dot<T>) {
        pack_a_bf16(reinterpret_cast<const uint16_t*>(src), ldq, nq, D, q2 + h * nq * d2);
        continue;
      }
#endif
      float* dst = qs + h * nq * D;
      for (int64_t i = 0; i < nq; ++i)
        for (int64_t c = 0; c < D; ++c) dst[i * D + c] = to_f32(src[i * ldq + c]);
    }
    fill(o_all, G * nq * D, 0.f);
    fill(m_all, G * nq, kNegInf);
    fill(l_all, G * nq, 0.f);

    TileView tv;
    for (int64_t j0 = j_begin - j_begin % kTk; j0 < j_end; j0 += kTk) {
      const int64_t nk = min64(kTk, s.Lkv - j0);
      tv.build(win, nq, j0, nk);
      if (!tv.n_runs) continue;
      const int64_t c0 = tv.c0, nc = tv.c1 - tv.c0;
      const bool one_run = tv.n_runs == 1 && tv.runs[0].r0 == 0 && tv.runs[0].r1 == nq;
      const int64_t kv_off = (b * s.Lkv + j0 + c0) * ldkv + g * D;
      // Views start at tile column c0: column c of the tile is view row c − c0.
      Mat kt{nullptr, 0}, vt{nullptr, 0};
      [[maybe_unused]] bool v2_packed = false;
#if defined(__AVX512BF16__)
      if constexpr (kBf16Dot<T>) pack_bt_bf16(reinterpret_cast<const uint16_t*>(k + kv_off), ldkv, nc, D, kt2, pair_ld(nc));
#endif
      if constexpr (!kBf16Dot<T>) kt = as_f32(k + kv_off, ldkv, nc, D, kbuf);
      if (!kBf16Dot<T> || !one_run) vt = as_f32(v + kv_off, ldkv, nc, D, vbuf);
      for (int64_t h0 = 0; h0 < G; h0 += gs) {
        const int64_t nh = min64(gs, G - h0), rows = nh * nq;
        float* o = o_all + h0 * nq * D;
        float* m = m_all + h0 * nq;
        float* l = l_all + h0 * nq;
#if defined(__AVX512BF16__)
        if constexpr (kBf16Dot<T>)
          gemm_bf16(rows, nc, d2, q2 + h0 * nq * d2, d2, 1, kt2, pair_ld(nc), st + c0, kTk, a.scale, false);
#endif
        if constexpr (!kBf16Dot<T>)
          sgemm(false, true, rows, nc, D, a.scale, qs + h0 * nq * D, D, kt.p, kt.ld, 0.f, st + c0, kTk);
        for (int64_t h = 0; h < nh; ++h)
          for (int r = 0; r < tv.n_runs; ++r) {
            const auto& run = tv.runs[r];
            for (int64_t i = h * nq + run.r0; i < h * nq + run.r1; ++i)
              softmax_row(st + i * kTk, run.c0, run.c1, m + i, l + i, o + i * D, D);
          }
        if (one_run) {  // every row of the sub-group sees the same columns: one product
#if defined(__AVX512BF16__)
          if constexpr (kBf16Dot<T>) {
            if (!v2_packed) pack_b_bf16(reinterpret_cast<const uint16_t*>(v + kv_off), ldkv, nc, D, v2, pair_ld(D));
            v2_packed = true;
            pack_a_f32(st + c0, kTk, rows, nc, p2);  // P rounded to bf16, as torch does for bf16
            gemm_bf16(rows, D, (nc + 1) / 2, p2, (nc + 1) / 2, 1, v2, pair_ld(D), o, D, 1.f, true);
            continue;
          }
#endif
          sgemm(false, false, rows, D, nc, 1.f, st + c0, kTk, vt.p, vt.ld, 1.f, o, D);
          continue;
        }
        for (int64_t h = 0; h < nh; ++h)
          for (int r = 0; r < tv.n_runs; ++r) {
            const auto& run = tv.runs[r];
            const int64_t r0 = h * nq + run.r0;
            sgemm(false, false, run.r1 - run.r0, D, run.c1 - run.c0, 1.f, st + r0 * kTk + run.c0, kTk,
                  vt.row(run.c0 - c0), vt.ld, 1.f, o + r0 * D, D);
          }
      }
    }
    // Normalize and merge into the accumulator (or this chunk's partial).
    for (int64_t h = 0; h < G; ++h) {
      const int64_t hq = g * G + h;
      for (int64_t i = 0; i < nq; ++i) {
        const float l = l_all[h * nq + i];
        if (l == 0.f) continue;  // saw no key (NaN inputs give NaN l and propagate)
        float* orow = o_all + (h * nq + i) * D;
        const float inv = 1.f / l;
        for (int64_t c = 0; c < D; ++c) orow[c] *= inv;
        const float lse_b = m_all[h * nq + i] + std::log(l);
        const int64_t row = (b * s.Lq + i0 + i) * s.Hq + hq;   // O row index
        const int64_t lrow = (b * s.Hq + hq) * s.Lq + i0 + i;  // LSE index
        if (chunks == 1) {
          merge_row(a.o + row * D, a.lse + lrow, orow, lse_b, D);
        } else {
          float* dst = part_o + (chunk * rows_q + row) * D;
          for (int64_t c = 0; c < D; ++c) dst[c] = orow[c];
          part_lse[chunk * rows_q + row] = lse_b;
        }
      }
    }
  };
  for_items(pool, items * chunks, item_fn);

  if (chunks > 1) {
    auto merge_fn = [&](int64_t bh, int) {
      const int64_t b = bh / s.Hq, hq = bh % s.Hq;
      for (int64_t i = 0; i < s.Lq; ++i) {
        const int64_t row = (b * s.Lq + i) * s.Hq + hq;
        const int64_t lrow = (b * s.Hq + hq) * s.Lq + i;
        for (int64_t c = 0; c < chunks; ++c)
          merge_row(a.o + row * D, a.lse + lrow, part_o + (c * rows_q + row) * D, part_lse[c * rows_q + row], D);
      }
    };
    for_items(pool, s.B * s.Hq, merge_fn);
  }
}

// --------------------------------------------------------------- backward --

template <typename T>
void bwd_typed(const BwdStep& a, ThreadPool& pool) {
  const StepShape& s = a.s;
  const int64_t G = s.Hq / s.Hkv, D = s.D;
  const int64_t q_tiles = ceil_div(s.Lq, kTq), kv_tiles = ceil_div(s.Lkv, kTk);
  const int64_t items = s.B * s.Hkv * kv_tiles;
  const int workers = pool_workers(pool);
  const int64_t rows_q = s.B * s.Lq * s.Hq;
  // Each worker sums dQ in its own part of one buffer (no atomics), zeroed when the
  // worker first touches it; the parts are added into a.dq at the end.
  float* dq_all = thread_scratch(kDqAll, static_cast<size_t>(workers) * rows_q * D);
  float* touched = thread_scratch(kTouched, workers);
  fill(touched, workers, 0.f);
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  const T* dout = static_cast<const T*>(a.dout);
  const int64_t ldq = s.Hq * D, ldkv = s.Hkv * D;

  auto item_fn = [&](int64_t item, int worker) {
    const int64_t jt = item % kv_tiles;
    const int64_t g = (item / kv_tiles) % s.Hkv;
    const int64_t b = item / kv_tiles / s.Hkv;
    const int64_t j0 = jt * kTk, nk = min64(kTk, s.Lkv - j0);
    float* dq_w = dq_all + static_cast<int64_t>(worker) * rows_q * D;
    float* pt = thread_scratch(kS, kTq * kTk);   // P
    float* dst = thread_scratch(kDs, kTq * kTk);  // dP, then dS
    float* kbuf = thread_scratch(kKt, kTk * D);
    float* vbuf = thread_scratch(kVt, kTk * D);
    float* qbuf = thread_scratch(kQt, kTq * D);
    float* dobuf = thread_scratch(kDot, kTq * D);
    // dK, dV rows of this tile, summed in place (items own disjoint rows).
    float* dk = a.dk + ((b * s.Lkv + j0) * s.Hkv + g) * D;
    float* dv = a.dv + ((b * s.Lkv + j0) * s.Hkv + g) * D;
    const vi lanes = lane_index();
    Mat kt{nullptr, 0}, vt{nullptr, 0};
    RowWindows win;
    TileView tv;
    const int64_t d2 = (D + 1) / 2;
    [[maybe_unused]] const int64_t ldt = (nk + 15) / 16 * 16 + 16;  // Kᵀ/Vᵀ pairs row stride
    [[maybe_unused]] uint32_t* kt2 = nullptr;
    [[maybe_unused]] uint32_t* vt2 = nullptr;
    [[maybe_unused]] uint32_t* q2 = nullptr;
    [[maybe_unused]] uint32_t* do2 = nullptr;
    [[maybe_unused]] uint32_t *pi2 = nullptr, *dsi2 = nullptr, *dsa2 = nullptr, *qb2 = nullptr, *dob2 = nullptr,
                              *kb2 = nullptr;
    [[maybe_unused]] int64_t kb2_c0 = -1, kb2_c1 = -1;  // the K rows packed in kb2
    if constexpr (kBf16Dot<T>) {
      kt2 = thread_scratch_u32(kKt2, d2 * ldt);
      vt2 = thread_scratch_u32(kVt2, d2 * ldt);
      q2 = thread_scratch_u32(kQ2, kTq * d2);
      do2 = thread_scratch_u32(kDo2, kTq * d2);
      pi2 = thread_scratch_u32(kPi2, (kTq / 2) * (kTk + 16));
      dsi2 = thread_scratch_u32(kDsi2, (kTq / 2) * (kTk + 16));
      dsa2 = thread_scratch_u32(kDsa2, kTq * (kTk / 2));
      qb2 = thread_scratch_u32(kQb2, (kTq / 2) * (D + 32));
      dob2 = thread_scratch_u32(kDob2, (kTq / 2) * (D + 32));
      kb2 = thread_scratch_u32(kKb2, (kTk / 2) * (D + 32));
    }

    for (int64_t qt = 0; qt < q_tiles; ++qt) {
      const int64_t i0 = qt * kTq, nq = min64(kTq, s.Lq - i0);
      win.build(a.q_ranges ? a.q_ranges + (b * s.Lq + i0) * 2 : nullptr, nq, a.kv_begin, s.Lkv);
      if (win.max_hi <= j0 || win.min_lo >= j0 + nk) continue;
      tv.build(win, nq, j0, nk);
      if (!tv.n_runs) continue;
      if (!kt.p) {
        if (touched[worker] == 0.f) {
          fill(dq_w, rows_q * D, 0.f);
          touched[worker] = 1.f;
        }
        kt = as_f32(k + (b * s.Lkv + j0) * ldkv + g * D, ldkv, nk, D, kbuf);
#if defined(__AVX512BF16__)
        if constexpr (kBf16Dot<T>) {
          pack_bt_bf16(reinterpret_cast<const uint16_t*>(k + (b * s.Lkv + j0) * ldkv + g * D), ldkv, nk, D, kt2, ldt);
          pack_bt_bf16(reinterpret_cast<const uint16_t*>(v + (b * s.Lkv + j0) * ldkv + g * D), ldkv, nk, D, vt2, ldt);
        }
#endif
        if constexpr (!kBf16Dot<T>) vt = as_f32(v + (b * s.Lkv + j0) * ldkv + g * D, ldkv, nk, D, vbuf);
      }
      const int64_t c0 = tv.c0, c1 = tv.c1, nc = c1 - c0;
      // bf16 inputs, every row seeing the same columns: all five products in bf16.
      const bool dot_all = kBf16Dot<T> && tv.n_runs == 1 && tv.runs[0].r0 == 0 && tv.runs[0].r1 == nq;
#if defined(__AVX512BF16__)
      if (dot_all && (kb2_c0 != c0 || kb2_c1 != c1)) {  // K rows [c0, c1) for dQ = dS K
        pack_b_bf16(reinterpret_cast<const uint16_t*>(k + (b * s.Lkv + j0 + c0) * ldkv + g * D), ldkv, nc, D, kb2,
                    pair_ld(D));
        kb2_c0 = c0;
        kb2_c1 = c1;
      }
#endif
      for (int64_t h = 0; h < G; ++h) {
        const int64_t hq = g * G + h;
        Mat qh{nullptr, 0}, doh{nullptr, 0};
        if (!dot_all) {
          qh = as_f32(q + (b * s.Lq + i0) * ldq + hq * D, ldq, nq, D, qbuf);
          doh = as_f32(dout + (b * s.Lq + i0) * ldq + hq * D, ldq, nq, D, dobuf);
        }
#if defined(__AVX512BF16__)
        if constexpr (kBf16Dot<T>) {  // S and dP from the bf16 inputs as they are
          pack_a_bf16(reinterpret_cast<const uint16_t*>(q + (b * s.Lq + i0) * ldq + hq * D), ldq, nq, D, q2);
          pack_a_bf16(reinterpret_cast<const uint16_t*>(dout + (b * s.Lq + i0) * ldq + hq * D), ldq, nq, D, do2);
          gemm_bf16(nq, nc, d2, q2, d2, 1, kt2 + c0, ldt, pt + c0, kTk, a.scale, false);  // S
          gemm_bf16(nq, nc, d2, do2, d2, 1, vt2 + c0, ldt, dst + c0, kTk, 1.f, false);    // dP
        }
#endif
        if constexpr (!kBf16Dot<T>) {
          sgemm(false, true, nq, nc, D, a.scale, qh.p, qh.ld, kt.row(c0), kt.ld, 0.f, pt + c0, kTk);  // S
          sgemm(false, true, nq, nc, D, 1.f, doh.p, doh.ld, vt.row(c0), vt.ld, 0.f, dst + c0, kTk);   // dP
        }
        for (int64_t i = 0; i < nq; ++i) {
          const int64_t lrow = (b * s.Hq + hq) * s.Lq + i0 + i;
          const float lse = a.lse[lrow];
          // A row with lse = -inf saw no key anywhere: P = 0 (an empty [lo, hi) says so).
          const bool dead = lse == kNegInf;
          const vi va = splat_i(dead ? 0 : tv.lo[i]), vb = splat_i(dead ? 0 : tv.hi[i]);
          const vf vl = splat(dead ? 0.f : lse), vdl = splat(a.dl[lrow]);
          float* pr = pt + i * kTk;
          float* dr = dst + i * kTk;
          for (int64_t c = c0 - c0 % kLanes; c < c1; c += kLanes) {
            const vi idx = lanes + static_cast<int32_t>(c);
            const auto vis = idx >= va && idx < vb;
            const vf p = vis ? vexp(load(pr + c) - vl) : vf{};
            store(pr + c, p);
            store(dr + c, vis ? p * (load(dr + c) - vdl) : vf{});  // dS
          }
        }
#if defined(__AVX512BF16__)
        if (dot_all) {  // dV += Pᵀ dO, dK += scale dSᵀ Q, dQ += scale dS K with P, dS rounded to bf16
          const int64_t ldx = pair_ld(nc), nq2 = (nq + 1) / 2, nc2 = (nc + 1) / 2;
          const auto* qsrc = reinterpret_cast<const uint16_t*>(q + (b * s.Lq + i0) * ldq + hq * D);
          const auto* dsrc = reinterpret_cast<const uint16_t*>(dout + (b * s.Lq + i0) * ldq + hq * D);
          pack_b_f32(pt + c0, kTk, nq, nc, pi2, ldx);    // Pᵀ: pair (j, p) at pi2[p·ldx + j]
          pack_b_f32(dst + c0, kTk, nq, nc, dsi2, ldx);  // dSᵀ likewise
          pack_a_f32(dst + c0, kTk, nq, nc, dsa2);       // dS row pairs
          pack_b_bf16(dsrc, ldq, nq, D, dob2, pair_ld(D));
          pack_b_bf16(qsrc, ldq, nq, D, qb2, pair_ld(D));
          gemm_bf16(nc, D, nq2, pi2, 1, ldx, dob2, pair_ld(D), dv + c0 * ldkv, ldkv, 1.f, true);
          gemm_bf16(nc, D, nq2, dsi2, 1, ldx, qb2, pair_ld(D), dk + c0 * ldkv, ldkv, a.scale, true);
          gemm_bf16(nq, D, nc2, dsa2, nc2, 1, kb2, pair_ld(D), dq_w + ((b * s.Lq + i0) * s.Hq + hq) * D, s.Hq * D,
                    a.scale, true);
          continue;
        }
#endif
        // Per run, over its rows and columns only: every (i, j) term of the sums is
        // one that row i sees, so no hidden K, V, Q or dO row enters (not even as 0·NaN).
        for (int r = 0; r < tv.n_runs; ++r) {
          const auto& run = tv.runs[r];
          const int64_t nr = run.r1 - run.r0, ncr = run.c1 - run.c0;
          const float* pr = pt + run.r0 * kTk + run.c0;
          const float* dsr = dst + run.r0 * kTk + run.c0;
          sgemm(true, false, ncr, D, nr, 1.f, pr, kTk, doh.row(run.r0), doh.ld, 1.f, dv + run.c0 * ldkv, ldkv);  // dV += Pᵀ dO
          sgemm(true, false, ncr, D, nr, a.scale, dsr, kTk, qh.row(run.r0), qh.ld, 1.f, dk + run.c0 * ldkv,
                ldkv);  // dK += scale dSᵀ Q
          sgemm(false, false, nr, D, ncr, a.scale, dsr, kTk, kt.row(run.c0), kt.ld, 1.f,
                dq_w + ((b * s.Lq + i0 + run.r0) * s.Hq + hq) * D, s.Hq * D);  // dQ += scale dS K
        }
      }
    }
  };
  for_items(pool, items, item_fn);

  auto sum_fn = [&](int64_t row_block, int) {
    float* out = a.dq + row_block * s.Hq * D;
    for (int w = 0; w < workers; ++w) {
      if (touched[w] == 0.f) continue;
      const float* src = dq_all + static_cast<int64_t>(w) * rows_q * D + row_block * s.Hq * D;
      for (int64_t e = 0; e < s.Hq * D; ++e) out[e] += src[e];
    }
  };
  for_items(pool, s.B * s.Lq, sum_fn);
}

// Calls fn(T{}) with T the C++ storage type of `t`.
template <typename Fn>
void with_type(DType t, Fn&& fn) {
  switch (t) {
    case DType::f32: fn(float{}); break;
    case DType::f16: fn(_Float16{}); break;
    case DType::bf16: fn(Bf16{}); break;
  }
}

}  // namespace

void attend_fwd_step(const FwdStep& a, ThreadPool& pool) {
  if (a.s.B * a.s.Lq * a.s.Hq == 0 || a.s.Lkv == 0) return;
  with_type(a.dtype, [&](auto tag) { fwd_typed<decltype(tag)>(a, pool); });
}

void attend_bwd_step(const BwdStep& a, ThreadPool& pool) {
  if (a.s.B * a.s.Lq * a.s.Hq == 0 || a.s.Lkv == 0) return;
  with_type(a.dtype, [&](auto tag) { bwd_typed<decltype(tag)>(a, pool); });
}

void row_dot(const RowDot& a, ThreadPool& pool) {
  with_type(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* dout = static_cast<const T*>(a.dout);
    const T* o = static_cast<const T*>(a.o);
    auto fn = [&](int64_t bl, int) {
      const int64_t b = bl / a.L, i = bl % a.L;
      for (int64_t h = 0; h < a.H; ++h) {
        const int64_t base = (bl * a.H + h) * a.D;
        float acc = 0.f;
        for (int64_t c = 0; c < a.D; ++c) acc += to_f32(dout[base + c]) * to_f32(o[base + c]);
        a.dl[(b * a.H + h) * a.L + i] = acc;
      }
    };
    for_items(pool, a.B * a.L, fn);
  });
}

void merge_lse(const MergeLse& a, ThreadPool& pool) {
  auto fn = [&](int64_t bl, int) {
    const int64_t b = bl / a.L, i = bl % a.L;
    for (int64_t h = 0; h < a.H; ++h) {
      const int64_t row = bl * a.H + h, lrow = (b * a.H + h) * a.L + i;
      merge_row(a.o + row * a.D, a.lse + lrow, a.o_in + row * a.D, a.lse_in[lrow], a.D);
    }
  };
  for_items(pool, a.B * a.L, fn);
}

void convert(void* dst, DType dst_type, const void* src, DType src_type, size_t n, ThreadPool& pool) {
  constexpr int64_t kChunk = 1 << 16;
  const int64_t total = static_cast<int64_t>(n);
  with_type(src_type, [&](auto stag) {
    using S = decltype(stag);
    with_type(dst_type, [&](auto dtag) {
      using Dt = decltype(dtag);
      const S* sp = static_cast<const S*>(src);
      Dt* dp = static_cast<Dt*>(dst);
      auto fn = [&](int64_t c, int) {
        const int64_t e = min64(total, (c + 1) * kChunk);
        for (int64_t i = c * kChunk; i < e; ++i) dp[i] = from_f32<Dt>(to_f32(sp[i]));
      };
      for_items(pool, ceil_div(total, kChunk), fn);
    });
  });
}

}  // namespace lvx::cpu::LVX_CAT(isa_, LVX_CPU_ISA)
