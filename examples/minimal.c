/* The smallest complete lvxattn program in C: each rank holds its shard of the
 * text queries and of a long visual sequence, and the ranks compute exact
 * cross-attention forward and backward together.
 *   mpirun -n 2 ./lvx_minimal        (add --oversubscribe on a machine with fewer cores) */
#include <math.h>
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
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  srand(1 + rank);

  /* This rank's rows: 64 text queries and 4096 visual keys/values (any split works). */
  const int64_t B = 1, Lq = 64, Lkv = 4096, Hq = 8, Hkv = 2, D = 64;
  lvx_problem_t p = {B, Lq, Lkv, Hq, Hkv, D, LVX_FLOAT32, LVX_ALGO_LVX, NAN /* 1/sqrt(D) */};
  float *q = random_floats(B * Lq * Hq * D), *k = random_floats(B * Lkv * Hkv * D);
  float *v = random_floats(B * Lkv * Hkv * D), *dout = random_floats(B * Lq * Hq * D);
  float *o = malloc(B * Lq * Hq * D * sizeof(float)), *lse = malloc(B * Hq * Lq * sizeof(float));
  float *dq = malloc(B * Lq * Hq * D * sizeof(float));
  float *dk = malloc(B * Lkv * Hkv * D * sizeof(float)), *dv = malloc(B * Lkv * Hkv * D * sizeof(float));

  lvx_context_t ctx;
  CHECK(lvx_context_create(MPI_COMM_WORLD, NULL, &ctx));  /* NULL: CPU, default threads */
  CHECK(lvx_forward(ctx, &p, q, k, v, NULL /* no mask */, o, lse));
  CHECK(lvx_backward(ctx, &p, q, k, v, NULL, o, lse, dout, dq, dk, dv));
  lvx_stats_t fwd;
  CHECK(lvx_get_stats(ctx, 0, &fwd));
  if (rank == 0)
    printf("rank 0: o[0] = %.4f, forward sent %llu bytes in %.2f ms\n", o[0],
           (unsigned long long)fwd.bytes_sent, 1e3 * fwd.total_s);

  lvx_context_destroy(ctx);
  free(q); free(k); free(v); free(dout); free(o); free(lse); free(dq); free(dk); free(dv);
  MPI_Finalize();
  return 0;
}
