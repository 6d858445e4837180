/* The clocks mobiletune reads, as seconds in a double, in one place. Header-only (static inline)
 * so that mobiletune-pack and the benchmarks use the same definitions without a link dependency. */
#ifndef MT_CORE_CLOCK_H
#define MT_CORE_CLOCK_H

#include <time.h>

/* For durations: monotonic, so a clock step (NTP, the user) never makes an interval negative. */
static inline double mt_clock_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Seconds since the Unix epoch: only where a date is recorded (TensorBoard's wall_time). */
static inline double mt_clock_wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU seconds of the whole process (every thread): on a shared machine the wall-clock rate moves
 * with everyone else's load, the work per CPU-second much less. */
static inline double mt_clock_process_cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
