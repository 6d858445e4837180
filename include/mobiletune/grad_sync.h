/* The gradient synchronizer: the all-reduce (mean over ranks) of the trainable gradient buffer in
 * buckets, each launched during backward as soon as its last layer's gradients are final, while
 * backward goes on below it.
 *
 * Backward produces gradients from the top of the network down, so the gradient buffer (Keras
 * layer order) completes from its end towards offset 0; the model's hook (mt_model_set_grad_hook)
 * reports each layer's final range in that order. The synchronizer gathers the reported ranges
 * into a bucket until it holds at least `bucket_bytes` (whole layers only: a layer larger than a
 * bucket is a bucket of its own), starts a non-blocking all-reduce of it, and on every later hook
 * call lets the communication library progress the buckets in flight (MPI moves data only inside
 * MPI calls), so that most of the reduction happens while the host still computes backward.
 * mt_grad_sync_finish waits for whatever is left and leaves the mean in the gradient buffer.
 * Every rank runs the same layout (the trainer checks it), so every rank starts the same buckets
 * in the same order, as MPI requires.
 *
 * Memory: gradients in host memory are reduced in place; when the backend's memory is not the
 * host's (mt_ops.device_memory), each bucket is staged through a host mirror with the backend's
 * explicit download/upload. Frozen mode (the head only: 1,281 floats at alpha 1.0) is one bucket,
 * one call. bucket_bytes = 0 reduces the whole buffer with one call after backward (the behaviour
 * before buckets, kept to measure what the overlap gains). */
#ifndef MOBILETUNE_GRAD_SYNC_H
#define MOBILETUNE_GRAD_SYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mobiletune/comm.h"
#include "mobiletune/ops.h"
#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_grad_sync mt_grad_sync;

/* Synchronize `count` floats at `grads` (memory of `backend`; both must outlive the
 * synchronizer) in buckets of about `bucket_bytes` (0: one call after backward). */
mt_status mt_grad_sync_create(mt_comm *comm, mt_backend *backend, float *grads, size_t count,
                              size_t bucket_bytes, mt_grad_sync **out);
/* Buckets still in flight (a backward that failed half-way) are left to the job's abort. */
void mt_grad_sync_destroy(mt_grad_sync *sync);

/* A new backward starts: no range reported yet. */
void mt_grad_sync_begin(mt_grad_sync *sync);

/* The model's gradient hook (an mt_grad_ready_fn; `user` is the synchronizer): elements
 * [offset, offset + count) are final. Ranges must arrive in decreasing offset order, each one
 * ending where the previous one began (an error otherwise). Starts the bucket this range
 * completes, if any, and tests the buckets in flight. */
mt_status mt_grad_sync_ready(void *user, size_t offset, size_t count);

/* After backward: every element must have been reported (an error otherwise). Starts what is
 * left (everything, with bucket_bytes = 0). Other collectives may follow (e.g. the trainer's
 * flags) while the buckets are in flight. */
mt_status mt_grad_sync_end_backward(mt_grad_sync *sync);

/* The next bucket in start order (the top of the network first), once its mean is in `grads`:
 * its range in *offset, *count, for the optimizer to update it while later buckets are still in
 * flight. MPI: waits for that bucket only (and stages it back). NCCL: the backend's compute
 * stream waits for that bucket's all-reduce, the host does not. MT_END when every bucket of the
 * step was handed out. Every bucket must be waited for before the next mt_grad_sync_begin. */
mt_status mt_grad_sync_wait_bucket(mt_grad_sync *sync, size_t *offset, size_t *count);

/* Every bucket not handed out yet waited for (e.g. a step whose update is skipped). */
mt_status mt_grad_sync_wait_all(mt_grad_sync *sync);

/* mt_grad_sync_end_backward, every bucket waited for, mt_grad_sync_step_done: the mean over
 * ranks in `grads`. */
mt_status mt_grad_sync_finish(mt_grad_sync *sync);

/* With NCCL, the step (begin .. the last bucket waited for) is stream work only: no host wait
 * and no look at the collectives, so that it can be captured into a CUDA graph and replayed.
 * The host's checks come after it instead, outside any capture, after each step whether it ran
 * eager or was replayed: NCCL's asynchronous error state, and a wait for the previous step's
 * collectives (the host runs at most one step ahead), bounded by the communicator's timeout so
 * that a dead or stuck peer is an error on this rank, not a hang. Nothing to do with MPI, which
 * completed every bucket inside the step. */
mt_status mt_grad_sync_step_done(mt_grad_sync *sync);

/* Before the host reads what the steps wrote (a read back or a download, which would wait for
 * the device without a bound): with NCCL, waits for the last step's collectives as
 * mt_grad_sync_step_done waits for the previous one's. Nothing to do with MPI. */
mt_status mt_grad_sync_settle(mt_grad_sync *sync);

/* Whether the step holds host work between its ops (MPI: non-blocking calls, tests, staging
 * copies through the host), which a captured step could not replay; false with NCCL. */
bool mt_grad_sync_host_work(const mt_grad_sync *sync);

typedef struct mt_grad_sync_stats {
    uint64_t steps;                /* finished backward passes */
    uint64_t buckets;              /* all-reduces started */
    uint64_t launched_in_backward; /* of which started before backward's last range */
    uint64_t done_in_backward;     /* of which seen complete before backward ended */
    double comm_seconds; /* host time inside the synchronizer: starts, tests, staging, waits */
    double wait_seconds; /* of which in mt_grad_sync_wait_bucket (and so in finish) */
} mt_grad_sync_stats;

mt_grad_sync_stats mt_grad_sync_get_stats(const mt_grad_sync *sync);
void mt_grad_sync_reset_stats(mt_grad_sync *sync);

/* The number of buckets one backward starts (the same every step for a given layout); known
 * after the first mt_grad_sync_finish, 0 before. */
int mt_grad_sync_bucket_count(const mt_grad_sync *sync);

/* What happened during the last backward, in order, for tests and for the docs' timeline. */
typedef enum mt_grad_event_kind {
    MT_GRAD_EVENT_READY = 0,    /* the hook reported [offset, offset+count) */
    MT_GRAD_EVENT_LAUNCH,       /* an all-reduce of [offset, offset+count) started */
    MT_GRAD_EVENT_DONE,         /* that all-reduce was seen complete (mean in place) */
    MT_GRAD_EVENT_END_BACKWARD, /* mt_grad_sync_end_backward was called (backward had ended) */
} mt_grad_event_kind;

typedef struct mt_grad_sync_event {
    mt_grad_event_kind kind;
    size_t offset, count;
} mt_grad_sync_event;

/* The events since the last mt_grad_sync_begin; valid until the next begin. */
const mt_grad_sync_event *mt_grad_sync_trace(const mt_grad_sync *sync, size_t *count);

#ifdef __cplusplus
}
#endif
#endif
