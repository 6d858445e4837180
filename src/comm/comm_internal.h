/* The table each communication implementation fills: comm.c dispatches through it. */
#ifndef MT_COMM_INTERNAL_H
#define MT_COMM_INTERNAL_H

#include "mobiletune/comm.h"

typedef enum mt_reduce_type { MT_REDUCE_F32, MT_REDUCE_F64, MT_REDUCE_I64, MT_REDUCE_I32 } mt_reduce_type;
typedef enum mt_reduce_op { MT_REDUCE_SUM, MT_REDUCE_MAX } mt_reduce_op;

typedef struct mt_comm_impl {
    mt_status (*allreduce)(mt_comm *comm, void *buffer, size_t count, mt_reduce_type type,
                           mt_reduce_op op);
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
