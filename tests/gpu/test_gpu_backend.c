/* What the ops harness does not cover of the "cuda" backend: the memory pool hands a freed block
 * back out instead of calling cudaMalloc again, an impossible allocation fails with a message
 * naming what was asked and what cudaMemGetInfo says is free, a device ordinal past the last GPU
 * and a bad MT_CUDA_DEPTHWISE or MT_CUDA_POINTWISE are refused at init, a bad label fails the loss with the row named,
 * and the table says its buffers live in device memory. Skips (77) without a GPU. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/ops.h"
#include "test_util.h"

static mt_backend *start(int device) {
    mt_backend_options options = {.device = device};
    mt_backend *b = NULL;
    if (mt_backend_create("cuda", &options, &b) != MT_OK) return NULL;
    return b;
}

static void check_pool_reuse(mt_backend *b) {
    const mt_ops *o = b->ops;
    void *first = NULL, *second = NULL, *other = NULL;
    CHECK(o->buffer_alloc(b, 1000000, &first) == MT_OK);
    o->buffer_free(b, first);
    /* a size in the same class: the same block, zeroed again */
    CHECK(o->buffer_alloc(b, 999000, &second) == MT_OK);
    CHECK_MSG(second == first, "freed block %p not reused (got %p)", first, second);
    float probe[4] = {1, 2, 3, 4}, back[4] = {9, 9, 9, 9};
    CHECK(o->upload(b, second, probe, sizeof probe) == MT_OK);
    o->buffer_free(b, second);
    CHECK(o->buffer_alloc(b, 1000000, &other) == MT_OK);
    CHECK(o->download(b, back, other, sizeof back) == MT_OK);
    CHECK_MSG(back[0] == 0 && back[3] == 0, "a reused block is not zeroed: %g %g", back[0],
              back[3]);
    o->buffer_free(b, other);
}

static void check_out_of_memory(mt_backend *b) {
    void *huge = NULL;
    mt_status status = b->ops->buffer_alloc(b, (size_t)1 << 44, &huge); /* 16 TiB */
    CHECK(status == MT_ERR_NOMEM);
    const char *message = mt_last_error();
    printf("out-of-memory message: %s\n", message);
    CHECK_MSG(strstr(message, "cudaMemGetInfo") && strstr(message, "17592186044416"),
              "the message must name the request and the free memory: %s", message);
    /* the backend still works afterwards */
    void *small = NULL;
    CHECK(b->ops->buffer_alloc(b, 64, &small) == MT_OK);
    b->ops->buffer_free(b, small);
}

static void check_bad_label(mt_backend *b) {
    const mt_ops *o = b->ops;
    float logits[6] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f};
    int32_t labels[2] = {1, 7};
    void *dz = NULL, *dl = NULL, *dlab = NULL;
    CHECK(o->buffer_alloc(b, sizeof logits, &dz) == MT_OK);
    CHECK(o->buffer_alloc(b, sizeof logits, &dl) == MT_OK);
    CHECK(o->buffer_alloc(b, sizeof labels, &dlab) == MT_OK);
    CHECK(o->upload(b, dz, logits, sizeof logits) == MT_OK);
    CHECK(o->upload(b, dlab, labels, sizeof labels) == MT_OK);
    float loss = -1;
    mt_loss_desc d = {.batch = 2, .classes = 3};
    CHECK(o->loss_forward_backward(b, &d, dz, dlab, &loss, dl) == MT_ERR_INVALID);
    CHECK_MSG(strstr(mt_last_error(), "label 7 of row 1"), "message: %s", mt_last_error());
    labels[1] = 0;
    CHECK(o->upload(b, dlab, labels, sizeof labels) == MT_OK);
    CHECK(o->loss_forward_backward(b, &d, dz, dlab, &loss, dl) == MT_OK);
    CHECK(loss > 0);
    o->buffer_free(b, dz), o->buffer_free(b, dl), o->buffer_free(b, dlab);
}

int main(void) {
    mt_backend *b = start(0);
    if (!b) {
        printf("skipped: no GPU (%s)\n", mt_last_error());
        return MT_TEST_SKIP_CODE;
    }
    CHECK(b->ops->device_memory);
    check_pool_reuse(b);
    check_out_of_memory(b);
    check_bad_label(b);
    mt_backend_destroy(b);

    mt_backend *none = start(4096);
    CHECK(none == NULL);
    CHECK_MSG(strstr(mt_last_error(), "device 4096 does not exist"), "message: %s",
              mt_last_error());
    mt_backend_destroy(none);

    const char *choices[] = {"MT_CUDA_DEPTHWISE", "MT_CUDA_POINTWISE"};
    for (int i = 0; i < 2; i++) {
        setenv(choices[i], "fastest", 1);
        mt_backend *bad_env = start(0);
        CHECK(bad_env == NULL);
        CHECK_MSG(strstr(mt_last_error(), choices[i]), "message: %s", mt_last_error());
        mt_backend_destroy(bad_env);
        unsetenv(choices[i]);
    }
    return mt_test_finish();
}
