/* Communication between data-parallel ranks behind one small interface (STYLE.md 5):
 *   none  one process, every collective is a no-op or a copy
 *   mpi   Open MPI: CPU ranks, and GPU ranks that share a device
 *   nccl  GPU ranks, one device each: the gradient all-reduce runs on NCCL (grad_sync.h), every
 *         other collective (flags, weights at start-up, BN statistics) stays on MPI
 *
 * The bootstrap (who am I, how many are we, which GPU is mine) is separate from the collectives,
 * and both are separate from the training loop, which only ever calls the functions below on
 * buffers it owns. Every MPI call is checked; a failure returns MT_ERR_COMM with the call and the
 * rank named, and mt_comm_abort() takes the whole job down so that no rank waits forever. */
#ifndef MOBILETUNE_COMM_H
#define MOBILETUNE_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "mobiletune/ops.h"
#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mt_comm_kind {
    MT_COMM_NONE = 0,
    MT_COMM_MPI = 1,
    MT_COMM_NCCL = 2,
} mt_comm_kind;

/* "none", "mpi", "nccl" */
const char *mt_comm_kind_name(mt_comm_kind kind);

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

/* ---- choosing how gradients travel (train.comm) ---------------------------------------------- */

/* What the user asked for: the order of train.comm's values (config.h's mt_config_comm). */
typedef enum mt_comm_choice {
    MT_COMM_CHOICE_AUTO = 0,
    MT_COMM_CHOICE_NONE,
    MT_COMM_CHOICE_MPI,
    MT_COMM_CHOICE_NCCL,
} mt_comm_choice;

/* Whether the ranks use GPUs of their own, from the GPUs they report (mt_comm_gpus_sharing). */
typedef enum mt_comm_gpu_sharing {
    MT_COMM_GPUS_UNKNOWN = 0, /* not reported (a cuda module without device_uuid): the counts
                                 decide, local ranks <= visible GPUs */
    MT_COMM_GPUS_DISTINCT,    /* every rank on a GPU no other rank uses */
    MT_COMM_GPUS_SHARED,      /* two ranks (of one node) on the same GPU */
} mt_comm_gpu_sharing;

/* What the choice depends on, as one rank sees it. */
typedef struct mt_comm_facts {
    int world_size;                  /* ranks in the job */
    int local_size;                  /* ranks on this rank's node */
    int visible_devices;             /* GPUs this rank sees (0: none, or no CUDA) */
    bool device_backend;             /* the backend keeps tensors in GPU memory (cuda) */
    bool nccl_available;             /* NCCL can be used: built or loaded with the cuda backend */
    mt_comm_gpu_sharing gpu_sharing; /* from the ranks' GPU UUIDs (0: unknown) */
} mt_comm_facts;

/* The GPU a rank will use, as it reports it: the device's UUID, the same for one physical GPU in
 * every process whatever its CUDA_VISIBLE_DEVICES (and different on another node). */
typedef struct mt_comm_gpu_id {
    uint8_t uuid[16];
    uint8_t known; /* 0: this rank could not tell (no UUID from its cuda module) */
} mt_comm_gpu_id;

/* A pure function of every rank's report: SHARED when two ranks name the same GPU, DISTINCT
 * when all differ, UNKNOWN when any rank could not tell. UUIDs are unique across machines, so
 * the reports of the whole job answer the question per node. */
mt_comm_gpu_sharing mt_comm_gpus_sharing(const mt_comm_gpu_id *ids, int count);

/* One rank's decision, a pure function: auto is nccl for a GPU backend on several ranks when
 * every rank has a GPU of its own, mpi otherwise (NCCL refuses two ranks on one GPU), none on
 * one rank. "Its own GPU" comes from the ranks' reports (gpu_sharing), which hold whatever each
 * rank's CUDA_VISIBLE_DEVICES (srun --gpus-per-task, launch/mpirun.sh --gpu-per-rank); without
 * them, from the counts (local ranks <= visible GPUs). none on several ranks, and nccl without
 * a GPU backend, without NCCL or with ranks sharing a GPU, are errors that say what to change.
 * nccl on one rank is allowed (one GPU, one communicator: the path can be tried alone). */
mt_status mt_comm_decide(mt_comm_choice choice, const mt_comm_facts *facts, mt_comm_kind *out);

/* The GPU a rank uses: its local rank modulo the GPUs it sees (0 when it sees none). */
int mt_comm_gpu_for_rank(int local_rank, int visible_devices);

/* GPUs this process sees through the cuda backend (CUDA_VISIBLE_DEVICES applies); 0 without
 * CUDA or without a usable driver. */
int mt_comm_visible_gpus(void);

/* Collective, after the backend exists: the ranks compare `agreement` (a checksum of the options
 * every rank must share, e.g. train.comm and train.backend; a mismatch is an error naming the
 * rank), each decides (mt_comm_decide), and the ranks agree: an error on any rank fails every
 * rank, and under auto one rank that must use mpi (two ranks on one GPU) makes every rank use
 * mpi. With a GPU backend the ranks first exchange the UUIDs of their GPUs (facts.gpu_sharing). For
 * nccl, the ranks then join the NCCL communicator on the backend's GPU (mt_backend.options.device),
 * its unique id broadcast over MPI. mt_comm_get_info(comm).kind says the result. */
mt_status mt_comm_select(mt_comm *comm, mt_comm_choice choice, mt_backend *backend,
                         uint64_t agreement);

/* FNV-1a 64 of bytes, for comparing replicas and layouts across ranks cheaply. */
uint64_t mt_checksum64(const void *data, size_t bytes, uint64_t seed);

#ifdef __cplusplus
}
#endif
#endif
