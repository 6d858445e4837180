/* The cuda backend's input pipeline (ops.h "input_upload / input_convert / input_wait"): the
 * copy stream, two pinned-to-device staging slots and the events between them, so the next
 * batch's uint8 pixels cross PCIe while the current step computes (docs/gpu.md "One step on
 * GPUs"). The slots themselves live in cuda_backend (cuda_internal.h) and are freed with it. */
#include <stdint.h>
#include <string.h>

#include "ops/cuda/cuda_internal.h"

/* ---- the input pipeline (ops.h): the copy stream, two staging slots, events between ---- */

static mt_status input_slot_of(cuda_backend *cu, const char *op, int slot, cuda_input_slot **out) {
    if (slot != 0 && slot != 1)
        return MT_FAIL(MT_ERR_INVALID, "cuda %s: staging slot %d, want 0 or 1", op, slot);
    *out = &cu->input[slot];
    return MT_OK;
}

/* A slot grows (the first batch, or a larger one) only when both streams are idle: a copy may
 * still write the old buffer, a conversion still read it. Rare: the batch shape is fixed. */
static mt_status input_slot_reserve(cuda_backend *cu, cuda_input_slot *s, size_t bytes) {
    if (bytes <= s->bytes) return MT_OK;
    CUDA_CHECK(cudaStreamSynchronize(cu->copy_stream));
    CUDA_CHECK(cudaStreamSynchronize(cu->stream));
    CUDA_CHECK(cudaFree(s->buffer));
    s->buffer = NULL, s->bytes = 0;
    cudaError_t e = cudaMalloc((void **)&s->buffer, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return MT_FAIL(MT_ERR_NOMEM,
                       "cuda: out of device memory for a %zu-byte input staging slot on GPU "
                       "%d: %s. Lower the batch size or free the GPU",
                       bytes, cu->device, cudaGetErrorString(e));
    }
    s->bytes = bytes;
    return MT_OK;
}

/* Labels, flips and pixels on the copy stream, behind the slot's last conversion; nothing here
 * waits (from page-locked memory cudaMemcpyAsync returns at once). */
mt_status cuda_input_upload(mt_backend *backend, int slot, const mt_input_batch *batch) {
    cuda_backend *cu = cuda_of(backend);
    cuda_input_slot *s = NULL;
    MT_TRY(input_slot_of(cu, "input_upload", slot, &s));
    if (s->full)
        return MT_FAIL(MT_ERR_INVALID,
                       "cuda input_upload: staging slot %d still holds a batch nobody converted "
                       "(input_convert empties it; alternate the slots)",
                       slot);
    if (batch->n <= 0 || batch->height <= 0 || batch->width <= 0 || !batch->pixels ||
        !batch->labels)
        return MT_FAIL(MT_ERR_INVALID,
                       "cuda input_upload: a batch of %d images of %dx%d without pixels or "
                       "labels",
                       batch->n, batch->height, batch->width);
    const size_t n = (size_t)batch->n, pixels = n * (size_t)batch->height * batch->width * 3;
    MT_TRY(input_slot_reserve(cu, s, n * sizeof(int32_t) + n + pixels));
    uint8_t *labels = s->buffer, *flips = labels + n * sizeof(int32_t), *staged = flips + n;
    CUDA_CHECK(cudaStreamWaitEvent(cu->copy_stream, s->consumed, 0));
    CUDA_CHECK(cudaMemcpyAsync(labels, batch->labels, n * sizeof(int32_t), cudaMemcpyHostToDevice,
                               cu->copy_stream));
    if (batch->flips)
        CUDA_CHECK(
            cudaMemcpyAsync(flips, batch->flips, n, cudaMemcpyHostToDevice, cu->copy_stream));
    else
        CUDA_CHECK(cudaMemsetAsync(flips, 0, n, cu->copy_stream));
    CUDA_CHECK(
        cudaMemcpyAsync(staged, batch->pixels, pixels, cudaMemcpyHostToDevice, cu->copy_stream));
    CUDA_CHECK(cudaEventRecord(s->copied, cu->copy_stream));
    s->n = batch->n, s->height = batch->height, s->width = batch->width;
    s->full = true;
    return MT_OK;
}

/* The compute stream waits for the slot's copy (the GPU does; the host goes on), scales and
 * flips into the tensor (in the backend's storage: the first activation, rounded once in
 * bf16/fp16), copies the labels, and records that the slot was read. */
static mt_status input_convert_op(mt_backend *backend, int slot, mt_tensor *images,
                                  int32_t *labels) {
    cuda_backend *cu = cuda_of(backend);
    const mt_cuda_storage storage = cuda_precision_storage(cu);
    cuda_input_slot *s = NULL;
    MT_TRY(input_slot_of(cu, "input_convert", slot, &s));
    if (!s->full)
        return MT_FAIL(MT_ERR_INVALID,
                       "cuda input_convert: staging slot %d is empty (input_upload a batch into "
                       "it first)",
                       slot);
    MT_TRY(cuda_check_tensor("input_convert", "images", images,
                             (mt_shape4){s->n, s->height, s->width, 3}, storage));
    const size_t n = (size_t)s->n;
    const uint8_t *flips = s->buffer + n * sizeof(int32_t), *pixels = flips + n;
    CUDA_CHECK(cudaStreamWaitEvent(cu->stream, s->copied, 0));
    cudaError_t error = mt_cuda_launch_input_convert(cu->stream, storage, s->n, s->height, s->width,
                                                     pixels, flips, images->data);
    if (error != cudaSuccess)
        return MT_FAIL(MT_ERR_BACKEND, "cuda: converting the input batch: %s",
                       cudaGetErrorString(error));
    if (labels)
        CUDA_CHECK(cudaMemcpyAsync(labels, s->buffer, n * sizeof(int32_t), cudaMemcpyDeviceToDevice,
                                   cu->stream));
    CUDA_CHECK(cudaEventRecord(s->consumed, cu->stream));
    s->full = false;
    return MT_OK;
}

mt_status cuda_input_convert(mt_backend *backend, int slot, mt_tensor *images, int32_t *labels) {
    CUDA_PROFILED(backend, input_convert_op(backend, slot, images, labels), "input_convert",
                  "N%d %dx%dx%d", images->shape.n, images->shape.h, images->shape.w,
                  images->shape.c);
}

/* The host waits for the copy alone (a step ago, when the trainer asks: long done), never for
 * the compute stream. */
mt_status cuda_input_wait(mt_backend *backend, int slot) {
    cuda_backend *cu = cuda_of(backend);
    cuda_input_slot *s = NULL;
    MT_TRY(input_slot_of(cu, "input_wait", slot, &s));
    CUDA_CHECK(cudaEventSynchronize(s->copied));
    return MT_OK;
}
