/* A recording stand-in for a backend's step capture (ops.h step_capture_begin/end, step_replay),
 * for tests on the CPU: it wraps another backend (the reference) and passes every op through,
 * except between step_capture_begin and step_capture_end, where it records each call with its
 * arguments -- the pointers as they are, everything passed by value or through a host-side
 * descriptor (tensors, descriptors, scalars_write's bytes) copied -- and runs nothing, as CUDA's
 * stream capture does. step_replay issues exactly the recorded calls again. So a training step
 * that passes a per-step value by value (or writes one inside the captured part) replays a stale
 * value, and training "with graphs" through it stops matching eager training bit for bit.
 * Calls a captured step must not make (upload, download, synchronize, allocations and frees,
 * the input pipeline, read backs) fail during a capture and break it, as they do on a GPU; a
 * free outside a capture makes later replays refuse (MT_ERR_INVALID), as cuda does when device
 * memory goes back to the driver. step_recorder_refuse_begins makes step_capture_begin refuse, as
 * cuda's does while profiling (MT_CUDA_PROFILE=1). */
#ifndef MT_TEST_STEP_RECORDER_H
#define MT_TEST_STEP_RECORDER_H

#include <stdint.h>

#include "mobiletune/ops.h"

typedef struct step_recorder_stats {
    uint64_t captures, replays, replayed_calls, broken_captures, refused_begins;
} step_recorder_stats;

/* Wraps `inner` (taken over: destroying *out destroys it), the signature of
 * mt_train_options.wrap_backend. */
mt_status step_recorder_wrap(mt_backend *inner, mt_backend **out);

/* The next recorder step_recorder_wrap makes refuses its first `count` step_capture_begin calls
 * (MT_ERR_INVALID, as cuda's); later recorders refuse none. */
void step_recorder_refuse_begins(int count);

/* What the last recorder step_recorder_wrap made has done (also after its backend is destroyed:
 * mt_train destroys it before returning). */
step_recorder_stats step_recorder_last_stats(void);

#endif
