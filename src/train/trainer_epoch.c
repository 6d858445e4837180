/* The training step and the epoch (trainer_internal.h trainer_run_epoch): the update (fp16's
 * loss-scaled one included), the accumulator's reads and the ranks' agreement on signals and
 * non-finite steps, the uint8 input pipeline, the progress line, signals and injected faults. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/splitmix64.h"
#include "trainer_internal.h"

static volatile sig_atomic_t stop_signal = 0;

void mt_train_request_stop(int signal_number) {
    stop_signal = signal_number ? signal_number : SIGTERM;
}

/* ---- injected faults, for the tests of what a failing rank does to a job ------------------- */

typedef enum fault_kind {
    FAULT_NONE,
    FAULT_FAIL,
    FAULT_CRASH,
    FAULT_STOP,
    FAULT_NAN,
    FAULT_SIGNAL,
    FAULT_REFUSE_REPLAY
} fault_kind;

/* MT_FAULT_RANK=r MT_FAULT_STEP=s [MT_FAULT_KIND=fail|crash|stop|nan|signal|refuse_replay]:
 * rank r, at global step s, returns an error (fail), dies by SIGKILL (crash), stops by SIGSTOP
 * (stop: a stuck peer, alive to the launcher, absent from the collectives), sees a NaN loss
 * (nan), sends itself SIGUSR1 (signal: Slurm's warning, delivered at a known step) or has its
 * captured step refused as a backend refuses one after its own events (refuse_replay). */
static fault_kind fault_at(const trainer *t, uint64_t step, bool any_rank) {
    const char *rank = getenv("MT_FAULT_RANK"), *at = getenv("MT_FAULT_STEP");
    if (!rank || !at || (!any_rank && atoi(rank) != t->who.rank) ||
        strtoull(at, NULL, 10) != step)
        return FAULT_NONE;
    const char *kind = getenv("MT_FAULT_KIND");
    if (kind && strcmp(kind, "crash") == 0) return FAULT_CRASH;
    if (kind && strcmp(kind, "stop") == 0) return FAULT_STOP;
    if (kind && strcmp(kind, "nan") == 0) return FAULT_NAN;
    if (kind && strcmp(kind, "signal") == 0) return FAULT_SIGNAL;
    if (kind && strcmp(kind, "refuse_replay") == 0) return FAULT_REFUSE_REPLAY;
    return FAULT_FAIL;
}

/* Several ranks agree on signals and non-finite losses every this many steps (and at the end of
 * each epoch): a signal stops every rank at most this many steps after it arrived. */
enum { AGREE_EVERY = 16 };

/* ---- one step -------------------------------------------------------------------------------- */

/* fp16's update (Keras' LossScaleOptimizer): every bucket's all-reduce first (the gradients are
 * the mean over the ranks of scale x the gradient: the same scale on every rank, a power of two,
 * so dividing after the mean is dividing before it, exactly), then the gradients divided by the
 * scale (1/scale read from backend memory, t->unscale), any non-finite one setting the skip flag
 * that the optimizer reads (and with it every rank, since each divides the same all-reduced
 * values), then one optimizer update over the whole buffer. Bucket-by-bucket updates cannot be
 * had here: a late bucket's overflow must stop the early buckets' updates too. The flag goes
 * back to the host without a wait (readback_start after the step); the next step's top reads it
 * (settle_loss_scale) and moves the scale on (loss_scale.h); a skipped update is no optimizer
 * iteration. */
_Static_assert((int)MT_PRECISION_FP32 == (int)MT_COMPUTE_FP32 &&
                   (int)MT_PRECISION_TF32 == (int)MT_COMPUTE_TF32 &&
                   (int)MT_PRECISION_BF16 == (int)MT_COMPUTE_BF16 &&
                   (int)MT_PRECISION_FP16 == (int)MT_COMPUTE_FP16,
               "train.precision's values are mt_compute_precision's");

static mt_status update_step_scaled(trainer *t) {
    const mt_ops *ops = t->backend->ops;
    float *skip_flag = t->grads + t->trainable_count; /* mt_model_trainable */
    if (t->grad_sync) MT_TRY(mt_grad_sync_wait_all(t->grad_sync));
    MT_TRY(ops->buffer_scale(t->backend, t->grads, t->trainable_count, t->unscale, skip_flag));
    return mt_optimizer_update_range(&t->optimizer, t->params, t->grads, 0, t->trainable_count);
}

/* The optimizer's update at the rate set before the step (mt_optimizer_set_rate): over the
 * whole buffer on one rank; else bucket by bucket, each as soon as its all-reduce is done (top
 * of the network first), while the later buckets are still in flight. The iteration count moves
 * on after the step (step_finish): a replayed step runs no host code. */
static mt_status update_step(trainer *t) {
    if (t->loss_scaling) return update_step_scaled(t);
    if (!t->grad_sync)
        return mt_optimizer_update_range(&t->optimizer, t->params, t->grads, 0,
                                         t->trainable_count);
    size_t offset, count;
    mt_status status;
    while ((status = mt_grad_sync_wait_bucket(t->grad_sync, &offset, &count)) == MT_OK) {
        /* the top bucket carries the skip flag after the gradients: not a parameter */
        if (offset + count > t->trainable_count) count = t->trainable_count - offset;
        if (count)
            MT_TRY(mt_optimizer_update_range(&t->optimizer, t->params, t->grads, offset, count));
    }
    return status == MT_END ? MT_OK : status;
}

/* fp16: the previous step's skip flag, copied back after that step without a wait
 * (readback_start), moves the loss scale on before this step reads it: the wait is for the
 * previous step's end, after this step's batch upload was enqueued, so the copy still overlaps
 * the compute. Also at the end of an epoch's steps, before its totals are reported. */
static mt_status settle_loss_scale(trainer *t, epoch_totals *totals) {
    if (!t->skip_pending) return MT_OK;
    t->skip_pending = false;
    /* NCCL: the step's collectives first, against the deadline (readback_wait has none) */
    if (t->grad_sync) MT_TRY(mt_grad_sync_settle(t->grad_sync));
    MT_TRY(t->backend->ops->readback_wait(t->backend));
    float divisor = 0.0f;
    if (!mt_loss_scale_update(&t->loss_scale, *t->skip_host == 0.0f, &divisor)) {
        t->optimizer.iterations -= t->optimizer.iterations > 0;
        totals->skipped++;
    }
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
    /* NCCL: the steps' collectives first, against the deadline (a download has none) */
    if (t->grad_sync) MT_TRY(mt_grad_sync_settle(t->grad_sync));
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
    if (!t->loss_scaling) { /* fp16 counted them step by step (settle_loss_scale) */
        totals->skipped += (int64_t)skipped;
        t->optimizer.iterations -= skipped <= t->optimizer.iterations ? skipped : 0;
    }
    trainer_say(t, "step %llu: non-finite loss, update skipped (train.nan_policy = skip)",
                (unsigned long long)first);
    if (skipped > 1)
        trainer_say(t, "; %llu steps skipped since the last report", (unsigned long long)skipped);
    trainer_say(t, "\n");
    return MT_OK;
}

/* The step's device work, from the BN statistics' backup to the optimizer's update: op calls
 * on backend memory and the per-step values only, the same calls every step of a batch shape,
 * so that trainer_graph.c may capture them once and replay them. fault_nan: MT_FAULT_STEP's
 * injected non-finite loss (host copies in the middle: such a step runs eager). */
typedef struct step_body_args {
    trainer *t;
    bool fault_nan;
    uint64_t step;
} step_body_args;

static mt_status step_body(const void *user) {
    const step_body_args *args = user;
    trainer *t = args->t;
    const mt_ops *ops = t->backend->ops;
    /* A skipped step must not leave NaN in the BN statistics either: keep a copy to restore, in
     * backend memory (a device-side copy, no trip through the host). */
    float *state = NULL;
    size_t state_count = 0;
    mt_model_state(t->model, &state, &state_count);
    if (t->state_backup)
        MT_TRY(ops->buffer_copy(t->backend, t->state_backup, state, state_count * sizeof *state));
    /* the accumulator before the step: an injected NaN loss puts it back as loss_accumulate
     * leaves it after a non-finite loss (a NaN pixel would not do: ReLU6 swallows NaN) */
    double before_fault[MT_ACCUM_COUNT];
    if (args->fault_nan)
        MT_TRY(ops->download(t->backend, before_fault, t->accum, sizeof before_fault));
    /* The loss, the accuracy and the skip flag stay in backend memory: nothing here waits. */
    const mt_model_input prepared = {.prepared = true, .n = t->step_rows};
    mt_step_result result;
    mt_status status = mt_model_forward_accumulate(t->model, &prepared, t->accum, &result);
    float *skip_flag = t->grads + t->trainable_count; /* mt_model_trainable */
    if (status == MT_OK && args->fault_nan) {
        if (before_fault[MT_ACCUM_SKIPPED] == 0.0)
            before_fault[MT_ACCUM_FIRST_SKIP] = (double)args->step;
        before_fault[MT_ACCUM_SKIPPED] += 1.0;
        const float one = 1.0f;
        status = ops->upload(t->backend, t->accum, before_fault, sizeof before_fault);
        if (status == MT_OK) status = ops->upload(t->backend, skip_flag, &one, sizeof one);
    }
    /* The gradient all-reduce runs in buckets from inside backward (the model's hook), the skip
     * flag first (it rides the top bucket: a nonzero mean means some rank must skip, and so
     * every rank does); after it, the optimizer updates each bucket as soon as that bucket's
     * mean is in place (update_step), or, with the flag set, leaves it (the backend reads the
     * flag). */
    if (t->grad_sync) {
        mt_grad_sync_begin(t->grad_sync);
        if (status == MT_OK) status = mt_grad_sync_ready(t->grad_sync, t->trainable_count, 1);
    }
    if (status == MT_OK) status = mt_model_backward(t->model);
    if (status == MT_OK && t->grad_sync) status = mt_grad_sync_end_backward(t->grad_sync);
    if (status == MT_OK) status = update_step(t);
    /* a skipped step's BN statistics come back from the copy, on the same word */
    if (status == MT_OK && t->state_backup)
        status =
            ops->buffer_copy_if(t->backend, state, t->state_backup, state_count * sizeof *state,
                                skip_flag, t->accum + MT_ACCUM_COPIED);
    return status;
}

/* One training step: the host's part (the previous step's fp16 flag, this step's per-step
 * values and input), the device work (step_body: eager, or replayed by trainer_graph.c), then
 * the host's bookkeeping (the iteration count, fp16's flag read back without a wait). */
static mt_status train_step(trainer *t, const mt_model_input *input, epoch_totals *totals) {
    const mt_train_config *c = t->config;
    const uint64_t step = t->global_step;
    const mt_ops *ops = t->backend->ops;
    fault_kind fault = fault_at(t, step, false);
    if (fault == FAULT_FAIL)
        return MT_FAIL(MT_ERR_INTERNAL, "injected fault at step %llu (MT_FAULT_STEP)",
                       (unsigned long long)step);
    if (fault == FAULT_CRASH) raise(SIGKILL);
    if (fault == FAULT_STOP) raise(SIGSTOP);
    if (fault == FAULT_SIGNAL) raise(SIGUSR1);
    t->graph.refuse_replay = fault == FAULT_REFUSE_REPLAY;
    MT_TRY(settle_loss_scale(t, totals));

    /* the per-step values, in backend memory where the step's ops read them (ops.h): the
     * dropout streams, independent per (seed, step, rank) from one seed; the step number; the
     * rate at this iteration; fp16's scale and its inverse */
    uint64_t dropout_seed =
        mt_splitmix64_at(mt_splitmix64_at((uint64_t)c->train.seed ^ 0xD50Full) ^ step) ^
        (uint64_t)t->who.rank;
    MT_TRY(mt_model_set_step(t->model, dropout_seed, step));
    if (t->loss_scaling) {
        const float inverse = 1.0f / t->loss_scale.scale;
        MT_TRY(mt_model_set_loss_scale(t->model, t->loss_scale.scale));
        MT_TRY(ops->scalars_write(t->backend, t->unscale, &inverse, sizeof inverse));
    }
    const float lr = (float)mt_lr_schedule_at(&t->schedule, t->optimizer.iterations);
    MT_TRY(mt_optimizer_set_rate(&t->optimizer, lr));
    MT_TRY(mt_model_prepare_input(t->model, input));
    t->step_rows = input->n;

    /* The host time in the all-reduce, whatever backward did not hide, is the step's all-reduce
     * share. */
    mt_grad_sync_stats before = {0};
    if (t->grad_sync) before = mt_grad_sync_get_stats(t->grad_sync);
    const step_body_args args = {.t = t, .fault_nan = fault == FAULT_NAN, .step = step};
    /* an injected NaN step runs eager on every rank (the environment is the same on all): a
     * graph holding NCCL collectives must be launched by all ranks or by none */
    const bool eager = fault_at(t, step, true) == FAULT_NAN;
    mt_status status = trainer_graph_step(&t->graph, input->n,
                                          mt_model_memory_generation(t->model), eager, step_body,
                                          &args);
    /* NCCL's checks, between steps (eager or replayed): its error state, the previous step's
     * collectives ended within the timeout */
    if (status == MT_OK && t->grad_sync) status = mt_grad_sync_step_done(t->grad_sync);
    if (status == MT_OK) mt_optimizer_step_done(&t->optimizer);
    if (status == MT_OK && t->loss_scaling) {
        status = ops->readback_start(t->backend, t->skip_host, t->grads + t->trainable_count,
                                     sizeof *t->skip_host);
        t->skip_pending = status == MT_OK;
    }
    if (t->grad_sync) {
        const mt_grad_sync_stats after = mt_grad_sync_get_stats(t->grad_sync);
        totals->allreduce_seconds += after.comm_seconds - before.comm_seconds;
        totals->buckets += after.buckets - before.buckets;
        totals->buckets_done_in_backward += after.done_in_backward - before.done_in_backward;
    }
    return status;
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

/* ---- the epoch ------------------------------------------------------------------------------- */

/* Run the epoch's remaining steps; *stopped when the ranks agreed to stop early (a signal). */
mt_status trainer_run_epoch(trainer *t, bool progress, epoch_totals *totals, double *seconds,
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
        bool due = progress && trainer_is_root(t) &&
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
    /* fp16: the last step's flag, before the epoch's totals and any checkpoint */
    if (status == MT_OK) status = settle_loss_scale(t, totals);
    if (progress && trainer_is_root(t)) fprintf(stderr, "\r%*s\r", 110, "");
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
