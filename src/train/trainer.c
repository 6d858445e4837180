/* The training loop (trainer.h): set-up on every rank, replica agreement, the step, the epoch,
 * evaluation, the frozen-mode feature cache, signals and injected faults. Checkpoint contents
 * live in trainer_checkpoint.c, metrics files in metrics.c. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/splitmix64.h"
#include "data/mirror.h"
#include "mobiletune/files.h"
#include "mobiletune/metrics.h"
#include "trainer_internal.h"

_Static_assert((int)MT_CONFIG_COMM_AUTO == (int)MT_COMM_CHOICE_AUTO &&
                   (int)MT_CONFIG_COMM_NONE == (int)MT_COMM_CHOICE_NONE &&
                   (int)MT_CONFIG_COMM_MPI == (int)MT_COMM_CHOICE_MPI &&
                   (int)MT_CONFIG_COMM_NCCL == (int)MT_COMM_CHOICE_NCCL,
               "train.comm's values are mt_comm_choice's, in order");

static volatile sig_atomic_t stop_signal = 0;

void mt_train_request_stop(int signal_number) {
    stop_signal = signal_number ? signal_number : SIGTERM;
}

static bool is_root(const trainer *t) {
    return t->who.rank == 0;
}

/* Rank 0's words: to stdout and the run's log file. */
static void say(trainer *t, const char *format, ...) __attribute__((format(printf, 2, 3)));
static void say(trainer *t, const char *format, ...) {
    if (!is_root(t)) return;
    va_list args;
    va_start(args, format);
    vprintf(format, args);
    va_end(args);
    fflush(stdout);
    if (t->log) {
        va_start(args, format);
        vfprintf(t->log, format, args);
        va_end(args);
        fflush(t->log);
    }
}

/* ---- injected faults, for the tests of what a failing rank does to a job ------------------- */

typedef enum fault_kind { FAULT_NONE, FAULT_FAIL, FAULT_CRASH, FAULT_NAN, FAULT_SIGNAL } fault_kind;

/* MT_FAULT_RANK=r MT_FAULT_STEP=s [MT_FAULT_KIND=fail|crash|nan|signal]: rank r, at global step
 * s, returns an error (fail), dies by SIGKILL (crash), sees a NaN loss (nan) or sends itself
 * SIGUSR1 (signal: Slurm's warning, delivered at a known step). */
static fault_kind fault_at(const trainer *t, uint64_t step) {
    const char *rank = getenv("MT_FAULT_RANK"), *at = getenv("MT_FAULT_STEP");
    if (!rank || !at || atoi(rank) != t->who.rank || strtoull(at, NULL, 10) != step)
        return FAULT_NONE;
    const char *kind = getenv("MT_FAULT_KIND");
    if (kind && strcmp(kind, "crash") == 0) return FAULT_CRASH;
    if (kind && strcmp(kind, "nan") == 0) return FAULT_NAN;
    if (kind && strcmp(kind, "signal") == 0) return FAULT_SIGNAL;
    return FAULT_FAIL;
}

/* ---- moving buffers between ranks ----------------------------------------------------------- */

/* Backend buffers go between ranks through src/comm, which knows how to reach the backend's
 * memory; the trainer never does. */
static mt_status broadcast_buffer(trainer *t, float *buffer, size_t count) {
    return mt_comm_broadcast_backend(t->comm, t->backend, buffer, count * sizeof *buffer, 0);
}

static mt_status average_buffer(trainer *t, float *buffer, size_t count) {
    return mt_comm_allreduce_mean_f32_backend(t->comm, t->backend, buffer, count);
}

/* BN moving statistics drift apart per replica during an epoch; average them so every rank
 * evaluates and checkpoints the same model. */
static mt_status average_bn_statistics(trainer *t) {
    float *state;
    size_t count;
    mt_model_state(t->model, &state, &count);
    return average_buffer(t, state, count);
}

static uint64_t layout_checksum(const mt_model_layout *layout) {
    uint64_t sum = mt_checksum64(&layout->trainable_count, sizeof layout->trainable_count, 0);
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *p = &layout->tensors[i];
        sum = mt_checksum64(p->name, strlen(p->name), sum);
        sum = mt_checksum64(p->shape, sizeof p->shape, sum);
        uint64_t place[2] = {(uint64_t)p->buffer, (uint64_t)p->offset};
        sum = mt_checksum64(place, sizeof place, sum);
    }
    return sum;
}

static mt_status replica_checksum(trainer *t, uint64_t *out) {
    float *buffers[3], *grads;
    size_t counts[3];
    mt_model_trainable(t->model, &buffers[0], &grads, &counts[0]);
    mt_model_frozen(t->model, &buffers[1], &counts[1]);
    mt_model_state(t->model, &buffers[2], &counts[2]);
    uint64_t sum = 0;
    mt_status status = MT_OK;
    for (int b = 0; status == MT_OK && b < 3; b++) {
        if (counts[b] == 0) continue;
        float *host = malloc(counts[b] * sizeof *host);
        if (!host) return MT_FAIL(MT_ERR_NOMEM, "out of memory for the replica checksum");
        status = t->backend->ops->download(t->backend, host, buffers[b], counts[b] * sizeof *host);
        if (status == MT_OK) sum = mt_checksum64(host, counts[b] * sizeof *host, sum);
        free(host);
    }
    *out = sum;
    return status;
}

/* Rank 0's weights and BN statistics go to every rank; then every rank compares its layout
 * (tensor names, shapes, places) and its replica with rank 0's. A mismatch means different
 * configs or binaries on different nodes: training would silently diverge, so stop. */
static mt_status agree_on_replica(trainer *t) {
    if (t->who.world_size == 1) return MT_OK;
    float *buffer;
    size_t count;
    MT_TRY(broadcast_buffer(t, t->params, t->trainable_count));
    mt_model_frozen(t->model, &buffer, &count);
    MT_TRY(broadcast_buffer(t, buffer, count));
    mt_model_state(t->model, &buffer, &count);
    MT_TRY(broadcast_buffer(t, buffer, count));

    uint64_t mine[2] = {layout_checksum(t->layout), 0};
    MT_TRY(replica_checksum(t, &mine[1]));
    uint64_t *all = calloc((size_t)t->who.world_size * 2, sizeof *all);
    if (!all) return MT_FAIL(MT_ERR_NOMEM, "out of memory comparing replicas");
    mt_status status = mt_comm_allgather(t->comm, mine, all, sizeof mine);
    for (int r = 1; status == MT_OK && r < t->who.world_size; r++) {
        if (all[2 * r] != all[0])
            status = MT_FAIL(MT_ERR_COMM, "rank %d's parameter layout differs from rank 0's "
                             "(checksum %016llx vs %016llx): every rank must run the same "
                             "mobiletune build with the same [model] options", r,
                             (unsigned long long)all[2 * r], (unsigned long long)all[0]);
        else if (all[2 * r + 1] != all[1])
            status = MT_FAIL(MT_ERR_COMM, "rank %d's replica differs from rank 0's after the "
                             "broadcast (checksum %016llx vs %016llx)", r,
                             (unsigned long long)all[2 * r + 1], (unsigned long long)all[1]);
    }
    free(all);
    return status;
}

/* ---- the frozen-mode feature cache ---------------------------------------------------------- */

/* Pooled features of every training record, computed once in inference mode (the backbone is
 * frozen, so they never change), each rank a share, then gathered everywhere. With random flips
 * on, the features of the mirrored image are cached too, and each epoch picks the view the loader
 * would have produced (mt_shard_flip): the same training as running the backbone every step. */
static void mirror_images(float *images, int n, int height, int width) {
    float original[3 * MT_MAX_IMAGE_SIDE]; /* one row; the loader checks width against the cap */
    const size_t row_floats = (size_t)width * 3;
    for (int i = 0; i < n * height; i++) {
        float *row = images + (size_t)i * row_floats;
        memcpy(original, row, row_floats * sizeof *row);
        mt_mirror_row(row, original, width, 3 * sizeof *row);
    }
}

static mt_status build_feature_cache(trainer *t, const char *db, int views, uint64_t records,
                                     float **feature_cache, int32_t **label_cache) {
    const mt_train_config *c = t->config;
    const int features = t->layout->feature_channels;
    const int batch = c->data.batch_size;
    mt_loader_options options = {
        .rank = t->who.rank, .world_size = t->who.world_size, .batch_size = batch,
        .seed = (uint64_t)c->train.seed, .shuffle = false, .drop_remainder = false,
        .random_flip = false, .threads = c->data.loader_threads, .ring_depth = c->data.prefetch,
    };
    mt_loader *loader = NULL;
    MT_TRY(mt_loader_open(db, &options, &loader));
    const uint64_t batches = mt_loader_batch_count(loader);
    const size_t rows = (size_t)batches * (size_t)batch;        /* per rank, padding included */
    const size_t row_floats = (size_t)views * features + 2;    /* features, label, record */
    float *mine = malloc(rows * row_floats * sizeof(float));
    float *all = malloc(rows * row_floats * sizeof(float) * (size_t)t->who.world_size);
    *feature_cache = malloc(records * (size_t)views * features * sizeof(float));
    *label_cache = malloc(records * sizeof(int32_t));
    mt_status status = mine && all && *feature_cache && *label_cache
                           ? mt_loader_start_epoch(loader, 0, 0)
                           : MT_FAIL(MT_ERR_NOMEM, "out of memory for the feature cache");
    float *pooled = status == MT_OK ? malloc((size_t)batch * features * sizeof(float)) : NULL;
    if (status == MT_OK && !pooled) status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
    for (uint64_t b = 0; status == MT_OK && b < batches; b++) {
        mt_batch *next = NULL;
        status = mt_loader_next(loader, &next);
        if (status != MT_OK) break;
        for (int view = 0; status == MT_OK && view < views; view++) {
            if (view == 1) mirror_images(next->images, next->size, next->height, next->width);
            status = mt_model_features(t->model, next->images, next->size, pooled);
            for (int i = 0; status == MT_OK && i < next->size; i++) {
                float *row = mine + ((size_t)b * batch + i) * row_floats;
                memcpy(row + (size_t)view * features, pooled + (size_t)i * features,
                       (size_t)features * sizeof(float));
                row[views * features] = (float)next->labels[i];
                /* record indices are exact in a float only below 2^24: checked at set-up */
                row[views * features + 1] = i < next->valid ? (float)next->records[i] : -1.0f;
            }
        }
        mt_loader_release(loader, next);
    }
    mt_loader_close(loader);
    if (status == MT_OK)
        status = mt_comm_allgather(t->comm, mine, all, rows * row_floats * sizeof(float));
    size_t filled = 0;
    for (size_t r = 0; status == MT_OK && r < rows * (size_t)t->who.world_size; r++) {
        const float *row = all + r * row_floats;
        if (row[views * features + 1] < 0) continue;
        size_t record = (size_t)row[views * features + 1];
        memcpy(*feature_cache + record * views * features, row,
               (size_t)views * features * sizeof(float));
        (*label_cache)[record] = (int32_t)row[views * features];
        filled++;
    }
    if (status == MT_OK && filled != records)
        status = MT_FAIL(MT_ERR_INTERNAL, "feature cache of '%s' holds %zu of %llu records", db,
                         filled, (unsigned long long)records);
    free(pooled);
    free(mine);
    free(all);
    return status;
}

/* Several ranks agree on signals and non-finite losses every this many steps (and at the end of
 * each epoch): a signal stops every rank at most this many steps after it arrived. */
enum { AGREE_EVERY = 16 };

/* ---- one step -------------------------------------------------------------------------------- */

typedef struct epoch_totals {
    double loss_sum; /* loss x valid rows */
    int64_t correct, valid;
    int64_t skipped; /* steps dropped by nan_policy = skip, or (fp16) by the loss scale */
    int64_t steps;
    double allreduce_seconds; /* host time in the gradient all-reduce within the steps */
    uint64_t buckets, buckets_done_in_backward; /* all-reduces started; complete before finish */
} epoch_totals;

/* fp16's update (Keras' LossScaleOptimizer): every bucket's all-reduce first (the gradients are
 * the mean over the ranks of scale x the gradient: the same scale on every rank, a power of two,
 * so dividing after the mean is dividing before it, exactly), then the gradients divided by the
 * scale, any non-finite one setting the skip flag that the optimizer reads (and with it every
 * rank, since each divides the same all-reduced values), then one optimizer step over the whole
 * buffer. Bucket-by-bucket updates cannot be had here: a late bucket's overflow must stop the
 * early buckets' updates too. The host then reads the flag (one float, the one wait per step in
 * fp16) and moves the scale on (loss_scale.h); a skipped update is no optimizer iteration. */
_Static_assert((int)MT_PRECISION_FP32 == (int)MT_COMPUTE_FP32 &&
                   (int)MT_PRECISION_TF32 == (int)MT_COMPUTE_TF32 &&
                   (int)MT_PRECISION_BF16 == (int)MT_COMPUTE_BF16 &&
                   (int)MT_PRECISION_FP16 == (int)MT_COMPUTE_FP16,
               "train.precision's values are mt_compute_precision's");

static mt_status update_step_scaled(trainer *t, float lr, epoch_totals *totals) {
    const mt_ops *ops = t->backend->ops;
    float *skip_flag = t->grads + t->trainable_count; /* mt_model_trainable */
    if (t->grad_sync) {
        size_t offset, count;
        mt_status status;
        while ((status = mt_grad_sync_wait_bucket(t->grad_sync, &offset, &count)) == MT_OK) {
        }
        if (status != MT_END) return status;
    }
    MT_TRY(ops->buffer_scale(t->backend, t->grads, t->trainable_count,
                             1.0f / t->loss_scale.scale, skip_flag));
    MT_TRY(mt_optimizer_step(&t->optimizer, t->params, t->grads, t->trainable_count, lr));
    float flag = 0.0f;
    MT_TRY(ops->download(t->backend, &flag, skip_flag, sizeof flag));
    float divisor = 0.0f;
    if (!mt_loss_scale_update(&t->loss_scale, flag == 0.0f, &divisor)) {
        t->optimizer.iterations -= t->optimizer.iterations > 0;
        totals->skipped++;
    }
    return MT_OK;
}

/* The optimizer's step at this step's rate: over the whole buffer on one rank; else bucket by
 * bucket, each as soon as its all-reduce is done (top of the network first), while the later
 * buckets are still in flight. */
static mt_status update_step(trainer *t, epoch_totals *totals) {
    const float lr = (float)mt_lr_schedule_at(&t->schedule, t->optimizer.iterations);
    if (t->loss_scaling) return update_step_scaled(t, lr, totals);
    if (!t->grad_sync)
        return mt_optimizer_step(&t->optimizer, t->params, t->grads, t->trainable_count, lr);
    size_t offset, count;
    mt_status status;
    while ((status = mt_grad_sync_wait_bucket(t->grad_sync, &offset, &count)) == MT_OK) {
        /* the top bucket carries the skip flag after the gradients: not a parameter */
        if (offset + count > t->trainable_count) count = t->trainable_count - offset;
        if (count)
            MT_TRY(
                mt_optimizer_update_range(&t->optimizer, t->params, t->grads, offset, count, lr));
    }
    if (status != MT_END) return status;
    mt_optimizer_step_done(&t->optimizer);
    return MT_OK;
}

/* Gather cached features (the flipped view where the loader would flip) and labels for this
 * rank's batch `b` of the epoch. */
static void cached_batch(const trainer *t, const uint64_t *permutation, uint64_t b, float *features,
                         int32_t *labels) {
    const int n = t->config->data.batch_size, f = t->layout->feature_channels;
    for (int i = 0; i < n; i++) {
        uint64_t position =
            mt_shard_position(t->train_records, t->who.rank, t->who.world_size, n, b, i);
        uint64_t record = permutation[position];
        int view = t->cache_views == 2 &&
                   mt_shard_flip((uint64_t)t->config->train.seed, t->epoch, record);
        memcpy(features + (size_t)i * f,
               t->feature_cache + ((size_t)record * t->cache_views + view) * f,
               (size_t)f * sizeof(float));
        labels[i] = t->label_cache[record];
    }
}

/* The message of nan_policy = stop for the non-finite loss of global step `step`, one of this
 * epoch's steps up to the current one. */
static mt_status nonfinite_stop(const trainer *t, uint64_t step) {
    const uint64_t batch = t->next_batch - (t->global_step - step);
    return MT_FAIL(MT_ERR_INVALID,
                   "the loss is NaN or Inf at step %llu (epoch %llu, batch %llu): "
                   "lower optimizer.learning_rate, or set train.nan_policy = skip to drop such "
                   "steps",
                   (unsigned long long)step, (unsigned long long)t->epoch + 1,
                   (unsigned long long)batch + 1);
}

/* The accumulator's totals since the last read into `totals`, the device's zeroed again, and
 * the ranks' agreement on what the steps since then saw: once per logging interval (one rank),
 * every AGREE_EVERY steps (several: every rank reads at the same steps, so the one collective
 * here pairs up), and at the end of the epoch's steps. Non-finite steps were already skipped by
 * the backend (every rank skipped the same ones: the skip flag rode the gradient all-reduce);
 * here nan_policy = stop stops the run naming the first, skip reports it. *stop: a signal
 * reached some rank; every rank stops after this same step. */
static mt_status read_accumulator(trainer *t, epoch_totals *totals, bool *stop) {
    const mt_ops *ops = t->backend->ops;
    double accum[MT_ACCUM_COUNT], zeros[MT_ACCUM_COUNT] = {0};
    MT_TRY(ops->download(t->backend, accum, t->accum, sizeof accum));
    MT_TRY(ops->upload(t->backend, t->accum, zeros, sizeof zeros));
    totals->loss_sum += accum[MT_ACCUM_LOSS_SUM];
    totals->correct += (int64_t)accum[MT_ACCUM_CORRECT];
    totals->valid += (int64_t)accum[MT_ACCUM_VALID];
    /* this rank's: a signal, its non-finite steps, the first of them */
    double mine[3] = {stop_signal != 0, accum[MT_ACCUM_SKIPPED], accum[MT_ACCUM_FIRST_SKIP]};
    double *all = mine;
    if (t->who.world_size > 1) {
        all = malloc((size_t)t->who.world_size * sizeof mine);
        if (!all) return MT_FAIL(MT_ERR_NOMEM, "out of memory agreeing on the step flags");
        mt_status status = mt_comm_allgather(t->comm, mine, all, sizeof mine);
        if (status != MT_OK) {
            free(all);
            return status;
        }
    }
    bool signalled = false;
    double nonfinite = 0, first = 0; /* over every rank */
    for (int r = 0; r < t->who.world_size; r++) {
        const double *theirs = all + 3 * r;
        signalled |= theirs[0] != 0;
        if (theirs[1] > 0 && (nonfinite == 0 || theirs[2] < first)) first = theirs[2];
        nonfinite += theirs[1];
    }
    if (all != mine) free(all);
    *stop = signalled;
    if (nonfinite == 0) return MT_OK;
    if (t->config->train.nan_policy == MT_NAN_POLICY_STOP)
        return nonfinite_stop(t, (uint64_t)first);
    /* the steps skipped (on every rank: the BN statistics restored with buffer_copy_if, which
     * counted them) took no optimizer step: Keras' iterations count only the updates */
    const uint64_t skipped = (uint64_t)accum[MT_ACCUM_COPIED];
    if (!t->loss_scaling) { /* fp16 counted them step by step (update_step_scaled) */
        totals->skipped += (int64_t)skipped;
        t->optimizer.iterations -= skipped <= t->optimizer.iterations ? skipped : 0;
    }
    say(t, "step %llu: non-finite loss, update skipped (train.nan_policy = skip)",
        (unsigned long long)first);
    if (skipped > 1)
        say(t, "; %llu steps skipped since the last report", (unsigned long long)skipped);
    say(t, "\n");
    return MT_OK;
}

static mt_status train_step(trainer *t, const mt_model_input *input, epoch_totals *totals) {
    const mt_train_config *c = t->config;
    const uint64_t step = t->global_step;
    const mt_ops *ops = t->backend->ops;
    fault_kind fault = fault_at(t, step);
    if (fault == FAULT_FAIL)
        return MT_FAIL(MT_ERR_INTERNAL, "injected fault at step %llu (MT_FAULT_STEP)",
                       (unsigned long long)step);
    if (fault == FAULT_CRASH) raise(SIGKILL);
    if (fault == FAULT_SIGNAL) raise(SIGUSR1);

    /* A skipped step must not leave NaN in the BN statistics either: keep a copy to restore, in
     * backend memory (a device-side copy, no trip through the host). */
    float *state = NULL;
    size_t state_count = 0;
    mt_model_state(t->model, &state, &state_count);
    if (t->state_backup)
        MT_TRY(ops->buffer_copy(t->backend, t->state_backup, state, state_count * sizeof *state));

    /* independent dropout streams per (seed, step, rank) from one seed */
    uint64_t dropout_seed =
        mt_splitmix64_at(mt_splitmix64_at((uint64_t)c->train.seed ^ 0xD50Full) ^ step) ^
        (uint64_t)t->who.rank;
    /* the accumulator before the step: an injected NaN loss puts it back as loss_accumulate
     * leaves it after a non-finite loss (a NaN pixel would not do: ReLU6 swallows NaN) */
    double before_fault[MT_ACCUM_COUNT];
    if (fault == FAULT_NAN)
        MT_TRY(ops->download(t->backend, before_fault, t->accum, sizeof before_fault));
    if (t->loss_scaling) mt_model_set_loss_scale(t->model, t->loss_scale.scale);
    /* The loss, the accuracy and the skip flag stay in backend memory: nothing here waits. */
    mt_step_result result;
    mt_status status =
        mt_model_forward_accumulate(t->model, input, dropout_seed, step, t->accum, &result);
    float *skip_flag = t->grads + t->trainable_count; /* mt_model_trainable */
    if (status == MT_OK && fault == FAULT_NAN) {
        if (before_fault[MT_ACCUM_SKIPPED] == 0.0) before_fault[MT_ACCUM_FIRST_SKIP] = (double)step;
        before_fault[MT_ACCUM_SKIPPED] += 1.0;
        const float one = 1.0f;
        status = ops->upload(t->backend, t->accum, before_fault, sizeof before_fault);
        if (status == MT_OK) status = ops->upload(t->backend, skip_flag, &one, sizeof one);
    }
    /* The gradient all-reduce runs in buckets from inside backward (the model's hook), the skip
     * flag first (it rides the top bucket: a nonzero mean means some rank must skip, and so
     * every rank does); after it, the optimizer updates each bucket as soon as that bucket's
     * mean is in place (update_step), or, with the flag set, leaves it (the backend reads the
     * flag). The host time in the all-reduce, whatever backward did not hide, is the step's
     * all-reduce share. */
    mt_grad_sync_stats before = {0};
    if (t->grad_sync) {
        before = mt_grad_sync_get_stats(t->grad_sync);
        mt_grad_sync_begin(t->grad_sync);
        if (status == MT_OK) status = mt_grad_sync_ready(t->grad_sync, t->trainable_count, 1);
    }
    if (status == MT_OK) status = mt_model_backward(t->model);
    if (status == MT_OK && t->grad_sync) status = mt_grad_sync_end_backward(t->grad_sync);
    if (status == MT_OK) status = update_step(t, totals);
    /* a skipped step's BN statistics come back from the copy, on the same word */
    if (status == MT_OK && t->state_backup)
        status =
            ops->buffer_copy_if(t->backend, state, t->state_backup, state_count * sizeof *state,
                                skip_flag, t->accum + MT_ACCUM_COPIED);
    if (t->grad_sync) {
        const mt_grad_sync_stats after = mt_grad_sync_get_stats(t->grad_sync);
        totals->allreduce_seconds += after.comm_seconds - before.comm_seconds;
        totals->buckets += after.buckets - before.buckets;
        totals->buckets_done_in_backward += after.done_in_backward - before.done_in_backward;
    }
    return status;
}

/* ---- evaluation ------------------------------------------------------------------------------ */

mt_status mt_evaluate(mt_model *model, const char *db, mt_comm *comm, int threads,
                      mt_eval_result *result) {
    memset(result, 0, sizeof *result);
    const mt_model_layout *layout = mt_model_get_layout(model);
    const mt_comm_info who = mt_comm_get_info(comm);
    const int classes = layout->config.classes, outputs = layout->logit_count;
    mt_loader_options options = {
        .rank = who.rank, .world_size = who.world_size, .batch_size = layout->config.batch_size,
        .shuffle = false, .drop_remainder = false, .threads = threads,
    };
    mt_loader *loader = NULL;
    MT_TRY(mt_loader_open(db, &options, &loader));
    const mt_dataset_meta *meta = mt_loader_meta(loader);
    mt_status status = MT_OK;
    if (meta->class_count != classes || meta->height != layout->config.input_size)
        status = MT_FAIL(MT_ERR_INVALID, "'%s' holds %d classes at %dx%d; the model has %d "
                         "classes at %dx%d", db, meta->class_count, meta->width, meta->height,
                         classes, layout->config.input_size, layout->config.input_size);
    double loss_sum = 0;
    int64_t *counts = calloc((size_t)classes * classes + 2, sizeof *counts); /* confusion, n, ok */
    float *logits = malloc((size_t)options.batch_size * outputs * sizeof *logits);
    if (status == MT_OK && (!counts || !logits))
        status = MT_FAIL(MT_ERR_NOMEM, "out of memory evaluating '%s'", db);
    if (status == MT_OK) status = mt_loader_start_epoch(loader, 0, 0);
    while (status == MT_OK) {
        mt_batch *batch = NULL;
        status = mt_loader_next(loader, &batch);
        if (status == MT_END) {
            status = MT_OK;
            break;
        }
        if (status != MT_OK) break;
        mt_step_result step;
        status = mt_model_forward(model, batch->images, batch->labels, batch->size, false, 0,
                                  logits, &step);
        for (int i = 0; status == MT_OK && i < batch->valid; i++) {
            const float *row = logits + (size_t)i * outputs;
            int predicted = 0;
            if (outputs == 1) {
                predicted = row[0] > 0.0f;
            } else {
                for (int k = 1; k < outputs; k++)
                    if (row[k] > row[predicted]) predicted = k;
            }
            counts[(size_t)batch->labels[i] * classes + predicted]++;
        }
        loss_sum += (double)step.loss * step.valid;
        counts[(size_t)classes * classes] += step.valid;
        counts[(size_t)classes * classes + 1] += step.correct;
        mt_loader_release(loader, batch);
    }
    mt_loader_close(loader);
    if (status == MT_OK) status = mt_comm_allreduce_sum_f64(comm, &loss_sum, 1);
    if (status == MT_OK)
        status = mt_comm_allreduce_sum_i64(comm, counts, (size_t)classes * classes + 2);
    if (status == MT_OK) {
        int64_t n = counts[(size_t)classes * classes];
        result->count = n;
        result->classes = classes;
        result->loss = n ? loss_sum / (double)n : NAN;
        result->accuracy = n ? (double)counts[(size_t)classes * classes + 1] / (double)n : NAN;
        result->confusion = counts;
        counts = NULL;
    }
    free(counts);
    free(logits);
    return status == MT_OK ? MT_OK : mt_error_context(status, "evaluating '%s'", db);
}

/* Frozen mode: the validation split's features are cached like the training split's, and
 * evaluating is the head alone. Every rank holds the whole cache, so every rank computes the
 * same totals without communicating. */
static mt_status evaluate_cached(trainer *t, mt_eval_result *result) {
    const int batch = t->config->data.batch_size, f = t->layout->feature_channels;
    double loss_sum = 0;
    int64_t correct = 0, valid = 0;
    for (uint64_t first = 0; first < t->val_records; first += (uint64_t)batch) {
        uint64_t left = t->val_records - first;
        int n = left < (uint64_t)batch ? (int)left : batch;
        mt_step_result step;
        MT_TRY(mt_model_forward_head(t->model, t->val_feature_cache + first * f,
                                     t->val_label_cache + first, n, false, 0, NULL, &step));
        loss_sum += (double)step.loss * step.valid;
        correct += step.correct;
        valid += step.valid;
    }
    *result = (mt_eval_result){.count = valid, .classes = t->layout->config.classes,
                               .loss = valid ? loss_sum / (double)valid : NAN,
                               .accuracy = valid ? (double)correct / (double)valid : NAN};
    return MT_OK;
}

/* ---- the progress line ----------------------------------------------------------------------- */

static void format_duration(double seconds, char *out, size_t capacity) {
    long s = seconds < 0 ? 0 : lround(seconds);
    if (s >= 3600) snprintf(out, capacity, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else snprintf(out, capacity, "%ld:%02ld", s / 60, s % 60);
}

static void show_progress(const trainer *t, uint64_t done, uint64_t total,
                          const epoch_totals *totals, double images_per_second, double eta) {
    char eta_text[32];
    format_duration(eta, eta_text, sizeof eta_text);
    int width = 24, filled = total ? (int)((double)width * (double)done / (double)total) : width;
    char bar[32];
    for (int i = 0; i < width; i++) bar[i] = i < filled ? '=' : (i == filled ? '>' : ' ');
    bar[width] = '\0';
    fprintf(stderr, "\r  epoch %llu/%d [%s] %llu/%llu  loss %.4f  acc %.4f  %.1f img/s  ETA %s ",
            (unsigned long long)t->epoch + 1, t->config->train.epochs, bar,
            (unsigned long long)done, (unsigned long long)total,
            totals->valid ? totals->loss_sum / (double)totals->valid : 0.0,
            totals->valid ? (double)totals->correct / (double)totals->valid : 0.0,
            images_per_second, eta_text);
    fflush(stderr);
}

/* ---- the epoch --------------------------------------------------------------------------------- */

/* ---- the input pipeline (ops.h): batch k goes up while batch k-1 computes ------------------- */

/* A loader batch the trainer still holds: its copy to the backend may be running. */
typedef struct held_batch {
    mt_batch *batch;
    int slot;
} held_batch;

/* Hand a held batch back to the loader once the backend's copy has read it (the copy was
 * enqueued a step earlier and is long done: input_wait waits for it alone, not for compute). */
static mt_status release_held(trainer *t, held_batch *held) {
    if (!held->batch) return MT_OK;
    mt_status status = t->backend->ops->input_wait(t->backend, held->slot);
    /* the loader gets it back even after a failed wait (the run ends with that error): the
     * next epoch must not find it held */
    mt_loader_release(t->train_loader, held->batch);
    held->batch = NULL;
    return status;
}

/* One step on a uint8 batch: its labels checked on the host, the batch enqueued to the backend's
 * staging slot (the copy overlaps the previous step's compute, still running on the device),
 * the previous batch given back to the loader, then the step, which starts by converting the
 * slot on the device. The new batch is held until the next step's upload; with a one-batch
 * loader ring it is released at once (after its own copy: the host waits for that copy). */
static mt_status staged_step(trainer *t, mt_batch *batch, held_batch *held, int *slot,
                             epoch_totals *totals) {
    const mt_ops *ops = t->backend->ops;
    mt_status status = mt_model_check_labels(t->model, batch->labels, batch->size, NULL);
    if (status != MT_OK) {
        mt_loader_release(t->train_loader, batch);
        return status;
    }
    const mt_input_batch staged = {.n = batch->size,
                                   .height = batch->height,
                                   .width = batch->width,
                                   .pixels = batch->images,
                                   .labels = batch->labels,
                                   .flips = batch->flips};
    const int mine = *slot;
    status = ops->input_upload(t->backend, mine, &staged);
    if (status != MT_OK) {
        mt_loader_release(t->train_loader, batch);
        return status;
    }
    *slot = 1 - mine;
    held_batch current = {batch, mine};
    status = release_held(t, held);
    if (status == MT_OK) {
        const mt_model_input input = {.staged = true, .slot = mine, .n = batch->size};
        status = train_step(t, &input, totals);
    }
    if (status == MT_OK && t->config->data.prefetch >= 2) {
        *held = current;
        return MT_OK;
    }
    mt_status released = release_held(t, &current);
    return status != MT_OK ? status : released;
}

/* Run the epoch's remaining steps; *stopped when the ranks agreed to stop early (a signal). */
static mt_status run_epoch(trainer *t, bool progress, epoch_totals *totals, double *seconds,
                           bool *stopped) {
    const mt_train_config *c = t->config;
    const int batch = c->data.batch_size;
    const double start = mt_clock_monotonic();
    double last_shown = 0;
    uint64_t *permutation = NULL;
    float *features = NULL;
    int32_t *labels = NULL;
    mt_status status = MT_OK;
    if (t->use_feature_cache) {
        permutation = malloc(t->train_records * sizeof *permutation);
        features = malloc((size_t)batch * t->layout->feature_channels * sizeof *features);
        labels = malloc((size_t)batch * sizeof *labels);
        if (!permutation || !features || !labels)
            status = MT_FAIL(MT_ERR_NOMEM, "out of memory for a cached epoch");
        else
            mt_shard_permutation(t->train_records, (uint64_t)c->train.seed, t->epoch,
                                 c->data.shuffle, permutation);
    } else {
        status = mt_loader_start_epoch(t->train_loader, t->epoch, t->next_batch);
    }
    const uint64_t first = t->next_batch;
    bool stop = false;
    held_batch held = {0}; /* the previous uint8 batch, until this step's upload is enqueued */
    int slot = 0;          /* the staging slot of the next uint8 batch */
    while (status == MT_OK && t->next_batch < t->steps_per_epoch && !stop) {
        if (t->use_feature_cache) {
            cached_batch(t, permutation, t->next_batch, features, labels);
            const mt_model_input input = {.features = features, .labels = labels, .n = batch};
            status = train_step(t, &input, totals);
        } else {
            mt_batch *next = NULL;
            status = mt_loader_next(t->train_loader, &next);
            if (status == MT_END)
                status = MT_FAIL(MT_ERR_INTERNAL, "the loader ended the epoch after %llu of %llu "
                                 "batches", (unsigned long long)t->next_batch,
                                 (unsigned long long)t->steps_per_epoch);
            if (status != MT_OK) break;
            if (next->output == MT_LOADER_UINT8) {
                status = staged_step(t, next, &held, &slot, totals);
            } else {
                const mt_model_input input = {
                    .images = next->images, .labels = next->labels, .n = next->size};
                status = train_step(t, &input, totals);
                mt_loader_release(t->train_loader, next);
            }
        }
        if (status != MT_OK) break;
        totals->steps++;
        t->next_batch++;
        t->global_step++;
        double elapsed = mt_clock_monotonic() - start;
        /* The host reads the accumulator (the one wait for the device) at the logging interval:
         * one rank, when the progress line is due (a signal needs no read: it is this process's
         * own); several ranks, every AGREE_EVERY steps, the same steps on every rank, which
         * agree there on signals and non-finite steps. */
        bool due = progress && is_root(t) &&
                   (elapsed - last_shown > 0.25 || t->next_batch == t->steps_per_epoch);
        bool read = t->who.world_size > 1 ? t->global_step % AGREE_EVERY == 0 : due;
        if (t->who.world_size == 1) stop = stop_signal != 0;
        if (read) status = read_accumulator(t, totals, &stop);
        if (status != MT_OK) break;
        if (due && read) {
            uint64_t done = t->next_batch - first;
            double rate = (double)done * batch * t->who.world_size / elapsed;
            double eta = elapsed / (double)done * (double)(t->steps_per_epoch - t->next_batch);
            show_progress(t, t->next_batch, t->steps_per_epoch, totals, rate, eta);
            last_shown = elapsed;
        }
    }
    /* the loader needs every batch back before the next epoch starts */
    mt_status released = release_held(t, &held);
    if (status == MT_OK) status = released;
    if (progress && is_root(t)) fprintf(stderr, "\r%*s\r", 110, "");
    /* the epoch's (or the stop's) last totals and word on non-finite steps, on every rank */
    bool stop_at_end = false;
    if (status == MT_OK) status = read_accumulator(t, totals, &stop_at_end);
    stop |= stop_at_end;
    free(permutation);
    free(features);
    free(labels);
    *seconds = mt_clock_monotonic() - start;
    *stopped = stop;
    return status;
}

/* The training loader's batch buffers come from the backend's host_alloc (cuda: page-locked, so
 * the upload is a straight DMA). */
static void *loader_host_alloc(size_t bytes, void *user) {
    mt_backend *backend = user;
    void *buffer = NULL;
    return backend->ops->host_alloc(backend, bytes, &buffer) == MT_OK ? buffer : NULL;
}

static void loader_host_free(void *buffer, size_t bytes, void *user) {
    (void)bytes;
    mt_backend *backend = user;
    backend->ops->host_free(backend, buffer);
}

/* ---- set-up and the run ------------------------------------------------------------------------ */

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static mt_status open_outputs(trainer *t) {
    const mt_train_config *c = t->config;
    snprintf(t->checkpoint_dir, sizeof t->checkpoint_dir, "%s", c->output.run_dir);
    if (!is_root(t)) return MT_OK;
    MT_TRY(mt_make_dirs(c->output.run_dir));
    int stale = 0;
    MT_TRY(trainer_remove_stale_temps(c->output.run_dir, &stale));
    if (stale > 0)
        printf("removed %d temporary checkpoint file(s) of a run killed mid-write in %s\n", stale,
               c->output.run_dir);
    char path[MT_CONFIG_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/train.log", c->output.run_dir);
    t->log = fopen(path, "a");
    if (!t->log) return MT_FAIL(MT_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    char *ini = NULL;
    MT_TRY(mt_config_to_ini(c, &ini));
    snprintf(path, sizeof path, "%s/config.ini", c->output.run_dir);
    FILE *f = fopen(path, "w");
    mt_status status = f ? MT_OK : MT_FAIL(MT_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
    if (f) {
        fputs(ini, f);
        if (fclose(f) != 0) status = MT_FAIL(MT_ERR_IO, "cannot write '%s'", path);
    }
    free(ini);
    if (status != MT_OK) return status;
    return mt_metrics_open(c->output.run_dir, c->output.tensorboard, &t->metrics);
}

/* --resume PATH writes its checkpoints into output.run_dir: when that folder already holds a
 * last.safetensors and PATH lies elsewhere, that is another run's, and the resume would overwrite
 * it. Continuing the folder's own run is --resume auto (or PATH inside the folder). */
static mt_status check_resume_target(trainer *t, const char *path) {
    char last[MT_CONFIG_PATH_MAX + 64], folder[MT_CONFIG_PATH_MAX], real_run[MT_CONFIG_PATH_MAX];
    char real_folder[MT_CONFIG_PATH_MAX];
    snprintf(last, sizeof last, "%s/last.safetensors", t->checkpoint_dir);
    if (!file_exists(last)) return MT_OK;
    MT_TRY(mt_path_parent(path, folder, sizeof folder));
    MT_TRY(mt_path_real(folder, real_folder, sizeof real_folder));
    MT_TRY(mt_path_real(t->checkpoint_dir, real_run, sizeof real_run));
    if (strcmp(real_folder, real_run) == 0) return MT_OK;
    return MT_FAIL(MT_ERR_INVALID, "--resume %s: the run folder already holds '%s', of another "
                   "run, which this one would overwrite: continue that run with --resume auto, or "
                   "set output.run_dir to a new folder to resume %s there", path, last, path);
}

/* val and test must list the training data's classes, in the same order (labels are positions). */
static mt_status check_split_classes(const mt_train_config *c, const mt_dataset_meta *train) {
    const char *splits[2] = {c->data.val, c->data.test}, *names[2] = {"data.val", "data.test"};
    for (int i = 0; i < 2; i++) {
        if (!splits[i][0]) continue;
        mt_dataset *other = NULL;
        MT_TRY(mt_dataset_open(splits[i], &other));
        char message[512];
        bool same = mt_dataset_meta_same_classes(train, mt_dataset_meta_get(other), message,
                                                 sizeof message);
        mt_dataset_close(other);
        if (!same)
            return MT_FAIL(MT_ERR_INVALID, "%s '%s' lists other classes than data.train '%s': %s "
                           "(train's first); pack every split from the same class folders",
                           names[i], splits[i], c->data.train, message);
    }
    return MT_OK;
}

static mt_status set_up(trainer *t, const mt_train_options *options) {
    const mt_train_config *c = t->config;
    t->who = mt_comm_get_info(t->comm);
    /* Before anything whose size depends on the config (and before NCCL's bootstrap). */
    MT_TRY(trainer_agree_on_config(t));
    /* GPU = local rank modulo the GPUs this rank sees: one each when there are enough, shared
     * (MPI only) when not */
    const bool cuda = c->train.backend == MT_CONFIG_BACKEND_CUDA;
    mt_backend_options backend_options = {
        .num_threads = c->train.threads,
        .device = cuda ? mt_comm_gpu_for_rank(t->who.local_rank, mt_comm_visible_gpus()) : 0,
        .precision = (mt_compute_precision)c->train.precision};
    MT_TRY(mt_backend_create_kind(c->train.backend, &backend_options, &t->backend));
    /* How gradients travel (train.comm), once every rank has the same options; NCCL joins here */
    const double bucket_mb = c->train.bucket_mb;
    uint64_t agreement = mt_checksum64(&c->train.comm, sizeof c->train.comm, 0);
    agreement = mt_checksum64(&c->train.backend, sizeof c->train.backend, agreement);
    agreement = mt_checksum64(&bucket_mb, sizeof bucket_mb, agreement);
    MT_TRY(mt_comm_select(t->comm, (mt_comm_choice)c->train.comm, t->backend, agreement));
    t->who = mt_comm_get_info(t->comm);
    mt_model_config model_config = mt_config_model(c);
    MT_TRY(mt_model_create(t->backend, &model_config, (uint64_t)c->train.seed, &t->model));
    t->layout = mt_model_get_layout(t->model);
    t->layout_checksum = layout_checksum(t->layout);
    for (int i = 0; i < MT_MODEL_LAYERS; i++)
        t->bn_training_layers += t->layout->layers[i].bn_training;
    /* A weights file (Keras' ImageNet h5) or an init_checkpoint brings moving statistics that
     * already describe the network they come with; only the initializer's (0 and 1) are far off. */
    t->bn_statistics_from_init = !c->model.weights[0] && !c->model.init_checkpoint[0];
    mt_model_trainable(t->model, &t->params, &t->grads, &t->trainable_count);
    mt_optimizer_params optimizer = mt_config_optimizer(c);
    MT_TRY(mt_optimizer_init(&t->optimizer, t->backend, &optimizer, t->trainable_count));
    MT_TRY(t->backend->ops->buffer_alloc(t->backend, MT_ACCUM_COUNT * sizeof(double),
                                         (void **)&t->accum));
    t->optimizer.skip = t->grads + t->trainable_count; /* the skip flag (mt_model_trainable) */
    t->loss_scaling = c->train.precision == MT_PRECISION_FP16;
    mt_loss_scale_init(&t->loss_scale); /* a resumed checkpoint's state replaces it */
    if (c->train.nan_policy == MT_NAN_POLICY_SKIP) {
        float *state;
        size_t state_count;
        mt_model_state(t->model, &state, &state_count);
        MT_TRY(t->backend->ops->buffer_alloc(t->backend, state_count * sizeof *state + 1,
                                             (void **)&t->state_backup));
    }
    /* one rank has nothing to reduce, except over NCCL, which a one-GPU run may try alone */
    if (t->who.world_size > 1 || t->who.kind == MT_COMM_NCCL) {
        /* the gradients and the skip flag after them */
        MT_TRY(mt_grad_sync_create(t->comm, t->backend, t->grads, t->trainable_count + 1,
                                   (size_t)(c->train.bucket_mb * 1048576.0), &t->grad_sync));
        mt_model_set_grad_hook(t->model, mt_grad_sync_ready, t->grad_sync);
    }
    /* Weights: a checkpoint to resume (everything), else the configured initial weights. Which
     * one is decided before open_outputs writes anything into the run folder. */
    snprintf(t->checkpoint_dir, sizeof t->checkpoint_dir, "%s", c->output.run_dir);
    char resume_path[MT_CONFIG_PATH_MAX + 64] = "";
    if (options->resume && options->resume[0]) {
        if (strcmp(options->resume, "auto") == 0) {
            snprintf(resume_path, sizeof resume_path, "%s/last.safetensors", t->checkpoint_dir);
            if (!file_exists(resume_path)) resume_path[0] = '\0';
        } else {
            snprintf(resume_path, sizeof resume_path, "%s", options->resume);
            MT_TRY(check_resume_target(t, resume_path));
        }
    } else {
        char last[MT_CONFIG_PATH_MAX + 64];
        snprintf(last, sizeof last, "%s/last.safetensors", t->checkpoint_dir);
        if (file_exists(last))
            return MT_FAIL(MT_ERR_INVALID, "'%s' already holds a checkpoint: continue it with "
                           "--resume auto, or choose another output.run_dir (or delete it)", last);
    }
    MT_TRY(open_outputs(t));
    mt_loader_options loader = {
        .rank = t->who.rank,
        .world_size = t->who.world_size,
        .batch_size = c->data.batch_size,
        .seed = (uint64_t)c->train.seed,
        .shuffle = c->data.shuffle,
        .drop_remainder = true,
        .random_flip = c->data.random_flip,
        .random_rotation = c->data.random_rotation,
        .threads = c->data.loader_threads,
        .ring_depth = c->data.prefetch,
        /* where the backend's memory is not the host's (cuda; the guarded reference), the
         * pixels cross as uint8, a quarter of the bytes, with flip flags, and the backend
         * scales and flips them (ops.h input pipeline, staged_step); the CPU backends take
         * floats the loader threads made (and flipped) */
        .output = t->backend->ops->device_memory ? MT_LOADER_UINT8 : MT_LOADER_FLOAT32,
        .allocator = {loader_host_alloc, loader_host_free, t->backend},
    };
    MT_TRY(mt_loader_open(c->data.train, &loader, &t->train_loader));
    const mt_dataset_meta *meta = mt_loader_meta(t->train_loader);
    if (meta->class_count != c->model.classes || meta->height != c->model.input_size)
        return MT_FAIL(MT_ERR_INVALID, "'%s' holds %d classes at %dx%d, but [model] says classes "
                       "= %d, input_size = %d: pack at --size %d or change the config",
                       c->data.train, meta->class_count, meta->width, meta->height,
                       c->model.classes, c->model.input_size, c->model.input_size);
    MT_TRY(check_split_classes(c, meta));
    /* the weights after the data: an init_checkpoint's classes are compared with the data's */
    if (!resume_path[0]) {
        if (c->model.weights[0]) {
            MT_TRY(mt_file_check_regular(c->model.weights, "model.weights file"));
            MT_TRY(mt_model_load_keras(t->model, c->model.weights));
        }
        if (c->model.init_checkpoint[0])
            MT_TRY(trainer_init_from_checkpoint(t, c->model.init_checkpoint));
    }
    t->train_records = meta->record_count;
    t->steps_per_epoch = mt_loader_batch_count(t->train_loader);
    if (c->train.steps_per_epoch > 0 && (uint64_t)c->train.steps_per_epoch < t->steps_per_epoch)
        t->steps_per_epoch = (uint64_t)c->train.steps_per_epoch;
    MT_TRY(mt_config_lr_schedule(c, (long)t->steps_per_epoch, t->who.world_size, &t->schedule));

    if (resume_path[0]) {
        MT_TRY(trainer_load_checkpoint(t, resume_path, options->allow_changes));
        say(t, "resuming from %s at epoch %llu, batch %llu (step %llu)\n", resume_path,
            (unsigned long long)t->epoch + 1, (unsigned long long)t->next_batch,
            (unsigned long long)t->global_step);
    }
    MT_TRY(agree_on_replica(t));

    /* With the flip alone, caching both views is exact: auto and on cache. A rotation draws a
     * new angle per image and epoch, so its features cannot be computed once: the backbone runs
     * every step whatever cache_features says (the log says why). */
    t->use_feature_cache = model_config.mode == MT_TRAIN_FROZEN &&
                           c->train.cache_features != MT_CACHE_FEATURES_OFF &&
                           c->data.random_rotation == 0.0;
    t->cache_views = c->data.random_flip ? 2 : 1;
    if (t->use_feature_cache && t->train_records >= (1u << 24))
        t->use_feature_cache = false; /* record indices travel as floats in the gather */

    say(t, "mobiletune: %s on %d rank(s), backend %s, %d classes at %dx%d, alpha %g%s%s\n",
        mt_train_mode_name(model_config.mode), t->who.world_size, t->backend->ops->name,
        c->model.classes, c->model.input_size, c->model.input_size, c->model.alpha,
        t->grad_sync ? ", gradients over " : "", t->grad_sync ? mt_comm_kind_name(t->who.kind) : "");
    say(t, "  %zu trainable parameters of %zu (the rest frozen); all-reduce per step: %zu bytes",
        t->trainable_count, t->layout->total_params, t->trainable_count * sizeof(float));
    if (t->grad_sync) say(t, " (+ 4 for the skip flag)");
    if (!t->grad_sync)
        say(t, " (one rank: none done)\n");
    else if (c->train.bucket_mb > 0)
        say(t, ", in buckets of %g MiB started during backward\n", c->train.bucket_mb);
    else
        say(t, ", in one call after backward (train.bucket_mb = 0)\n");
    say(t, "  %llu training images, %llu steps per epoch of %d x %d images\n",
        (unsigned long long)t->train_records, (unsigned long long)t->steps_per_epoch,
        t->who.world_size, c->data.batch_size);
    if (model_config.mode == MT_TRAIN_FROZEN)
        say(t, "  frozen backbone: %s\n",
            !t->use_feature_cache && c->data.random_rotation != 0.0
                ? "run in inference mode every step (data.random_rotation: every epoch rotates "
                  "the images anew, so their features cannot be cached; the cache serves flips "
                  "alone)"
            : !t->use_feature_cache
                ? "run in inference mode every step (train.cache_features = off)"
            : t->cache_views == 2
                ? "pooled features of every image and of its mirror image computed once and "
                  "cached; each epoch runs only the head, on the view the random flip picks"
                : "pooled features computed once and cached; each epoch runs only the head");
    return MT_OK;
}

static void tear_down(trainer *t) {
    /* after a failed step a batch's copy may still read the loader's buffers: let it end (the
     * error is reported already; this one would say nothing new) */
    if (t->backend && t->train_loader) (void)t->backend->ops->synchronize(t->backend);
    mt_loader_close(t->train_loader);
    mt_optimizer_free(&t->optimizer);
    if (t->state_backup) t->backend->ops->buffer_free(t->backend, t->state_backup);
    if (t->accum) t->backend->ops->buffer_free(t->backend, t->accum);
    mt_grad_sync_destroy(t->grad_sync);
    mt_model_destroy(t->model);
    mt_backend_destroy(t->backend);
    if (t->metrics) mt_metrics_close(t->metrics);
    if (t->log) fclose(t->log);
    free(t->feature_cache);
    free(t->label_cache);
    free(t->val_feature_cache);
    free(t->val_label_cache);
}

/* Before an evaluation: say when the BN moving statistics it normalizes with are still mostly
 * their initial values. The rule: a BN layer counts when its training steps update its moving
 * statistics (training mode: bn_training, i.e. trainable BN with bn_mode trainable, scratch's
 * default) and those statistics started from the initializer's mean 0 and variance 1 (no
 * model.weights, no init_checkpoint: ImageNet's statistics or an earlier run's already fit the
 * network they come with, and frozen or inference-mode BN layers never move). After s updates
 * with momentum m such statistics are m^s initial value and 1 - m^s batch statistics, so while
 * 1 - m^s < 0.9 the evaluation measures mostly the initializer (scratch at Keras' 0.999: about
 * chance). s counts the optimizer's updates since the start, resumed runs included (their
 * statistics come back from the checkpoint; steps skipped by nan_policy = skip restore them).
 * The fix offered is the largest momentum with 1 - m^s >= 0.9, i.e. m <= 0.1^(1/s), rounded
 * down to 4 decimals so that it still holds, for this evaluation and for the run's last step. */
static void warn_bn_coverage(trainer *t, const char *what) {
    if (t->bn_training_layers == 0 || !t->bn_statistics_from_init) return;
    const double m = t->config->model.bn_momentum;
    const uint64_t steps = t->optimizer.iterations;
    const double covered = 1.0 - pow(m, (double)steps);
    if (covered >= 0.9) return;
    say(t, "  warning: %s normalizes with BN moving statistics that have covered %.1f%% of the "
        "way from their initial values (1 - %g^%llu, %d BN layers in training mode); ",
        what, 100.0 * covered, m, (unsigned long long)steps, t->bn_training_layers);
    if (steps == 0) {
        say(t, "no training step has updated them yet\n");
        return;
    }
    const double now = floor(pow(0.1, 1.0 / (double)steps) * 1e4) / 1e4;
    say(t, "model.bn_momentum = %g would have covered 90%%", now);
    const uint64_t total = (uint64_t)t->config->train.epochs * t->steps_per_epoch;
    if (total > steps)
        say(t, " (%g by the last of %llu steps)", floor(pow(0.1, 1.0 / (double)total) * 1e4) / 1e4,
            (unsigned long long)total);
    say(t, "\n");
}

static mt_status end_of_epoch(trainer *t, const epoch_totals *totals, double seconds,
                              mt_train_result *result) {
    const mt_train_config *c = t->config;
    MT_TRY(average_bn_statistics(t));
    double sums[3] = {totals->loss_sum, (double)totals->correct, (double)totals->valid};
    MT_TRY(mt_comm_allreduce_sum_f64(t->comm, sums, 3));
    const double loss = sums[2] > 0 ? sums[0] / sums[2] : NAN;
    const double accuracy = sums[2] > 0 ? sums[1] / sums[2] : NAN;
    const double images_per_second = seconds > 0 ? sums[2] / seconds : 0;
    const int epoch = (int)t->epoch + 1;
    bool evaluate = c->data.val[0] && c->train.eval_every > 0 &&
                    (epoch % c->train.eval_every == 0 || epoch == c->train.epochs);
    mt_eval_result val = {.loss = NAN, .accuracy = NAN};
    const double eval_start = mt_clock_monotonic();
    if (evaluate) warn_bn_coverage(t, "validation");
    if (evaluate && t->val_feature_cache) {
        MT_TRY(evaluate_cached(t, &val));
        result->val_loss = val.loss;
        result->val_accuracy = val.accuracy;
    } else if (evaluate) {
        MT_TRY(mt_evaluate(t->model, c->data.val, t->comm, c->data.loader_threads, &val));
        free(val.confusion);
        result->val_loss = val.loss;
        result->val_accuracy = val.accuracy;
    }
    t->eval_seconds += mt_clock_monotonic() - eval_start;
    say(t, "epoch %d/%d  loss %.4f  acc %.4f", epoch, c->train.epochs, loss, accuracy);
    if (evaluate) say(t, "  val_loss %.4f  val_acc %.4f", val.loss, val.accuracy);
    say(t, "  %.1f img/s  %.1f s  (%.0f ms/step, all-reduce %.1f%%)%s\n", images_per_second,
        seconds, totals->steps ? 1e3 * seconds / (double)totals->steps : 0.0,
        seconds > 0 ? 100.0 * totals->allreduce_seconds / seconds : 0.0,
        totals->skipped ? "  (non-finite steps skipped)" : "");
    if (t->loss_scaling)
        say(t, "  loss scale %g, %lld update(s) skipped for non-finite gradients this epoch\n",
            (double)t->loss_scale.scale, (long long)totals->skipped);
    if (totals->buckets > 0 && totals->steps > 0)
        say(t, "  gradients: %.3g buckets/step, %.0f%% of them complete before backward ended\n",
            (double)totals->buckets / (double)totals->steps,
            100.0 * (double)totals->buckets_done_in_backward / (double)totals->buckets);
    if (is_root(t)) {
        mt_metrics_record record = mt_metrics_record_empty(MT_METRICS_EPOCH, epoch,
                                                           (int64_t)t->global_step);
        record.loss = loss;
        record.accuracy = accuracy;
        record.val_loss = val.loss;
        record.val_accuracy = val.accuracy;
        record.lr = mt_lr_schedule_at(&t->schedule, t->optimizer.iterations);
        record.images_per_second = images_per_second;
        record.seconds = seconds;
        if (t->loss_scaling) {
            record.loss_scale = t->loss_scale.scale;
            record.skipped_steps = (double)totals->skipped;
        }
        MT_TRY(mt_metrics_log(t->metrics, &record));
    }
    bool improved = evaluate && val.accuracy > t->best_val_accuracy;
    if (improved) t->best_val_accuracy = val.accuracy;
    result->best_val_accuracy = t->best_val_accuracy;
    t->epoch++;
    t->next_batch = 0;
    const double checkpoint_start = mt_clock_monotonic();
    if (improved && c->output.keep_best) MT_TRY(trainer_save_checkpoint(t, "best"));
    bool periodic = c->output.checkpoint_every > 0 && epoch % c->output.checkpoint_every == 0;
    if (c->output.keep_last && (periodic || epoch == c->train.epochs))
        MT_TRY(trainer_save_checkpoint(t, "last"));
    t->checkpoint_seconds += mt_clock_monotonic() - checkpoint_start;
    return MT_OK;
}

/* One line at the end of a run: where its wall time went. The phases do not overlap (each is
 * timed around its own calls), so "the rest" (set-up, loading weights, BN averaging, waiting on
 * other ranks) is the total minus them and is never negative. */
static void say_time_split(trainer *t, const mt_train_result *r) {
    const double rest = r->seconds - r->cache_seconds - r->step_seconds - r->eval_seconds -
                        r->checkpoint_seconds;
    say(t, "time: %.1f s = feature cache %.1f s + training steps %.1f s + evaluation %.1f s + "
        "checkpoints %.1f s + the rest %.1f s (set-up, weights, BN averaging)\n", r->seconds,
        r->cache_seconds, r->step_seconds, r->eval_seconds, r->checkpoint_seconds,
        rest > 0 ? rest : 0.0);
}

mt_status mt_train(const mt_train_config *config, mt_comm *comm, const mt_train_options *options,
                   mt_train_result *result) {
    const double start = mt_clock_monotonic();
    *result = (mt_train_result){.val_loss = NAN, .val_accuracy = NAN, .test_loss = NAN,
                                .test_accuracy = NAN};
    trainer t = {.config = config, .comm = comm};
    mt_status status = set_up(&t, options);
    if (status == MT_OK && t.use_feature_cache && t.epoch < (uint64_t)config->train.epochs) {
        double cache_start = mt_clock_monotonic();
        status = build_feature_cache(&t, config->data.train, t.cache_views, t.train_records,
                                     &t.feature_cache, &t.label_cache);
        uint64_t vectors = t.train_records * (uint64_t)t.cache_views;
        if (status == MT_OK && config->data.val[0]) {
            mt_dataset *val = NULL;
            status = mt_dataset_open(config->data.val, &val);
            if (status == MT_OK) t.val_records = mt_dataset_count(val);
            mt_dataset_close(val);
            if (status == MT_OK)
                status = build_feature_cache(&t, config->data.val, 1, t.val_records,
                                             &t.val_feature_cache, &t.val_label_cache);
            vectors += t.val_records;
        }
        t.cache_seconds = mt_clock_monotonic() - cache_start;
        say(&t, "  cached %llu feature vectors (training%s) in %.1f s\n",
            (unsigned long long)vectors, config->data.val[0] ? " and validation" : "",
            t.cache_seconds);
    }
    result->used_feature_cache = t.use_feature_cache;
    const bool progress = options->progress && isatty(STDERR_FILENO);
    while (status == MT_OK && t.epoch < (uint64_t)config->train.epochs) {
        epoch_totals totals = {0};
        double seconds = 0;
        bool stopped = false;
        status = run_epoch(&t, progress, &totals, &seconds, &stopped);
        t.step_seconds += seconds;
        if (status != MT_OK) break;
        if (stopped) {
            /* Slurm's warning before the time limit or pre-emption: save and leave cleanly. */
            status = average_bn_statistics(&t);
            const double checkpoint_start = mt_clock_monotonic();
            if (status == MT_OK) status = trainer_save_checkpoint(&t, "last");
            t.checkpoint_seconds += mt_clock_monotonic() - checkpoint_start;
            if (status == MT_OK) {
                say(&t, "stop requested (signal): checkpoint written at epoch %llu, batch %llu; "
                    "continue with --resume auto\n", (unsigned long long)t.epoch + 1,
                    (unsigned long long)t.next_batch);
                result->stopped_by_signal = true;
            }
            break;
        }
        status = end_of_epoch(&t, &totals, seconds, result);
        result->epochs_done = (int)t.epoch;
    }
    if (status == MT_OK && !result->stopped_by_signal && config->data.test[0]) {
        mt_eval_result test;
        const double eval_start = mt_clock_monotonic();
        warn_bn_coverage(&t, "the test evaluation");
        status = mt_evaluate(t.model, config->data.test, comm, config->data.loader_threads, &test);
        t.eval_seconds += mt_clock_monotonic() - eval_start;
        if (status == MT_OK) {
            result->test_loss = test.loss;
            result->test_accuracy = test.accuracy;
            say(&t, "test: loss %.4f  accuracy %.4f  (%lld images)\n", test.loss, test.accuracy,
                (long long)test.count);
            free(test.confusion);
        }
    }
    result->steps_done = t.global_step;
    result->seconds = mt_clock_monotonic() - start;
    result->cache_seconds = t.cache_seconds;
    result->step_seconds = t.step_seconds;
    result->eval_seconds = t.eval_seconds;
    result->checkpoint_seconds = t.checkpoint_seconds;
    if (status == MT_OK) say_time_split(&t, result);
    tear_down(&t);
    return status;
}
