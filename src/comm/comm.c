/* Launch detection, the single-process implementation, and dispatch to MPI. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_internal.h"

int mt_comm_launched_by_mpi(void) {
    /* Open MPI's mpirun sets OMPI_COMM_WORLD_SIZE; srun --mpi=pmix sets PMIX_RANK; a bare srun
     * step without PMIx sets only SLURM_* and can't start MPI, so it is not counted. */
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return 1;
    return 0;
}

static mt_status none_allreduce(mt_comm *comm, void *buffer, size_t count, mt_reduce_type type,
                                mt_reduce_op op) {
    return MT_OK; /* one rank: the sum and the maximum are the value itself */
}
/* One rank: the collective is complete as soon as it starts; a non-NULL token stands for it. */
static mt_status none_iallreduce(mt_comm *comm, void *buffer, size_t count, mt_reduce_type type,
                                 mt_reduce_op op, mt_comm_request **out) {
    static char token;
    *out = (mt_comm_request *)&token;
    return MT_OK;
}
static mt_status none_test(mt_comm *comm, mt_comm_request *request, bool *done) {
    *done = true;
    return MT_OK;
}
static mt_status none_wait(mt_comm *comm, mt_comm_request *request) {
    return MT_OK;
}
static mt_status none_broadcast(mt_comm *comm, void *buffer, size_t bytes, int root) {
    return MT_OK;
}
static mt_status none_allgather(mt_comm *comm, const void *send, void *out, size_t bytes) {
    if (out != send) memmove(out, send, bytes);
    return MT_OK;
}
static mt_status none_barrier(mt_comm *comm) {
    return MT_OK;
}
static void none_abort(mt_comm *comm, int code) {
    exit(code);
}
static void none_finalize(mt_comm *comm) {
}

static const mt_comm_impl none_impl = {
    .allreduce = none_allreduce,
    .iallreduce = none_iallreduce,
    .test = none_test,
    .wait = none_wait,
    .broadcast = none_broadcast,
    .allgather = none_allgather,
    .barrier = none_barrier,
    .abort_job = none_abort,
    .finalize = none_finalize,
};

mt_status mt_comm_init(int *argc, char ***argv, mt_comm **out) {
    *out = NULL;
    mt_comm *comm = calloc(1, sizeof *comm);
    if (!comm) return MT_FAIL(MT_ERR_NOMEM, "out of memory starting communication");
    comm->impl = &none_impl;
    comm->info = (mt_comm_info){.kind = MT_COMM_NONE, .rank = 0, .world_size = 1,
                                .local_rank = 0, .local_size = 1};
    if (mt_comm_launched_by_mpi()) {
#ifdef MT_HAVE_MPI
        mt_status status = mt_comm_mpi_init(argc, argv, comm);
        if (status != MT_OK) {
            free(comm);
            return status;
        }
#else
        free(comm);
        return MT_FAIL(MT_ERR_COMM, "started by mpirun/srun, but this mobiletune was built without "
                       "MPI: install libopenmpi-dev and rebuild (cmake -DMT_WITH_MPI=ON)");
#endif
    }
    *out = comm;
    return MT_OK;
}

void mt_comm_finalize(mt_comm *comm) {
    if (!comm) return;
    comm->impl->finalize(comm);
    free(comm);
}

mt_comm_info mt_comm_get_info(const mt_comm *comm) {
    return comm->info;
}

mt_status mt_comm_allreduce_sum_f32(mt_comm *comm, float *buffer, size_t count) {
    return comm->impl->allreduce(comm, buffer, count, MT_REDUCE_F32, MT_REDUCE_SUM);
}
mt_status mt_comm_allreduce_sum_f64(mt_comm *comm, double *buffer, size_t count) {
    return comm->impl->allreduce(comm, buffer, count, MT_REDUCE_F64, MT_REDUCE_SUM);
}
mt_status mt_comm_allreduce_sum_i64(mt_comm *comm, int64_t *buffer, size_t count) {
    return comm->impl->allreduce(comm, buffer, count, MT_REDUCE_I64, MT_REDUCE_SUM);
}
mt_status mt_comm_allreduce_max_i32(mt_comm *comm, int32_t *buffer, size_t count) {
    return comm->impl->allreduce(comm, buffer, count, MT_REDUCE_I32, MT_REDUCE_MAX);
}

mt_status mt_comm_allreduce_mean_f32(mt_comm *comm, float *buffer, size_t count) {
    if (comm->info.world_size == 1) return MT_OK;
    MT_TRY(mt_comm_allreduce_sum_f32(comm, buffer, count));
    const float scale = 1.0f / (float)comm->info.world_size;
#pragma omp parallel for if (count > 65536)
    for (size_t i = 0; i < count; i++) buffer[i] *= scale;
    return MT_OK;
}

mt_status mt_comm_broadcast(mt_comm *comm, void *buffer, size_t bytes, int root) {
    return comm->impl->broadcast(comm, buffer, bytes, root);
}
mt_status mt_comm_allgather(mt_comm *comm, const void *send, void *out, size_t bytes) {
    return comm->impl->allgather(comm, send, out, bytes);
}
mt_status mt_comm_barrier(mt_comm *comm) {
    return comm->impl->barrier(comm);
}

void mt_comm_abort(mt_comm *comm, int code, const char *message) {
    int rank = comm ? comm->info.rank : 0;
    fprintf(stderr, "mobiletune: rank %d: %s\n", rank, message);
    fflush(stderr);
    if (comm) comm->impl->abort_job(comm, code);
    exit(code);
}

uint64_t mt_checksum64(const void *data, size_t bytes, uint64_t seed) {
    const unsigned char *p = data;
    uint64_t hash = 1469598103934665603ull ^ seed;
    for (size_t i = 0; i < bytes; i++) {
        hash ^= p[i];
        hash *= 1099511628211ull;
    }
    return hash;
}
