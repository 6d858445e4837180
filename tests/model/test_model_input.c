/* The input pipeline moved the flip correctly: the same training, fed both ways, is the same bit
 * for bit. One model trains on the loader's float batches (scaled and flipped by the loader, the
 * CPU backends' path), another on its uint8 batches with flip flags, staged through the backend's
 * two slots the way the trainer does it on the GPU (batch k+1 uploaded before batch k computes)
 * and scaled and flipped by input_convert, on the guarded reference backend (memory the host
 * cannot touch, as on a GPU). With random_flip on, a few SGD steps with dropout: the loss sums,
 * the accuracy counts, every gradient and the updated weights must be identical, since both
 * paths compute the same floats (mt_u8_to_input of the same pixels) and the same ops follow.
 * The check can fail: the uint8 model fed the same batches without their flip flags (the loader
 * no longer flips uint8 output itself) must end elsewhere. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/loader.h"
#include "mobiletune/model.h"
#include "test_db.h"
#include "test_util.h"

enum { SIZE = 32, RECORDS = 24, BATCH = 4, STEPS = 4 };

typedef struct run_result {
    double accum[MT_ACCUM_COUNT];
    float *grads, *params;
    size_t count;
    int flipped; /* images the loader flagged (or flipped) over the run */
} run_result;

static mt_model *make_model(mt_backend *backend) {
    mt_model_config config = mt_model_config_default();
    config.alpha = 0.35f;
    config.input_size = SIZE;
    config.batch_size = BATCH;
    config.classes = 3;
    config.dropout = 0.2f;
    mt_model *model = NULL;
    TEST_MUST(mt_model_create(backend, &config, 11, &model));
    return model;
}

/* STEPS training steps of SGD (lr 0.05) on the loader's batches; `staged`: uint8 batches through
 * input_upload / input_convert (with their flip flags unless `drop_flips`), else float batches. */
static void train(const char *db, mt_backend *backend, bool staged, bool drop_flips,
                  run_result *out) {
    const mt_ops *ops = backend->ops;
    mt_loader_options o = {.world_size = 1,
                           .batch_size = BATCH,
                           .seed = 5,
                           .shuffle = true,
                           .drop_remainder = true,
                           .random_flip = true,
                           .threads = 1,
                           .ring_depth = 3,
                           .output = staged ? MT_LOADER_UINT8 : MT_LOADER_FLOAT32};
    mt_loader *loader = NULL;
    TEST_MUST(mt_loader_open(db, &o, &loader));
    TEST_MUST(mt_loader_start_epoch(loader, 1, 0));
    mt_model *model = make_model(backend);
    float *params, *grads;
    mt_model_trainable(model, &params, &grads, &out->count);
    double *accum = NULL;
    TEST_MUST(ops->buffer_alloc(backend, MT_ACCUM_COUNT * sizeof(double), (void **)&accum));
    mt_update_scalars *rate = NULL; /* the optimizer's per-step values (ops.h) */
    TEST_MUST(ops->buffer_alloc(backend, sizeof *rate, (void **)&rate));
    mt_batch *batch[STEPS + 1] = {0};
    out->flipped = 0;
    /* staged: batch k+1 goes up before batch k computes, as in the trainer */
    for (int k = 0; k <= STEPS; k++) {
        if (k < STEPS) {
            TEST_MUST(mt_loader_next(loader, &batch[k]));
            for (int i = 0; i < BATCH; i++) {
                bool flip = mt_shard_flip(5, 1, batch[k]->records[i]);
                out->flipped += flip;
                CHECK(batch[k]->flips[i] == (staged ? flip : 0));
            }
            if (staged) {
                TEST_MUST(mt_model_check_labels(model, batch[k]->labels, BATCH, NULL));
                const mt_input_batch in = {.n = BATCH,
                                           .height = SIZE,
                                           .width = SIZE,
                                           .pixels = batch[k]->images,
                                           .labels = batch[k]->labels,
                                           .flips = drop_flips ? NULL : batch[k]->flips};
                TEST_MUST(ops->input_upload(backend, k % 2, &in));
            }
        }
        if (k == 0) continue;
        const int step = k - 1;
        mt_model_input input = {.n = BATCH};
        if (staged)
            input.staged = true, input.slot = step % 2;
        else
            input.images = batch[step]->images, input.labels = batch[step]->labels;
        mt_step_result result;
        TEST_MUST(mt_model_set_step(model, 100 + (uint64_t)step, (uint64_t)step));
        TEST_MUST(mt_model_forward_accumulate(model, &input, accum, &result));
        TEST_MUST(mt_model_backward(model));
        const mt_update_scalars lr = {.lr = 0.05f, .step = 0.05f}; /* SGD: the step is lr */
        TEST_MUST(ops->scalars_write(backend, rate, &lr, sizeof lr));
        mt_optimizer_desc sgd = {.rule = MT_UPDATE_SGD,
                                 .count = out->count,
                                 .scalars = rate,
                                 .skip = grads + out->count};
        TEST_MUST(ops->optimizer_update(backend, &sgd, params, grads, NULL));
        if (staged) TEST_MUST(ops->input_wait(backend, step % 2));
        mt_loader_release(loader, batch[step]);
    }
    out->grads = malloc(out->count * sizeof(float));
    out->params = malloc(out->count * sizeof(float));
    if (!out->grads || !out->params) abort();
    TEST_MUST(ops->download(backend, out->accum, accum, sizeof out->accum));
    TEST_MUST(ops->download(backend, out->grads, grads, out->count * sizeof(float)));
    TEST_MUST(ops->download(backend, out->params, params, out->count * sizeof(float)));
    ops->buffer_free(backend, accum);
    ops->buffer_free(backend, rate);
    mt_model_destroy(model);
    mt_loader_close(loader);
}

static bool same_floats(const float *a, const float *b, size_t n) {
    return memcmp(a, b, n * sizeof *a) == 0;
}

int main(void) {
    char *db = mt_test_make_temp_dir("model-input");
    test_db_spec spec = {.count = RECORDS, .height = SIZE, .width = SIZE, .classes = 3};
    if (!test_db_create(db, &spec)) {
        fprintf(stderr, "cannot create the dataset in %s\n", db);
        return 1;
    }
    mt_backend_options options = {.num_threads = 1};
    mt_backend plain = {.ops = &mt_ops_reference, .options = options};
    mt_backend guarded = {.ops = &mt_ops_reference_guarded, .options = options};
    TEST_MUST(plain.ops->init(&plain, &options));
    TEST_MUST(guarded.ops->init(&guarded, &options));

    run_result f = {0}, u = {0}, unflipped = {0};
    train(db, &plain, false, false, &f);
    train(db, &guarded, true, false, &u);
    train(db, &guarded, true, true, &unflipped);

    CHECK_MSG(f.flipped > 0 && f.flipped < STEPS * BATCH,
              "%d of %d images flipped: the comparison needs both kinds", f.flipped, STEPS * BATCH);
    CHECK(u.flipped == f.flipped && f.count == u.count);
    CHECK_MSG(f.accum[MT_ACCUM_VALID] == STEPS * BATCH && f.accum[MT_ACCUM_SKIPPED] == 0,
              "%g valid rows, %g skipped steps", f.accum[MT_ACCUM_VALID],
              f.accum[MT_ACCUM_SKIPPED]);
    CHECK_MSG(memcmp(f.accum, u.accum, sizeof f.accum) == 0,
              "loss sum %.9g vs %.9g, correct %g vs %g", f.accum[MT_ACCUM_LOSS_SUM],
              u.accum[MT_ACCUM_LOSS_SUM], f.accum[MT_ACCUM_CORRECT], u.accum[MT_ACCUM_CORRECT]);
    CHECK_MSG(same_floats(f.grads, u.grads, f.count), "the last step's gradients differ");
    CHECK_MSG(same_floats(f.params, u.params, f.count), "the weights after %d steps differ", STEPS);
    /* without the flags the staged path trains on other images: caught */
    CHECK(f.accum[MT_ACCUM_LOSS_SUM] != unflipped.accum[MT_ACCUM_LOSS_SUM]);
    CHECK(!same_floats(f.params, unflipped.params, f.count));
    printf("%d steps, %d of %d images flipped: loss sum %.9g on both paths (%.9g unflipped)\n",
           STEPS, f.flipped, STEPS * BATCH, f.accum[MT_ACCUM_LOSS_SUM],
           unflipped.accum[MT_ACCUM_LOSS_SUM]);

    free(f.grads), free(f.params), free(u.grads), free(u.params);
    free(unflipped.grads), free(unflipped.params);
    guarded.ops->shutdown(&guarded);
    plain.ops->shutdown(&plain);
    mt_test_remove_tree(db);
    return mt_test_finish();
}
