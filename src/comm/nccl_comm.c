/* The NCCL communicator of nccl_comm.h: bootstrap through mt_comm_broadcast, a non-blocking
 * communicator, and waits that poll ncclCommGetAsyncError against a deadline so that a dead or
 * stuck peer becomes an error on this rank instead of a hang. Compiled into the cuda module
 * (libmobiletune_cuda.so, src/ops/cuda/CMakeLists.txt), never into the core library: the core
 * reaches these functions through the module's table (src/ops/cuda_module.h). */
#include <nccl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>

#include "comm/comm_internal.h"
#include "core/clock.h"
#include "comm/nccl_comm.h"
#include "ops/cuda/cuda_export.h"

struct mt_nccl {
    ncclComm_t comm; /* NULL once aborted */
    int rank, world_size, device;
    double timeout_s;
    /* the training path (the table at the end): a bucket's gradients written on the compute
     * stream -> `ready` -> its all-reduce on the communication stream -> `done[k]` -> the
     * compute stream's update of that bucket. These orderings are all the step holds, so a
     * captured step records them with its kernels; the host's checks use `step_end`, recorded
     * on the compute stream after each step (after every bucket was waited for there), outside
     * any capture, alternately in [0] and [1] */
    cudaEvent_t ready;
    cudaEvent_t *done;
    int done_count; /* events created */
    cudaEvent_t step_end[2];
    unsigned long long steps; /* step_done calls: step_end[(steps - 1) % 2] is the last step's */
};

static void pause_briefly(void) {
    struct timespec t = {.tv_sec = 0, .tv_nsec = 50000};
    nanosleep(&t, NULL);
}

/* Every NCCL call: ncclInProgress is the non-blocking communicator's "started", not a failure. */
#define NCCL_CHECK(nccl, call)                                                                     \
    do {                                                                                           \
        ncclResult_t nccl_check_result_ = (call);                                                  \
        if (nccl_check_result_ != ncclSuccess && nccl_check_result_ != ncclInProgress)             \
            return nccl_failed((nccl), #call, nccl_check_result_, __FILE__, __LINE__);             \
    } while (0)

static mt_status nccl_failed(mt_nccl *nccl, const char *call, ncclResult_t result, const char *file,
                             int line) {
    const char *detail = nccl->comm ? ncclGetLastError(nccl->comm) : "";
    mt_status status =
        MT_FAIL(MT_ERR_COMM, "rank %d (GPU %d): NCCL call %s failed at %s:%d: %s%s%s", nccl->rank,
                nccl->device, call, file, line, ncclGetErrorString(result),
                detail && *detail ? ": " : "", detail ? detail : "");
    mt_nccl_abort(nccl);
    return status;
}

/* The communicator's state: MT_OK when settled, MT_END while in progress, else an error (and
 * the communicator aborted). */
static mt_status nccl_state(mt_nccl *nccl, const char *what) {
    if (!nccl->comm)
        return MT_FAIL(MT_ERR_COMM, "rank %d: NCCL %s on an aborted communicator", nccl->rank,
                       what);
    ncclResult_t state = ncclSuccess;
    NCCL_CHECK(nccl, ncclCommGetAsyncError(nccl->comm, &state));
    if (state == ncclSuccess) return MT_OK;
    if (state == ncclInProgress) return MT_END;
    return nccl_failed(nccl, what, state, __FILE__, __LINE__);
}

static mt_status timed_out(mt_nccl *nccl, const char *what) {
    mt_nccl_abort(nccl);
    return MT_FAIL(MT_ERR_COMM,
                   "rank %d (GPU %d): NCCL %s did not complete within %.0f s: a peer rank is "
                   "probably dead or stuck; communicator aborted",
                   nccl->rank, nccl->device, what, nccl->timeout_s);
}

/* Until the communicator's pending operation (init, an enqueue) has settled. */
static mt_status settle(mt_nccl *nccl, const char *what) {
    const double deadline = mt_clock_monotonic() + nccl->timeout_s;
    for (;;) {
        mt_status status = nccl_state(nccl, what);
        if (status != MT_END) return status;
        if (mt_clock_monotonic() > deadline) return timed_out(nccl, what);
        pause_briefly();
    }
}

mt_status mt_nccl_init(mt_comm *comm, int device, double timeout_s, mt_nccl **out) {
    *out = NULL;
    mt_comm_info info = mt_comm_get_info(comm);
    mt_nccl *nccl = calloc(1, sizeof *nccl);
    if (!nccl) return MT_FAIL(MT_ERR_NOMEM, "out of host memory for the NCCL communicator");
    *nccl = (mt_nccl){.rank = info.rank,
                      .world_size = info.world_size,
                      .device = device,
                      .timeout_s = timeout_s > 0 ? timeout_s : 300};
    /* rank 0's result travels with the id, so a failure there fails every rank, not only 0 */
    struct {
        int32_t ok;
        ncclUniqueId id;
    } boot;
    memset(&boot, 0, sizeof boot);
    if (info.rank == 0) boot.ok = ncclGetUniqueId(&boot.id) == ncclSuccess;
    mt_status status = mt_comm_broadcast(comm, &boot, sizeof boot, 0);
    if (status == MT_OK && !boot.ok)
        status = MT_FAIL(MT_ERR_COMM, "rank %d: ncclGetUniqueId failed on rank 0", info.rank);
    if (status == MT_OK && cudaSetDevice(device) != cudaSuccess)
        status = MT_FAIL(MT_ERR_COMM, "rank %d: cudaSetDevice(%d) failed: %s", info.rank, device,
                         cudaGetErrorString(cudaGetLastError()));
    if (status == MT_OK) {
        ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
        config.blocking = 0;
        ncclResult_t r =
            ncclCommInitRankConfig(&nccl->comm, info.world_size, boot.id, info.rank, &config);
        if (r != ncclSuccess && r != ncclInProgress)
            status = nccl_failed(nccl, "ncclCommInitRankConfig", r, __FILE__, __LINE__);
        else
            status = settle(nccl, "ncclCommInitRankConfig");
    }
    if (status != MT_OK) {
        mt_nccl_destroy(nccl);
        return status;
    }
    *out = nccl;
    return MT_OK;
}

mt_status mt_nccl_allreduce_sum_f32(mt_nccl *nccl, float *device_buffer, size_t count,
                                    cudaStream_t stream) {
    if (!nccl->comm)
        return MT_FAIL(MT_ERR_COMM, "rank %d: all-reduce on an aborted NCCL communicator",
                       nccl->rank);
    NCCL_CHECK(nccl, ncclAllReduce(device_buffer, device_buffer, count, ncclFloat32, ncclSum,
                                   nccl->comm, stream));
    return settle(nccl, "ncclAllReduce");
}

mt_status mt_nccl_wait(mt_nccl *nccl, cudaStream_t stream) {
    const double deadline = mt_clock_monotonic() + nccl->timeout_s;
    for (;;) {
        cudaError_t e = cudaStreamQuery(stream);
        if (e == cudaSuccess) return MT_OK;
        if (e != cudaErrorNotReady)
            return MT_FAIL(MT_ERR_COMM, "rank %d: cudaStreamQuery while waiting for NCCL: %s",
                           nccl->rank, cudaGetErrorString(e));
        mt_status status = nccl_state(nccl, "all-reduce");
        if (status != MT_OK && status != MT_END) return status;
        if (mt_clock_monotonic() > deadline) return timed_out(nccl, "all-reduce");
        pause_briefly();
    }
}

void mt_nccl_abort(mt_nccl *nccl) {
    if (!nccl || !nccl->comm) return;
    (void)ncclCommAbort(nccl->comm);
    nccl->comm = NULL;
}

void mt_nccl_destroy(mt_nccl *nccl) {
    if (!nccl) return;
    if (nccl->ready) (void)cudaEventDestroy(nccl->ready);
    for (int i = 0; i < 2; i++)
        if (nccl->step_end[i]) (void)cudaEventDestroy(nccl->step_end[i]);
    for (int i = 0; i < nccl->done_count; i++) (void)cudaEventDestroy(nccl->done[i]);
    free(nccl->done);
    if (nccl->comm) {
        ncclResult_t r = ncclCommFinalize(nccl->comm);
        if ((r == ncclSuccess || r == ncclInProgress) && settle(nccl, "ncclCommFinalize") == MT_OK)
            (void)ncclCommDestroy(nccl->comm);
        else
            mt_nccl_abort(nccl);
    }
    free(nccl);
}

/* ---- the gradient path of train.comm = nccl (comm_internal.h's table) ---------------------- */

static mt_status cuda_failed(const mt_nccl *nccl, const char *call, cudaError_t e) {
    return MT_FAIL(MT_ERR_COMM, "rank %d (GPU %d): %s failed: %s", nccl->rank, nccl->device, call,
                   cudaGetErrorString(e));
}

static mt_status api_init(mt_comm *comm, mt_backend *backend, double timeout_s, void **out) {
    *out = NULL;
    cudaStream_t compute, stream;
    MT_TRY(mt_cuda_backend_streams(backend, &compute, &stream)); /* a cuda backend, or an error */
    mt_nccl *nccl = NULL;
    MT_TRY(mt_nccl_init(comm, backend->options.device, timeout_s, &nccl));
    /* timing off: these events only order streams and say where the device is, cheaper so */
    cudaError_t e = cudaEventCreateWithFlags(&nccl->ready, cudaEventDisableTiming);
    for (int i = 0; i < 2 && e == cudaSuccess; i++)
        e = cudaEventCreateWithFlags(&nccl->step_end[i], cudaEventDisableTiming);
    if (e != cudaSuccess) {
        mt_status status = cuda_failed(nccl, "cudaEventCreateWithFlags", e);
        mt_nccl_destroy(nccl);
        return status;
    }
    *out = nccl;
    return MT_OK;
}

/* done[bucket], created the first time a step has that many buckets (the same every step) */
static mt_status done_event(mt_nccl *nccl, int bucket) {
    if (bucket < nccl->done_count) return MT_OK;
    cudaEvent_t *grown = realloc(nccl->done, (size_t)(bucket + 1) * sizeof *grown);
    if (!grown) return MT_FAIL(MT_ERR_NOMEM, "out of memory for CUDA events");
    nccl->done = grown;
    for (; nccl->done_count <= bucket; nccl->done_count++) {
        cudaError_t e = cudaEventCreateWithFlags(&nccl->done[nccl->done_count],
                                                 cudaEventDisableTiming);
        if (e != cudaSuccess) return cuda_failed(nccl, "cudaEventCreateWithFlags", e);
    }
    return MT_OK;
}

/* Until `event` has passed on the device, polling NCCL's asynchronous errors meanwhile: a peer
 * that died or hangs makes the collectives before the event stall, and this an error after the
 * timeout (or sooner, when NCCL reports the peer broken). Never under capture: the events
 * waited for here are recorded outside it. */
static mt_status wait_event(mt_nccl *nccl, cudaEvent_t event) {
    const double deadline = mt_clock_monotonic() + nccl->timeout_s;
    for (;;) {
        cudaError_t e = cudaEventQuery(event);
        if (e == cudaSuccess) return MT_OK;
        if (e != cudaErrorNotReady) return cuda_failed(nccl, "cudaEventQuery", e);
        mt_status status = nccl_state(nccl, "all-reduce");
        if (status != MT_OK && status != MT_END) return status;
        if (mt_clock_monotonic() > deadline) return timed_out(nccl, "all-reduce");
        pause_briefly();
    }
}

static mt_status api_bucket_start(void *handle, mt_backend *backend, int bucket, float *buffer,
                                  size_t count) {
    mt_nccl *nccl = handle;
    cudaStream_t compute, stream;
    MT_TRY(mt_cuda_backend_streams(backend, &compute, &stream));
    if (!nccl->comm)
        return MT_FAIL(MT_ERR_COMM, "rank %d: all-reduce on an aborted NCCL communicator",
                       nccl->rank);
    MT_TRY(done_event(nccl, bucket));
    /* the hook runs when backward has enqueued the bucket's last layer: the event marks that
     * point of the compute stream, and the communication stream starts after it */
    cudaError_t e = cudaEventRecord(nccl->ready, compute);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(stream, nccl->ready, 0);
    if (e != cudaSuccess) return cuda_failed(nccl, "ordering the all-reduce after backward", e);
    /* ncclAvg: the mean in one pass (NCCL >= 2.10) */
    NCCL_CHECK(nccl, ncclAllReduce(buffer, buffer, count, ncclFloat32, ncclAvg, nccl->comm,
                                   stream));
    /* the enqueue itself (a non-blocking communicator may return before it is done, and takes
     * no other call until it is): host-side, no wait for the device or for a peer, so it holds
     * under capture too, where it makes sure the graph has the collective when the capture ends */
    MT_TRY(settle(nccl, "ncclAllReduce"));
    e = cudaEventRecord(nccl->done[bucket], stream);
    if (e != cudaSuccess) return cuda_failed(nccl, "cudaEventRecord after the all-reduce", e);
    return MT_OK;
}

static mt_status api_bucket_wait(void *handle, mt_backend *backend, int bucket) {
    mt_nccl *nccl = handle;
    cudaStream_t compute, stream;
    MT_TRY(mt_cuda_backend_streams(backend, &compute, &stream));
    if (bucket < 0 || bucket >= nccl->done_count)
        return MT_FAIL(MT_ERR_INTERNAL, "NCCL bucket %d was never started", bucket);
    cudaError_t e = cudaStreamWaitEvent(compute, nccl->done[bucket], 0);
    if (e != cudaSuccess) return cuda_failed(nccl, "ordering the update after the all-reduce", e);
    return MT_OK;
}

static mt_status api_step_done(void *handle, mt_backend *backend) {
    mt_nccl *nccl = handle;
    cudaStream_t compute, stream;
    MT_TRY(mt_cuda_backend_streams(backend, &compute, &stream));
    mt_status status = nccl_state(nccl, "all-reduce"); /* one look, no wait */
    if (status != MT_OK && status != MT_END) return status;
    /* the compute stream waited for every bucket: past this event, the step's collectives ended */
    cudaError_t e = cudaEventRecord(nccl->step_end[nccl->steps % 2], compute);
    if (e != cudaSuccess) return cuda_failed(nccl, "cudaEventRecord after the step", e);
    nccl->steps++;
    /* the previous step's: normally long passed (this step was enqueued behind it) */
    return nccl->steps > 1 ? wait_event(nccl, nccl->step_end[(nccl->steps - 2) % 2]) : MT_OK;
}

static mt_status api_settle(void *handle, mt_backend *backend) {
    (void)backend;
    mt_nccl *nccl = handle;
    return nccl->steps > 0 ? wait_event(nccl, nccl->step_end[(nccl->steps - 1) % 2]) : MT_OK;
}

static void api_destroy(void *handle) {
    mt_nccl_destroy(handle);
}

static const mt_comm_nccl_api nccl_api = {
    .visible_devices = mt_cuda_visible_devices,
    .init = api_init,
    .bucket_start = api_bucket_start,
    .bucket_wait = api_bucket_wait,
    .step_done = api_step_done,
    .settle = api_settle,
    .destroy = api_destroy,
};

const void *mt_nccl_training_api(void) {
    return &nccl_api;
}
