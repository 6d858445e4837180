/* The table each communication implementation fills: comm.c dispatches through it. */
#ifndef MT_COMM_INTERNAL_H
#define MT_COMM_INTERNAL_H

#include <stdbool.h>

#include "mobiletune/comm.h"

typedef enum mt_reduce_type { MT_REDUCE_F32, MT_REDUCE_F64, MT_REDUCE_I64, MT_REDUCE_I32 } mt_reduce_type;
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

struct mt_comm {
    const mt_comm_impl *impl;
    mt_comm_info info;
    void *state;
};

#ifdef MT_HAVE_MPI
mt_status mt_comm_mpi_init(int *argc, char ***argv, mt_comm *comm);
#endif

#endif
