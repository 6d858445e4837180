/* train.comm = nccl's gradient path on one GPU (one rank: NCCL's mean over one rank is the value
 * itself): mt_comm_select joins NCCL on the cuda backend's GPU, and the model's backward starts
 * bucket all-reduces on the backend's communication stream behind compute-stream events; three
 * steps (the second and third check the previous step's collectives), then the gradients must be
 * the ones the same step computes without the synchronizer. The values can differ in the last
 * bits between two backward passes (cuDNN may pick algorithms that accumulate in another order),
 * hence 1e-4 relative: what this catches is a bucket in the wrong place, never written back, or
 * a stream ordering that lets NCCL read gradients before backward wrote them (NaN planted first).
 * Skips (77) without a GPU. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/comm.h"
#include "mobiletune/grad_sync.h"
#include "mobiletune/model.h"
#include "test_util.h"

int main(void) {
    mt_backend *gpu = NULL;
    if (mt_backend_create("cuda", NULL, &gpu) != MT_OK) {
        printf("skipped: no GPU (%s)\n", mt_last_error());
        return MT_TEST_SKIP_CODE;
    }
    mt_comm *comm = NULL;
    CHECK_OK(mt_comm_init(NULL, NULL, &comm));
    CHECK_OK(mt_comm_select(comm, MT_COMM_CHOICE_NCCL, gpu, 0));
    CHECK(mt_comm_get_info(comm).kind == MT_COMM_NCCL);

    mt_model_config config = mt_model_config_default();
    config.alpha = 0.35f;
    config.input_size = 64;
    config.mode = MT_TRAIN_SCRATCH;
    config.batch_size = 4;
    config.dropout = 0;
    mt_model *model = NULL;
    CHECK_OK(mt_model_create(gpu, &config, 3, &model));
    float *params, *grads;
    size_t count;
    mt_model_trainable(model, &params, &grads, &count);
    const size_t pixels = 4 * 64 * 64 * 3;
    float *images = malloc(pixels * sizeof *images);
    for (size_t i = 0; i < pixels; i++) images[i] = sinf(0.013f * (float)i);
    int32_t labels[4] = {0, 1, 1, 0};
    float *want = malloc(count * sizeof *want), *got = malloc(count * sizeof *got);
    mt_step_result result;
    CHECK_OK(mt_model_forward(model, images, labels, 4, true, 0, NULL, &result));
    CHECK_OK(mt_model_backward(model));
    CHECK_OK(gpu->ops->download(gpu, want, grads, count * sizeof *want));

    mt_grad_sync *sync = NULL;
    CHECK_OK(mt_grad_sync_create(comm, gpu, grads, count, 64 * 1024, &sync));
    mt_model_set_grad_hook(model, mt_grad_sync_ready, sync);
    for (int step = 0; step < 3; step++) {
        for (size_t i = 0; i < count; i++) got[i] = NAN;
        CHECK_OK(gpu->ops->upload(gpu, grads, got, count * sizeof *got));
        mt_grad_sync_begin(sync);
        CHECK_OK(mt_model_forward(model, images, labels, 4, true, 0, NULL, &result));
        CHECK_OK(mt_model_backward(model));
        CHECK_OK(mt_grad_sync_finish(sync));
        CHECK_OK(gpu->ops->download(gpu, got, grads, count * sizeof *got));
        CHECK(mt_test_arrays_close("gradients after the NCCL buckets", got, want, count, 1e-6,
                                   1e-4));
    }
    mt_grad_sync_stats stats = mt_grad_sync_get_stats(sync);
    printf("%zu floats in %d buckets per step, %llu of %llu started during backward\n", count,
           mt_grad_sync_bucket_count(sync), (unsigned long long)stats.launched_in_backward,
           (unsigned long long)stats.buckets);
    CHECK(mt_grad_sync_bucket_count(sync) > 1 && stats.launched_in_backward > 0);
    mt_grad_sync_destroy(sync);
    mt_model_destroy(model);
    free(images);
    free(want);
    free(got);
    int rc = mt_test_finish();
    mt_comm_finalize(comm); /* the NCCL communicator first, while the GPU is still set up */
    mt_backend_destroy(gpu);
    return rc;
}
