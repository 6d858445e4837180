/* The memory-bound ops of the "cpu" backend as OpenMP loops over the backend's layout: zero,
 * copy, residual add, zero padding, global average pooling and the optimizer update. oneDNN would
 * only add a primitive call around the same loop. Indexing follows the layout rule of
 * cpu_internal.h:
 * ((n * C/B + c/B) * H*W + h*W + w) * B + c%B. */
#include <omp.h>
#include <string.h>

#include "ops/cpu/cpu_internal.h"
#include "ops/optimizer_update.h"

mt_status mt_cpu_tensor_zero(mt_backend *backend, mt_tensor *tensor) {
    MT_TRY(cpu_check_tensor(cpu_of(backend), tensor, tensor->shape, "tensor_zero's tensor"));
    memset(tensor->data, 0, mt_shape4_count(tensor->shape) * sizeof(float));
    return MT_OK;
}

mt_status mt_cpu_tensor_copy(mt_backend *backend, const mt_tensor *src, mt_tensor *dst) {
    cpu_backend *cpu = cpu_of(backend);
    MT_TRY(cpu_check_tensor(cpu, src, src->shape, "tensor_copy's src"));
    MT_TRY(cpu_check_tensor(cpu, dst, src->shape, "tensor_copy's dst"));
    if (dst->data != src->data)
        memcpy(dst->data, src->data, mt_shape4_count(src->shape) * sizeof(float));
    return MT_OK;
}

/* y: any layout, same shape as a and b; y may alias either */
mt_status mt_cpu_add(mt_backend *backend, const mt_tensor *a, const mt_tensor *b, mt_tensor *y) {
    cpu_backend *cpu = cpu_of(backend);
    MT_TRY(cpu_check_tensor(cpu, a, a->shape, "add's a"));
    MT_TRY(cpu_check_tensor(cpu, b, a->shape, "add's b"));
    MT_TRY(cpu_check_tensor(cpu, y, a->shape, "add's y"));
    const float *pa = a->data, *pb = b->data;
    float *py = y->data;
    ptrdiff_t count = (ptrdiff_t)mt_shape4_count(a->shape);
#pragma omp parallel for simd schedule(static)
    for (ptrdiff_t i = 0; i < count; i++)
        py[i] = pa[i] + pb[i];
    return MT_OK;
}

static mt_status check_pad(const mt_zero_pad_desc *d) {
    if (d->top < 0 || d->left < 0 || d->bottom < 0 || d->right < 0)
        return MT_FAIL(MT_ERR_INVALID, "cpu backend: zero padding %d,%d,%d,%d must be >= 0", d->top,
                       d->left, d->bottom, d->right);
    return MT_OK;
}

static mt_shape4 padded_shape(const mt_zero_pad_desc *d) {
    mt_shape4 s = d->input;
    s.h += d->top + d->bottom;
    s.w += d->left + d->right;
    return s;
}

/* Copies between the inner window of a padded tensor (rows of W*B floats) and an unpadded one;
 * forward also zeroes the border. Padding keeps C, hence B, so the blocks line up. */
static void pad_copy(const cpu_backend *cpu, const mt_zero_pad_desc *d, float *padded, float *plain,
                     bool forward) {
    mt_shape4 in = d->input, out = padded_shape(d);
    int block = cpu_block_of(cpu, in), blocks = in.c / block;
    size_t in_row = (size_t)in.w * block, out_row = (size_t)out.w * block;
    ptrdiff_t rows = (ptrdiff_t)in.n * blocks * out.h;
#pragma omp parallel for schedule(static)
    for (ptrdiff_t r = 0; r < rows; r++) {
        ptrdiff_t plane = r / out.h; /* n * blocks + cb */
        int oh = (int)(r % out.h), ih = oh - d->top;
        float *prow = padded + ((size_t)plane * out.h + oh) * out_row;
        if (ih < 0 || ih >= in.h) {
            if (forward) memset(prow, 0, out_row * sizeof(float));
            continue;
        }
        float *irow = plain + ((size_t)plane * in.h + ih) * in_row;
        float *window = prow + (size_t)d->left * block;
        if (forward) {
            memset(prow, 0, (size_t)d->left * block * sizeof(float));
            memcpy(window, irow, in_row * sizeof(float));
            memset(window + in_row, 0, (size_t)d->right * block * sizeof(float));
        } else {
            memcpy(irow, window, in_row * sizeof(float));
        }
    }
}

mt_status mt_cpu_zero_pad_forward(mt_backend *backend, const mt_zero_pad_desc *desc,
                                  const mt_tensor *x, mt_tensor *y) {
    cpu_backend *cpu = cpu_of(backend);
    MT_TRY(check_pad(desc));
    MT_TRY(cpu_check_tensor(cpu, x, desc->input, "zero_pad_forward's x"));
    MT_TRY(cpu_check_tensor(cpu, y, padded_shape(desc), "zero_pad_forward's y"));
    pad_copy(cpu, desc, y->data, x->data, true);
    return MT_OK;
}

mt_status mt_cpu_zero_pad_backward(mt_backend *backend, const mt_zero_pad_desc *desc,
                                   const mt_tensor *dy, mt_tensor *dx) {
    cpu_backend *cpu = cpu_of(backend);
    MT_TRY(check_pad(desc));
    MT_TRY(cpu_check_tensor(cpu, dy, padded_shape(desc), "zero_pad_backward's dy"));
    MT_TRY(cpu_check_tensor(cpu, dx, desc->input, "zero_pad_backward's dx"));
    pad_copy(cpu, desc, dy->data, dx->data, false);
    return MT_OK;
}

enum { POOL_LANES = 64 };

/* x: N,H,W,C in the backend's layout; y: N,C row-major */
mt_status mt_cpu_global_avg_pool_forward(mt_backend *backend, const mt_tensor *x, float *y) {
    cpu_backend *cpu = cpu_of(backend);
    MT_TRY(cpu_check_tensor(cpu, x, x->shape, "global_avg_pool_forward's x"));
    mt_shape4 s = x->shape;
    int block = cpu_block_of(cpu, s), blocks = s.c / block;
    size_t hw = (size_t)s.h * s.w;
    const float *xs = x->data;
    double scale = 1.0 / (double)hw;
    ptrdiff_t planes = (ptrdiff_t)s.n * blocks;
#pragma omp parallel for schedule(static)
    for (ptrdiff_t plane = 0; plane < planes; plane++) {
        int n = (int)(plane / blocks), cb = (int)(plane % blocks);
        const float *base = xs + (size_t)plane * hw * block;
        for (int l0 = 0; l0 < block; l0 += POOL_LANES) {
            int lanes = block - l0 < POOL_LANES ? block - l0 : POOL_LANES;
            double acc[POOL_LANES] = {0};
            for (size_t p = 0; p < hw; p++)
                for (int l = 0; l < lanes; l++)
                    acc[l] += base[p * block + l0 + l];
            for (int l = 0; l < lanes; l++)
                y[(size_t)n * s.c + (size_t)cb * block + l0 + l] = (float)(acc[l] * scale);
        }
    }
    return MT_OK;
}

/* dy: N,C row-major; dx: N,H,W,C = dy / (H*W) everywhere */
mt_status mt_cpu_global_avg_pool_backward(mt_backend *backend, const float *dy, mt_tensor *dx) {
    cpu_backend *cpu = cpu_of(backend);
    MT_TRY(cpu_check_tensor(cpu, dx, dx->shape, "global_avg_pool_backward's dx"));
    mt_shape4 s = dx->shape;
    int block = cpu_block_of(cpu, s), blocks = s.c / block;
    size_t hw = (size_t)s.h * s.w;
    float *dxs = dx->data;
    float scale = 1.0f / (float)hw;
    ptrdiff_t planes = (ptrdiff_t)s.n * blocks;
#pragma omp parallel for schedule(static)
    for (ptrdiff_t plane = 0; plane < planes; plane++) {
        int n = (int)(plane / blocks), cb = (int)(plane % blocks);
        const float *g = dy + (size_t)n * s.c + (size_t)cb * block;
        float *base = dxs + (size_t)plane * hw * block;
        for (size_t p = 0; p < hw; p++)
            for (int l = 0; l < block; l++)
                base[p * block + l] = g[l] * scale;
    }
    return MT_OK;
}

mt_status mt_cpu_buffer_copy(mt_backend *backend, void *dst, const void *src, size_t bytes) {
    if (bytes) memcpy(dst, src, bytes);
    return MT_OK;
}

/* Threads pay off only on big arrays: the frozen head is 1,281 floats. */
enum { OPTIMIZER_PARALLEL_MIN = 1 << 15 };

/* The reference's per-element rule (ops/optimizer_update.h) over threads: elements are
 * independent, so the result is the reference's bit for bit. */
mt_status mt_cpu_optimizer_update(mt_backend *backend, const mt_optimizer_desc *desc,
                                  float *params, const float *grads, float *slots) {
    (void)backend;
    MT_TRY(mt_update_check("cpu", desc, params, grads, slots));
    if (desc->skip && *desc->skip != 0.0f) return MT_OK; /* a non-finite step (loss_accumulate) */
    const size_t n = desc->count;
    float *s0 = mt_update_slot(desc, slots, 0), *s1 = mt_update_slot(desc, slots, 1);
    const mt_update_scalars v = *desc->scalars;
#pragma omp parallel for schedule(static) if (n >= OPTIMIZER_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++)
        mt_update_element(desc, v, i, params, grads, s0, s1);
    return MT_OK;
}
