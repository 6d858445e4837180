/* State shared by the training run's files (trainer.c and its parts: trainer_setup.c,
 * trainer_epoch.c, trainer_eval.c, trainer_cache.c, trainer_checkpoint.c, trainer_agree.c,
 * trainer_graph.c): one struct, so what a checkpoint holds is visibly what the loop uses, and
 * the functions one part calls in another. */
#ifndef MT_TRAINER_INTERNAL_H
#define MT_TRAINER_INTERNAL_H

#include <stdio.h>

#include "mobiletune/grad_sync.h"
#include "mobiletune/loader.h"
#include "mobiletune/metrics.h"
#include "mobiletune/optimizer.h"
#include "mobiletune/trainer.h"
#include "ops/loss_scale.h"
#include "train/trainer_graph.h"

typedef struct trainer {
    const mt_train_config *config;
    mt_comm *comm;
    mt_comm_info who;
    mt_backend *backend;
    mt_model *model;
    const mt_model_layout *layout;
    float *params, *grads; /* the trainable buffer and its gradients (backend memory) */
    size_t trainable_count;
    mt_optimizer optimizer;
    /* the step's loss, accuracy and non-finite steps, in backend memory (MT_ACCUM_COUNT doubles,
     * ops.h loss_accumulate), read back once per logging interval */
    double *accum;
    float *state_backup; /* nan_policy = skip: the BN statistics before the step (backend memory) */
    mt_grad_sync *grad_sync; /* the bucketed gradient all-reduce; NULL on one rank */
    /* train.precision = fp16: Keras' dynamic loss scale (host state, read by every step; in the
     * checkpoint, so a resume continues it) */
    bool loss_scaling;
    mt_loss_scale loss_scale;
    float *unscale;   /* backend memory: 1 / the scale, buffer_scale's per-step factor */
    float *skip_host; /* host_alloc: the last step's skip flag, read back without a wait */
    bool skip_pending; /* that read back is in flight: settle it before the next step */
    /* the step's batch rows (mt_model_prepare_input's), and the captured step (CUDA graphs) */
    int step_rows;
    trainer_graph graph;
    mt_lr_schedule schedule;
    mt_loader *train_loader;
    uint64_t train_records;
    uint64_t steps_per_epoch;

    /* position: the next step is batch `next_batch` of epoch `epoch` (both 0-based) */
    uint64_t epoch, next_batch, global_step;
    double best_val_accuracy;
    uint64_t layout_checksum;

    /* frozen mode without augmentation: pooled features of every training record */
    bool use_feature_cache;
    int cache_views;        /* 1, or 2 with random flips: the image and its mirror image */
    float *feature_cache;   /* train_records x cache_views x feature_channels */
    int32_t *label_cache;   /* train_records */
    uint64_t val_records;   /* and the same for the validation split (one view), when cached */
    float *val_feature_cache;
    int32_t *val_label_cache;

    /* BN layers whose moving statistics a training step updates (bn_training), and whether
     * those statistics started from the initializer's values (mean 0, variance 1) rather than
     * from a file: the evaluation warning's condition (trainer_warn_bn_coverage) */
    int bn_training_layers;
    bool bn_statistics_from_init;

    /* wall time per phase of the run, for the closing line (mt_train_result has the same) */
    double cache_seconds, step_seconds, eval_seconds, checkpoint_seconds;

    /* rank 0's outputs */
    char checkpoint_dir[MT_CONFIG_PATH_MAX + 32];
    FILE *log;
    mt_metrics *metrics; /* metrics.jsonl and TensorBoard events */
} trainer;

/* The first collective of a run (fixed size): every rank hashes the whole effective config (the
 * per-node options excepted), the data's class lists and record counts and the initial weights'
 * contents; a difference fails every rank with the first differing option named
 * (trainer_agree.c). */
mt_status trainer_agree_on_config(trainer *t);

/* Write `checkpoints/<name>.safetensors` atomically (rank 0 only). */
mt_status trainer_save_checkpoint(trainer *t, const char *name);
/* Restore everything a checkpoint holds: weights, BN statistics, optimizer state, position.
 * The checkpoint's classes must be the data's; options changed since it was written (seed,
 * learning rate, ...) are an error naming them unless `allow_changes`. The loader must be open. */
mt_status trainer_load_checkpoint(trainer *t, const char *path, bool allow_changes);
/* Remove mt_checkpoint_write's "<name>.safetensors.tmp-<pid>" files in `dir` whose process is
 * gone (a run killed mid-write); *removed counts them. */
mt_status trainer_remove_stale_temps(const char *dir, int *removed);
/* Initialize weights from a checkpoint's tensors only (init_checkpoint: e.g. finetune from the
 * frozen run), matching tensors by name; its classes must be the data's (loader open). */
mt_status trainer_init_from_checkpoint(trainer *t, const char *path);

/* An epoch's totals on this rank, from the accumulator's reads (trainer_epoch.c) to the epoch's
 * line (trainer.c end_of_epoch). */
typedef struct epoch_totals {
    double loss_sum; /* loss x valid rows */
    int64_t correct, valid;
    int64_t skipped; /* steps dropped by nan_policy = skip, or (fp16) by the loss scale */
    int64_t steps;
    double allreduce_seconds; /* host time in the gradient all-reduce within the steps */
    uint64_t buckets, buckets_done_in_backward; /* all-reduces started; complete before finish */
} epoch_totals;

/* trainer.c: rank 0's words, to stdout and the run's log file (other ranks say nothing). */
bool trainer_is_root(const trainer *t);
void trainer_say(trainer *t, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* trainer_setup.c: everything a run needs on every rank, the weights in place and the same on
 * every rank; trainer_tear_down frees what set-up got, also after a failed set-up. */
mt_status trainer_set_up(trainer *t, const mt_train_options *options);
void trainer_tear_down(trainer *t);

/* trainer_epoch.c: run the epoch's remaining steps; *stopped when the ranks agreed to stop early
 * (a signal). `progress`: rank 0 shows the progress line on stderr. */
mt_status trainer_run_epoch(trainer *t, bool progress, epoch_totals *totals, double *seconds,
                            bool *stopped);

/* trainer_cache.c: the pooled features of `records` records of `db` (each with its mirror image
 * when `views` is 2) and their labels, on every rank; the caller frees both. */
mt_status trainer_build_feature_cache(trainer *t, const char *db, int views, uint64_t records,
                                      float **feature_cache, int32_t **label_cache);

/* trainer_eval.c: the validation split from the feature cache (frozen mode), and the warning
 * before an evaluation `what` whose BN moving statistics are mostly their initial values. */
mt_status trainer_evaluate_cached(trainer *t, mt_eval_result *result);
void trainer_warn_bn_coverage(trainer *t, const char *what);

#endif
