/* Launch detection, the single-process implementation, and dispatch to MPI. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_internal.h"
#ifdef MT_HAVE_CUDA
#include "ops/cuda_module.h"
#endif

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
    if (comm->nccl) mt_comm_nccl_api_get()->destroy(comm->nccl);
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

/* ---- train.comm ---------------------------------------------------------------------------- */

const char *mt_comm_kind_name(mt_comm_kind kind) {
    switch (kind) {
    case MT_COMM_NONE: return "none";
    case MT_COMM_MPI: return "mpi";
    case MT_COMM_NCCL: return "nccl";
    }
    return "?";
}

/* NCCL lives in the cuda module: loaded on first use; NULL without it (no CUDA in this build, or
 * the module or its libraries missing on this machine: mt_cuda_module_load says which). */
const mt_comm_nccl_api *mt_comm_nccl_api_get(void) {
#ifdef MT_HAVE_CUDA
    const mt_cuda_module *module = NULL;
    if (mt_cuda_module_load(&module) != MT_OK || !mt_cuda_module_has(module, comm_nccl_api))
        return NULL;
    return module->comm_nccl_api();
#else
    return NULL;
#endif
}

int mt_comm_gpu_for_rank(int local_rank, int visible_devices) {
    return visible_devices > 0 && local_rank >= 0 ? local_rank % visible_devices : 0;
}

int mt_comm_visible_gpus(void) {
    const mt_comm_nccl_api *api = mt_comm_nccl_api_get();
    return api ? api->visible_devices() : 0;
}

/* The UUID of GPU `device` through the cuda module; an error without it (no CUDA in this build,
 * or a module from before device_uuid). */
static mt_status gpu_uuid(int device, uint8_t out[16]) {
#ifdef MT_HAVE_CUDA
    const mt_cuda_module *module = NULL;
    MT_TRY(mt_cuda_module_load(&module));
    if (!mt_cuda_module_has(module, device_uuid))
        return MT_FAIL(MT_ERR_INVALID,
                       "the cuda module (%s) is older than this mobiletune: it "
                       "cannot name its GPU; rebuild or reinstall it",
                       MT_CUDA_MODULE_FILE);
    return module->device_uuid(device, out);
#else
    (void)device, (void)out;
    return MT_FAIL(MT_ERR_INVALID, "this mobiletune was built without CUDA");
#endif
}

mt_comm_gpu_sharing mt_comm_gpus_sharing(const mt_comm_gpu_id *ids, int count) {
    for (int i = 0; i < count; i++)
        if (!ids[i].known) return MT_COMM_GPUS_UNKNOWN;
    for (int i = 0; i < count; i++)
        for (int j = i + 1; j < count; j++) /* ranks of a job: a few thousand at most */
            if (memcmp(ids[i].uuid, ids[j].uuid, sizeof ids[i].uuid) == 0)
                return MT_COMM_GPUS_SHARED;
    return MT_COMM_GPUS_DISTINCT;
}

mt_status mt_comm_decide(mt_comm_choice choice, const mt_comm_facts *f, mt_comm_kind *out) {
    *out = MT_COMM_NONE;
    /* the ranks' reports when there are some: with per-rank CUDA_VISIBLE_DEVICES every rank sees
     * one GPU, and only the reports tell whether those are different GPUs */
    bool own_gpu = f->visible_devices > 0 && f->local_size <= f->visible_devices;
    if (f->gpu_sharing != MT_COMM_GPUS_UNKNOWN)
        own_gpu = f->visible_devices > 0 && f->gpu_sharing == MT_COMM_GPUS_DISTINCT;
    switch (choice) {
    case MT_COMM_CHOICE_NONE:
        if (f->world_size > 1)
            return MT_FAIL(MT_ERR_INVALID, "train.comm = none, but the job runs %d ranks: each "
                           "would train alone; use train.comm = auto or mpi, or start one process",
                           f->world_size);
        return MT_OK;
    case MT_COMM_CHOICE_MPI:
        *out = f->world_size > 1 ? MT_COMM_MPI : MT_COMM_NONE; /* one rank: nothing to reduce */
        return MT_OK;
    case MT_COMM_CHOICE_NCCL:
        if (!f->device_backend)
            return MT_FAIL(MT_ERR_INVALID, "train.comm = nccl needs train.backend = cuda (this "
                           "backend keeps its tensors in host memory): use train.comm = mpi or "
                           "auto");
        if (!f->nccl_available)
            return MT_FAIL(MT_ERR_INVALID, "train.comm = nccl, but NCCL is not available: this "
                           "mobiletune has no cuda module with NCCL, or no GPU is visible; use "
                           "train.comm = mpi or auto");
        if (!own_gpu && f->gpu_sharing == MT_COMM_GPUS_SHARED)
            return MT_FAIL(MT_ERR_INVALID,
                           "train.comm = nccl, but two ranks on one node use the "
                           "same GPU (local rank modulo the GPUs each sees, through its "
                           "CUDA_VISIBLE_DEVICES): NCCL refuses two ranks on one GPU; give each "
                           "rank its own GPU (srun --gpus-per-task=1, launch/mpirun.sh "
                           "--gpu-per-rank, or at most as many ranks per node as GPUs) or use "
                           "train.comm = mpi (auto picks it)");
        if (!own_gpu)
            return MT_FAIL(MT_ERR_INVALID, "train.comm = nccl with %d ranks on this node and %d "
                           "visible GPU(s): NCCL refuses two ranks on one GPU; start at most %d "
                           "rank(s) per node (srun --gpus-per-task=1, or launch/mpirun.sh -N) or "
                           "use train.comm = mpi (auto picks it)", f->local_size,
                           f->visible_devices, f->visible_devices);
        *out = MT_COMM_NCCL;
        return MT_OK;
    case MT_COMM_CHOICE_AUTO:
        if (f->world_size <= 1) return MT_OK;
        *out = f->device_backend && f->nccl_available && own_gpu ? MT_COMM_NCCL : MT_COMM_MPI;
        return MT_OK;
    }
    return MT_FAIL(MT_ERR_INVALID, "train.comm: unknown choice %d", (int)choice);
}

/* Every NCCL wait gives up after this long: a peer that is stuck (not dead: mpirun ends the job
 * when a rank dies) becomes an error, and mt_comm_abort ends the job, within a minute. */
#define NCCL_TIMEOUT_S 45.0

static const char *const choice_names[] = {"auto", "none", "mpi", "nccl"};

mt_status mt_comm_select(mt_comm *comm, mt_comm_choice choice, mt_backend *backend,
                         uint64_t agreement) {
    const int world = comm->info.world_size;
    if ((int)choice < 0 || (int)choice > MT_COMM_CHOICE_NCCL)
        return MT_FAIL(MT_ERR_INVALID, "train.comm: unknown choice %d", (int)choice);
    if (world > 1) {
        uint64_t *all = calloc((size_t)world, sizeof *all);
        if (!all) return MT_FAIL(MT_ERR_NOMEM, "out of memory comparing options across ranks");
        mt_status status = mt_comm_allgather(comm, &agreement, all, sizeof agreement);
        int differs = -1;
        for (int r = 1; status == MT_OK && r < world && differs < 0; r++)
            if (all[r] != all[0]) differs = r;
        free(all);
        MT_TRY(status);
        if (differs >= 0)
            return MT_FAIL(MT_ERR_INVALID, "rank %d runs other train.comm/train.backend/"
                           "train.bucket_mb values than rank 0: every rank must read the same "
                           "config", differs);
    }
    mt_comm_facts facts = {
        .world_size = world,
        .local_size = comm->info.local_size,
        .device_backend = backend->ops->device_memory,
    };
    /* asking CUDA costs a driver start-up: only for a GPU backend, which has one anyway */
    if (facts.device_backend) facts.visible_devices = mt_comm_visible_gpus();
    facts.nccl_available = mt_comm_nccl_api_get() != NULL && facts.visible_devices > 0;
    if (facts.device_backend && world > 1) {
        /* every rank names the GPU it uses (collective: every rank has the same backend, by the
         * agreement above); a rank that cannot leaves the decision to the counts */
        mt_comm_gpu_id mine = {{0}, 0};
        if (facts.visible_devices > 0 && gpu_uuid(backend->options.device, mine.uuid) == MT_OK)
            mine.known = 1;
        mt_comm_gpu_id *ids = calloc((size_t)world, sizeof *ids);
        if (!ids) return MT_FAIL(MT_ERR_NOMEM, "out of memory comparing GPUs across ranks");
        mt_status status = mt_comm_allgather(comm, &mine, ids, sizeof mine);
        if (status == MT_OK) facts.gpu_sharing = mt_comm_gpus_sharing(ids, world);
        free(ids);
        MT_TRY(status);
    }
    mt_comm_kind kind = MT_COMM_NONE;
    mt_status decided = mt_comm_decide(choice, &facts, &kind);
    if (world > 1) {
        /* any rank's error fails all; under auto, one node with more ranks than GPUs makes the
         * whole job use MPI (every rank must run the same all-reduce) */
        int32_t flags[2] = {decided != MT_OK, kind == MT_COMM_MPI};
        MT_TRY(mt_comm_allreduce_max_i32(comm, flags, 2));
        if (decided != MT_OK) return decided;
        if (flags[0])
            return MT_FAIL(MT_ERR_INVALID, "another rank cannot use train.comm = %s (its message "
                           "says why)", choice_names[choice]);
        if (flags[1]) kind = MT_COMM_MPI;
    } else if (decided != MT_OK) {
        return decided;
    }
    if (kind == MT_COMM_NCCL)
        MT_TRY(mt_comm_nccl_api_get()->init(comm, backend, NCCL_TIMEOUT_S, &comm->nccl));
    if (kind == MT_COMM_NCCL) comm->info.kind = kind; /* else: as started (none, or mpi) */
    return MT_OK;
}
