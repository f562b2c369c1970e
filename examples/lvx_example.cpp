// lvx forward + backward from plain C++ under mpirun, checked against a local
// single-process computation of the same global problem.
//   mpirun -n 3 ./lvx_example
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "lvx/lvx.h"

#define CHECK_LVX(call)                                                                   \
  do {                                                                                    \
    lvx_result_t rc_ = (call);                                                            \
    if (rc_ != LVX_SUCCESS) {                                                             \
      std::fprintf(stderr, "%s failed: %s (%s)\n", #call, lvx_result_string(rc_), lvx_last_error()); \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                       \
    }                                                                                     \
  } while (0)

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  if (lvx_version() / 100 != LVX_VERSION / 100) {  // the library linked, against this header
    std::fprintf(stderr, "lvxattn %d linked, built against %d\n", lvx_version(), LVX_VERSION);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  int rank, P;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &P);

  // Global problem (same seed everywhere): text queries attend to a long visual sequence.
  const int64_t B = 1, Lq = 48, Lkv = 600, Hq = 8, Hkv = 2, D = 32;
  std::mt19937 gen(7);
  std::normal_distribution<float> nd;
  std::vector<float> q(B * Lq * Hq * D), k(B * Lkv * Hkv * D), v(k.size()), dout(q.size());
  for (auto* x : {&q, &k, &v, &dout})
    for (auto& e : *x) e = nd(gen);

  // Contiguous shards: rank r owns rows [off, off + n) of each sequence; n / P rows
  // each and the first n % P ranks one more (the package's even split).
  auto piece = [&](int64_t n, int r, int64_t* off) {
    const int64_t base = n / P, extra = n % P;
    *off = r * base + (r < extra ? r : extra);
    return base + (r < extra ? 1 : 0);
  };
  int64_t qo, ko;
  const int64_t nq = piece(Lq, rank, &qo), nk = piece(Lkv, rank, &ko);
  auto rows = [](const std::vector<float>& x, int64_t off, int64_t n, int64_t width) {
    return std::vector<float>(x.begin() + off * width, x.begin() + (off + n) * width);
  };
  auto ql = rows(q, qo, nq, Hq * D), kl = rows(k, ko, nk, Hkv * D), vl = rows(v, ko, nk, Hkv * D);
  auto dl = rows(dout, qo, nq, Hq * D);

  lvx_context_t ctx;
  CHECK_LVX(lvx_context_create(MPI_COMM_WORLD, nullptr, &ctx));
  // Fill the struct with its defaults first (struct_size, float32, scale 1/sqrt(D)), then set fields.
  lvx_problem_t dist;
  lvx_default_problem(&dist);
  dist.batch = B;
  dist.q_len = nq;
  dist.kv_len = nk;
  dist.q_heads = Hq;
  dist.kv_heads = Hkv;
  dist.head_dim = D;
  dist.algorithm = LVX_ALGO_LVX;
  std::vector<float> o(ql.size()), lse(Hq * nq), dq(ql.size()), dk(kl.size()), dv(vl.size());
  CHECK_LVX(lvx_forward(ctx, &dist, ql.data(), kl.data(), vl.data(), nullptr, o.data(), lse.data()));
  CHECK_LVX(lvx_backward(ctx, &dist, ql.data(), kl.data(), vl.data(), nullptr, o.data(), lse.data(), dl.data(),
                         dq.data(), dk.data(), dv.data()));
  lvx_stats_t fs = {sizeof(lvx_stats_t)}, bs = {sizeof(lvx_stats_t)};
  CHECK_LVX(lvx_get_stats(ctx, 0, &fs));
  CHECK_LVX(lvx_get_stats(ctx, 1, &bs));

  // The whole problem on this rank alone, through a single-process context.
  lvx_context_t solo;
  CHECK_LVX(lvx_context_create(MPI_COMM_NULL, nullptr, &solo));
  lvx_problem_t whole = dist;
  whole.q_len = Lq;
  whole.kv_len = Lkv;
  std::vector<float> O(q.size()), LSE(Hq * Lq), dQ(q.size()), dK(k.size()), dV(v.size());
  CHECK_LVX(lvx_forward(solo, &whole, q.data(), k.data(), v.data(), nullptr, O.data(), LSE.data()));
  CHECK_LVX(lvx_backward(solo, &whole, q.data(), k.data(), v.data(), nullptr, O.data(), LSE.data(), dout.data(),
                         dQ.data(), dK.data(), dV.data()));

  auto max_diff = [](const std::vector<float>& a, const std::vector<float>& b, int64_t off) {
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::fmax(m, std::fabs(double(a[i]) - b[off + i]));
    return m;
  };
  double err = std::fmax(max_diff(o, O, qo * Hq * D), max_diff(dq, dQ, qo * Hq * D));
  err = std::fmax(err, std::fmax(max_diff(dk, dK, ko * Hkv * D), max_diff(dv, dV, ko * Hkv * D)));
  MPI_Allreduce(MPI_IN_PLACE, &err, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0)
    std::printf("lvx on %d ranks: max |distributed - single| = %.2e; rank 0 sent %llu B forward, %llu B backward\n", P,
                err, static_cast<unsigned long long>(fs.bytes_sent), static_cast<unsigned long long>(bs.bytes_sent));
  lvx_context_destroy(solo);
  lvx_context_destroy(ctx);
  MPI_Finalize();
  return err < 1e-4 ? 0 : 1;
}
