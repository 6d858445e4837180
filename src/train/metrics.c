/* The metrics logs: metrics.jsonl, and the TensorBoard event files through src/io/tfevents.c. */
#include "mobiletune/metrics.h"

#include "core/clock.h"
#include "mobiletune/files.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mt_metrics {
    FILE *jsonl;
    char jsonl_path[4400];
    mt_event_writer *train, *validation;
};

mt_metrics_record mt_metrics_record_empty(mt_metrics_kind kind, int epoch, int64_t step) {
    return (mt_metrics_record){
        .kind = kind,
        .epoch = epoch,
        .step = step,
        .loss = MT_METRIC_ABSENT,
        .accuracy = MT_METRIC_ABSENT,
        .val_loss = MT_METRIC_ABSENT,
        .val_accuracy = MT_METRIC_ABSENT,
        .lr = MT_METRIC_ABSENT,
        .images_per_second = MT_METRIC_ABSENT,
        .seconds = MT_METRIC_ABSENT,
        .loss_scale = MT_METRIC_ABSENT,
        .skipped_steps = MT_METRIC_ABSENT,
    };
}

mt_status mt_metrics_open(const char *run_dir, bool tensorboard, mt_metrics **out) {
    *out = NULL;
    MT_TRY(mt_make_dirs(run_dir));
    mt_metrics *m = calloc(1, sizeof *m);
    if (!m) return MT_FAIL(MT_ERR_NOMEM, "metrics: out of memory");
    snprintf(m->jsonl_path, sizeof m->jsonl_path, "%s/metrics.jsonl", run_dir);
    m->jsonl = fopen(m->jsonl_path, "a");
    if (!m->jsonl) {
        mt_status status = MT_FAIL(MT_ERR_IO, "cannot open '%s' for appending: %s", m->jsonl_path,
                                   strerror(errno));
        free(m);
        return status;
    }
    if (tensorboard) {
        char folder[4400];
        snprintf(folder, sizeof folder, "%s/tensorboard/train", run_dir);
        mt_status status = mt_event_writer_open(folder, &m->train);
        if (status == MT_OK) {
            snprintf(folder, sizeof folder, "%s/tensorboard/validation", run_dir);
            status = mt_event_writer_open(folder, &m->validation);
        }
        if (status != MT_OK) {
            mt_metrics_close(m);
            return status;
        }
    }
    *out = m;
    return MT_OK;
}

static void json_number(FILE *f, const char *key, double value) {
    if (isfinite(value))
        fprintf(f, ",\"%s\":%.9g", key, value);
    else
        fprintf(f, ",\"%s\":null", key);
}

/* Absent (NAN) values are left out; infinities become null. */
static void json_field(FILE *f, const char *key, double value) {
    if (isnan(value)) return;
    json_number(f, key, value);
}

static mt_status scalar(mt_event_writer *w, const char *tag, int64_t step, double wall_time,
                        double value) {
    if (!w || !isfinite(value)) return MT_OK;
    return mt_event_writer_scalar(w, tag, step, wall_time, (float)value);
}

mt_status mt_metrics_log(mt_metrics *m, const mt_metrics_record *r) {
    double wall_time = mt_clock_wall();
    bool epoch = r->kind == MT_METRICS_EPOCH;
    fprintf(m->jsonl, "{\"kind\":\"%s\",\"epoch\":%d,\"step\":%lld,\"time\":%.3f",
            epoch ? "epoch" : "step", r->epoch, (long long)r->step, wall_time);
    json_field(m->jsonl, "loss", r->loss);
    json_field(m->jsonl, "accuracy", r->accuracy);
    json_field(m->jsonl, "val_loss", r->val_loss);
    json_field(m->jsonl, "val_accuracy", r->val_accuracy);
    json_field(m->jsonl, "lr", r->lr);
    json_field(m->jsonl, "images_per_second", r->images_per_second);
    json_field(m->jsonl, "seconds", r->seconds);
    json_field(m->jsonl, "loss_scale", r->loss_scale);
    json_field(m->jsonl, "skipped_steps", r->skipped_steps);
    fputs("}\n", m->jsonl);
    if (fflush(m->jsonl) != 0 || ferror(m->jsonl))
        return MT_FAIL(MT_ERR_IO, "writing '%s': %s", m->jsonl_path, strerror(errno));

    /* Keras' TensorBoard callback names: epoch_* against the epoch, batch_* against the step. */
    if (epoch) {
        MT_TRY(scalar(m->train, "epoch_loss", r->epoch, wall_time, r->loss));
        MT_TRY(scalar(m->train, "epoch_accuracy", r->epoch, wall_time, r->accuracy));
        MT_TRY(scalar(m->train, "epoch_learning_rate", r->epoch, wall_time, r->lr));
        MT_TRY(
            scalar(m->train, "epoch_images_per_second", r->epoch, wall_time, r->images_per_second));
        MT_TRY(scalar(m->train, "epoch_seconds", r->epoch, wall_time, r->seconds));
        MT_TRY(scalar(m->train, "epoch_loss_scale", r->epoch, wall_time, r->loss_scale));
        MT_TRY(scalar(m->train, "epoch_skipped_steps", r->epoch, wall_time, r->skipped_steps));
        MT_TRY(scalar(m->validation, "epoch_loss", r->epoch, wall_time, r->val_loss));
        MT_TRY(scalar(m->validation, "epoch_accuracy", r->epoch, wall_time, r->val_accuracy));
    } else {
        MT_TRY(scalar(m->train, "batch_loss", r->step, wall_time, r->loss));
        MT_TRY(scalar(m->train, "batch_accuracy", r->step, wall_time, r->accuracy));
        MT_TRY(scalar(m->train, "batch_learning_rate", r->step, wall_time, r->lr));
        MT_TRY(
            scalar(m->train, "batch_images_per_second", r->step, wall_time, r->images_per_second));
    }
    if (m->train) MT_TRY(mt_event_writer_flush(m->train));
    if (m->validation) MT_TRY(mt_event_writer_flush(m->validation));
    return MT_OK;
}

mt_status mt_metrics_close(mt_metrics *m) {
    if (!m) return MT_OK;
    mt_status status = MT_OK;
    if (m->jsonl && fclose(m->jsonl) != 0)
        status = MT_FAIL(MT_ERR_IO, "closing '%s': %s", m->jsonl_path, strerror(errno));
    mt_status train = mt_event_writer_close(m->train);
    mt_status validation = mt_event_writer_close(m->validation);
    free(m);
    if (status != MT_OK) return status;
    return train != MT_OK ? train : validation;
}
