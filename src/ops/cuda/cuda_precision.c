/* train.precision = bf16 | fp16 on the cuda backend (ops.h "Precision"): every mt_tensor is
 * stored in 16 bits (tensor_alloc sizes it), so activations and the gradients that flow back
 * through them take half the memory, and every op computes exactly what the reference backend's
 * emulation computes (round to nearest, ties to even: ops/precision_bits.h, shared with it).
 *
 * Two ways an op of this table gets there:
 * - natively: mt_ops_cuda's own ops, which take the storage from cuda_precision_storage (the one
 *   answer: MT_CUDA_F32 without this state). The convolutions (cuda_conv.c: cuBLAS and cuDNN on
 *   bf16/fp16 data with fp32 compute, our depthwise and direct kernels through run_own; the
 *   backward filter through exact fp32 copies) read their kernels rounded to the 16-bit type, as
 *   the reference's convolutions read them: per-update copies (cuda_weights.c), dropped by the
 *   ops that write that memory. Add, ReLU6, the input conversion, batch norm (the fused kernels;
 *   MT_CUDA_BN=legacy is refused below), zero padding and global average pooling (cuda_ops.c,
 *   cuda_ops_bn.c, cuda_input.c) give the kernels the 16-bit storage: fp32 arithmetic, one
 *   rounding on store;
 * - staged (here): tensor_from_nhwc and tensor_to_nhwc widen/narrow through pooled fp32 buffers
 *   with the cast kernels (exact widening, one rounding).
 * Tests: the storage kernels bit for bit against the fp32 ones (gpu_kernels_emulated), the whole
 * table against the reference's emulation (MT_TEST_PRECISION=bf16|fp16
 * test_ops_backend_vs_reference cuda). */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/cuda_optimizer.h"

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

/* ---- staging: up to four 16-bit tensors of one op, each with its fp32 view ---------------- */

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

/* ---- memory ------------------------------------------------------------------------------- */

static mt_status p16_tensor_alloc(mt_backend *backend, mt_shape4 shape, mt_tensor *out) {
    *out = (mt_tensor){0};
    if (shape.n <= 0 || shape.h <= 0 || shape.w <= 0 || shape.c <= 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "cuda backend: tensor shape %dx%dx%dx%d (N,H,W,C) has a non-positive "
                       "dimension",
                       shape.n, shape.h, shape.w, shape.c);
    const size_t bytes = mt_shape4_count(shape) * sizeof(uint16_t);
    void *data = NULL;
    MT_TRY(mt_ops_cuda.buffer_alloc(backend, bytes, &data)); /* zeroed: +0 in both formats */
    *out = (mt_tensor){.shape = shape, .data = data, .bytes = bytes};
    return MT_OK;
}

static mt_status p16_tensor_from_nhwc(mt_backend *backend, const float *host_src, mt_tensor *dst) {
    cuda_backend *cu = cuda_of(backend);
    stage s = {0};
    mt_tensor *w;
    MT_TRY(stage_out(cu, &s, dst, &w));
    return stage_finish(cu, &s, mt_ops_cuda.tensor_from_nhwc(backend, host_src, w), w, NULL);
}

static mt_status p16_tensor_to_nhwc(mt_backend *backend, const mt_tensor *src, float *host_dst) {
    cuda_backend *cu = cuda_of(backend);
    stage s = {0};
    mt_tensor *w;
    mt_status status = stage_in(cu, &s, src, &w);
    if (status == MT_OK) status = mt_ops_cuda.tensor_to_nhwc(backend, w, host_dst);
    return stage_finish(cu, &s, status, NULL, NULL);
}

static mt_status p16_tensor_zero(mt_backend *backend, mt_tensor *tensor) {
    CUDA_CHECK(cudaMemsetAsync(tensor->data, 0, mt_shape4_count(tensor->shape) * sizeof(uint16_t),
                               cuda_of(backend)->stream));
    return MT_OK;
}

static mt_status p16_tensor_copy(mt_backend *backend, const mt_tensor *src, mt_tensor *dst) {
    mt_shape4 a = src->shape, b = dst->shape;
    if (a.n != b.n || a.h != b.h || a.w != b.w || a.c != b.c)
        return MT_FAIL(MT_ERR_INVALID, "cuda tensor_copy: shapes %dx%dx%dx%d and %dx%dx%dx%d", a.n,
                       a.h, a.w, a.c, b.n, b.h, b.w, b.c);
    if (src->data == dst->data) return MT_OK;
    CUDA_CHECK(cudaMemcpyAsync(dst->data, src->data, mt_shape4_count(a) * sizeof(uint16_t),
                               cudaMemcpyDeviceToDevice, cuda_of(backend)->stream));
    return MT_OK;
}

static void p16_tensor_free(mt_backend *backend, mt_tensor *tensor) {
    mt_ops_cuda.tensor_free(backend, tensor); /* tensors are never conv weights */
}

/* mt_ops_cuda with the memory entries above; every op is mt_ops_cuda's own, which reads the
 * storage from cuda_precision_storage.
 * Built once, at the first bf16/fp16 backend's init (a table of another file's functions cannot
 * be a constant initializer in C). */
static mt_ops table16;
static pthread_once_t table16_once = PTHREAD_ONCE_INIT;

static void table16_build(void) {
    mt_ops t = mt_ops_cuda;
    t.tensor_alloc = p16_tensor_alloc;
    t.tensor_free = p16_tensor_free;
    t.tensor_from_nhwc = p16_tensor_from_nhwc;
    t.tensor_to_nhwc = p16_tensor_to_nhwc;
    t.tensor_zero = p16_tensor_zero;
    t.tensor_copy = p16_tensor_copy;
    t.conv_bn_relu6_inference_forward = NULL; /* no 16-bit wrapper (cuda has none today) */
    table16 = t;
}

const mt_ops *cuda_precision_table(void) {
    pthread_once(&table16_once, table16_build);
    return &table16;
}
