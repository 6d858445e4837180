/* What a training checkpoint holds, and putting it back (docs/checkpoints.md):
 *   every model tensor under its Keras name "<layer>/<weight>" with its Keras shape (trainable,
 *   frozen and BN moving statistics alike), so Python reads a checkpoint as named weights;
 *   "optimizer/<slot>" for each optimizer slot, flat over the trainable buffer;
 *   metadata: format, position (epoch, next_batch, global_step), optimizer iterations, the best
 *   validation accuracy, the seed (with global_step it fixes every later shuffle, flip and dropout
 *   mask: the RNG state), the layout checksum and the whole config as INI text. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/checkpoint.h"
#include "trainer_internal.h"

#define CHECKPOINT_FORMAT "mobiletune-checkpoint"
#define CHECKPOINT_VERSION "1"

static mt_status add_meta_u64(mt_checkpoint *c, const char *key, uint64_t value) {
    char text[32];
    snprintf(text, sizeof text, "%" PRIu64, value);
    return mt_checkpoint_set_meta(c, key, text);
}

/* Elements in the layout's largest tensor: one host buffer of that size carries every tensor. */
static size_t largest_tensor_count(const mt_model_layout *layout) {
    size_t largest = 0;
    for (int i = 0; i < layout->tensor_count; i++)
        if (layout->tensors[i].count > largest) largest = layout->tensors[i].count;
    return largest;
}

static mt_status add_model_tensors(mt_checkpoint *c, mt_model *model) {
    const mt_model_layout *layout = mt_model_get_layout(model);
    float *host = malloc(largest_tensor_count(layout) * sizeof *host);
    if (!host) return MT_FAIL(MT_ERR_NOMEM, "out of memory writing a checkpoint");
    mt_status status = MT_OK;
    for (int i = 0; status == MT_OK && i < layout->tensor_count; i++) {
        const mt_param_tensor *p = &layout->tensors[i];
        status = mt_model_tensor_download(model, p, host);
        if (status == MT_OK) status = mt_checkpoint_add_f32(c, p->name, p->rank, p->shape, host);
    }
    free(host);
    return status;
}

mt_status trainer_save_checkpoint(trainer *t, const char *name) {
    if (t->who.rank != 0) return MT_OK;
    char path[sizeof t->checkpoint_dir + 64];
    snprintf(path, sizeof path, "%s/%s.safetensors", t->checkpoint_dir, name);
    mt_checkpoint *c = NULL;
    MT_TRY(mt_checkpoint_create(&c));
    mt_status status = add_model_tensors(c, t->model);
    float *slot = NULL;
    if (status == MT_OK && t->optimizer.slot_count > 0) {
        slot = malloc(t->trainable_count * sizeof *slot + 1);
        if (!slot) status = MT_FAIL(MT_ERR_NOMEM, "out of memory writing a checkpoint");
    }
    for (int s = 0; status == MT_OK && s < t->optimizer.slot_count; s++) {
        char tensor[96];
        snprintf(tensor, sizeof tensor, "optimizer/%s", t->optimizer.slot_names[s]);
        int shape[1] = {(int)t->trainable_count};
        status = mt_optimizer_slot_download(&t->optimizer, s, slot);
        if (status == MT_OK) status = mt_checkpoint_add_f32(c, tensor, 1, shape, slot);
    }
    free(slot);
    char *config_text = NULL;
    if (status == MT_OK) status = mt_config_to_ini(t->config, &config_text);
    char best[40], checksum[24];
    snprintf(best, sizeof best, "%.17g", t->best_val_accuracy);
    snprintf(checksum, sizeof checksum, "%016" PRIx64, t->layout_checksum);
    struct { const char *key, *value; } text[] = {
        {"format", CHECKPOINT_FORMAT}, {"format_version", CHECKPOINT_VERSION},
        {"mode", mt_train_mode_name(t->layout->config.mode)},
        {"optimizer", mt_optimizer_kind_name(t->optimizer.params.kind)},
        {"best_val_accuracy", best}, {"layout_checksum", checksum}, {"config", config_text},
    };
    for (size_t i = 0; status == MT_OK && i < sizeof text / sizeof text[0]; i++)
        status = mt_checkpoint_set_meta(c, text[i].key, text[i].value);
    /* class names, one per line, so eval and predict can label their output */
    const mt_dataset_meta *meta = mt_loader_meta(t->train_loader);
    size_t names_bytes = 1;
    for (int k = 0; k < meta->class_count; k++) names_bytes += strlen(meta->class_names[k]) + 1;
    char *names = status == MT_OK ? calloc(names_bytes, 1) : NULL;
    if (status == MT_OK && !names) status = MT_FAIL(MT_ERR_NOMEM, "out of memory");
    for (int k = 0; names && k < meta->class_count; k++) {
        if (k) strcat(names, "\n");
        strcat(names, meta->class_names[k]);
    }
    if (status == MT_OK) status = mt_checkpoint_set_meta(c, "class_names", names);
    free(names);
    struct { const char *key; uint64_t value; } numbers[] = {
        {"epoch", t->epoch}, {"next_batch", t->next_batch}, {"global_step", t->global_step},
        {"optimizer_iterations", t->optimizer.iterations},
        {"seed", (uint64_t)t->config->train.seed}, {"world_size", (uint64_t)t->who.world_size},
        {"trainable_count", t->trainable_count},
    };
    for (size_t i = 0; status == MT_OK && i < sizeof numbers / sizeof numbers[0]; i++)
        status = add_meta_u64(c, numbers[i].key, numbers[i].value);
    if (status == MT_OK) status = mt_checkpoint_write(c, path);
    free(config_text);
    mt_checkpoint_free(c);
    return status;
}

static mt_status meta_u64(const mt_checkpoint *c, const char *key, uint64_t *out) {
    const char *text = mt_checkpoint_meta(c, key);
    char *end = NULL;
    if (text) *out = strtoull(text, &end, 10);
    if (!text || end == text || *end != '\0')
        return MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': metadata '%s' is missing or not a number",
                       mt_checkpoint_path(c), key);
    return MT_OK;
}

/* Upload every model tensor the checkpoint has; with `all_required`, a missing one is an error.
 * *loaded counts the tensors taken. */
static mt_status load_model_tensors(const mt_checkpoint *c, mt_model *model, bool all_required,
                                    int *loaded) {
    const mt_model_layout *layout = mt_model_get_layout(model);
    float *host = malloc(largest_tensor_count(layout) * sizeof *host);
    if (!host) return MT_FAIL(MT_ERR_NOMEM, "out of memory reading a checkpoint");
    mt_status status = MT_OK;
    *loaded = 0;
    for (int i = 0; status == MT_OK && i < layout->tensor_count; i++) {
        const mt_param_tensor *p = &layout->tensors[i];
        if (!all_required && !mt_checkpoint_find(c, p->name)) continue;
        status = mt_checkpoint_get_f32(c, p->name, host, p->count, p->rank, p->shape);
        /* a NaN in the weights does not fail a forward pass: it is refused here, by name */
        if (status == MT_OK) status = mt_checkpoint_check_finite(c, p->name);
        if (status == MT_OK) status = mt_model_tensor_upload(model, p, host);
        if (status == MT_OK) (*loaded)++;
    }
    free(host);
    return status;
}

mt_status trainer_load_checkpoint(trainer *t, const char *path) {
    mt_checkpoint *c = NULL;
    MT_TRY(mt_checkpoint_read(path, &c));
    mt_status status = MT_OK;
    const char *format = mt_checkpoint_meta(c, "format");
    const char *mode = mt_checkpoint_meta(c, "mode");
    const char *optimizer = mt_checkpoint_meta(c, "optimizer");
    if (!format || strcmp(format, CHECKPOINT_FORMAT) != 0)
        status = MT_FAIL(MT_ERR_FORMAT, "'%s' is not a mobiletune training checkpoint (use "
                         "model.init_checkpoint to take weights from other safetensors files)", path);
    else if (!mode || strcmp(mode, mt_train_mode_name(t->layout->config.mode)) != 0)
        status = MT_FAIL(MT_ERR_INVALID, "checkpoint '%s' was trained in mode %s, this run is %s: "
                         "to start a new phase from it use model.init_checkpoint", path,
                         mode ? mode : "?", mt_train_mode_name(t->layout->config.mode));
    else if (!optimizer || strcmp(optimizer, mt_optimizer_kind_name(t->optimizer.params.kind)) != 0)
        status = MT_FAIL(MT_ERR_INVALID, "checkpoint '%s' used optimizer %s, this run uses %s",
                         path, optimizer ? optimizer : "?",
                         mt_optimizer_kind_name(t->optimizer.params.kind));
    uint64_t count = 0;
    if (status == MT_OK) status = meta_u64(c, "trainable_count", &count);
    if (status == MT_OK && count != t->trainable_count)
        status = MT_FAIL(MT_ERR_INVALID, "checkpoint '%s' has %llu trainable parameters, this run "
                         "%zu: the [model] options differ", path, (unsigned long long)count,
                         t->trainable_count);
    int loaded = 0;
    if (status == MT_OK) status = load_model_tensors(c, t->model, true, &loaded);
    float *slot = NULL;
    if (status == MT_OK && t->optimizer.slot_count > 0) {
        slot = malloc(t->trainable_count * sizeof *slot + 1);
        if (!slot) status = MT_FAIL(MT_ERR_NOMEM, "out of memory reading a checkpoint");
    }
    for (int s = 0; status == MT_OK && s < t->optimizer.slot_count; s++) {
        char tensor[96];
        snprintf(tensor, sizeof tensor, "optimizer/%s", t->optimizer.slot_names[s]);
        status = mt_checkpoint_get_f32(c, tensor, slot, t->trainable_count, 0, NULL);
        if (status == MT_OK) status = mt_checkpoint_check_finite(c, tensor);
        if (status == MT_OK) status = mt_optimizer_slot_upload(&t->optimizer, s, slot);
    }
    free(slot);
    if (status == MT_OK) status = meta_u64(c, "epoch", &t->epoch);
    if (status == MT_OK) status = meta_u64(c, "next_batch", &t->next_batch);
    if (status == MT_OK) status = meta_u64(c, "global_step", &t->global_step);
    if (status == MT_OK) status = meta_u64(c, "optimizer_iterations", &t->optimizer.iterations);
    const char *best = mt_checkpoint_meta(c, "best_val_accuracy");
    if (status == MT_OK) t->best_val_accuracy = best ? strtod(best, NULL) : 0.0;
    mt_checkpoint_free(c);
    return status;
}

mt_status trainer_init_from_checkpoint(trainer *t, const char *path) {
    mt_checkpoint *c = NULL;
    MT_TRY(mt_checkpoint_read(path, &c));
    int loaded = 0;
    mt_status status = load_model_tensors(c, t->model, false, &loaded);
    if (status == MT_OK && loaded == 0)
        status = MT_FAIL(MT_ERR_FORMAT, "'%s' holds none of this model's tensors (names like "
                         "'Conv1/kernel')", path);
    mt_checkpoint_free(c);
    if (status == MT_OK && t->who.rank == 0)
        printf("initialized %d of %d tensors from %s\n", loaded, t->layout->tensor_count, path);
    return status;
}

/* "cats\ndogs" -> {"cats", "dogs"}; exactly `count` names or an error. */
static mt_status split_class_names(const char *text, int count, const char *path, char ***out) {
    char **names = calloc((size_t)count, sizeof *names);
    if (!names) return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    const char *p = text;
    int n = 0;
    while (p && *p && n < count) {
        const char *end = strchr(p, '\n');
        size_t length = end ? (size_t)(end - p) : strlen(p);
        names[n] = strndup(p, length);
        if (!names[n++]) break;
        p = end ? end + 1 : NULL;
    }
    if (n != count || (p && *p)) {
        for (int i = 0; i < n; i++) free(names[i]);
        free(names);
        return MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': class_names does not list %d classes",
                       path, count);
    }
    *out = names;
    return MT_OK;
}

mt_status mt_checkpoint_open_model(const char *path, const char *backend_name, int batch_size,
                                   mt_backend **backend, mt_model **model, char ***class_names) {
    *backend = NULL;
    *model = NULL;
    if (class_names) *class_names = NULL;
    mt_checkpoint *c = NULL;
    MT_TRY(mt_checkpoint_read(path, &c));
    mt_train_config *config = malloc(sizeof *config);
    mt_status status = config ? MT_OK : MT_FAIL(MT_ERR_NOMEM, "out of memory");
    const char *config_text = mt_checkpoint_meta(c, "config");
    if (status == MT_OK && !config_text)
        status = MT_FAIL(MT_ERR_FORMAT, "'%s' has no config metadata: not a mobiletune "
                         "training checkpoint", path);
    if (status == MT_OK) {
        mt_config_defaults(config);
        status = mt_config_load_string(config, config_text, path, NULL);
    }
    if (status == MT_OK) {
        if (!backend_name)
            backend_name = mt_config_enum_name("train", "backend", (int)config->train.backend);
        mt_backend_options options = {.num_threads = config->train.threads};
        status = mt_backend_create(backend_name, &options, backend);
    }
    if (status == MT_OK) {
        mt_model_config model_config = mt_config_model(config);
        model_config.batch_size = batch_size > 0 ? batch_size : model_config.batch_size;
        status = mt_model_create(*backend, &model_config, 0, model);
    }
    int loaded = 0;
    if (status == MT_OK) status = load_model_tensors(c, *model, true, &loaded);
    if (status == MT_OK && class_names) {
        const char *names = mt_checkpoint_meta(c, "class_names");
        int classes = mt_model_get_layout(*model)->config.classes;
        status = names ? split_class_names(names, classes, path, class_names)
                       : MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s' has no class_names", path);
    }
    free(config);
    mt_checkpoint_free(c);
    if (status != MT_OK) {
        mt_model_destroy(*model);
        mt_backend_destroy(*backend);
        *model = NULL;
        *backend = NULL;
    }
    return status;
}
