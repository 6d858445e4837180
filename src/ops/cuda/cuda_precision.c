/* train.precision = bf16 | fp16 on the cuda backend (ops.h "Precision"): every mt_tensor is
 * stored in 16 bits (tensor_alloc sizes it by cuda_precision_storage), so activations and the
 * gradients that flow back through them take half the memory, and every op computes exactly what
 * the reference backend's emulation computes (round to nearest, ties to even:
 * ops/precision_bits.h, shared with it). There is one ops table, mt_ops_cuda, for every precision;
 * this file holds the state, the one answer to "what are tensors stored in", and the staging.
 *
 * Two ways an op gets there:
 * - natively: the ops take the storage from cuda_precision_storage (MT_CUDA_F32 without this
 *   state); tensor_alloc, tensor_zero and tensor_copy size their bytes by it. The convolutions
 *   (cuda_conv.c: cuBLAS and cuDNN on bf16/fp16 data with fp32 compute, our depthwise and direct
 *   kernels through run_own; the backward filter through exact fp32 copies) read their kernels
 *   rounded to the 16-bit type, as the reference's convolutions read them: per-update copies
 *   (cuda_weights.c), dropped by the ops that write that memory. Add, ReLU6, the input
 *   conversion, batch norm (the fused kernels; MT_CUDA_BN=legacy is refused below), zero padding
 *   and global average pooling (cuda_ops.c, cuda_ops_bn.c, cuda_input.c) give the kernels the
 *   16-bit storage: fp32 arithmetic, one rounding on store;
 * - staged (here): tensor_from_nhwc and tensor_to_nhwc (cuda_backend.c's entries hand 16-bit
 *   tensors over) widen/narrow through pooled fp32 buffers with the cast kernels (exact widening,
 *   one rounding).
 * Tests: the storage kernels bit for bit against the fp32 ones (gpu_kernels_emulated), the whole
 * backend against the reference's emulation (MT_TEST_PRECISION=bf16|fp16
 * test_ops_backend_vs_reference cuda). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ops/cuda/cuda_internal.h"

struct cuda_precision_state {
    int format; /* 0 bf16, 1 fp16 (the cast kernels' argument) */
};

mt_status cuda_precision_init(cuda_backend *cu, mt_compute_precision precision) {
    cu->precision = calloc(1, sizeof *cu->precision);
    if (!cu->precision) return MT_FAIL(MT_ERR_NOMEM, "cuda backend: out of host memory");
    cu->precision->format = precision == MT_COMPUTE_FP16;
    if (cu->bn_legacy)
        return MT_FAIL(MT_ERR_INVALID,
                       "MT_CUDA_BN=legacy: the legacy batch norm kernels are fp32 only; unset it "
                       "with train.precision = bf16 or fp16");
    return MT_OK;
}

mt_cuda_storage cuda_precision_storage(const cuda_backend *cu) {
    if (!cu->precision) return MT_CUDA_F32;
    return cu->precision->format ? MT_CUDA_FP16 : MT_CUDA_BF16;
}

void cuda_precision_free(cuda_backend *cu) {
    free(cu->precision);
    cu->precision = NULL;
}

/* ---- staging: 16-bit tensors, each with its fp32 view ----------------------------------- */

enum { STAGE_MAX = 4 };

typedef struct stage {
    const mt_tensor *narrow[STAGE_MAX]; /* the op's tensors */
    mt_tensor wide[STAGE_MAX];          /* their fp32 views (pool memory) */
    int count;
} stage;

/* The fp32 view of `t` (NULL stays NULL): the same view for the same memory, so an op whose
 * output aliases an input (relu6 in place, dx = dy) keeps doing so; widened (`load`) for inputs. */
static mt_status stage_view(cuda_backend *cu, stage *s, const mt_tensor *t, bool load,
                            mt_tensor **out) {
    *out = NULL;
    if (!t) return MT_OK;
    for (int i = 0; i < s->count; i++)
        if (s->narrow[i]->data == t->data) {
            *out = &s->wide[i];
            return MT_OK;
        }
    if (s->count == STAGE_MAX) return MT_FAIL(MT_ERR_INTERNAL, "cuda: too many staged tensors");
    const size_t count = mt_shape4_count(t->shape);
    if (!t->data || t->bytes < count * sizeof(uint16_t))
        return MT_FAIL(MT_ERR_INVALID, "cuda: a 16-bit tensor of %zu elements holds %zu bytes",
                       count, t->bytes);
    void *data = NULL;
    MT_TRY(cuda_pool_alloc(cu, count * sizeof(float), &data));
    s->narrow[s->count] = t;
    s->wide[s->count] =
        (mt_tensor){.shape = t->shape, .data = data, .bytes = count * sizeof(float)};
    *out = &s->wide[s->count++];
    if (load)
        CUDA_CHECK(
            mt_cuda_launch_cast_to_f32(cu->stream, count, cu->precision->format, t->data, data));
    return MT_OK;
}

static mt_status stage_in(cuda_backend *cu, stage *s, const mt_tensor *t, mt_tensor **out) {
    return stage_view(cu, s, t, true, out);
}

static mt_status stage_out(cuda_backend *cu, stage *s, const mt_tensor *t, mt_tensor **out) {
    return stage_view(cu, s, t, false, out);
}

/* After the op: narrows `outputs` (views from stage_out/stage_in) into their 16-bit tensors when
 * the op succeeded, and gives every view back to the pool (the stream orders later users). */
static mt_status stage_finish(cuda_backend *cu, stage *s, mt_status status, mt_tensor *out0,
                              mt_tensor *out1) {
    mt_tensor *outputs[2] = {out0, out1};
    for (int o = 0; o < 2 && status == MT_OK; o++) {
        if (!outputs[o]) continue;
        const int i = (int)(outputs[o] - s->wide);
        const size_t count = mt_shape4_count(s->wide[i].shape);
        cudaError_t e = mt_cuda_launch_cast_from_f32(cu->stream, count, cu->precision->format,
                                                     s->wide[i].data, s->narrow[i]->data);
        if (e != cudaSuccess)
            status =
                MT_FAIL(MT_ERR_BACKEND, "cuda: storing a 16-bit tensor: %s", cudaGetErrorString(e));
    }
    for (int i = 0; i < s->count; i++)
        cuda_pool_release(cu, s->wide[i].data);
    s->count = 0;
    return status;
}

/* ---- the host conversions --------------------------------------------------------------- */

/* The fp32 view's bytes go up as fp32 tensor_from_nhwc sends them (the same upload), then
 * narrow into dst. */
mt_status cuda_precision_from_nhwc(mt_backend *backend, const float *host_src, mt_tensor *dst) {
    cuda_backend *cu = cuda_of(backend);
    stage s = {0};
    mt_tensor *w;
    MT_TRY(stage_out(cu, &s, dst, &w));
    return stage_finish(cu, &s, mt_ops_cuda.upload(backend, w->data, host_src, w->bytes), w, NULL);
}

/* src widened into an fp32 view, which comes down as fp32 tensor_to_nhwc sends it */
mt_status cuda_precision_to_nhwc(mt_backend *backend, const mt_tensor *src, float *host_dst) {
    cuda_backend *cu = cuda_of(backend);
    stage s = {0};
    mt_tensor *w;
    mt_status status = stage_in(cu, &s, src, &w);
    if (status == MT_OK) status = mt_ops_cuda.download(backend, host_dst, w->data, w->bytes);
    return stage_finish(cu, &s, status, NULL, NULL);
}
