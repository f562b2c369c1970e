/* lvxattn C API: exact distributed cross-attention (LV-XAttn, Ring, Ulysses).
 *
 * Layouts (contiguous): Q, O, dO, dQ [B, Lq_local, Hq, D]; K, V, dK, dV
 * [B, Lkv_local, Hkv, D]; LSE [B, Hq, Lq_local] float; q_ranges (optional)
 * int32 [B, Lq_local, 2] = visible KV interval [begin, end) in global KV rows.
 * Each global sequence is split into contiguous pieces in rank order; pieces may
 * differ in length (zero included). Calls on a context are collective.
 *
 * Every call returns an lvx_result_t; lvx_last_error() gives the text of the
 * last failure on the calling thread. */
#ifndef LVX_LVX_H
#define LVX_LVX_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  LVX_SUCCESS = 0,
  LVX_ERROR_INVALID_ARGUMENT = 1,
  LVX_ERROR_RANK_MISMATCH = 2,
  LVX_ERROR_MPI = 3,
  LVX_ERROR_CUDA = 4,
  LVX_ERROR_NCCL = 5,
  LVX_ERROR_UNSUPPORTED = 6,
  LVX_ERROR_OUT_OF_MEMORY = 7,
  LVX_ERROR_INTERNAL = 8
} lvx_result_t;

typedef enum { LVX_FLOAT32 = 0, LVX_FLOAT16 = 1, LVX_BFLOAT16 = 2 } lvx_dtype_t;
typedef enum { LVX_ALGO_LVX = 0, LVX_ALGO_RING = 1, LVX_ALGO_ULYSSES = 2, LVX_ALGO_AUTO = 3 } lvx_algorithm_t;
typedef enum { LVX_DEVICE_CPU = 0, LVX_DEVICE_CUDA = 1 } lvx_device_t;

typedef struct lvx_context_s* lvx_context_t;

typedef struct {
  lvx_device_t device;  /* where the buffers live */
  int device_index;     /* CUDA device, -1: local rank modulo the device count */
  int threads;          /* CPU threads, 0: cores divided by ranks on the node */
  const char* transport; /* "auto", "mpi" or "nccl"; NULL means "auto" */
} lvx_options_t;

typedef struct {
  int64_t batch, q_len, kv_len; /* q_len and kv_len are this rank's rows */
  int64_t q_heads, kv_heads, head_dim;
  lvx_dtype_t dtype;
  lvx_algorithm_t algorithm;
  float scale;                  /* NaN: 1/sqrt(head_dim) */
} lvx_problem_t;

typedef struct {
  uint64_t bytes_sent, bytes_recv;
  double compute_s, blocked_s, total_s;
  int steps;
  lvx_algorithm_t algorithm;    /* the one that ran (resolves LVX_ALGO_AUTO) */
} lvx_stats_t;

void lvx_default_options(lvx_options_t* options);
/* Collective over comm. comm == MPI_COMM_NULL makes a single-process context. */
lvx_result_t lvx_context_create(MPI_Comm comm, const lvx_options_t* options, lvx_context_t* context);
void lvx_context_destroy(lvx_context_t context);
/* CUDA stream (cudaStream_t) for the context's work; NULL: its own stream. */
lvx_result_t lvx_set_stream(lvx_context_t context, void* stream);

lvx_result_t lvx_forward(lvx_context_t context, const lvx_problem_t* problem, const void* q,
                         const void* k, const void* v, const int32_t* q_ranges, void* o, float* lse);
lvx_result_t lvx_backward(lvx_context_t context, const lvx_problem_t* problem, const void* q,
                          const void* k, const void* v, const int32_t* q_ranges, const void* o,
                          const float* lse, const void* dout, void* dq, void* dk, void* dv);
/* phase: 0 forward, 1 backward; the last call of that phase. On a GPU, lvx_forward and
   lvx_backward return once their work is issued on the context's stream (order later
   work on that stream, or synchronize it); lvx_get_stats waits for the call's work. */
lvx_result_t lvx_get_stats(lvx_context_t context, int phase, lvx_stats_t* stats);

const char* lvx_last_error(void);
const char* lvx_result_string(lvx_result_t result);

#ifdef __cplusplus
}
#endif

#endif /* LVX_LVX_H */
