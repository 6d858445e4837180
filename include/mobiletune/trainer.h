/* The training loop and evaluation: what `mobiletune train` and `mobiletune eval` run on each
 * rank. One process or many (MPI): the loop is the same, communication goes through comm.h.
 *
 * A training step on rank r: the loader's next batch of this rank's shard -> forward (training
 * mode) -> backward -> one all-reduce (mean) of the trainable gradients, and only of those ->
 * optimizer step on the trainable buffer -> a tiny all-reduce of flags (stop requested, NaN seen)
 * so that every rank takes the same decision at the same step boundary.
 *
 * Replicas: rank 0's parameters and BN statistics are broadcast at start; every rank compares a
 * checksum of its parameter layout and of its replica with rank 0's. BN moving statistics are
 * updated per replica during an epoch (as Keras' MirroredStrategy does) and averaged across ranks
 * before every evaluation and checkpoint, so all ranks hold the same model there.
 *
 * Only rank 0 prints, logs and writes checkpoints; every rank reads them on resume. */
#ifndef MOBILETUNE_TRAINER_H
#define MOBILETUNE_TRAINER_H

#include <stdbool.h>
#include <stdint.h>

#include "mobiletune/comm.h"
#include "mobiletune/config.h"
#include "mobiletune/model.h"
#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_train_options {
    /* NULL or "": start fresh (refused when the run folder holds a checkpoint: pass "auto" to
     * continue or delete it); "auto": continue from the run folder's last checkpoint when there is
     * one, else start fresh (what a requeued Slurm job wants); otherwise a checkpoint path. */
    const char *resume;
    bool progress; /* a progress line with ETA on rank 0's stderr (when it is a terminal) */
    /* a resume may change options that change the training (seed, learning rate, ...): without
     * this, such a change is an error naming the options */
    bool allow_changes;
    /* NULL, or (tests) a function that wraps the backend mt_train creates from train.backend, to
     * watch or record its op calls: it takes `inner` over (destroying *out destroys inner too),
     * also when it fails. */
    mt_status (*wrap_backend)(mt_backend *inner, mt_backend **out);
} mt_train_options;

typedef struct mt_train_result {
    int epochs_done;
    uint64_t steps_done;
    double val_loss, val_accuracy; /* of the last evaluation (NaN when none ran) */
    double best_val_accuracy;
    double test_loss, test_accuracy; /* when [data] test is set (NaN otherwise) */
    bool stopped_by_signal;          /* a checkpoint was written and the run can be resumed */
    bool used_feature_cache;
    double seconds;
    /* where `seconds` went (the rest: set-up, weights, BN averaging, waiting on ranks) */
    double cache_seconds;      /* frozen mode's feature cache */
    double step_seconds;       /* the training steps, loader waits included */
    double eval_seconds;       /* validation and test */
    double checkpoint_seconds; /* writing checkpoints */
} mt_train_result;

/* Train per `config` (already checked). Errors name the step, the file or the rank. */
mt_status mt_train(const mt_train_config *config, mt_comm *comm, const mt_train_options *options,
                   mt_train_result *result);

/* Ask a running mt_train to stop at the next step boundary with a checkpoint. Async-signal-safe:
 * the CLI calls it from its SIGTERM/SIGUSR1 handler. */
void mt_train_request_stop(int signal_number);

typedef struct mt_eval_result {
    double loss, accuracy;
    int64_t count;
    int classes;
    int64_t *confusion; /* classes x classes, [true][predicted]; free() it */
} mt_eval_result;

/* Loss, accuracy and confusion matrix of `model` (inference mode) on the packed dataset `db`,
 * every record exactly once across the ranks of `comm`. */
mt_status mt_evaluate(mt_model *model, const char *db, mt_comm *comm, int threads,
                      mt_eval_result *result);

/* mt_checkpoint_open_model's backend: the one the checkpoint's run trained on. */
enum { MT_BACKEND_OF_CHECKPOINT = -1 };

/* A model for inference from a training checkpoint: the [model] options and class names come
 * from the checkpoint's metadata, the weights from its tensors. `backend` is an mt_backend_kind,
 * or MT_BACKEND_OF_CHECKPOINT for the checkpoint's train.backend. class_names (may be NULL) gets
 * a malloc'd array of model classes malloc'd strings (free each, then the array). */
mt_status mt_checkpoint_open_model(const char *path, int backend_kind, int batch_size,
                                   mt_backend **backend, mt_model **model, char ***class_names);

#ifdef __cplusplus
}
#endif
#endif
