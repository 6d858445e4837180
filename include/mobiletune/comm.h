/* Communication between data-parallel ranks behind one small interface (STYLE.md 5):
 *   none  one process, every collective is a no-op or a copy
 *   mpi   Open MPI: CPU ranks, and GPU ranks that share a device
 *   nccl  GPU ranks, one device each (issue 6; bootstrapped through MPI)
 *
 * The bootstrap (who am I, how many are we, which GPU is mine) is separate from the collectives,
 * and both are separate from the training loop, which only ever calls the functions below on
 * buffers it owns. Every MPI call is checked; a failure returns MT_ERR_COMM with the call and the
 * rank named, and mt_comm_abort() takes the whole job down so that no rank waits forever. */
#ifndef MOBILETUNE_COMM_H
#define MOBILETUNE_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mt_comm_kind {
    MT_COMM_NONE = 0,
    MT_COMM_MPI = 1,
} mt_comm_kind;

typedef struct mt_comm mt_comm;
typedef struct mt_backend mt_backend; /* ops.h */

typedef struct mt_comm_info {
    mt_comm_kind kind;
    int rank, world_size;  /* over the whole job */
    int local_rank, local_size; /* on this node: picks the GPU */
} mt_comm_info;

/* True when this process was started by a launcher that runs several ranks (mpirun, srun with
 * PMIx): the environment of Open MPI, PMIx or Slurm says so. Without one, the trainer is a single
 * process and never touches MPI. */
int mt_comm_launched_by_mpi(void);

/* Start communication: MPI when launched by mpirun/srun and built with MPI, else none. `argc` and
 * `argv` may be NULL. Launched under MPI by a build without MPI is an error that says so. */
mt_status mt_comm_init(int *argc, char ***argv, mt_comm **out);
/* Finalize (MPI_Finalize for mpi) and free. */
void mt_comm_finalize(mt_comm *comm);

mt_comm_info mt_comm_get_info(const mt_comm *comm);

/* In-place sums over all ranks. */
mt_status mt_comm_allreduce_sum_f32(mt_comm *comm, float *buffer, size_t count);
mt_status mt_comm_allreduce_sum_f64(mt_comm *comm, double *buffer, size_t count);
mt_status mt_comm_allreduce_sum_i64(mt_comm *comm, int64_t *buffer, size_t count);
/* In-place maximum (used for agreeing on a flag: stop requested, NaN seen, error on a rank). */
mt_status mt_comm_allreduce_max_i32(mt_comm *comm, int32_t *buffer, size_t count);
/* Sum then divide by the world size. */
mt_status mt_comm_allreduce_mean_f32(mt_comm *comm, float *buffer, size_t count);

/* Copy `bytes` from `root` to every rank. */
mt_status mt_comm_broadcast(mt_comm *comm, void *buffer, size_t bytes, int root);
/* Gather `bytes` from every rank into `out` (world_size * bytes, rank order), on every rank. */
mt_status mt_comm_allgather(mt_comm *comm, const void *send, void *out, size_t bytes);
mt_status mt_comm_barrier(mt_comm *comm);

/* The same on buffers in a backend's memory (comm_backend.c): callers pass the backend and never
 * look at where the buffer lives; the communicator stages through the backend's upload/download
 * when it cannot reach that memory itself. No-ops on one rank. */
mt_status mt_comm_broadcast_backend(mt_comm *comm, mt_backend *backend, void *buffer,
                                    size_t bytes, int root);
mt_status mt_comm_allreduce_mean_f32_backend(mt_comm *comm, mt_backend *backend, float *buffer,
                                             size_t count);

/* Take every rank down with `message` on stderr (prefixed with the rank): MPI_Abort under MPI,
 * exit(code) otherwise. For fatal errors: a rank that simply returned would leave the others
 * waiting in a collective. */
_Noreturn void mt_comm_abort(mt_comm *comm, int code, const char *message);

/* FNV-1a 64 of bytes, for comparing replicas and layouts across ranks cheaply. */
uint64_t mt_checksum64(const void *data, size_t bytes, uint64_t seed);

#ifdef __cplusplus
}
#endif
#endif
