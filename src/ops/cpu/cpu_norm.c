/* Batch normalization and ReLU6 of the "cpu" backend.
 *
 * BN runs on oneDNN's batch_normalization (use_scale | use_shift). oneDNN normalizes with the
 * biased batch variance, as Keras does, but neither keeps moving statistics nor returns the
 * inverse std the ops table saves: both are computed here per channel. The backward pass gets the
 * variance back from the saved inverse std (var = 1/s^2 - eps), which is what oneDNN turns back
 * into s. Inference-mode backward (statistics constant) is one OpenMP pass.
 *
 * ReLU6 is oneDNN's eltwise clip_v2 with the backward from dst: its gradient passes where
 * alpha < y < beta, exactly Keras' "0 < y < 6". */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "ops/cpu/cpu_internal.h"

static cpu_key shape_key(int kind, mt_shape4 s, float f0) {
    cpu_key k;
    memset(&k, 0, sizeof k);
    k.kind = kind;
    k.v[0] = s.n;
    k.v[1] = s.h;
    k.v[2] = s.w;
    k.v[3] = s.c;
    k.f[0] = f0;
    return k;
}

static mt_status check_bn(const mt_batchnorm_desc *d) {
    if (!(d->epsilon > 0.0f) || !(d->momentum >= 0.0f && d->momentum <= 1.0f))
        return MT_FAIL(MT_ERR_INVALID,
                       "cpu backend: batch norm epsilon %g must be > 0 and momentum %g in [0,1]",
                       (double)d->epsilon, (double)d->momentum);
    return MT_OK;
}

static const unsigned bn_flags = dnnl_use_scale | dnnl_use_shift;

/* The OpenMP reductions: BN_LANES channels at a time, in double (as in cpu_bn_relu6.c: float
 * partial sums of gradients that nearly cancel lose tens to hundreds of u). */
enum { BN_LANES = 64 };

/* Inference-mode BN backward over one plane's rows (`lanes` channels, row stride `block`):
 * a += sum of dy, b += sum of dy * (x - mean). Always inlined so that the callers' constant 8
 * (nChw8c) makes the innermost loop straight vector code. */
static inline __attribute__((always_inline)) void
inference_grad_sums(const float *x, const float *dy, size_t hw, int block, int lanes,
                    const float *mean, double *a, double *b) {
    double da[BN_LANES] = {0}, db[BN_LANES] = {0};
    for (size_t p = 0; p < hw; p++) {
        size_t o = p * block;
#pragma omp simd
        for (int l = 0; l < lanes; l++) {
            double g = dy[o + l];
            da[l] += g;
            db[l] += g * ((double)x[o + l] - (double)mean[l]);
        }
    }
    for (int l = 0; l < lanes; l++)
        a[l] += da[l], b[l] += db[l];
}

/* dx = dy * scale over one plane's rows */
static inline __attribute__((always_inline)) void
inference_grad_rows(const float *dy, float *dx, size_t hw, int block, const float *scale) {
    for (size_t p = 0; p < hw; p++) {
        size_t o = p * block;
#pragma omp simd
        for (int l = 0; l < block; l++)
            dx[o + l] = dy[o + l] * scale[l];
    }
}

static mt_status bn_forward_desc(cpu_backend *cpu, const mt_batchnorm_desc *d, bool training,
                                 dnnl_batch_normalization_desc_t *bd) {
    dnnl_memory_desc_t md;
    MT_TRY(cpu_tensor_md(cpu, d->shape, &md));
    DNNL_CHECK(dnnl_batch_normalization_forward_desc_init(
        bd, training ? dnnl_forward_training : dnnl_forward_inference, &md, d->epsilon,
        training ? bn_flags : bn_flags | dnnl_use_global_stats));
    return MT_OK;
}

static mt_status bn_lookup(cpu_backend *cpu, int kind, const mt_batchnorm_desc *d,
                           cpu_entry **out) {
    MT_TRY(check_bn(d));
    cpu_key key = shape_key(kind, d->shape, d->epsilon);
    *out = cpu_cache_find(cpu, &key);
    if (*out) return MT_OK;
    cpu_entry *e = calloc(1, sizeof *e);
    if (!e) return MT_FAIL(MT_ERR_NOMEM, "cpu backend: out of memory");
    e->key = key;
    mt_status status;
    dnnl_batch_normalization_desc_t fwd, bwd;
    dnnl_primitive_desc_t hint = NULL;
    dnnl_primitive_t hint_prim = NULL;
    if (kind == CPU_BN_BWD) {
        status = bn_forward_desc(cpu, d, true, &fwd);
        if (status == MT_OK) status = cpu_make_primitive(cpu, &fwd, NULL, NULL, &hint, &hint_prim);
        dnnl_memory_desc_t md;
        if (status == MT_OK) status = cpu_tensor_md(cpu, d->shape, &md);
        if (status == MT_OK) {
            dnnl_status_t s = dnnl_batch_normalization_backward_desc_init(
                &bwd, dnnl_backward, &md, &md, d->epsilon, bn_flags);
            if (s != dnnl_success)
                status = MT_FAIL(MT_ERR_BACKEND,
                                 "oneDNN call dnnl_batch_normalization_backward_desc_init "
                                 "failed: %s",
                                 dnnl_status2str(s));
        }
        if (status == MT_OK) status = cpu_make_primitive(cpu, &bwd, NULL, hint, &e->pd, &e->prim);
    } else {
        status = bn_forward_desc(cpu, d, kind == CPU_BN_FWD_TRAINING, &fwd);
        if (status == MT_OK) status = cpu_make_primitive(cpu, &fwd, NULL, NULL, &e->pd, &e->prim);
    }
    if (hint_prim) dnnl_primitive_destroy(hint_prim);
    if (hint) dnnl_primitive_desc_destroy(hint);
    if (status == MT_OK) status = cpu_cache_insert(cpu, e);
    if (status != MT_OK) {
        cpu_entry_free(e);
        return mt_error_context(status, "cpu backend: making a batch norm for %dx%dx%dx%d",
                                d->shape.n, d->shape.h, d->shape.w, d->shape.c);
    }
    *out = e;
    return MT_OK;
}

mt_status mt_cpu_batchnorm_forward_training(mt_backend *backend, const mt_batchnorm_desc *desc,
                                            const mt_tensor *x, const float *gamma,
                                            const float *beta, float *moving_mean,
                                            float *moving_variance, mt_tensor *y, float *saved_mean,
                                            float *saved_inv_std) {
    /* Not oneDNN's forward_training: its batch statistics in the blocked layout are float sums
     * whose error, small against the mean, is large against (batch mean - moving mean), the
     * only thing a momentum-0.999 moving update sees: 13% off Keras' float64 on MobileNetV2
     * (tests/keras), against 0.08% (Keras float32's own) for the double sums of
     * cpu_bn_relu6.c, at ~25% more time for this op. */
    return cpu_batchnorm_forward_training_openmp(cpu_of(backend), desc, x, gamma, beta, moving_mean,
                                                 moving_variance, y, saved_mean, saved_inv_std);
}

mt_status mt_cpu_batchnorm_forward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                             const mt_tensor *x, const float *gamma,
                                             const float *beta, const float *moving_mean,
                                             const float *moving_variance, mt_tensor *y) {
    cpu_backend *cpu = cpu_of(backend);
    cpu_entry *e;
    MT_TRY(bn_lookup(cpu, CPU_BN_FWD_INFERENCE, desc, &e));
    MT_TRY(cpu_check_tensor(cpu, x, desc->shape, "batchnorm_forward_inference's x"));
    MT_TRY(cpu_check_tensor(cpu, y, desc->shape, "batchnorm_forward_inference's y"));
    cpu_arg args[] = {{DNNL_ARG_SRC, x->data},      {DNNL_ARG_DST, y->data},
                      {DNNL_ARG_SCALE, gamma},      {DNNL_ARG_SHIFT, beta},
                      {DNNL_ARG_MEAN, moving_mean}, {DNNL_ARG_VARIANCE, moving_variance}};
    return cpu_execute(cpu, e->pd, e->prim, 6, args);
}

mt_status mt_cpu_batchnorm_backward_training(mt_backend *backend, const mt_batchnorm_desc *desc,
                                             const mt_tensor *x, const mt_tensor *dy,
                                             const float *gamma, const float *saved_mean,
                                             const float *saved_inv_std, mt_tensor *dx,
                                             float *dgamma, float *dbeta) {
    cpu_backend *cpu = cpu_of(backend);
    cpu_entry *e;
    MT_TRY(bn_lookup(cpu, CPU_BN_BWD, desc, &e));
    MT_TRY(cpu_check_tensor(cpu, x, desc->shape, "batchnorm_backward_training's x"));
    MT_TRY(cpu_check_tensor(cpu, dy, desc->shape, "batchnorm_backward_training's dy"));
    MT_TRY(cpu_check_tensor(cpu, dx, desc->shape, "batchnorm_backward_training's dx"));
    int c = desc->shape.c;
    float *temp;
    MT_TRY(cpu_temp(cpu, 4 * (size_t)c, &temp));
    float *variance = temp, *zeros = temp + 3 * c;
    /* oneDNN 2.6 counts the shift as an input of the backward pass (it never reads it) and
     * rejects the call without one */
    memset(zeros, 0, (size_t)c * sizeof *zeros);
    for (int i = 0; i < c; i++)
        variance[i] = 1.0f / (saved_inv_std[i] * saved_inv_std[i]) - desc->epsilon;
    cpu_arg args[] = {{DNNL_ARG_SRC, x->data},
                      {DNNL_ARG_MEAN, saved_mean},
                      {DNNL_ARG_VARIANCE, variance},
                      {DNNL_ARG_DIFF_DST, dy->data},
                      {DNNL_ARG_SCALE, gamma},
                      {DNNL_ARG_SHIFT, zeros},
                      {DNNL_ARG_DIFF_SRC, dx->data},
                      {DNNL_ARG_DIFF_SCALE, dgamma ? dgamma : temp + c},
                      {DNNL_ARG_DIFF_SHIFT, dbeta ? dbeta : temp + 2 * c}};
    return cpu_execute(cpu, e->pd, e->prim, 9, args);
}

mt_status mt_cpu_batchnorm_backward_inference(mt_backend *backend, const mt_batchnorm_desc *desc,
                                              const mt_tensor *x, const mt_tensor *dy,
                                              const float *gamma, const float *moving_mean,
                                              const float *moving_variance, mt_tensor *dx,
                                              float *dgamma, float *dbeta) {
    cpu_backend *cpu = cpu_of(backend);
    MT_TRY(check_bn(desc));
    mt_shape4 s = desc->shape;
    MT_TRY(cpu_check_tensor(cpu, dy, s, "batchnorm_backward_inference's dy"));
    if (dx) MT_TRY(cpu_check_tensor(cpu, dx, s, "batchnorm_backward_inference's dx"));
    bool params = dgamma || dbeta;
    if (params) MT_TRY(cpu_check_tensor(cpu, x, s, "batchnorm_backward_inference's x"));
    if (!dx && !params) return MT_OK;
    int c = s.c, block = cpu_block_of(cpu, s), blocks = c / block;
    size_t hw = (size_t)s.h * s.w;
    float *temp;
    MT_TRY(cpu_temp(cpu, 2 * (size_t)c, &temp));
    float *inv_std = temp, *scale = temp + c;
    for (int i = 0; i < c; i++) {
        inv_std[i] = 1.0f / sqrtf(moving_variance[i] + desc->epsilon);
        scale[i] = gamma[i] * inv_std[i];
    }
    int threads = omp_get_max_threads();
    double *part = NULL;
    if (params) {
        MT_TRY(cpu_reduce_buffer(cpu, (size_t)threads * 2 * c, &part));
        memset(part, 0, (size_t)threads * 2 * c * sizeof *part);
    }
    const float *xs = x ? x->data : NULL, *dys = dy->data;
    float *dxs = dx ? dx->data : NULL;
    ptrdiff_t planes = (ptrdiff_t)s.n * blocks;
#pragma omp parallel num_threads(threads)
    {
        double *sum_dy = params ? part + (size_t)omp_get_thread_num() * 2 * c : NULL;
        double *sum_dyx = params ? sum_dy + c : NULL;
#pragma omp for schedule(static)
        for (ptrdiff_t plane = 0; plane < planes; plane++) {
            int cb = (int)(plane % blocks);
            size_t base = (size_t)plane * hw * block, c0 = (size_t)cb * block;
            if (params && block == 8) {
                inference_grad_sums(xs + base, dys + base, hw, 8, 8, moving_mean + c0, sum_dy + c0,
                                    sum_dyx + c0);
            } else if (params) {
                for (int l0 = 0; l0 < block; l0 += BN_LANES) {
                    int lanes = block - l0 < BN_LANES ? block - l0 : BN_LANES;
                    inference_grad_sums(xs + base + l0, dys + base + l0, hw, block, lanes,
                                        moving_mean + c0 + l0, sum_dy + c0 + l0, sum_dyx + c0 + l0);
                }
            }
            /* after the sums, while the plane of dy is still in cache (dx may alias dy) */
            if (dxs && block == 8)
                inference_grad_rows(dys + base, dxs + base, hw, 8, scale + c0);
            else if (dxs)
                inference_grad_rows(dys + base, dxs + base, hw, block, scale + c0);
        }
    }
    if (params) {
        for (int i = 0; i < c; i++) {
            double sd = 0, sx = 0;
            for (int t = 0; t < threads; t++) {
                sd += part[(size_t)t * 2 * c + i];
                sx += part[(size_t)t * 2 * c + c + i];
            }
            if (dbeta) dbeta[i] = (float)sd;
            if (dgamma) dgamma[i] = (float)(sx * inv_std[i]);
        }
    }
    return MT_OK;
}

/* ---- ReLU6 ---- */

static const dnnl_alg_kind_t relu6_alg = dnnl_eltwise_clip_v2_use_dst_for_bwd;

static mt_status relu6_lookup(cpu_backend *cpu, int kind, mt_shape4 s, cpu_entry **out) {
    cpu_key key = shape_key(kind, s, 0.0f);
    *out = cpu_cache_find(cpu, &key);
    if (*out) return MT_OK;
    dnnl_memory_desc_t md;
    MT_TRY(cpu_tensor_md(cpu, s, &md));
    cpu_entry *e = calloc(1, sizeof *e);
    if (!e) return MT_FAIL(MT_ERR_NOMEM, "cpu backend: out of memory");
    e->key = key;
    mt_status status = MT_OK;
    dnnl_eltwise_desc_t fwd, bwd;
    dnnl_primitive_desc_t hint = NULL;
    dnnl_primitive_t hint_prim = NULL;
    DNNL_CHECK_GOTO(
        dnnl_eltwise_forward_desc_init(&fwd, dnnl_forward_training, relu6_alg, &md, 0.0f, 6.0f),
        status, done);
    if (kind == CPU_RELU6_FWD) {
        status = cpu_make_primitive(cpu, &fwd, NULL, NULL, &e->pd, &e->prim);
        goto done;
    }
    status = cpu_make_primitive(cpu, &fwd, NULL, NULL, &hint, &hint_prim);
    if (status != MT_OK) goto done;
    DNNL_CHECK_GOTO(dnnl_eltwise_backward_desc_init(&bwd, relu6_alg, &md, &md, 0.0f, 6.0f), status,
                    done);
    status = cpu_make_primitive(cpu, &bwd, NULL, hint, &e->pd, &e->prim);
done:
    if (hint_prim) dnnl_primitive_destroy(hint_prim);
    if (hint) dnnl_primitive_desc_destroy(hint);
    if (status == MT_OK) status = cpu_cache_insert(cpu, e);
    if (status != MT_OK) {
        cpu_entry_free(e);
        return mt_error_context(status, "cpu backend: making a ReLU6 for %dx%dx%dx%d", s.n, s.h,
                                s.w, s.c);
    }
    *out = e;
    return MT_OK;
}

mt_status mt_cpu_relu6_forward(mt_backend *backend, const mt_tensor *x, mt_tensor *y) {
    cpu_backend *cpu = cpu_of(backend);
    MT_TRY(cpu_check_tensor(cpu, x, x->shape, "relu6_forward's x"));
    MT_TRY(cpu_check_tensor(cpu, y, x->shape, "relu6_forward's y"));
    cpu_entry *e;
    MT_TRY(relu6_lookup(cpu, CPU_RELU6_FWD, x->shape, &e));
    cpu_arg args[] = {{DNNL_ARG_SRC, x->data}, {DNNL_ARG_DST, y->data}};
    return cpu_execute(cpu, e->pd, e->prim, 2, args);
}

mt_status mt_cpu_relu6_backward(mt_backend *backend, const mt_tensor *y, const mt_tensor *dy,
                                mt_tensor *dx) {
    cpu_backend *cpu = cpu_of(backend);
    MT_TRY(cpu_check_tensor(cpu, y, y->shape, "relu6_backward's y"));
    MT_TRY(cpu_check_tensor(cpu, dy, y->shape, "relu6_backward's dy"));
    MT_TRY(cpu_check_tensor(cpu, dx, y->shape, "relu6_backward's dx"));
    cpu_entry *e;
    MT_TRY(relu6_lookup(cpu, CPU_RELU6_BWD, y->shape, &e));
    cpu_arg args[] = {
        {DNNL_ARG_DST, y->data}, {DNNL_ARG_DIFF_DST, dy->data}, {DNNL_ARG_DIFF_SRC, dx->data}};
    return cpu_execute(cpu, e->pd, e->prim, 3, args);
}
