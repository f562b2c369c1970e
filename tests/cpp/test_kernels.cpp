// CPU kernels against the float64 reference: one full step, two half steps
// merged, backward, masks with empty rows, GQA, odd lengths, all dtypes.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>

#include "core/backend.hpp"
#include "cpu/convert.hpp"
#include "reference.hpp"

namespace {

int failures = 0;

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

template <typename T>
void run_case(lvx::Backend& be, lvx::DType dt, const ref::Shape& s, bool masked, std::mt19937& gen, double tol) {
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
  if (masked) {
    std::uniform_int_distribution<int> pick(0, int(s.Lkv));
    for (int64_t i = 0; i < s.B * s.Lq; ++i) {
      int a = pick(gen), b = pick(gen);
      if (i % 5 == 0) a = b = int(s.Lkv / 2);  // empty
      if (i % 7 == 1) a = 0, b = int(s.Lkv);   // full
      ranges.push_back(std::min(a, b));
      ranges.push_back(std::max(a, b));
    }
  }
  auto r = ref::attention(s, q, k, v, ranges, scale, &dout);
  auto qs = to_storage<T>(q), ks = to_storage<T>(k), vs = to_storage<T>(v), ds = to_storage<T>(dout);
  const float ninf = -std::numeric_limits<float>::infinity();
  const std::string label = std::string(lvx::name(dt)) + " B" + std::to_string(s.B) + " Lq" +
                            std::to_string(s.Lq) + " Lkv" + std::to_string(s.Lkv) + " H" + std::to_string(s.Hq) +
                            "/" + std::to_string(s.Hkv) + " D" + std::to_string(s.D) + (masked ? " masked" : "");

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

int main() {
  auto be = lvx::make_cpu_backend(2);
  std::mt19937 gen(1234);
  test_merge(*be);
  const ref::Shape shapes[] = {
      {1, 1, 1, 1, 1, 32},    {1, 7, 13, 8, 2, 64},    {3, 65, 129, 4, 4, 80},
      {1, 130, 300, 32, 8, 128}, {2, 33, 257, 2, 1, 40},
  };
  for (const auto& s : shapes)
    for (bool masked : {false, true}) {
      run_case<float>(*be, lvx::DType::f32, s, masked, gen, 2e-5);
      run_case<lvx::cpu::Bf16>(*be, lvx::DType::bf16, s, masked, gen, 2e-2);
      run_case<_Float16>(*be, lvx::DType::f16, s, masked, gen, 4e-3);
    }
  std::printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
