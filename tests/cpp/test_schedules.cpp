// The schedules through the C API under mpirun: every rank builds the same
// global problem, runs lvx, ring and ulysses on its (uneven) shard, and checks
// its shard of O, LSE, dQ, dK, dV against the float64 reference. Also checks
// that bad input on one rank fails every rank with the same error, and the versioned
// structs of the C API.
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "lvx/lvx.h"
#include "reference.hpp"

namespace {

int rank = 0, nranks = 1, failures = 0;

void check(bool ok, const std::string& what) {
  int all_ok = ok;
  MPI_Allreduce(MPI_IN_PLACE, &all_ok, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
  if (!ok) std::printf("FAIL rank %d: %s\n", rank, what.c_str());
  if (!all_ok) ++failures;
  if (rank == 0 && all_ok) std::printf("ok   %s\n", what.c_str());
}

// Splits n rows over the ranks unevenly; with zero_rank >= 0 that rank gets none.
std::vector<int64_t> split(int64_t n, int zero_rank, int salt) {
  std::vector<int64_t> w(nranks);
  int64_t total = 0;
  for (int r = 0; r < nranks; ++r) total += (w[r] = (r == zero_rank) ? 0 : 1 + (r * 7 + salt) % 5);
  std::vector<int64_t> rows(nranks);
  int64_t given = 0;
  for (int r = 0; r < nranks; ++r) given += (rows[r] = n * w[r] / total);
  for (int r = nranks - 1; given < n; r = (r + nranks - 1) % nranks)
    if (w[r]) rows[r]++, given++;
  return rows;
}

int64_t offset_of(const std::vector<int64_t>& rows, int r) {
  int64_t o = 0;
  for (int q = 0; q < r; ++q) o += rows[q];
  return o;
}

// Rows [off, off + n) of every batch of x [B, L, H·D] (H·D = row).
std::vector<float> shard(const std::vector<double>& x, int64_t B, int64_t L, int64_t row, int64_t off, int64_t n) {
  std::vector<float> y;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t e = (b * L + off) * row; e < (b * L + off + n) * row; ++e) y.push_back(float(x[e]));
  return y;
}

lvx_problem_t problem(int64_t B, int64_t q_len, int64_t kv_len, int64_t Hq, int64_t Hkv, int64_t D,
                      lvx_algorithm_t algorithm) {
  lvx_problem_t p;
  lvx_default_problem(&p);  // struct_size, float32, scale NaN (1/sqrt(D))
  p.batch = B;
  p.q_len = q_len;
  p.kv_len = kv_len;
  p.q_heads = Hq;
  p.kv_heads = Hkv;
  p.head_dim = D;
  p.algorithm = algorithm;
  return p;
}

void run_case(const ref::Shape& g, lvx_algorithm_t algo, bool masked, int zero_q, int zero_kv, int salt) {
  std::mt19937 gen(42 + salt);  // same on every rank
  auto q = ref::randn(g.B * g.Lq * g.Hq * g.D, gen), k = ref::randn(g.B * g.Lkv * g.Hkv * g.D, gen);
  auto v = ref::randn(k.size(), gen), dout = ref::randn(q.size(), gen);
  std::vector<int32_t> ranges;
  if (masked) {
    // Llama 3.2 Vision style: row i sees images [0, end_i) with end growing along the text.
    for (int64_t b = 0; b < g.B; ++b)
      for (int64_t i = 0; i < g.Lq; ++i) {
        ranges.push_back(0);
        ranges.push_back(int32_t((i * 3 / std::max<int64_t>(g.Lq, 1)) * g.Lkv / 3));
      }
  }
  const double scale = 1.0 / std::sqrt(double(g.D));
  auto ref = ref::attention(g, q, k, v, ranges, scale, &dout);

  auto lq = split(g.Lq, zero_q, salt), lkv = split(g.Lkv, zero_kv, salt + 3);
  const int64_t qo = offset_of(lq, rank), ko = offset_of(lkv, rank), nq = lq[rank], nk = lkv[rank];
  const int64_t qrow = g.Hq * g.D, kvrow = g.Hkv * g.D;
  auto qs = shard(q, g.B, g.Lq, qrow, qo, nq), ks = shard(k, g.B, g.Lkv, kvrow, ko, nk);
  auto vs = shard(v, g.B, g.Lkv, kvrow, ko, nk), ds = shard(dout, g.B, g.Lq, qrow, qo, nq);
  std::vector<int32_t> rs;
  for (int64_t b = 0; b < g.B && masked; ++b)
    for (int64_t i = qo; i < qo + nq; ++i) rs.insert(rs.end(), {ranges[(b * g.Lq + i) * 2], ranges[(b * g.Lq + i) * 2 + 1]});

  lvx_context_t ctx;
  if (lvx_context_create(MPI_COMM_WORLD, nullptr, &ctx) != LVX_SUCCESS) {
    check(false, std::string("context: ") + lvx_last_error());
    return;
  }
  lvx_problem_t p = problem(g.B, nq, nk, g.Hq, g.Hkv, g.D, algo);
  std::vector<float> o(qs.size()), lse(g.B * g.Hq * nq), dq(qs.size()), dk(ks.size()), dv(vs.size());
  const int32_t* rp = masked ? rs.data() : nullptr;
  lvx_result_t rc = lvx_forward(ctx, &p, qs.data(), ks.data(), vs.data(), rp, o.data(), lse.data());
  if (rc == LVX_SUCCESS)
    rc = lvx_backward(ctx, &p, qs.data(), ks.data(), vs.data(), rp, o.data(), lse.data(), ds.data(), dq.data(),
                      dk.data(), dv.data());
  const char* names[] = {"lvx", "ring", "ulysses", "auto"};
  char label[200];
  std::snprintf(label, sizeof label, "%-7s P=%d B%ld Lq%ld Lkv%ld H%ld/%ld D%ld%s zero(q=%d,kv=%d)", names[algo], nranks,
                long(g.B), long(g.Lq), long(g.Lkv), long(g.Hq), long(g.Hkv), long(g.D), masked ? " masked" : "",
                zero_q, zero_kv);
  if (rc != LVX_SUCCESS) {
    check(false, std::string(label) + ": " + lvx_last_error());
    lvx_context_destroy(ctx);
    return;
  }
  auto widen = [](const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); };
  auto ref_o = shard(ref.o, g.B, g.Lq, qrow, qo, nq), ref_dq = shard(ref.dq, g.B, g.Lq, qrow, qo, nq);
  auto ref_dk = shard(ref.dk, g.B, g.Lkv, kvrow, ko, nk), ref_dv = shard(ref.dv, g.B, g.Lkv, kvrow, ko, nk);
  std::vector<double> ref_lse;
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t h = 0; h < g.Hq; ++h)
      for (int64_t i = qo; i < qo + nq; ++i) ref_lse.push_back(ref.lse[(b * g.Hq + h) * g.Lq + i]);
  double err = std::max({ref::rel_err(widen(o), widen(ref_o)), ref::rel_err(widen(lse), ref_lse),
                         ref::rel_err(widen(dq), widen(ref_dq)), ref::rel_err(widen(dk), widen(ref_dk)),
                         ref::rel_err(widen(dv), widen(ref_dv))});
  char msg[300];
  std::snprintf(msg, sizeof msg, "%s max rel err %.1e", label, err);
  check(err < 1e-4, msg);
  lvx_context_destroy(ctx);
}

void bad_input_fails_everywhere() {
  lvx_context_t ctx;
  lvx_context_create(MPI_COMM_WORLD, nullptr, &ctx);
  // The last rank asks for a different head dim: every rank must fail with the same code.
  const int64_t D = rank == nranks - 1 && nranks > 1 ? 32 : 16;
  lvx_problem_t p = problem(1, 4, 4, 2, 2, D, LVX_ALGO_LVX);
  std::vector<float> buf(4 * 2 * 32, 1.f), lse(8);
  lvx_result_t rc = lvx_forward(ctx, &p, buf.data(), buf.data(), buf.data(), nullptr, buf.data(), lse.data());
  if (nranks > 1)
    check(rc == LVX_ERROR_RANK_MISMATCH && std::strstr(lvx_last_error(), "head dim"),
          std::string("head-dim mismatch fails every rank: ") + lvx_last_error());
  // One rank passes a reversed q_range.
  std::vector<int32_t> rs(8, 0);
  if (rank == 0) rs[1] = -1;
  p.head_dim = 16;
  rc = lvx_forward(ctx, &p, buf.data(), buf.data(), buf.data(), rs.data(), buf.data(), lse.data());
  check(rc == LVX_ERROR_INVALID_ARGUMENT && std::strstr(lvx_last_error(), "q_ranges"),
        std::string("bad q_ranges on rank 0 fails every rank: ") + lvx_last_error());
  // The last rank passes a problem its lvx_default_problem never filled.
  rs.assign(8, 0);
  lvx_problem_t unset = p;
  if (rank == nranks - 1) unset.struct_size = 0;
  rc = lvx_forward(ctx, &unset, buf.data(), buf.data(), buf.data(), nullptr, buf.data(), lse.data());
  check(rc == LVX_ERROR_INVALID_ARGUMENT && std::strstr(lvx_last_error(), "struct_size"),
        std::string("an unset struct_size on one rank fails every rank: ") + lvx_last_error());
  lvx_context_destroy(ctx);
}

// The versioned C API: the version, sized structs, and the stats naming what ran.
void versioned_api() {
  check(lvx_version() == LVX_VERSION, "lvx_version() is the header's LVX_VERSION");
  lvx_options_t o;
  lvx_default_options(&o);
  check(o.struct_size == sizeof o && o.transport == LVX_TRANSPORT_AUTO && o.device_index == -1,
        "lvx_default_options fills struct_size and the defaults");
  // Options a rank did not fill: creating the context fails on every rank.
  lvx_options_t bad = o;
  if (rank == 0) bad.struct_size = 0;
  lvx_context_t ctx = nullptr;
  lvx_result_t rc = lvx_context_create(MPI_COMM_WORLD, &bad, &ctx);
  check(rc == LVX_ERROR_INVALID_ARGUMENT && !ctx && std::strstr(lvx_last_error(), "lvx_options_t.struct_size"),
        std::string("unfilled options on rank 0 fail every rank's lvx_context_create: ") + lvx_last_error());
  // A transport asked for that this build or device cannot run fails every rank at the first call.
  o.transport = LVX_TRANSPORT_NCCL;
  rc = lvx_context_create(MPI_COMM_WORLD, &o, &ctx);
  check(rc == LVX_SUCCESS, "a CPU context asking for NCCL is made");
  lvx_problem_t p = problem(1, 2, 3, 2, 2, 8, LVX_ALGO_RING);
  std::vector<float> q(2 * 2 * 8, 1.f), kv(3 * 2 * 8, 1.f), o_(q.size()), lse(4);
  rc = lvx_forward(ctx, &p, q.data(), kv.data(), kv.data(), nullptr, o_.data(), lse.data());
  if (nranks > 1)
    check(rc == LVX_ERROR_INVALID_ARGUMENT && std::strstr(lvx_last_error(), "nccl"),
          std::string("NCCL for CPU buffers fails every rank: ") + lvx_last_error());
  lvx_context_destroy(ctx);
  // Stats, with a struct_size: the algorithm and the transport that ran.
  o.transport = LVX_TRANSPORT_AUTO;
  lvx_context_create(MPI_COMM_WORLD, &o, &ctx);
  p.algorithm = LVX_ALGO_AUTO;
  rc = lvx_forward(ctx, &p, q.data(), kv.data(), kv.data(), nullptr, o_.data(), lse.data());
  lvx_stats_t st = {sizeof(lvx_stats_t)};
  if (rc == LVX_SUCCESS) rc = lvx_get_stats(ctx, 0, &st);
  check(rc == LVX_SUCCESS && st.algorithm != LVX_ALGO_AUTO &&
            st.transport == (nranks > 1 ? LVX_TRANSPORT_MPI : LVX_TRANSPORT_NONE) && st.struct_size == sizeof st,
        std::string("stats name the algorithm and transport that ran: ") + lvx_last_error());
  lvx_context_destroy(ctx);
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);
  const ref::Shape shapes[] = {{2, 37, 203, 8, 2, 32}, {1, 64, 150, 4, 4, 64}};
  int salt = 0;
  for (const auto& s : shapes)
    for (lvx_algorithm_t a : {LVX_ALGO_LVX, LVX_ALGO_RING, LVX_ALGO_ULYSSES})
      for (bool masked : {false, true}) {
        const bool heads_ok = s.Hq % nranks == 0 && s.Hkv % nranks == 0;
        if (a == LVX_ALGO_ULYSSES && !heads_ok) continue;
        run_case(s, a, masked, -1, -1, salt++);
        if (nranks > 2) run_case(s, a, masked, 0, nranks - 1, salt++);
      }
  bad_input_fails_everywhere();
  versioned_api();
  if (rank == 0) std::printf("%d failed\n", failures);
  MPI_Finalize();
  return failures ? 1 : 0;
}
