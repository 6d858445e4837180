/* The training run (trainer.h): mt_train's sequence (set-up, the feature cache, the epochs,
 * the test evaluation, the closing line), the end of an epoch (BN averaging, evaluation, the
 * epoch's line and metrics, checkpoints) and rank 0's words. Its parts: trainer_setup.c (set-up,
 * replica agreement, tear-down), trainer_epoch.c (the step and the epoch, signals, injected
 * faults), trainer_eval.c (evaluation), trainer_cache.c (the frozen-mode feature cache),
 * trainer_checkpoint.c (checkpoint contents), trainer_agree.c (the config agreement); metrics
 * files in metrics.c. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/clock.h"
#include "mobiletune/metrics.h"
#include "trainer_internal.h"

bool trainer_is_root(const trainer *t) {
    return t->who.rank == 0;
}

/* Rank 0's words: to stdout and the run's log file. */
void trainer_say(trainer *t, const char *format, ...) {
    if (!trainer_is_root(t)) return;
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

/* Through src/comm, which knows how to reach the backend's memory (trainer_setup.c's
 * broadcast_buffer likewise). */
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
    if (evaluate) trainer_warn_bn_coverage(t, "validation");
    if (evaluate && t->val_feature_cache) {
        MT_TRY(trainer_evaluate_cached(t, &val));
        result->val_loss = val.loss;
        result->val_accuracy = val.accuracy;
    } else if (evaluate) {
        MT_TRY(mt_evaluate(t->model, c->data.val, t->comm, c->data.loader_threads, &val));
        free(val.confusion);
        result->val_loss = val.loss;
        result->val_accuracy = val.accuracy;
    }
    t->eval_seconds += mt_clock_monotonic() - eval_start;
    trainer_say(t, "epoch %d/%d  loss %.4f  acc %.4f", epoch, c->train.epochs, loss, accuracy);
    if (evaluate) trainer_say(t, "  val_loss %.4f  val_acc %.4f", val.loss, val.accuracy);
    trainer_say(t, "  %.1f img/s  %.1f s  (%.0f ms/step, all-reduce %.1f%%)%s\n", images_per_second,
                seconds, totals->steps ? 1e3 * seconds / (double)totals->steps : 0.0,
                seconds > 0 ? 100.0 * totals->allreduce_seconds / seconds : 0.0,
                totals->skipped ? "  (non-finite steps skipped)" : "");
    if (t->loss_scaling)
        trainer_say(t,
                    "  loss scale %g, %lld update(s) skipped for non-finite gradients this epoch\n",
                    (double)t->loss_scale.scale, (long long)totals->skipped);
    if (totals->buckets > 0 && totals->steps > 0)
        trainer_say(
            t, "  gradients: %.3g buckets/step, %.0f%% of them complete before backward ended\n",
            (double)totals->buckets / (double)totals->steps,
            100.0 * (double)totals->buckets_done_in_backward / (double)totals->buckets);
    if (trainer_is_root(t)) {
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

/* The line at the end of a run that says where its wall time went. The phases do not overlap
 * (each is timed around its own calls), so "the rest" (set-up, loading weights, BN averaging,
 * waiting on other ranks) is the total minus them and is never negative. */
static void say_time_split(trainer *t, const mt_train_result *r) {
    const double rest = r->seconds - r->cache_seconds - r->step_seconds - r->eval_seconds -
                        r->checkpoint_seconds;
    trainer_say(t,
                "time: %.1f s = feature cache %.1f s + training steps %.1f s + evaluation %.1f s + "
                "checkpoints %.1f s + the rest %.1f s (set-up, weights, BN averaging)\n",
                r->seconds, r->cache_seconds, r->step_seconds, r->eval_seconds,
                r->checkpoint_seconds, rest > 0 ? rest : 0.0);
}

/* On a backend with device memory, the line after it: what the run needed of the GPU, the
 * figure to hold against the device's size when choosing a batch size (ops.h
 * device_memory_peak, an upper bound; rounded up, so never under it). */
static void say_device_memory(trainer *t) {
    const mt_ops *ops = t->backend->ops;
    size_t peak = 0;
    if (!ops->device_memory_peak || ops->device_memory_peak(t->backend, &peak) != MT_OK) return;
    const size_t mib = (size_t)1 << 20;
    trainer_say(t, "device memory: at most %zu MiB at once (the backend's buffers, workspaces "
                "and input slots; not the CUDA context)\n", (peak + mib - 1) / mib);
}

mt_status mt_train(const mt_train_config *config, mt_comm *comm, const mt_train_options *options,
                   mt_train_result *result) {
    const double start = mt_clock_monotonic();
    *result = (mt_train_result){.val_loss = NAN, .val_accuracy = NAN, .test_loss = NAN,
                                .test_accuracy = NAN};
    trainer t = {.config = config, .comm = comm};
    mt_status status = trainer_set_up(&t, options);
    if (status == MT_OK && t.use_feature_cache && t.epoch < (uint64_t)config->train.epochs) {
        double cache_start = mt_clock_monotonic();
        status = trainer_build_feature_cache(&t, config->data.train, t.cache_views, t.train_records,
                                             &t.feature_cache, &t.label_cache);
        uint64_t vectors = t.train_records * (uint64_t)t.cache_views;
        if (status == MT_OK && config->data.val[0]) {
            mt_dataset *val = NULL;
            status = mt_dataset_open(config->data.val, &val);
            if (status == MT_OK) t.val_records = mt_dataset_count(val);
            mt_dataset_close(val);
            if (status == MT_OK)
                status = trainer_build_feature_cache(&t, config->data.val, 1, t.val_records,
                                                     &t.val_feature_cache, &t.val_label_cache);
            vectors += t.val_records;
        }
        t.cache_seconds = mt_clock_monotonic() - cache_start;
        trainer_say(&t, "  cached %llu feature vectors (training%s) in %.1f s\n",
                    (unsigned long long)vectors, config->data.val[0] ? " and validation" : "",
                    t.cache_seconds);
    }
    result->used_feature_cache = t.use_feature_cache;
    const bool progress = options->progress && isatty(STDERR_FILENO);
    while (status == MT_OK && t.epoch < (uint64_t)config->train.epochs) {
        epoch_totals totals = {0};
        double seconds = 0;
        bool stopped = false;
        status = trainer_run_epoch(&t, progress, &totals, &seconds, &stopped);
        t.step_seconds += seconds;
        if (status != MT_OK) break;
        if (stopped) {
            /* Slurm's warning before the time limit or pre-emption: save and leave cleanly. */
            status = average_bn_statistics(&t);
            const double checkpoint_start = mt_clock_monotonic();
            if (status == MT_OK) status = trainer_save_checkpoint(&t, "last");
            t.checkpoint_seconds += mt_clock_monotonic() - checkpoint_start;
            if (status == MT_OK) {
                trainer_say(
                    &t,
                    "stop requested (signal): checkpoint written at epoch %llu, batch %llu; "
                    "continue with --resume auto\n",
                    (unsigned long long)t.epoch + 1, (unsigned long long)t.next_batch);
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
        trainer_warn_bn_coverage(&t, "the test evaluation");
        status = mt_evaluate(t.model, config->data.test, comm, config->data.loader_threads, &test);
        t.eval_seconds += mt_clock_monotonic() - eval_start;
        if (status == MT_OK) {
            result->test_loss = test.loss;
            result->test_accuracy = test.accuracy;
            trainer_say(&t, "test: loss %.4f  accuracy %.4f  (%lld images)\n", test.loss,
                        test.accuracy, (long long)test.count);
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
    if (status == MT_OK) say_device_memory(&t);
    trainer_tear_down(&t);
    return status;
}
