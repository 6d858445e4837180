/* The cuda backend's per-update conv weight copies (cuda_weight_cache.h: what is kept, and when
 * it is dropped): making a copy on the stream in pool memory, the drop hooks that every op able
 * to write backend memory calls before its write (device ops: buffer_copy, buffer_copy_if,
 * buffer_scale, optimizer_update, conv_backward_weights' dw; the host's: upload, and
 * buffer_free for its block), and the capture's side (cuda_graph.c's top comment). A copy is
 * made at the first conv call that wants it after such a write, so once per update in
 * training; the stream orders it before its readers and after the write that dropped the
 * previous one. */
#include "ops/cuda/cuda_internal.h"

static void release_copy(void *context, void *copy) {
    cuda_pool_release((cuda_backend *)context, copy);
}

void cuda_weights_touched(cuda_backend *cu, const void *dst, size_t bytes) {
    /* out of host memory for the range, every kernel counts as written: the safe side */
    (void)mt_cuda_weight_cache_written(&cu->weights, dst, bytes);
    (void)mt_cuda_weight_cache_touch(&cu->weights, dst, bytes, release_copy, cu);
}

void cuda_weights_forget(cuda_backend *cu, const void *dst, size_t bytes) {
    (void)mt_cuda_weight_cache_touch(&cu->weights, dst, bytes, release_copy, cu);
}

void cuda_weights_freed(cuda_backend *cu, const void *dst, size_t bytes) {
    if (!bytes) return; /* not a block of the pool: nothing to forget */
    cuda_weights_forget(cu, dst, bytes);
    (void)mt_cuda_weight_cache_unwritten(&cu->weights, dst, bytes); /* false: all written */
}

void cuda_weights_capture_begin(cuda_backend *cu) {
    mt_cuda_weight_cache_capture_begin(&cu->weights, release_copy, cu);
}

mt_status cuda_weights_capture_end(cuda_backend *cu, bool captured, mt_cuda_weight_pins *pins) {
    bool out_of_memory = false;
    if (mt_cuda_weight_cache_capture_end(&cu->weights, captured, pins, &out_of_memory,
                                         release_copy, cu))
        return MT_OK;
    if (out_of_memory) return MT_FAIL(MT_ERR_NOMEM, "cuda: out of host memory for a step graph");
    return MT_FAIL(MT_ERR_BACKEND, "cuda: the captured step read a conv weight copy made before "
                   "the capture and then wrote or freed its kernel, so a replay would read a "
                   "stale copy: that kernel was never written by a device op before the "
                   "capture (run the step eager once first)");
}

bool cuda_weights_replay(cuda_backend *cu, const mt_cuda_weight_pins *pins) {
    return mt_cuda_weight_cache_replay(&cu->weights, pins, release_copy, cu);
}

void cuda_weights_free(cuda_backend *cu) {
    mt_cuda_weight_cache_free(&cu->weights, release_copy, cu);
}

/* Fills `copy` (pool memory of mt_cuda_weight_copy_bytes) from the fp32 HWIO kernel. */
static mt_status weights_make(cuda_backend *cu, const mt_cuda_weight_key *key, void *copy) {
    const size_t count = mt_cuda_weight_count(key);
    const mt_cuda_storage storage = cuda_precision_storage(cu);
    const int format = storage == MT_CUDA_FP16; /* the cast kernels' argument: 0 bf16, 1 fp16 */
    if (key->form != MT_CUDA_WEIGHTS_KRSC_F32 && storage == MT_CUDA_F32)
        return MT_FAIL(MT_ERR_INTERNAL, "cuda: a 16-bit weight copy asked in fp32 mode");
    switch (key->form) {
    case MT_CUDA_WEIGHTS_KRSC_F32:
        CUDA_CHECK(mt_cuda_launch_hwio_to_krsc(cu->stream, key->source, copy, key->rs, key->cin,
                                               key->cout));
        return MT_OK;
    case MT_CUDA_WEIGHTS_HWIO_16:
        CUDA_CHECK(mt_cuda_launch_cast_from_f32(cu->stream, count, format, key->source, copy));
        return MT_OK;
    case MT_CUDA_WEIGHTS_HWIO_ROUNDED:
        CUDA_CHECK(mt_cuda_launch_round_f32(cu->stream, count, format, key->source, copy));
        return MT_OK;
    case MT_CUDA_WEIGHTS_KRSC_16: {
        /* transform in fp32 (the transform kernel's type), then narrow: the same values */
        void *krsc = NULL;
        MT_TRY(cuda_pool_alloc(cu, count * sizeof(float), &krsc));
        cudaError_t e = mt_cuda_launch_hwio_to_krsc(cu->stream, key->source, krsc, key->rs,
                                                    key->cin, key->cout);
        if (e == cudaSuccess)
            e = mt_cuda_launch_cast_from_f32(cu->stream, count, format, krsc, copy);
        cuda_pool_release(cu, krsc); /* the stream orders its reuse after the cast */
        if (e != cudaSuccess)
            return MT_FAIL(MT_ERR_BACKEND, "cuda: the 16-bit KRSC copy of a conv kernel: %s",
                           cudaGetErrorString(e));
        return MT_OK;
    }
    default:
        return MT_FAIL(MT_ERR_INTERNAL, "cuda: unknown weight form %d", (int)key->form);
    }
}

mt_status cuda_weights_get(cuda_backend *cu, const float *w, mt_cuda_weight_form form, int rs,
                           int cin, int cout, const void **out) {
    const mt_cuda_weight_key key = {.source = w, .form = form, .rs = rs, .cin = cin, .cout = cout};
    void *copy = mt_cuda_weight_cache_find(&cu->weights, &key);
    if (copy) {
        *out = copy;
        return MT_OK;
    }
    MT_TRY(cuda_pool_alloc(cu, mt_cuda_weight_copy_bytes(&key), &copy));
    mt_status status = weights_make(cu, &key, copy);
    if (status == MT_OK && !mt_cuda_weight_cache_add(&cu->weights, &key, copy))
        status = MT_FAIL(MT_ERR_NOMEM, "cuda: out of host memory for the conv weight copies");
    if (status != MT_OK) {
        cuda_pool_release(cu, copy);
        return status;
    }
    *out = copy;
    return MT_OK;
}
