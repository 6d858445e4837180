/* The trainer's set-up on every rank and its tear-down (trainer_internal.h trainer_set_up):
 * backend, communicator, model, optimizer, the weights (a resumed checkpoint or the configured
 * initial ones), the run folder's outputs, the training loader, and the ranks' agreement on one
 * replica. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mobiletune/files.h"
#include "trainer_internal.h"

_Static_assert((int)MT_CONFIG_COMM_AUTO == (int)MT_COMM_CHOICE_AUTO &&
                   (int)MT_CONFIG_COMM_NONE == (int)MT_COMM_CHOICE_NONE &&
                   (int)MT_CONFIG_COMM_MPI == (int)MT_COMM_CHOICE_MPI &&
                   (int)MT_CONFIG_COMM_NCCL == (int)MT_COMM_CHOICE_NCCL,
               "train.comm's values are mt_comm_choice's, in order");

/* ---- moving buffers between ranks ----------------------------------------------------------- */

/* Backend buffers go between ranks through src/comm, which knows how to reach the backend's
 * memory; the trainer never does. */
static mt_status broadcast_buffer(trainer *t, float *buffer, size_t count) {
    return mt_comm_broadcast_backend(t->comm, t->backend, buffer, count * sizeof *buffer, 0);
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

/* ---- set-up and tear-down -------------------------------------------------------------------- */

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static mt_status open_outputs(trainer *t) {
    const mt_train_config *c = t->config;
    snprintf(t->checkpoint_dir, sizeof t->checkpoint_dir, "%s", c->output.run_dir);
    if (!trainer_is_root(t)) return MT_OK;
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
    mt_status status =
        f ? MT_OK : MT_FAIL(MT_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
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

mt_status trainer_set_up(trainer *t, const mt_train_options *options) {
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
    if (options->wrap_backend) {
        mt_backend *inner = t->backend;
        t->backend = NULL;
        MT_TRY(options->wrap_backend(inner, &t->backend));
    }
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
    if (t->loss_scaling) {
        MT_TRY(t->backend->ops->buffer_alloc(t->backend, sizeof *t->unscale,
                                             (void **)&t->unscale));
        MT_TRY(t->backend->ops->host_alloc(t->backend, sizeof *t->skip_host,
                                           (void **)&t->skip_host));
    }
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
    const char *graphs_off = NULL;
    const trainer_graph_runner runner = {
        .backend = t->backend, .model = t->model, .comm = t->comm, .who = t->who};
    trainer_graph_init(&t->graph, c->train.cuda_graphs, runner,
                       t->grad_sync && mt_grad_sync_host_work(t->grad_sync), &graphs_off);
    if (graphs_off) trainer_say(t, "train.cuda_graphs: %s\n", graphs_off);
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
        trainer_say(t, "resuming from %s at epoch %llu, batch %llu (step %llu)\n", resume_path,
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

    trainer_say(t, "mobiletune: %s on %d rank(s), backend %s, %d classes at %dx%d, alpha %g%s%s\n",
                mt_train_mode_name(model_config.mode), t->who.world_size, t->backend->ops->name,
                c->model.classes, c->model.input_size, c->model.input_size, c->model.alpha,
                t->grad_sync ? ", gradients over " : "",
                t->grad_sync ? mt_comm_kind_name(t->who.kind) : "");
    trainer_say(
        t, "  %zu trainable parameters of %zu (the rest frozen); all-reduce per step: %zu bytes",
        t->trainable_count, t->layout->total_params, t->trainable_count * sizeof(float));
    if (t->grad_sync) trainer_say(t, " (+ 4 for the skip flag)");
    if (!t->grad_sync)
        trainer_say(t, " (one rank: none done)\n");
    else if (c->train.bucket_mb > 0)
        trainer_say(t, ", in buckets of %g MiB started during backward\n", c->train.bucket_mb);
    else
        trainer_say(t, ", in one call after backward (train.bucket_mb = 0)\n");
    trainer_say(t, "  %llu training images, %llu steps per epoch of %d x %d images\n",
                (unsigned long long)t->train_records, (unsigned long long)t->steps_per_epoch,
                t->who.world_size, c->data.batch_size);
    if (model_config.mode == MT_TRAIN_FROZEN)
        trainer_say(
            t, "  frozen backbone: %s\n",
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

void trainer_tear_down(trainer *t) {
    /* after a failed step a batch's copy may still read the loader's buffers: let it end (the
     * error is reported already; this one would say nothing new) */
    if (t->backend && t->train_loader) (void)t->backend->ops->synchronize(t->backend);
    mt_loader_close(t->train_loader);
    mt_optimizer_free(&t->optimizer);
    if (t->state_backup) t->backend->ops->buffer_free(t->backend, t->state_backup);
    if (t->accum) t->backend->ops->buffer_free(t->backend, t->accum);
    trainer_graph_free(&t->graph);
    if (t->unscale) t->backend->ops->buffer_free(t->backend, t->unscale);
    if (t->skip_host) t->backend->ops->host_free(t->backend, t->skip_host);
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
