/* Training metrics on disk: a JSON-lines log (one object per step or epoch, for scripts and
 * scripts/plot_metrics.py) and TensorBoard event files (for `tensorboard --logdir RUN_DIR`).
 *
 * Run folder layout, as Keras' TensorBoard callback makes it so the curves overlay:
 *   RUN_DIR/metrics.jsonl                               appended to (a resumed run continues it)
 *   RUN_DIR/tensorboard/train/events.out.tfevents.T.H   epoch_loss, epoch_accuracy,
 *                                                        epoch_learning_rate, ... and batch_*
 *   RUN_DIR/tensorboard/validation/events.out.tfevents.T.H   epoch_loss, epoch_accuracy
 *
 * The event files are written by include/mobiletune/tfevents.h (src/io/tfevents.c). */
#ifndef MOBILETUNE_METRICS_H
#define MOBILETUNE_METRICS_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mobiletune/status.h"
#include "mobiletune/tfevents.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the run's metrics ---------------------------------------------------------------------- */

typedef enum mt_metrics_kind {
    MT_METRICS_STEP = 0, /* one training step (or a group of steps) */
    MT_METRICS_EPOCH,    /* the end of an epoch, with validation results if there were any */
} mt_metrics_kind;

/* Values that are NAN are absent: left out of the JSON line and of TensorBoard. (A non-finite
 * measured value is written as null in JSON and skipped in TensorBoard.) */
#define MT_METRIC_ABSENT NAN

typedef struct mt_metrics_record {
    mt_metrics_kind kind;
    int epoch;    /* 1-based */
    int64_t step; /* global optimizer steps so far */
    double loss, accuracy;
    double val_loss, val_accuracy;
    double lr;
    double images_per_second;
    double seconds; /* of the step(s) or the epoch */
    /* train.precision = fp16: the dynamic loss scale at the end, and the updates it skipped in
     * the epoch (non-finite gradients); absent otherwise */
    double loss_scale, skipped_steps;
} mt_metrics_record;

/* A record with every value absent. */
mt_metrics_record mt_metrics_record_empty(mt_metrics_kind kind, int epoch, int64_t step);

typedef struct mt_metrics mt_metrics;

/* Open RUN_DIR/metrics.jsonl for appending (creating RUN_DIR) and, with tensorboard, the two
 * event files. */
mt_status mt_metrics_open(const char *run_dir, bool tensorboard, mt_metrics **out);

/* Append a record to every log and flush them. */
mt_status mt_metrics_log(mt_metrics *metrics, const mt_metrics_record *record);

/* Flush and close (NULL is fine). */
mt_status mt_metrics_close(mt_metrics *metrics);

#ifdef __cplusplus
}
#endif
#endif
