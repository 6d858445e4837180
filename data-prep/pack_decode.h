/* Private to mobiletune-pack: the decode pipeline's ring of slots and its workers (pack_decode.c).
 * Workers fill slots in job order, at most slot_count ahead of the writer; the writer
 * (pack_run.c) waits for slot i % slot_count to be ready, takes its record, and frees it by
 * advancing `written`. The ring bounds memory however many files there are. */
#ifndef MOBILETUNE_PACK_DECODE_H
#define MOBILETUNE_PACK_DECODE_H

#include "pack.h"

#include <pthread.h>

/* One file's result: its encoded record, or a skip reason; guarded by pipeline.mutex. */
typedef struct slot {
    bool ready, skipped;
    char reason[600];
    uint8_t *record;
    size_t record_bytes, record_capacity;
    uint64_t sum[3], sumsq[3];
} slot;

/* One file to pack, in output order, and the split it goes to. */
typedef struct job {
    const pack_item *item;
    int split;
} job;

/* What the writer and the workers share. */
typedef struct pipeline {
    const pack_options *options;
    const job *jobs;
    size_t job_count;
    slot *slots;
    size_t slot_count;
    pthread_mutex_t mutex;
    pthread_cond_t ready_cond, free_cond;
    size_t next, written;
    bool stop;
} pipeline;

/* A worker's own buffers, reused from file to file. */
typedef struct worker_state {
    pipeline *p;
    uint8_t *file;
    size_t file_capacity;
    uint8_t *pixels; /* size,size,3 */
} worker_state;

/* The worker thread (arg: its worker_state): processes jobs until none is left or p->stop. */
void *pack_worker_main(void *arg);
/* Tell the `started` workers to stop, wake those waiting for a free slot, and join them; then
 * none is started. Used at the end of the records and on every early exit. */
void pack_workers_stop(pipeline *p, pthread_t *threads, int *started);

#endif
