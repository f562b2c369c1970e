/* The smallest complete lvxattn program in C: each rank holds its shard of the
 * text queries and of a long visual sequence, and the ranks compute exact
 * cross-attention forward and backward together.
 *   mpirun -n 2 ./lvx_minimal        (add --oversubscribe on a machine with fewer cores) */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include <lvx/lvx.h>

#define CHECK(call)                                                                   \
  do {                                                                                \
    if ((call) != LVX_SUCCESS) {                                                      \
      fprintf(stderr, "%s failed: %s\n", #call, lvx_last_error());                    \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                   \
    }                                                                                 \
  } while (0)

static float* random_floats(size_t n) {
  float* x = malloc(n * sizeof(float));
  for (size_t i = 0; i < n; ++i) x[i] = (float)rand() / RAND_MAX - 0.5f;
  return x;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  if (lvx_version() / 100 != LVX_VERSION / 100) { /* the library linked, against this header */
    fprintf(stderr, "lvxattn %d linked, built against %d\n", lvx_version(), LVX_VERSION);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  srand(1 + rank);

  /* This rank's rows: 64 text queries and 4096 visual keys/values (any split works). */
  const int64_t B = 1, Lq = 64, Lkv = 4096, Hq = 8, Hkv = 2, D = 64;
  lvx_problem_t p;
  lvx_default_problem(&p); /* struct_size and defaults (float32, scale 1/sqrt(D)), then the fields */
  p.batch = B;
  p.q_len = Lq;
  p.kv_len = Lkv;
  p.q_heads = Hq;
  p.kv_heads = Hkv;
  p.head_dim = D;
  p.algorithm = LVX_ALGO_LVX;
  float *q = random_floats(B * Lq * Hq * D), *k = random_floats(B * Lkv * Hkv * D);
  float *v = random_floats(B * Lkv * Hkv * D), *dout = random_floats(B * Lq * Hq * D);
  float *o = malloc(B * Lq * Hq * D * sizeof(float)), *lse = malloc(B * Hq * Lq * sizeof(float));
  float *dq = malloc(B * Lq * Hq * D * sizeof(float));
  float *dk = malloc(B * Lkv * Hkv * D * sizeof(float)), *dv = malloc(B * Lkv * Hkv * D * sizeof(float));

  lvx_context_t ctx;
  CHECK(lvx_context_create(MPI_COMM_WORLD, NULL, &ctx));  /* NULL: CPU, default threads */
  CHECK(lvx_forward(ctx, &p, q, k, v, NULL /* no mask */, o, lse));
  CHECK(lvx_backward(ctx, &p, q, k, v, NULL, o, lse, dout, dq, dk, dv));
  lvx_stats_t fwd = {sizeof(lvx_stats_t)};
  CHECK(lvx_get_stats(ctx, 0, &fwd));
  if (rank == 0)
    printf("rank 0: o[0] = %.4f, forward sent %llu bytes in %.2f ms\n", o[0],
           (unsigned long long)fwd.bytes_sent, 1e3 * fwd.total_s);

  lvx_context_destroy(ctx);
  free(q); free(k); free(v); free(dout); free(o); free(lse); free(dq); free(dk); free(dv);
  MPI_Finalize();
  return 0;
}
