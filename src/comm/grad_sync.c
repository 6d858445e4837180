/* The bucketed gradient all-reduce (grad_sync.h) over the communication interface's
 * non-blocking all-reduce. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "mobiletune/grad_sync.h"

#include "comm_internal.h"

/* MPI counts are int; a bucket (or, with bucket_bytes = 0, the whole buffer) is started in
 * pieces of at most this many elements. */
enum { PIECE_MAX = 1 << 30 };

typedef struct bucket {
    size_t offset, count;
    mt_comm_request *request; /* NULL once complete */
} bucket;

struct mt_grad_sync {
    mt_comm *comm;
    mt_backend *backend;
    float *grads;        /* backend memory */
    float *host;         /* host mirror of grads when the backend's memory is not the host's */
    size_t count;
    size_t bucket_elems; /* 0: one call after backward */
    float scale;         /* 1 / world size */
    const mt_comm_nccl_api *nccl; /* train.comm = nccl: buckets go to NCCL on the GPU */

    /* this backward: [reported, count) is final; [reported, pending_end) not yet started */
    size_t reported, pending_end;
    bucket *buckets;
    int bucket_used, bucket_cap;
    int first_in_flight; /* buckets before it are complete (mean in place) */
    int next_returned;   /* buckets before it were handed out by mt_grad_sync_wait_bucket */
    bool ended;          /* mt_grad_sync_end_backward was called */
    int buckets_per_step;
    mt_grad_sync_event *events;
    size_t event_used, event_cap;

    mt_grad_sync_stats stats;
};

static void trace(mt_grad_sync *s, mt_grad_event_kind kind, size_t offset, size_t count) {
    if (s->event_used == s->event_cap) {
        size_t cap = s->event_cap ? 2 * s->event_cap : 512;
        mt_grad_sync_event *grown = realloc(s->events, cap * sizeof *grown);
        if (!grown) return; /* the trace is for tests and the docs; losing it is harmless */
        s->events = grown;
        s->event_cap = cap;
    }
    s->events[s->event_used++] = (mt_grad_sync_event){kind, offset, count};
}

mt_status mt_grad_sync_create(mt_comm *comm, mt_backend *backend, float *grads, size_t count,
                              size_t bucket_bytes, mt_grad_sync **out) {
    *out = NULL;
    mt_grad_sync *s = calloc(1, sizeof *s);
    if (!s) return MT_FAIL(MT_ERR_NOMEM, "out of memory for the gradient synchronizer");
    s->comm = comm;
    s->backend = backend;
    s->grads = grads;
    s->count = count;
    s->bucket_elems = bucket_bytes / sizeof(float);
    if (bucket_bytes > 0 && s->bucket_elems == 0) s->bucket_elems = 1;
    s->scale = 1.0f / (float)comm->info.world_size;
    if (comm->info.kind == MT_COMM_NCCL) s->nccl = mt_comm_nccl_api_get();
    /* one rank has nothing to move, NCCL reduces in device memory: no staging */
    if (backend->ops->device_memory && comm->info.world_size > 1 && count > 0 && !s->nccl) {
        s->host = malloc(count * sizeof *s->host);
        if (!s->host) {
            free(s);
            return MT_FAIL(MT_ERR_NOMEM, "out of memory for the host copy of %zu gradients "
                           "(train.comm = mpi on a device backend stages through it)", count);
        }
    }
    mt_grad_sync_begin(s);
    *out = s;
    return MT_OK;
}

void mt_grad_sync_destroy(mt_grad_sync *s) {
    if (!s) return;
    /* After an error a bucket may still be in flight: MPI may yet write into its host buffer,
     * a collective request cannot be cancelled, and waiting for it can hang when a peer is the
     * one that failed. The process is on its way down (the trainer aborts the job), so such a
     * staging buffer is left to it rather than freed under MPI's feet. */
    bool in_flight = false;
    if (!s->nccl)
        for (int i = s->first_in_flight; i < s->bucket_used; i++)
            if (s->buckets[i].request) in_flight = true;
    if (!in_flight) free(s->host);
    free(s->buckets);
    free(s->events);
    free(s);
}

void mt_grad_sync_begin(mt_grad_sync *s) {
    s->reported = s->pending_end = s->count;
    s->bucket_used = s->first_in_flight = s->next_returned = 0;
    s->ended = false;
    s->event_used = 0;
}

static bool staged(const mt_grad_sync *s) {
    return s->host != NULL;
}

/* The elements a bucket reduces on the host: the gradients themselves, or their mirror. */
static float *host_view(mt_grad_sync *s, size_t offset) {
    return (staged(s) ? s->host : s->grads) + offset;
}

static mt_status reserve_bucket(mt_grad_sync *s) {
    if (s->bucket_used < s->bucket_cap) return MT_OK;
    int cap = s->bucket_cap ? 2 * s->bucket_cap : 64;
    bucket *grown = realloc(s->buckets, (size_t)cap * sizeof *grown);
    if (!grown) return MT_FAIL(MT_ERR_NOMEM, "out of memory for gradient buckets");
    s->buckets = grown;
    s->bucket_cap = cap;
    return MT_OK;
}

/* NCCL: the bucket is enqueued on the communication stream behind an event of the compute
 * stream; the host does not wait, and it is complete (for the GPU) when the compute stream
 * passes mt_grad_sync_finish's event. */
static mt_status launch_nccl(mt_grad_sync *s, size_t offset, size_t count) {
    MT_TRY(s->nccl->bucket_start(s->comm->nccl, s->backend, s->bucket_used, s->grads + offset,
                                 count));
    MT_TRY(reserve_bucket(s));
    s->buckets[s->bucket_used++] = (bucket){.offset = offset, .count = count};
    s->stats.buckets++;
    if (s->reported > 0) s->stats.launched_in_backward++;
    trace(s, MT_GRAD_EVENT_LAUNCH, offset, count);
    return MT_OK;
}

static mt_status launch(mt_grad_sync *s, size_t offset, size_t count) {
    if (s->nccl) return launch_nccl(s, offset, count);
    if (staged(s))
        MT_TRY(s->backend->ops->download(s->backend, s->host + offset, s->grads + offset,
                                         count * sizeof(float)));
    for (size_t done = 0; done < count;) {
        size_t piece = count - done < (size_t)PIECE_MAX ? count - done : (size_t)PIECE_MAX;
        MT_TRY(reserve_bucket(s));
        bucket *b = &s->buckets[s->bucket_used];
        *b = (bucket){.offset = offset + done, .count = piece};
        MT_TRY(s->comm->impl->iallreduce(s->comm, host_view(s, b->offset), piece, MT_REDUCE_F32,
                                         MT_REDUCE_SUM, &b->request));
        s->bucket_used++;
        s->stats.buckets++;
        if (s->reported > 0) s->stats.launched_in_backward++;
        trace(s, MT_GRAD_EVENT_LAUNCH, b->offset, piece);
        done += piece;
    }
    return MT_OK;
}

/* The sum is in place: make it the mean (the same multiplication as mt_comm_allreduce_mean_f32,
 * so the result is bit for bit the one-call result whenever MPI sums in the same order) and put
 * it back where the gradients live. */
static mt_status complete(mt_grad_sync *s, bucket *b) {
    if (s->comm->info.world_size == 1) { /* nothing moved, the mean is the value */
        trace(s, MT_GRAD_EVENT_DONE, b->offset, b->count);
        return MT_OK;
    }
    float *values = host_view(s, b->offset);
    const float scale = s->scale;
    const size_t count = b->count;
#pragma omp parallel for if (count > 65536)
    for (size_t i = 0; i < count; i++) values[i] *= scale;
    if (staged(s))
        MT_TRY(s->backend->ops->upload(s->backend, s->grads + b->offset, values,
                                       count * sizeof(float)));
    trace(s, MT_GRAD_EVENT_DONE, b->offset, b->count);
    return MT_OK;
}

/* Let the library move the buckets in flight; complete those that are done, in start order (a
 * later bucket may finish first: it is completed when the earlier ones are). */
static mt_status progress(mt_grad_sync *s) {
    for (int i = s->first_in_flight; i < s->bucket_used; i++) {
        bucket *b = &s->buckets[i];
        if (!b->request) continue;
        bool done = false;
        MT_TRY(s->comm->impl->test(s->comm, b->request, &done));
        if (done) b->request = NULL;
    }
    while (s->first_in_flight < s->bucket_used && !s->buckets[s->first_in_flight].request) {
        MT_TRY(complete(s, &s->buckets[s->first_in_flight]));
        s->first_in_flight++;
        s->stats.done_in_backward++;
    }
    return MT_OK;
}

mt_status mt_grad_sync_ready(void *user, size_t offset, size_t count) {
    mt_grad_sync *s = user;
    const double start = mt_clock_monotonic();
    trace(s, MT_GRAD_EVENT_READY, offset, count);
    if (offset + count != s->reported || offset > s->reported)
        return MT_FAIL(MT_ERR_INTERNAL, "gradient range [%zu, %zu) reported while [%zu, %zu) "
                       "was final: backward must report adjacent ranges from the top down",
                       offset, offset + count, s->reported, s->count);
    s->reported = offset;
    mt_status status = MT_OK;
    if (s->bucket_elems > 0 &&
        (s->pending_end - s->reported >= s->bucket_elems || s->reported == 0)) {
        status = launch(s, s->reported, s->pending_end - s->reported);
        s->pending_end = s->reported;
    }
    if (status == MT_OK && !s->nccl) status = progress(s); /* NCCL progresses on its own */
    s->stats.comm_seconds += mt_clock_monotonic() - start;
    return status;
}

mt_status mt_grad_sync_end_backward(mt_grad_sync *s) {
    const double start = mt_clock_monotonic();
    trace(s, MT_GRAD_EVENT_END_BACKWARD, 0, 0);
    if (s->reported != 0)
        return MT_FAIL(MT_ERR_INTERNAL, "backward reported gradients [%zu, %zu) of %zu: the "
                       "rest would be all-reduced stale", s->reported, s->count, s->count);
    if (s->pending_end > 0) {
        MT_TRY(launch(s, 0, s->pending_end));
        s->pending_end = 0;
    }
    s->ended = true;
    s->buckets_per_step = s->bucket_used;
    s->stats.steps++;
    s->stats.comm_seconds += mt_clock_monotonic() - start;
    return MT_OK;
}

mt_status mt_grad_sync_wait_bucket(mt_grad_sync *s, size_t *offset, size_t *count) {
    if (!s->ended)
        return MT_FAIL(MT_ERR_INTERNAL, "gradient buckets waited for before the end of backward "
                       "(mt_grad_sync_end_backward)");
    if (s->next_returned >= s->bucket_used) return MT_END;
    const double start = mt_clock_monotonic();
    const int i = s->next_returned;
    bucket *b = &s->buckets[i];
    if (s->nccl) {
        /* the compute stream waits for this bucket's all-reduce; the host does not */
        MT_TRY(s->nccl->bucket_wait(s->comm->nccl, s->backend, i));
        trace(s, MT_GRAD_EVENT_DONE, b->offset, b->count);
    } else if (i >= s->first_in_flight) { /* buckets complete in start order: i is the first */
        if (b->request) {
            mt_comm_request *request = b->request;
            b->request = NULL;
            MT_TRY(s->comm->impl->wait(s->comm, request));
        }
        MT_TRY(complete(s, b));
        s->first_in_flight = i + 1;
    }
    s->next_returned = i + 1;
    *offset = b->offset;
    *count = b->count;
    const double spent = mt_clock_monotonic() - start;
    s->stats.wait_seconds += spent;
    s->stats.comm_seconds += spent;
    return MT_OK;
}

mt_status mt_grad_sync_wait_all(mt_grad_sync *s) {
    size_t offset, count;
    mt_status status;
    while ((status = mt_grad_sync_wait_bucket(s, &offset, &count)) == MT_OK) continue;
    return status == MT_END ? MT_OK : status;
}

mt_status mt_grad_sync_finish(mt_grad_sync *s) {
    MT_TRY(mt_grad_sync_end_backward(s));
    MT_TRY(mt_grad_sync_wait_all(s));
    return mt_grad_sync_step_done(s);
}

/* NCCL's host-side checks, kept out of the step (comm_internal.h step_done, settle): the step
 * itself is stream work only, which a CUDA graph can hold. MPI completed everything inside. */
mt_status mt_grad_sync_step_done(mt_grad_sync *s) {
    if (!s->nccl) return MT_OK;
    const double start = mt_clock_monotonic();
    mt_status status = s->nccl->step_done(s->comm->nccl, s->backend);
    s->stats.comm_seconds += mt_clock_monotonic() - start;
    return status;
}

mt_status mt_grad_sync_settle(mt_grad_sync *s) {
    if (!s->nccl) return MT_OK;
    const double start = mt_clock_monotonic();
    mt_status status = s->nccl->settle(s->comm->nccl, s->backend);
    s->stats.comm_seconds += mt_clock_monotonic() - start;
    return status;
}

bool mt_grad_sync_host_work(const mt_grad_sync *s) {
    return !s->nccl;
}

mt_grad_sync_stats mt_grad_sync_get_stats(const mt_grad_sync *s) {
    return s->stats;
}

void mt_grad_sync_reset_stats(mt_grad_sync *s) {
    s->stats = (mt_grad_sync_stats){0};
}

int mt_grad_sync_bucket_count(const mt_grad_sync *s) {
    return s->buckets_per_step;
}

const mt_grad_sync_event *mt_grad_sync_trace(const mt_grad_sync *s, size_t *count) {
    *count = s->event_used;
    return s->events;
}
