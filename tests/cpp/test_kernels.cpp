// CPU kernels against the float64 reference: one full step, two half steps
// merged, backward, masks with empty rows, GQA, odd lengths, all dtypes, every
// kernel variant this CPU runs; NaN/Inf in K/V rows no query row sees never reach
// a result; the caller's floating-point mode is kept; steady-state calls allocate
// nothing.
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "core/backend.hpp"
#include "cpu/attend_cpu.hpp"
#include "cpu/convert.hpp"
#include "reference.hpp"

// Every operator new of the process is counted (test_steady_state_allocation).
static std::atomic<long> g_allocations{0};
void* operator new(size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace {

int failures = 0;

// How the K/V rows no query row sees, and the Q/dO rows of query rows that see
// nothing, are filled (run_case): left random, or NaN / +Inf.
enum class Poison { none, nan, inf };

void expect_close(const char* what, const std::string& label, double err, double tol) {
  const bool ok = err <= tol;
  if (!ok) ++failures;
  std::printf("%s %-10s %-52s err %.2e (tol %.0e)\n", ok ? "ok  " : "FAIL", what, label.c_str(), err, tol);
}

template <typename T>
std::vector<T> to_storage(const std::vector<double>& x) {
  std::vector<T> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = lvx::cpu::from_f32<T>(static_cast<float>(x[i]));
  return y;
}
template <typename T>
std::vector<double> from_storage(const std::vector<T>& x) {
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = lvx::cpu::to_f32(x[i]);
  return y;
}
std::vector<double> widen(const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); }

// Windows with holes for the poisoned cases: KV rows [L/4, 3L/8) and [7L/8, L) are
// seen by no query row; each row sees a random interval inside [0, L/4) or
// [3L/8, 7L/8) (some rows nothing, some a whole segment), so tiles hold rows that
// see different subsets and straddle the holes.
std::vector<int32_t> ranges_with_holes(const ref::Shape& s, std::mt19937& gen, std::vector<char>& hidden) {
  const int L = int(s.Lkv);
  const int seg[2][2] = {{0, L / 4}, {3 * L / 8, 7 * L / 8}};
  hidden.assign(s.Lkv, 1);
  std::vector<int32_t> ranges;
  for (int64_t i = 0; i < s.B * s.Lq; ++i) {
    const auto& sg = seg[gen() % 2];
    int a = sg[0], b = sg[1];
    if (i % 5 == 2) {
      a = b = sg[0];  // empty
    } else if (i % 7 != 3 && b > a) {
      a = sg[0] + int(gen() % (b - a));
      b = a + 1 + int(gen() % (sg[1] - a));
    }
    ranges.push_back(a);
    ranges.push_back(b);
  }
  for (int64_t i = 0; i < s.B * s.Lq; ++i)
    for (int j = ranges[2 * i]; j < ranges[2 * i + 1]; ++j) hidden[j] = 0;
  return ranges;
}

template <typename T>
void run_case(lvx::Backend& be, lvx::DType dt, const ref::Shape& s, bool masked, std::mt19937& gen, double tol,
              Poison poison = Poison::none) {
  const double scale = 1.0 / std::sqrt(double(s.D));
  auto q = ref::randn(s.B * s.Lq * s.Hq * s.D, gen);
  auto k = ref::randn(s.B * s.Lkv * s.Hkv * s.D, gen);
  auto v = ref::randn(s.B * s.Lkv * s.Hkv * s.D, gen);
  auto dout = ref::randn(q.size(), gen);
  // Round inputs to storage precision so the reference sees the same numbers.
  q = from_storage(to_storage<T>(q));
  k = from_storage(to_storage<T>(k));
  v = from_storage(to_storage<T>(v));
  dout = from_storage(to_storage<T>(dout));
  std::vector<int32_t> ranges;
  std::vector<char> hidden;  // per KV row: seen by no query row of any batch
  if (poison != Poison::none) {
    ranges = ranges_with_holes(s, gen, hidden);
  } else if (masked) {
    std::uniform_int_distribution<int> pick(0, int(s.Lkv));
    for (int64_t i = 0; i < s.B * s.Lq; ++i) {
      int a = pick(gen), b = pick(gen);
      if (i % 5 == 0) a = b = int(s.Lkv / 2);  // empty
      if (i % 7 == 1) a = 0, b = int(s.Lkv);   // full
      ranges.push_back(std::min(a, b));
      ranges.push_back(std::max(a, b));
    }
  }
  // The reference reads visible rows only, so it is computed before the poisoning.
  auto r = ref::attention(s, q, k, v, ranges, scale, &dout);
  if (poison != Poison::none) {
    const double bad = poison == Poison::nan ? std::numeric_limits<double>::quiet_NaN()
                                             : std::numeric_limits<double>::infinity();
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t j = 0; j < s.Lkv; ++j)
        if (hidden[j])
          for (int64_t e = 0; e < s.Hkv * s.D; ++e) {
            k[(b * s.Lkv + j) * s.Hkv * s.D + e] = bad;
            v[(b * s.Lkv + j) * s.Hkv * s.D + e] = bad;
          }
    for (int64_t i = 0; i < s.B * s.Lq; ++i)  // and Q, dO of the rows that see nothing
      if (ranges[2 * i + 1] <= ranges[2 * i])
        for (int64_t e = 0; e < s.Hq * s.D; ++e) q[i * s.Hq * s.D + e] = dout[i * s.Hq * s.D + e] = bad;
  }
  auto qs = to_storage<T>(q), ks = to_storage<T>(k), vs = to_storage<T>(v), ds = to_storage<T>(dout);
  const float ninf = -std::numeric_limits<float>::infinity();
  const std::string label = std::string(lvx::name(dt)) + " B" + std::to_string(s.B) + " Lq" +
                            std::to_string(s.Lq) + " Lkv" + std::to_string(s.Lkv) + " H" + std::to_string(s.Hq) +
                            "/" + std::to_string(s.Hkv) + " D" + std::to_string(s.D) + (masked ? " masked" : "") +
                            (poison == Poison::nan ? " NaN-hidden" : poison == Poison::inf ? " Inf-hidden" : "");

  // Forward in one step, then in two steps over the halves of the KV range.
  for (int split : {0, 1}) {
    std::vector<float> o(q.size(), 0.f), lse(s.B * s.Hq * s.Lq, ninf);
    const int64_t half = split ? s.Lkv / 2 : s.Lkv;
    std::vector<std::pair<int64_t, int64_t>> parts = {{0, half}};
    if (split) parts.push_back({half, s.Lkv});
    for (auto [j0, j1] : parts) {
      // KV rows [j0, j1) of every batch as their own contiguous block.
      std::vector<T> kb, vb;
      for (int64_t b = 0; b < s.B; ++b) {
        const size_t row = s.Hkv * s.D;
        kb.insert(kb.end(), ks.begin() + (b * s.Lkv + j0) * row, ks.begin() + (b * s.Lkv + j1) * row);
        vb.insert(vb.end(), vs.begin() + (b * s.Lkv + j0) * row, vs.begin() + (b * s.Lkv + j1) * row);
      }
      lvx::FwdStep st;
      st.s = {s.B, s.Lq, j1 - j0, s.Hq, s.Hkv, s.D};
      st.dtype = dt;
      st.q = qs.data();
      st.k = kb.data();
      st.v = vb.data();
      st.q_ranges = masked ? ranges.data() : nullptr;
      st.kv_begin = j0;
      st.scale = float(scale);
      st.o = o.data();
      st.lse = lse.data();
      be.attend_fwd_step(st);
    }
    expect_close(split ? "fwd-2step" : "fwd O", label, ref::rel_err(widen(o), r.o), tol);
    expect_close(split ? "lse-2step" : "fwd LSE", label, ref::rel_err(widen(lse), r.lse), tol * 0.1);
  }
  // One step writing O in the storage type (FwdStep::o_out): the old O and LSE are not
  // read (both start as garbage here), rows that see nothing get O = 0 and LSE = -inf.
  if (dt != lvx::DType::f32) {
    std::vector<T> o_out = to_storage<T>(std::vector<double>(q.size(), 7.0));
    std::vector<float> lse(s.B * s.Hq * s.Lq, 12345.f);
    lvx::FwdStep st;
    st.s = {s.B, s.Lq, s.Lkv, s.Hq, s.Hkv, s.D};
    st.dtype = dt;
    st.q = qs.data();
    st.k = ks.data();
    st.v = vs.data();
    st.q_ranges = masked ? ranges.data() : nullptr;
    st.scale = float(scale);
    st.lse = lse.data();
    st.o_out = o_out.data();
    be.attend_fwd_step(st);
    expect_close("fwd O (o_out)", label, ref::rel_err(from_storage(o_out), r.o), tol);
    expect_close("fwd LSE (o_out)", label, ref::rel_err(widen(lse), r.lse), tol * 0.1);
  }

  // Backward in one step and in two.
  std::vector<T> os = to_storage<T>(r.o);
  std::vector<float> lse(r.lse.begin(), r.lse.end()), dl(s.B * s.Hq * s.Lq);
  be.row_dot(lvx::RowDot{s.B, s.Lq, s.Hq, s.D, dt, ds.data(), os.data(), dl.data()});
  for (int split : {0, 1}) {
    std::vector<float> dq(q.size(), 0.f), dk(k.size(), 0.f), dv(v.size(), 0.f);
    const int64_t half = split ? s.Lkv / 2 : s.Lkv;
    std::vector<std::pair<int64_t, int64_t>> parts = {{0, half}};
    if (split) parts.push_back({half, s.Lkv});
    for (auto [j0, j1] : parts) {
      const size_t row = s.Hkv * s.D;
      std::vector<T> kb, vb;
      for (int64_t b = 0; b < s.B; ++b) {
        kb.insert(kb.end(), ks.begin() + (b * s.Lkv + j0) * row, ks.begin() + (b * s.Lkv + j1) * row);
        vb.insert(vb.end(), vs.begin() + (b * s.Lkv + j0) * row, vs.begin() + (b * s.Lkv + j1) * row);
      }
      std::vector<float> dkb(kb.size(), 0.f), dvb(vb.size(), 0.f);
      lvx::BwdStep st;
      st.s = {s.B, s.Lq, j1 - j0, s.Hq, s.Hkv, s.D};
      st.dtype = dt;
      st.q = qs.data();
      st.k = kb.data();
      st.v = vb.data();
      st.dout = ds.data();
      st.lse = lse.data();
      st.dl = dl.data();
      st.q_ranges = masked ? ranges.data() : nullptr;
      st.kv_begin = j0;
      st.scale = float(scale);
      st.dq = dq.data();
      st.dk = dkb.data();
      st.dv = dvb.data();
      be.attend_bwd_step(st);
      for (int64_t b = 0; b < s.B; ++b)
        for (size_t e = 0; e < (j1 - j0) * row; ++e) {
          dk[(b * s.Lkv + j0) * row + e] = dkb[b * (j1 - j0) * row + e];
          dv[(b * s.Lkv + j0) * row + e] = dvb[b * (j1 - j0) * row + e];
        }
    }
    const char* tag = split ? "-2step" : "";
    if (poison != Poison::none) {  // the hidden rows' gradients are exactly zero
      double worst = 0;
      for (int64_t b = 0; b < s.B; ++b)
        for (int64_t j = 0; j < s.Lkv; ++j)
          if (hidden[j])
            for (int64_t e = 0; e < s.Hkv * s.D; ++e) {
              const size_t x = (b * s.Lkv + j) * s.Hkv * s.D + e;
              worst = std::max({worst, std::fabs(double(dk[x])), std::fabs(double(dv[x]))});
              if (std::isnan(dk[x]) || std::isnan(dv[x])) worst = std::numeric_limits<double>::infinity();
            }
      expect_close((std::string("dKV-hid") + tag).c_str(), label, worst, 0.0);
    }
    expect_close((std::string("dQ") + tag).c_str(), label, ref::rel_err(widen(dq), r.dq), tol);
    expect_close((std::string("dK") + tag).c_str(), label, ref::rel_err(widen(dk), r.dk), tol);
    expect_close((std::string("dV") + tag).c_str(), label, ref::rel_err(widen(dv), r.dv), tol);
  }
}

void test_merge(lvx::Backend& be) {
  // merge((o1, l1), (o2, l2)) equals the weighted mean; -inf on either side is a no-op.
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> o = {1, 2, 0, 0}, lse = {0.5f, ninf};
  std::vector<float> oi = {3, 4, 5, 6}, lsei = {1.5f, 2.0f};
  be.merge_lse(lvx::MergeLse{1, 2, 1, 2, o.data(), lse.data(), oi.data(), lsei.data()});
  const double w1 = 1 / (1 + std::exp(1.0)), w2 = 1 - w1;
  const double err = std::fabs(o[0] - (1 * w1 + 3 * w2)) + std::fabs(o[1] - (2 * w1 + 4 * w2)) +
                     std::fabs(lse[0] - (1.5 + std::log1p(std::exp(-1.0)))) + std::fabs(o[2] - 5) +
                     std::fabs(o[3] - 6) + std::fabs(lse[1] - 2.0f);
  expect_close("merge", "two rows, one from -inf", err, 1e-6);
}

}  // namespace

// The caller's MXCSR control bits (x86) come back unchanged: the kernels' flush-to-zero
// is scoped. (Bits 0-5 are sticky exception flags that any arithmetic may raise.)
void test_fp_mode_kept(lvx::Backend& be) {
#if defined(__x86_64__)
  std::mt19937 gen(7);
  const ref::Shape s{1, 40, 300, 2, 1, 16};
  const unsigned saved = _mm_getcsr();
  double changed = 0;
  for (unsigned mode : {0x1f80u, 0x9fc0u}) {  // default; FTZ+DAZ already on
    _mm_setcsr(mode);
    run_case<float>(be, lvx::DType::f32, s, true, gen, 2e-5);
    if ((_mm_getcsr() & ~0x3fu) != (mode & ~0x3fu)) changed += 1;
  }
  _mm_setcsr(saved);
  expect_close("fp mode", "MXCSR after the kernels equals the caller's", changed, 0.0);
#else
  (void)be;
#endif
}

// A repeated identical forward + backward allocates nothing (scratch is reused).
void test_steady_state_allocation(lvx::Backend& be) {
  const ref::Shape s{2, 150, 700, 8, 2, 64};
  std::mt19937 gen(3);
  auto q = to_storage<float>(ref::randn(s.B * s.Lq * s.Hq * s.D, gen));
  auto k = to_storage<float>(ref::randn(s.B * s.Lkv * s.Hkv * s.D, gen));
  auto v = to_storage<float>(ref::randn(k.size(), gen));
  std::vector<float> o(q.size()), lse(s.B * s.Hq * s.Lq), dl(lse.size(), 0.f), dq(q.size()), dk(k.size()), dv(k.size());
  lvx::FwdStep f;
  f.s = {s.B, s.Lq, s.Lkv, s.Hq, s.Hkv, s.D};
  f.q = q.data(), f.k = k.data(), f.v = v.data(), f.scale = 0.125f, f.o = o.data(), f.lse = lse.data();
  lvx::BwdStep bw;
  bw.s = f.s;
  bw.q = q.data(), bw.k = k.data(), bw.v = v.data(), bw.dout = q.data(), bw.lse = lse.data(), bw.dl = dl.data();
  bw.scale = 0.125f, bw.dq = dq.data(), bw.dk = dk.data(), bw.dv = dv.data();
  long counted = 0;
  for (int call = 0; call < 4; ++call) {  // the pool hands items out dynamically: warm every worker
    std::fill(o.begin(), o.end(), 0.f);
    std::fill(lse.begin(), lse.end(), -std::numeric_limits<float>::infinity());
    const long before = g_allocations.load();
    be.attend_fwd_step(f);
    be.attend_bwd_step(bw);
    counted = g_allocations.load() - before;
  }
  expect_close("no alloc", "operator new calls in a repeated fwd+bwd step", double(counted), 0.0);
}

void run_all(lvx::Backend& be, std::mt19937& gen) {
  test_merge(be);
  const ref::Shape shapes[] = {
      {1, 1, 1, 1, 1, 32},    {1, 7, 13, 8, 2, 64},    {3, 65, 129, 4, 4, 80},
      {1, 130, 300, 32, 8, 128}, {2, 33, 257, 2, 1, 40},
  };
  for (const auto& s : shapes)
    for (bool masked : {false, true}) {
      run_case<float>(be, lvx::DType::f32, s, masked, gen, 2e-5);
      run_case<lvx::cpu::Bf16>(be, lvx::DType::bf16, s, masked, gen, 2e-2);
      run_case<_Float16>(be, lvx::DType::f16, s, masked, gen, 4e-3);
    }
  // NaN / Inf in the K/V rows no query row sees; tiles straddle the holes.
  const ref::Shape poisoned[] = {{1, 4, 10, 1, 1, 8}, {2, 150, 700, 4, 2, 64}, {1, 70, 1100, 8, 8, 32}};
  for (const auto& s : poisoned)
    for (Poison p : {Poison::nan, Poison::inf}) {
      run_case<float>(be, lvx::DType::f32, s, true, gen, 2e-5, p);
      run_case<lvx::cpu::Bf16>(be, lvx::DType::bf16, s, true, gen, 2e-2, p);
      run_case<_Float16>(be, lvx::DType::f16, s, true, gen, 4e-3, p);
    }
  test_fp_mode_kept(be);
}


int main() {
  auto be = lvx::make_cpu_backend(2);
  std::mt19937 gen(1234);
  // The dispatch picks the best variant this CPU supports (unless LVX_CPU_ISA says otherwise).
  const auto isas = lvx::cpu::cpu_isas_available();
  std::printf("kernel variants on this CPU: ");
  for (const auto& n : isas) std::printf("%s ", n.c_str());
  std::printf("\ndispatch picked: %s\n", lvx::cpu::cpu_kernels_describe().c_str());
  if (!std::getenv("LVX_CPU_ISA"))
    expect_close("dispatch", "picked the best variant (" + isas.front() + ")", lvx::cpu::cpu_isa() == isas.front() ? 0 : 1, 0);
  test_steady_state_allocation(*be);
  const std::string picked = lvx::cpu::cpu_isa();
  for (const auto& isa : isas) {  // every variant against the float64 reference
    lvx::cpu::set_cpu_isa(isa);
    std::printf("---- variant %s\n", isa.c_str());
    run_all(*be, gen);
  }
  lvx::cpu::set_cpu_isa(picked);
  std::printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
