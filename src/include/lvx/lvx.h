/* lvxattn C API: exact distributed cross-attention (LV-XAttn, Ring, Ulysses).
 *
 * Layouts (contiguous): Q, O, dO, dQ [B, Lq_local, Hq, D]; K, V, dK, dV
 * [B, Lkv_local, Hkv, D]; LSE [B, Hq, Lq_local] float; q_ranges (optional)
 * int32 [B, Lq_local, 2] = visible KV interval [begin, end) in global KV rows, in the
 * context's device memory (host memory for a CPU context). Each global sequence is split
 * into contiguous pieces in rank order; pieces may differ in length (zero included).
 * Calls on a context are collective: every rank makes the same calls in the same order,
 * and bad input on any rank fails the call on every rank with the same message.
 *
 * Every call returns an lvx_result_t; lvx_last_error() gives the text of the
 * last failure on the calling thread.
 *
 * Versions and the ABI. LVX_VERSION_* name this header, lvx_version() the library linked.
 * Every struct that crosses the boundary begins with `struct_size`, which the caller
 * sets to sizeof(the struct) as it compiled it: lvx_default_options() and
 * lvx_default_problem() do (and fill every other field with its default); for
 * lvx_stats_t write `lvx_stats_t s = {sizeof(lvx_stats_t)};`. The library reads and
 * writes only the fields that fit in struct_size, so a program built against an older
 * header runs with a newer library. The rules for changing this header: fields are only
 * ever appended to a struct, never removed, reordered or retyped; enum values never
 * change; anything else is a new major version. A struct_size of 0 (a struct not filled
 * by its lvx_default_* function) or one smaller than the struct's first layout fails
 * with LVX_ERROR_INVALID_ARGUMENT.
 * From 0.1: lvx_options_t and lvx_problem_t gained struct_size as their first field and
 * lvx_options_t.transport became an lvx_transport_t: fill both structs with their
 * lvx_default_* function, then set fields by name. */
#ifndef LVX_LVX_H
#define LVX_LVX_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#define LVX_VERSION_MAJOR 0
#define LVX_VERSION_MINOR 2
#define LVX_VERSION_PATCH 0
#define LVX_VERSION (LVX_VERSION_MAJOR * 10000 + LVX_VERSION_MINOR * 100 + LVX_VERSION_PATCH)

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
/* A context asks for AUTO (for device buffers: NCCL, MPI_DIRECT or MPI_STAGED, by calibrated
 * link costs where set, else in that order of preference among those every rank can run),
 * MPI (MPI_DIRECT where every rank's MPI takes device buffers, else MPI_STAGED), NCCL,
 * MPI_STAGED or MPI_DIRECT; lvx_stats_t names the path that ran: NONE (one rank), MPI (host buffers), MPI_STAGED
 * (device buffers through pinned host memory), MPI_DIRECT (device buffers, CUDA-aware
 * MPI) or NCCL. */
typedef enum {
  LVX_TRANSPORT_AUTO = 0,
  LVX_TRANSPORT_MPI = 1,
  LVX_TRANSPORT_NCCL = 2,
  LVX_TRANSPORT_MPI_STAGED = 3,
  LVX_TRANSPORT_MPI_DIRECT = 4,
  LVX_TRANSPORT_NONE = 5
} lvx_transport_t;

typedef struct lvx_context_s* lvx_context_t;

typedef struct {
  size_t struct_size;        /* sizeof(lvx_options_t) (lvx_default_options) */
  lvx_device_t device;       /* where the buffers live; default CPU */
  int device_index;          /* CUDA device, -1 (default): local rank modulo the device count */
  int threads;               /* CPU threads, 0 (default): cores divided by ranks on the node */
  lvx_transport_t transport; /* AUTO (default), MPI (the best MPI path), NCCL, MPI_STAGED or MPI_DIRECT */
} lvx_options_t;

typedef struct {
  size_t struct_size;           /* sizeof(lvx_problem_t) (lvx_default_problem) */
  int64_t batch, q_len, kv_len; /* q_len and kv_len are this rank's rows */
  int64_t q_heads, kv_heads, head_dim;
  lvx_dtype_t dtype;            /* default FLOAT32 */
  lvx_algorithm_t algorithm;    /* default LVX */
  float scale;                  /* NaN (default): 1/sqrt(head_dim) */
} lvx_problem_t;

typedef struct {
  size_t struct_size;           /* set by the caller: sizeof(lvx_stats_t) */
  uint64_t bytes_sent, bytes_recv;
  double compute_s, blocked_s, total_s;
  int steps;
  lvx_algorithm_t algorithm;    /* the one that ran (resolves LVX_ALGO_AUTO) */
  lvx_transport_t transport;    /* the path that ran */
} lvx_stats_t;

/* LVX_VERSION of the library linked. */
int lvx_version(void);

void lvx_default_options(lvx_options_t* options);
void lvx_default_problem(lvx_problem_t* problem);
/* Collective over comm. comm == MPI_COMM_NULL makes a single-process context. Fails on
   every rank when it fails on one (a device that does not exist, say). */
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
