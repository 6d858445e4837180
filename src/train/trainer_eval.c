/* Evaluation: mt_evaluate (trainer.h) over a split on every rank, the frozen mode's evaluation
 * of cached features, and the warning before an evaluation whose BN moving statistics are still
 * mostly their initial values. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "trainer_internal.h"

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
mt_status trainer_evaluate_cached(trainer *t, mt_eval_result *result) {
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
void trainer_warn_bn_coverage(trainer *t, const char *what) {
    if (t->bn_training_layers == 0 || !t->bn_statistics_from_init) return;
    const double m = t->config->model.bn_momentum;
    const uint64_t steps = t->optimizer.iterations;
    const double covered = 1.0 - pow(m, (double)steps);
    if (covered >= 0.9) return;
    trainer_say(
        t,
        "  warning: %s normalizes with BN moving statistics that have covered %.1f%% of the "
        "way from their initial values (1 - %g^%llu, %d BN layers in training mode); ",
        what, 100.0 * covered, m, (unsigned long long)steps, t->bn_training_layers);
    if (steps == 0) {
        trainer_say(t, "no training step has updated them yet\n");
        return;
    }
    const double now = floor(pow(0.1, 1.0 / (double)steps) * 1e4) / 1e4;
    trainer_say(t, "model.bn_momentum = %g would have covered 90%%", now);
    const uint64_t total = (uint64_t)t->config->train.epochs * t->steps_per_epoch;
    if (total > steps)
        trainer_say(t, " (%g by the last of %llu steps)",
                    floor(pow(0.1, 1.0 / (double)total) * 1e4) / 1e4, (unsigned long long)total);
    trainer_say(t, "\n");
}
