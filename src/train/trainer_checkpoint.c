/* What a training checkpoint holds, and putting it back (docs/checkpoints.md):
 *   every model tensor under its Keras name "<layer>/<weight>" with its Keras shape (trainable,
 *   frozen and BN moving statistics alike), so Python reads a checkpoint as named weights;
 *   "optimizer/<slot>" for each optimizer slot, flat over the trainable buffer;
 *   metadata: format, position (epoch, next_batch, global_step), optimizer iterations, fp16's
 *   loss-scale state (loss_scale, loss_scale_good_steps, loss_scale_skipped), the best
 *   validation accuracy, the seed (with global_step it fixes every later shuffle, flip and dropout
 *   mask: the RNG state), the layout checksum and the whole config as INI text; and, when the
 *   backend times its implementations per shape (cuda), its choices (backend_choices: ops.h
 *   choices_save; backend_choices_rank<r> for a rank r whose choices differ from rank 0's), so
 *   that a resume runs the same ones on every rank and stays bit-exact. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* The metadata key of rank `rank`'s choices: rank 0's is the plain one (what a one-rank run and
 * a checkpoint from before several ranks' choices were kept have). */
static void choices_key(int rank, char *key, size_t size) {
    if (rank == 0) snprintf(key, size, "backend_choices");
    else snprintf(key, size, "backend_choices_rank%d", rank);
}

/* Every rank's choices (ops.h choices_save) in *texts (world_size entries, "" for none, on rank 0;
 * NULL elsewhere). Each rank times its own GPU, so ranks may choose differently, and a resume
 * that gave every rank rank 0's choices would not be the straight run. A collective: every rank
 * saves at the same points (the epoch's end, the agreed stop), so every rank calls it. */
static mt_status gather_choices(trainer *t, char ***texts) {
    *texts = NULL;
    const mt_ops *ops = t->backend->ops;
    if (!ops->choices_save) return MT_OK;
    char *mine = NULL;
    mt_status status = ops->choices_save(t->backend, &mine);
    const int world = t->who.world_size;
    uint64_t length = status == MT_OK && mine ? strlen(mine) + 1 : 1, *lengths = NULL;
    char *all = NULL;
    if (world > 1) {
        /* every rank joins both exchanges whatever its choices_save said, so none waits for
         * another; a rank that cannot even hold the exchange takes the job down instead */
        lengths = calloc((size_t)world, sizeof *lengths);
        if (!lengths) mt_comm_abort(t->comm, 1, "out of host memory gathering the cuda choices");
        const mt_status first = mt_comm_allgather(t->comm, &length, lengths, sizeof length);
        for (int r = 0; r < world; r++)
            if (lengths[r] > length) length = lengths[r];
        char *padded = calloc(length, 1);
        all = calloc((size_t)world, length);
        if (!padded || !all)
            mt_comm_abort(t->comm, 1, "out of host memory gathering the cuda choices");
        if (status == MT_OK && mine) memcpy(padded, mine, strlen(mine)); /* as `length` */
        const mt_status second = mt_comm_allgather(t->comm, padded, all, length);
        if (status == MT_OK) status = first != MT_OK ? first : second;
        free(padded);
    }
    if (status == MT_OK && t->who.rank == 0) {
        *texts = calloc((size_t)world, sizeof **texts);
        if (!*texts) status = MT_FAIL(MT_ERR_NOMEM, "out of memory gathering the choices");
        for (int r = 0; status == MT_OK && r < world; r++) {
            const char *text = world > 1 ? all + (size_t)r * length : (mine ? mine : "");
            (*texts)[r] = strdup(text);
            if (!(*texts)[r]) status = MT_FAIL(MT_ERR_NOMEM, "out of memory gathering the choices");
        }
    }
    free(mine);
    free(lengths);
    free(all);
    return status;
}

static void free_choices(char **texts, int count) {
    for (int r = 0; texts && r < count; r++)
        free(texts[r]);
    free(texts);
}

mt_status trainer_save_checkpoint(trainer *t, const char *name) {
    char **choices = NULL;
    MT_TRY(gather_choices(t, &choices));
    if (t->who.rank != 0) return MT_OK;
    char path[sizeof t->checkpoint_dir + 64];
    snprintf(path, sizeof path, "%s/%s.safetensors", t->checkpoint_dir, name);
    mt_checkpoint *c = NULL;
    mt_status status = mt_checkpoint_create(&c);
    if (status != MT_OK) {
        free_choices(choices, t->who.world_size);
        return status;
    }
    status = add_model_tensors(c, t->model);
    if (status == MT_OK) status = mt_optimizer_save(&t->optimizer, c);
    char *config_text = NULL;
    if (status == MT_OK) status = mt_config_to_ini(t->config, &config_text);
    char best[40], checksum[24];
    snprintf(best, sizeof best, "%.17g", t->best_val_accuracy);
    snprintf(checksum, sizeof checksum, "%016" PRIx64, t->layout_checksum);
    struct { const char *key, *value; } text[] = {
        {"format", CHECKPOINT_FORMAT}, {"format_version", CHECKPOINT_VERSION},
        {"mode", mt_train_mode_name(t->layout->config.mode)},
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
        {"seed", (uint64_t)t->config->train.seed}, {"world_size", (uint64_t)t->who.world_size},
        {"trainable_count", t->trainable_count},
    };
    for (size_t i = 0; status == MT_OK && i < sizeof numbers / sizeof numbers[0]; i++)
        status = add_meta_u64(c, numbers[i].key, numbers[i].value);
    if (status == MT_OK && t->loss_scaling) {
        /* %a: the float's exact bits as text (strtof reads them back unchanged) */
        char scale[48];
        snprintf(scale, sizeof scale, "%a", (double)t->loss_scale.scale);
        status = mt_checkpoint_set_meta(c, "loss_scale", scale);
        if (status == MT_OK)
            status = add_meta_u64(c, "loss_scale_good_steps", (uint64_t)t->loss_scale.good_steps);
        if (status == MT_OK)
            status = add_meta_u64(c, "loss_scale_skipped", (uint64_t)t->loss_scale.skipped);
    }
    /* rank 0's choices, and another rank's where they differ (docs/gpu.md, "Choices,
     * determinism and resume") */
    for (int r = 0; status == MT_OK && choices && r < t->who.world_size; r++) {
        if (!choices[r][0] || (r > 0 && strcmp(choices[r], choices[0]) == 0)) continue;
        char key[48];
        choices_key(r, key, sizeof key);
        status = mt_checkpoint_set_meta(c, key, choices[r]);
    }
    free_choices(choices, t->who.world_size);
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

/* A checkpoint's class_names (one per line) against the training data's list: a label is a
 * position in the list, so cats/dogs weights on dogs/zcats data would train and report nonsense.
 * A safetensors file without class_names (not written by mobiletune) is not checked. */
static mt_status check_class_names(const mt_checkpoint *c, const char *path, const char *what,
                                   const mt_dataset_meta *data, const char *data_path) {
    const char *text = mt_checkpoint_meta(c, "class_names");
    if (!text || !data) return MT_OK;
    int count = 1;
    for (const char *p = text; *p; p++) count += *p == '\n';
    char *copy = strdup(text);
    const char **names = calloc((size_t)count, sizeof *names);
    if (!copy || !names) {
        free(copy);
        free(names);
        return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    }
    int n = 0;
    for (char *p = copy; p; n++) {
        names[n] = p;
        p = strchr(p, '\n');
        if (p) *p++ = '\0';
    }
    char message[512];
    bool same = mt_class_names_same(names, n, (const char *const *)data->class_names,
                                    data->class_count, message, sizeof message);
    free(names);
    free(copy);
    if (!same)
        return MT_FAIL(MT_ERR_INVALID, "%s '%s' was trained on other classes than '%s' holds: %s "
                       "(the checkpoint's first, the data's second); labels are positions in the "
                       "list, so pack the data with the same classes", what, path, data_path,
                       message);
    return MT_OK;
}

/* Options a resume may change without a word: where things are and how often to report, not
 * what is computed. Per-node options and train.epochs (running on for more epochs) among them. */
static bool resume_may_change(const mt_config_option *o) {
    static const char *const free_keys[] = {
        "data.train", "data.val", "data.test", "data.prefetch", "data.loader_threads",
        "model.weights", "model.init_checkpoint", "train.epochs", "train.eval_every",
        "train.threads", "train.backend", "train.comm", "train.bucket_mb", "train.cuda_graphs"};
    char name[96];
    snprintf(name, sizeof name, "%s.%s", o->section, o->key);
    if (strcmp(o->section, "output") == 0) return true;
    for (size_t i = 0; i < sizeof free_keys / sizeof free_keys[0]; i++)
        if (strcmp(name, free_keys[i]) == 0) return true;
    return false;
}

/* The options that differ between the checkpoint's config and this run's, as
 * "optimizer.learning_rate 0.001 -> 0.01, ..." (empty when none do). */
static mt_status changed_options(const mt_checkpoint *c, const char *path,
                                 const mt_train_config *now, char *out, size_t capacity) {
    out[0] = '\0';
    const char *text = mt_checkpoint_meta(c, "config");
    if (!text) return MT_OK; /* the format check has refused it already */
    mt_train_config *then = malloc(sizeof *then);
    if (!then) return MT_FAIL(MT_ERR_NOMEM, "out of memory");
    mt_config_defaults(then);
    mt_status status = mt_config_load_string(then, text, path, NULL);
    size_t used = 0;
    for (int i = 0; status == MT_OK && i < mt_config_option_count(); i++) {
        const mt_config_option *o = mt_config_option_at(i);
        if (resume_may_change(o)) continue;
        char a[256], b[256];
        if (mt_config_value_text(then, o, a, sizeof a) != MT_OK ||
            mt_config_value_text(now, o, b, sizeof b) != MT_OK || strcmp(a, b) == 0)
            continue;
        if (used < capacity)
            used += (size_t)snprintf(out + used, capacity - used, "%s%s.%s %s -> %s",
                                     used ? ", " : "", o->section, o->key, a, b);
    }
    free(then);
    return status;
}

/* fp16's loss-scale state. A checkpoint without it (written in fp32, tf32 or bf16, or before the
 * state was stored: a resume with --allow-changes into fp16) starts Keras' initial state. */
static mt_status load_loss_scale(const mt_checkpoint *c, const char *path, mt_loss_scale *s) {
    mt_loss_scale_init(s);
    const char *scale = mt_checkpoint_meta(c, "loss_scale");
    if (!scale) return MT_OK;
    char *end = NULL;
    const float value = strtof(scale, &end);
    if (end == scale || *end != '\0' || !(value > 0.0f) || isinf(value))
        return MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': loss_scale '%s' is not a positive number",
                       path, scale);
    uint64_t good = 0, skipped = 0;
    MT_TRY(meta_u64(c, "loss_scale_good_steps", &good));
    MT_TRY(meta_u64(c, "loss_scale_skipped", &skipped));
    if (good >= (uint64_t)s->growth_steps)
        return MT_FAIL(MT_ERR_FORMAT, "checkpoint '%s': loss_scale_good_steps %llu is not below "
                       "the growth period %d", path, (unsigned long long)good, s->growth_steps);
    s->scale = value;
    s->good_steps = (int32_t)good;
    s->skipped = (int64_t)skipped;
    return MT_OK;
}

mt_status trainer_load_checkpoint(trainer *t, const char *path, bool allow_changes) {
    mt_checkpoint *c = NULL;
    MT_TRY(mt_checkpoint_read(path, &c));
    mt_status status = MT_OK;
    const char *format = mt_checkpoint_meta(c, "format");
    const char *mode = mt_checkpoint_meta(c, "mode");
    if (!format || strcmp(format, CHECKPOINT_FORMAT) != 0)
        status = MT_FAIL(MT_ERR_FORMAT, "'%s' is not a mobiletune training checkpoint (use "
                         "model.init_checkpoint to take weights from other safetensors files)",
                         path);
    else if (!mode || strcmp(mode, mt_train_mode_name(t->layout->config.mode)) != 0)
        status = MT_FAIL(MT_ERR_INVALID, "checkpoint '%s' was trained in mode %s, this run is %s: "
                         "to start a new phase from it use model.init_checkpoint", path,
                         mode ? mode : "?", mt_train_mode_name(t->layout->config.mode));
    if (status == MT_OK)
        status = check_class_names(c, path, "checkpoint", mt_loader_meta(t->train_loader),
                                   t->config->data.train);
    char changed[1024] = "";
    if (status == MT_OK) status = changed_options(c, path, t->config, changed, sizeof changed);
    if (status == MT_OK && changed[0] && !allow_changes)
        status = MT_FAIL(MT_ERR_INVALID, "resuming '%s' with changed options: %s; a resumed run "
                         "continues the same training, so restore them, or add --allow-changes "
                         "to go on with the new values", path, changed);
    if (status == MT_OK && changed[0] && t->who.rank == 0)
        printf("resuming with changed options (--allow-changes): %s\n", changed);
    uint64_t count = 0;
    if (status == MT_OK) status = meta_u64(c, "trainable_count", &count);
    if (status == MT_OK && count != t->trainable_count)
        status = MT_FAIL(MT_ERR_INVALID, "checkpoint '%s' has %llu trainable parameters, this run "
                         "%zu: the [model] options differ", path, (unsigned long long)count,
                         t->trainable_count);
    int loaded = 0;
    if (status == MT_OK) status = load_model_tensors(c, t->model, true, &loaded);
    if (status == MT_OK) status = mt_optimizer_load(&t->optimizer, c);
    if (status == MT_OK) status = meta_u64(c, "epoch", &t->epoch);
    if (status == MT_OK) status = meta_u64(c, "next_batch", &t->next_batch);
    if (status == MT_OK) status = meta_u64(c, "global_step", &t->global_step);
    if (status == MT_OK && t->loss_scaling) status = load_loss_scale(c, path, &t->loss_scale);
    const char *best = mt_checkpoint_meta(c, "best_val_accuracy");
    if (status == MT_OK) t->best_val_accuracy = best ? strtod(best, NULL) : 0.0;
    /* before the first step: the recorded shapes skip their timing. This rank's own choices
     * where they differed from rank 0's, else rank 0's. A checkpoint without them (older, or
     * from a backend that makes none) leaves the backend to choose, as always. */
    char key[48];
    choices_key(t->who.rank, key, sizeof key);
    if (!mt_checkpoint_meta(c, key)) choices_key(0, key, sizeof key);
    const char *choices = mt_checkpoint_meta(c, key);
    if (status == MT_OK && choices && t->backend->ops->choices_load) {
        status = t->backend->ops->choices_load(t->backend, choices);
        if (status != MT_OK) status = mt_error_context(status, "checkpoint '%s': %s", path, key);
    }
    mt_checkpoint_free(c);
    return status;
}

mt_status trainer_init_from_checkpoint(trainer *t, const char *path) {
    mt_checkpoint *c = NULL;
    MT_TRY(mt_checkpoint_read(path, &c));
    int loaded = 0;
    mt_status status = check_class_names(c, path, "model.init_checkpoint",
                                         mt_loader_meta(t->train_loader), t->config->data.train);
    if (status == MT_OK) status = load_model_tensors(c, t->model, false, &loaded);
    if (status == MT_OK && loaded == 0)
        status = MT_FAIL(MT_ERR_FORMAT, "'%s' holds none of this model's tensors (names like "
                         "'Conv1/kernel')", path);
    mt_checkpoint_free(c);
    if (status == MT_OK && t->who.rank == 0)
        printf("initialized %d of %d tensors from %s\n", loaded, t->layout->tensor_count, path);
    return status;
}

/* mt_checkpoint_write's temporary files are "<name>.safetensors.tmp-<pid>"; one whose process
 * is gone (killed mid-write) is never read again. Only that exact pattern, and only when no
 * process has that pid (kill(pid, 0) says ESRCH): the run folder may hold the user's own files. */
static bool stale_temp_name(const char *name, long *pid) {
    const char *mark = strstr(name, ".safetensors.tmp-");
    if (!mark || mark == name) return false;
    const char *digits = mark + strlen(".safetensors.tmp-");
    char *end = NULL;
    if (*digits < '1' || *digits > '9') return false;
    errno = 0;
    *pid = strtol(digits, &end, 10);
    return errno == 0 && *end == '\0' && *pid > 0;
}

mt_status trainer_remove_stale_temps(const char *dir, int *removed) {
    *removed = 0;
    DIR *d = opendir(dir);
    if (!d) return MT_OK; /* a new run folder */
    struct dirent *entry;
    mt_status status = MT_OK;
    while (status == MT_OK && (entry = readdir(d)) != NULL) {
        long pid = 0;
        if (!stale_temp_name(entry->d_name, &pid) || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours to ask */
        char path[MT_CONFIG_PATH_MAX + 300];
        snprintf(path, sizeof path, "%s/%s", dir, entry->d_name);
        struct stat st;
        if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (unlink(path) != 0)
            status = MT_FAIL(MT_ERR_IO, "cannot remove the stale temporary checkpoint '%s' "
                             "(process %ld is gone): %s", path, pid, strerror(errno));
        else
            (*removed)++;
    }
    closedir(d);
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

mt_status mt_checkpoint_open_model(const char *path, int backend_kind, int batch_size,
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
    /* The INI text is the checkpoint's record of its config (the file format: human-readable,
     * keyed by name, so checkpoints of older versions read with today's defaults for what they
     * lack), so it is read here with the config's reader; nothing in this process turns a config
     * into text to read it back. */
    if (status == MT_OK) {
        mt_config_defaults(config);
        status = mt_config_load_string(config, config_text, path, NULL);
    }
    if (status == MT_OK) {
        mt_backend_options options = {.num_threads = config->train.threads};
        mt_backend_kind kind = backend_kind == MT_BACKEND_OF_CHECKPOINT
                                   ? config->train.backend
                                   : (mt_backend_kind)backend_kind;
        status = mt_backend_create_kind(kind, &options, backend);
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
