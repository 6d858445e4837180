/* The MPI implementation of the communication interface (Open MPI). Collectives on large
 * buffers are split into chunks below INT_MAX elements, MPI's count type. */
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "comm_internal.h"

/* Check an MPI call; on failure return MT_ERR_COMM naming the call, the rank and MPI's words. */
#define MPI_CHECK(comm, call)                                                                      \
    do {                                                                                           \
        int mpi_rc_ = (call);                                                                      \
        if (mpi_rc_ != MPI_SUCCESS) {                                                              \
            char mpi_text_[MPI_MAX_ERROR_STRING];                                                  \
            int mpi_len_ = 0;                                                                      \
            MPI_Error_string(mpi_rc_, mpi_text_, &mpi_len_);                                       \
            return MT_FAIL(MT_ERR_COMM, "rank %d: %s failed: %s", (comm)->info.rank, #call,        \
                           mpi_text_);                                                             \
        }                                                                                          \
    } while (0)

static mt_status mpi_error(const mt_comm *comm, int rc, const char *call) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(rc, text, &length);
    return MT_FAIL(MT_ERR_COMM, "rank %d: %s failed: %s", comm->info.rank, call, text);
}

static MPI_Datatype mpi_type(mt_reduce_type type, size_t *element_bytes) {
    switch (type) {
    case MT_REDUCE_F32: *element_bytes = 4; return MPI_FLOAT;
    case MT_REDUCE_F64: *element_bytes = 8; return MPI_DOUBLE;
    case MT_REDUCE_I64: *element_bytes = 8; return MPI_INT64_T;
    case MT_REDUCE_I32: *element_bytes = 4; return MPI_INT32_T;
    }
    *element_bytes = 1;
    return MPI_BYTE;
}

static mt_status mpi_allreduce(mt_comm *comm, void *buffer, size_t count, mt_reduce_type type,
                               mt_reduce_op op) {
    size_t element_bytes;
    MPI_Datatype datatype = mpi_type(type, &element_bytes);
    MPI_Op mpi_op = op == MT_REDUCE_MAX ? MPI_MAX : MPI_SUM;
    for (size_t done = 0; done < count;) {
        size_t chunk = count - done < (size_t)INT_MAX ? count - done : (size_t)INT_MAX;
        MPI_CHECK(comm, MPI_Allreduce(MPI_IN_PLACE, (char *)buffer + done * element_bytes,
                                      (int)chunk, datatype, mpi_op, MPI_COMM_WORLD));
        done += chunk;
    }
    return MT_OK;
}

struct mt_comm_request {
    MPI_Request request;
};

static mt_status mpi_iallreduce(mt_comm *comm, void *buffer, size_t count, mt_reduce_type type,
                                mt_reduce_op op, mt_comm_request **out) {
    *out = NULL;
    if (count > (size_t)INT_MAX)
        return MT_FAIL(MT_ERR_INVALID, "non-blocking all-reduce of %zu elements is over MPI's "
                       "count limit: use smaller buckets", count);
    size_t element_bytes;
    MPI_Datatype datatype = mpi_type(type, &element_bytes);
    mt_comm_request *request = malloc(sizeof *request);
    if (!request) return MT_FAIL(MT_ERR_NOMEM, "out of memory starting an all-reduce");
    int rc = MPI_Iallreduce(MPI_IN_PLACE, buffer, (int)count, datatype,
                            op == MT_REDUCE_MAX ? MPI_MAX : MPI_SUM, MPI_COMM_WORLD,
                            &request->request);
    if (rc != MPI_SUCCESS) {
        free(request);
        return mpi_error(comm, rc, "MPI_Iallreduce");
    }
    *out = request;
    return MT_OK;
}

static mt_status mpi_test(mt_comm *comm, mt_comm_request *request, bool *done) {
    int flag = 0;
    MPI_CHECK(comm, MPI_Test(&request->request, &flag, MPI_STATUS_IGNORE));
    *done = flag != 0;
    if (flag) free(request);
    return MT_OK;
}

static mt_status mpi_wait(mt_comm *comm, mt_comm_request *request) {
    int rc = MPI_Wait(&request->request, MPI_STATUS_IGNORE);
    free(request);
    return rc == MPI_SUCCESS ? MT_OK : mpi_error(comm, rc, "MPI_Wait");
}

static mt_status mpi_broadcast(mt_comm *comm, void *buffer, size_t bytes, int root) {
    for (size_t done = 0; done < bytes;) {
        size_t chunk = bytes - done < (size_t)INT_MAX ? bytes - done : (size_t)INT_MAX;
        MPI_CHECK(comm,
                  MPI_Bcast((char *)buffer + done, (int)chunk, MPI_BYTE, root, MPI_COMM_WORLD));
        done += chunk;
    }
    return MT_OK;
}

static mt_status mpi_allgather(mt_comm *comm, const void *send, void *out, size_t bytes) {
    if (bytes > (size_t)INT_MAX)
        return MT_FAIL(MT_ERR_INVALID, "allgather of %zu bytes per rank is over MPI's limit",
                       bytes);
    MPI_CHECK(comm, MPI_Allgather(send, (int)bytes, MPI_BYTE, out, (int)bytes, MPI_BYTE,
                                  MPI_COMM_WORLD));
    return MT_OK;
}

static mt_status mpi_barrier(mt_comm *comm) {
    MPI_CHECK(comm, MPI_Barrier(MPI_COMM_WORLD));
    return MT_OK;
}

static void mpi_abort_job(mt_comm *comm, int code) {
    MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

static void mpi_finalize(mt_comm *comm) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
}

static const mt_comm_impl mpi_impl = {
    .allreduce = mpi_allreduce,
    .iallreduce = mpi_iallreduce,
    .test = mpi_test,
    .wait = mpi_wait,
    .broadcast = mpi_broadcast,
    .allgather = mpi_allgather,
    .barrier = mpi_barrier,
    .abort_job = mpi_abort_job,
    .finalize = mpi_finalize,
};

mt_status mt_comm_mpi_init(int *argc, char ***argv, mt_comm *comm) {
    int provided = 0;
    /* FUNNELED: only the main thread calls MPI; loader and OpenMP threads never do. */
    int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return MT_FAIL(MT_ERR_COMM, "MPI_Init_thread failed (code %d)", rc);
    /* Errors come back as codes we turn into messages, instead of MPI aborting silently. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    comm->impl = &mpi_impl;
    comm->info.kind = MT_COMM_MPI;
    MPI_CHECK(comm, MPI_Comm_rank(MPI_COMM_WORLD, &comm->info.rank));
    MPI_CHECK(comm, MPI_Comm_size(MPI_COMM_WORLD, &comm->info.world_size));
    MPI_Comm node;
    MPI_CHECK(comm, MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, comm->info.rank,
                                        MPI_INFO_NULL, &node));
    MPI_CHECK(comm, MPI_Comm_rank(node, &comm->info.local_rank));
    MPI_CHECK(comm, MPI_Comm_size(node, &comm->info.local_size));
    MPI_Comm_free(&node);
    return MT_OK;
}
