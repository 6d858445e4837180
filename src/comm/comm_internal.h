/* The table each communication implementation fills: comm.c dispatches through it. */
#ifndef MT_COMM_INTERNAL_H
#define MT_COMM_INTERNAL_H

#include <stdbool.h>

#include "mobiletune/comm.h"

typedef enum mt_reduce_type {
    MT_REDUCE_F32,
    MT_REDUCE_F64,
    MT_REDUCE_I64,
    MT_REDUCE_I32
} mt_reduce_type;
typedef enum mt_reduce_op { MT_REDUCE_SUM, MT_REDUCE_MAX } mt_reduce_op;

/* A collective in flight (the implementation's request). */
typedef struct mt_comm_request mt_comm_request;

typedef struct mt_comm_impl {
    mt_status (*allreduce)(mt_comm *comm, void *buffer, size_t count, mt_reduce_type type,
                           mt_reduce_op op);
    /* Non-blocking in-place all-reduce (count <= INT_MAX): starts it and returns a request that
     * test/wait complete (and free). MPI only progresses it inside MPI calls, so the caller tests
     * it while it does other work (the gradient synchronizer, from the model's backward hook). */
    mt_status (*iallreduce)(mt_comm *comm, void *buffer, size_t count, mt_reduce_type type,
                            mt_reduce_op op, mt_comm_request **out);
    /* *done = true when complete (the request is then freed); false: still in flight. */
    mt_status (*test)(mt_comm *comm, mt_comm_request *request, bool *done);
    /* Blocks until complete, then frees the request. */
    mt_status (*wait)(mt_comm *comm, mt_comm_request *request);
    mt_status (*broadcast)(mt_comm *comm, void *buffer, size_t bytes, int root);
    mt_status (*allgather)(mt_comm *comm, const void *send, void *out, size_t bytes);
    mt_status (*barrier)(mt_comm *comm);
    void (*abort_job)(mt_comm *comm, int code);
    void (*finalize)(mt_comm *comm);
} mt_comm_impl;

/* The NCCL side (nccl_comm.c, compiled with the cuda backend). The comm code reaches it only
 * through this table, so that it can come from the runtime-loaded cuda module instead. */
typedef struct mt_comm_nccl_api {
    int (*visible_devices)(void); /* GPUs the process sees; 0 when CUDA cannot start */
    /* Join the communicator of every rank of `comm` on the backend's GPU (unique id broadcast
     * over comm's MPI); timeout_s bounds every later wait. */
    mt_status (*init)(mt_comm *comm, mt_backend *backend, double timeout_s, void **out);
    /* Enqueue the mean over ranks of `count` floats at `buffer` (backend memory) on the backend's
     * communication stream, ordered after everything its compute stream was given so far; an
     * event marks its end (bucket `bucket` of the step, 0 first). Neither waits for the device
     * nor looks at the collectives in flight, so a step capture (CUDA graph) records it like a
     * kernel; only the enqueue itself settles (the non-blocking communicator's contract). */
    mt_status (*bucket_start)(void *nccl, mt_backend *backend, int bucket, float *buffer,
                              size_t count);
    /* The compute stream waits for bucket `bucket`'s all-reduce (the host does not). */
    mt_status (*bucket_wait)(void *nccl, mt_backend *backend, int bucket);
    /* After a step's device work was enqueued or its graph launched, never under capture: one
     * look at NCCL's asynchronous error state, an event after the step on the compute stream,
     * and a wait (polling the error state, bounded by the timeout) for the previous step's
     * event: the host runs at most one step ahead, and a dead or stuck peer becomes an error. */
    mt_status (*step_done)(void *nccl, mt_backend *backend);
    /* Before the host reads what the steps wrote (a read back, a download): a wait, polling as
     * step_done's, for the last step_done's event, so the read cannot hang on a dead peer. */
    mt_status (*settle)(void *nccl, mt_backend *backend);
    void (*destroy)(void *nccl);
} mt_comm_nccl_api;

/* The table, or NULL when this mobiletune has no NCCL. */
const mt_comm_nccl_api *mt_comm_nccl_api_get(void);

struct mt_comm {
    const mt_comm_impl *impl;
    mt_comm_info info;
    void *state;
    void *nccl; /* the NCCL communicator when info.kind is MT_COMM_NCCL */
};

#ifdef MT_HAVE_MPI
mt_status mt_comm_mpi_init(int *argc, char ***argv, mt_comm *comm);
#endif

#endif
