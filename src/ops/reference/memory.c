/* Memory of the reference backend: every buffer and tensor is zeroed host memory, tensors are
 * plain NHWC, so upload/download and the NHWC conversions are copies. */
#include <stdlib.h>
#include <string.h>

#include "ops/reference/reference.h"

mt_status mt_ref_buffer_alloc(mt_backend *backend, size_t bytes, void **out) {
    /* calloc(0) may return NULL; one byte keeps "NULL means failure" true. */
    *out = calloc(1, bytes ? bytes : 1);
    if (!*out)
        return MT_FAIL(MT_ERR_NOMEM,
                       "reference backend: out of memory allocating %zu "
                       "bytes",
                       bytes);
    return MT_OK;
}

void mt_ref_buffer_free(mt_backend *backend, void *buffer) {
    free(buffer);
}

mt_status mt_ref_upload(mt_backend *backend, void *dst, const void *host_src, size_t bytes) {
    if (bytes) memmove(dst, host_src, bytes);
    return MT_OK;
}

mt_status mt_ref_download(mt_backend *backend, void *host_dst, const void *src, size_t bytes) {
    if (bytes) memmove(host_dst, src, bytes);
    return MT_OK;
}

mt_status mt_ref_buffer_copy(mt_backend *backend, void *dst, const void *src, size_t bytes) {
    if (bytes) memcpy(dst, src, bytes);
    return MT_OK;
}

mt_status mt_ref_tensor_alloc(mt_backend *backend, mt_shape4 shape, mt_tensor *out) {
    *out = (mt_tensor){0};
    if (shape.n <= 0 || shape.h <= 0 || shape.w <= 0 || shape.c <= 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "reference backend: tensor shape %dx%dx%dx%d (N,H,W,C) "
                       "has a non-positive dimension",
                       shape.n, shape.h, shape.w, shape.c);
    size_t bytes = mt_shape4_count(shape) * sizeof(float);
    float *data = calloc(1, bytes);
    if (!data)
        return MT_FAIL(MT_ERR_NOMEM,
                       "reference backend: out of memory allocating a %dx%dx%dx%d "
                       "tensor (%zu bytes)",
                       shape.n, shape.h, shape.w, shape.c, bytes);
    *out = (mt_tensor){.shape = shape, .data = data, .bytes = bytes, .layout = 0, .impl = NULL};
    return MT_OK;
}

void mt_ref_tensor_free(mt_backend *backend, mt_tensor *tensor) {
    if (!tensor) return;
    free(tensor->data);
    *tensor = (mt_tensor){0};
}

mt_status mt_ref_tensor_from_nhwc(mt_backend *backend, const float *host_src, mt_tensor *dst) {
    memmove(dst->data, host_src, mt_shape4_count(dst->shape) * sizeof(float));
    return mt_ref_stored(backend, dst);
}

/* malloc's alignment (16 bytes on the platforms we build for) is enough for float */
mt_status mt_ref_host_alloc(mt_backend *backend, size_t bytes, void **out) {
    (void)backend;
    *out = malloc(bytes ? bytes : 1);
    if (!*out) return MT_FAIL(MT_ERR_NOMEM, "out of memory for %zu bytes of host buffer", bytes);
    return MT_OK;
}

void mt_ref_host_free(mt_backend *backend, void *buffer) {
    (void)backend;
    free(buffer);
}

/* ---- the input pipeline: two staging slots, copied into at once (ops.h mt_input_batch) ---- */

static mt_status input_slot_check(const char *op, int slot) {
    if (slot != 0 && slot != 1)
        return MT_FAIL(MT_ERR_INVALID, "reference %s: staging slot %d, want 0 or 1", op, slot);
    return MT_OK;
}

static mt_ref_input_slot *input_slot(mt_backend *backend, int slot) {
    return &((mt_ref_state *)backend->impl)->input[slot];
}

mt_status mt_ref_input_upload(mt_backend *backend, int slot, const mt_input_batch *batch) {
    MT_TRY(input_slot_check("input_upload", slot));
    mt_ref_input_slot *s = input_slot(backend, slot);
    if (s->full)
        return MT_FAIL(MT_ERR_INVALID,
                       "reference input_upload: staging slot %d still holds a batch nobody "
                       "converted (input_convert empties it; alternate the slots)",
                       slot);
    if (batch->n <= 0 || batch->height <= 0 || batch->width <= 0 || !batch->pixels ||
        !batch->labels)
        return MT_FAIL(MT_ERR_INVALID,
                       "reference input_upload: a batch of %d images of %dx%d without pixels "
                       "or labels",
                       batch->n, batch->height, batch->width);
    const size_t n = (size_t)batch->n, pixels = n * (size_t)batch->height * batch->width * 3;
    const size_t bytes = n * sizeof(int32_t) + n + pixels;
    if (bytes > s->bytes) {
        /* backend memory: in the guarded mode the host cannot touch the slot either */
        if (s->buffer) backend->ops->buffer_free(backend, s->buffer);
        s->buffer = NULL, s->bytes = 0;
        MT_TRY(backend->ops->buffer_alloc(backend, bytes, &s->buffer));
        s->bytes = bytes;
    }
    int32_t *labels = s->buffer;
    uint8_t *flips = (uint8_t *)(labels + n), *staged = flips + n;
    memcpy(labels, batch->labels, n * sizeof *labels);
    if (batch->flips)
        memcpy(flips, batch->flips, n);
    else
        memset(flips, 0, n);
    memcpy(staged, batch->pixels, pixels);
    s->n = batch->n, s->height = batch->height, s->width = batch->width;
    s->full = true;
    return MT_OK;
}

/* images[i][y][x][c] = mt_u8_to_input(pixels[i][y][flip ? W-1-x : x][c]) */
mt_status mt_ref_input_convert(mt_backend *backend, int slot, mt_tensor *images, int32_t *labels) {
    MT_TRY(input_slot_check("input_convert", slot));
    mt_ref_input_slot *s = input_slot(backend, slot);
    if (!s->full)
        return MT_FAIL(MT_ERR_INVALID,
                       "reference input_convert: staging slot %d is empty (input_upload a batch "
                       "into it first)",
                       slot);
    MT_TRY(mt_ref_check_shape("input_convert", "images", images->shape,
                              (mt_shape4){s->n, s->height, s->width, 3}));
    const int n = s->n, h = s->height, w = s->width;
    const int32_t *staged_labels = s->buffer;
    const uint8_t *flips = (const uint8_t *)(staged_labels + n), *pixels = flips + n;
    float *out = images->data;
    for (int i = 0; i < n; i++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                const int from = flips[i] ? w - 1 - x : x;
                const size_t at = (((size_t)i * h + y) * w + x) * 3;
                const size_t src = (((size_t)i * h + y) * w + from) * 3;
                for (int c = 0; c < 3; c++)
                    out[at + c] = mt_u8_to_input(pixels[src + c]);
            }
    if (labels) memcpy(labels, staged_labels, (size_t)n * sizeof *labels);
    s->full = false;
    return mt_ref_stored(backend, images); /* the first activation, in the storage precision */
}

mt_status mt_ref_input_wait(mt_backend *backend, int slot) {
    (void)backend;
    return input_slot_check("input_wait", slot); /* input_upload copied before it returned */
}

void mt_ref_input_free(mt_backend *backend) {
    if (!backend->impl) return;
    for (int slot = 0; slot < 2; slot++) {
        mt_ref_input_slot *s = input_slot(backend, slot);
        if (s->buffer) backend->ops->buffer_free(backend, s->buffer);
        *s = (mt_ref_input_slot){0};
    }
}

mt_status mt_ref_tensor_to_nhwc(mt_backend *backend, const mt_tensor *src, float *host_dst) {
    memmove(host_dst, src->data, mt_shape4_count(src->shape) * sizeof(float));
    return MT_OK;
}

mt_status mt_ref_synchronize(mt_backend *backend) {
    return MT_OK; /* every op has finished when it returns */
}
