/* Convolutions of the "cpu" backend: regular (incl. 1x1) and depthwise (groups = C), forward,
 * backward data and backward weights, on oneDNN with TF's asymmetric 'SAME' padding (separate
 * padding_l / padding_r). Activations stay in the backend's layout; the weights arrive in Keras'
 * layout and are reordered per call into the format the primitive chose (a few hundred KB at
 * most, cheap next to the convolution), so frozen and trainable weights can change freely between
 * calls. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops/cpu/cpu_internal.h"

static mt_status check_desc(const mt_conv_desc *d) {
    mt_shape4 in = d->input;
    mt_shape4 out = mt_conv_output_shape(d);
    if (d->kernel <= 0 || d->stride <= 0 || d->pad_top < 0 || d->pad_left < 0 ||
        d->pad_bottom < 0 || d->pad_right < 0 || out.h <= 0 || out.w <= 0 || in.c <= 0 ||
        d->out_channels <= 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "cpu backend: bad convolution: input %dx%dx%dx%d, kernel %d, stride %d, "
                       "pads %d,%d,%d,%d (top,left,bottom,right), %d outputs",
                       in.n, in.h, in.w, in.c, d->kernel, d->stride, d->pad_top, d->pad_left,
                       d->pad_bottom, d->pad_right, d->out_channels);
    if (d->depthwise && d->out_channels != in.c)
        return MT_FAIL(MT_ERR_INVALID,
                       "cpu backend: depthwise convolution with %d inputs and %d outputs "
                       "(only channel multiplier 1 is supported)",
                       in.c, d->out_channels);
    return MT_OK;
}

static cpu_key conv_key(int kind, const mt_conv_desc *d) {
    cpu_key k;
    memset(&k, 0, sizeof k);
    k.kind = kind;
    int v[] = {d->input.n,      d->input.h,    d->input.w,   d->input.c,
               d->out_channels, d->kernel,     d->stride,    d->pad_top,
               d->pad_left,     d->pad_bottom, d->pad_right, d->depthwise ? 1 : 0};
    memcpy(k.v, v, sizeof v);
    return k;
}

/* Keras' kernel layout (user) and "let the primitive choose" (any) for the weights. */
static mt_status weight_mds(const mt_conv_desc *d, dnnl_memory_desc_t *user,
                            dnnl_memory_desc_t *any) {
    int k = d->kernel;
    if (d->depthwise) {
        /* [kh][kw][c][1] is goihw's g innermost after h, w (o = i = 1): hwigo */
        dnnl_dims_t dims = {d->input.c, 1, 1, k, k};
        DNNL_CHECK(dnnl_memory_desc_init_by_tag(user, 5, dims, dnnl_f32, dnnl_hwigo));
        DNNL_CHECK(dnnl_memory_desc_init_by_tag(any, 5, dims, dnnl_f32, dnnl_format_tag_any));
    } else {
        dnnl_dims_t dims = {d->out_channels, d->input.c, k, k};
        DNNL_CHECK(dnnl_memory_desc_init_by_tag(user, 4, dims, dnnl_f32, dnnl_hwio));
        DNNL_CHECK(dnnl_memory_desc_init_by_tag(any, 4, dims, dnnl_f32, dnnl_format_tag_any));
    }
    return MT_OK;
}

typedef struct conv_geometry {
    dnnl_memory_desc_t src, dst, user_w, any_w, bias;
    dnnl_dims_t strides, pad_l, pad_r;
    bool relu6; /* CPU_CONV_BN_RELU6_FWD: clip post-op */
} conv_geometry;

static mt_status geometry(const cpu_backend *cpu, const mt_conv_desc *d, conv_geometry *g) {
    MT_TRY(check_desc(d));
    MT_TRY(cpu_tensor_md(cpu, d->input, &g->src));
    MT_TRY(cpu_tensor_md(cpu, mt_conv_output_shape(d), &g->dst));
    MT_TRY(weight_mds(d, &g->user_w, &g->any_w));
    MT_TRY(cpu_vector_md(d->out_channels, &g->bias));
    g->strides[0] = g->strides[1] = d->stride;
    g->pad_l[0] = d->pad_top;
    g->pad_l[1] = d->pad_left;
    g->pad_r[0] = d->pad_bottom;
    g->pad_r[1] = d->pad_right;
    return MT_OK;
}

/* A convolution op descriptor of `kind` with the input-side activation described by `act`
 * (the tensor's own layout, or any). */
static mt_status conv_op_desc(int kind, const conv_geometry *g, const dnnl_memory_desc_t *act,
                              dnnl_convolution_desc_t *cd) {
    if (kind == CPU_CONV_BN_RELU6_FWD) /* BN folded into the weights and a bias */
        DNNL_CHECK(dnnl_convolution_forward_desc_init(
            cd, dnnl_forward_inference, dnnl_convolution_direct, act, &g->any_w, &g->bias, &g->dst,
            g->strides, g->pad_l, g->pad_r));
    else if (kind == CPU_CONV_FWD)
        DNNL_CHECK(dnnl_convolution_forward_desc_init(cd, dnnl_forward_training,
                                                      dnnl_convolution_direct, act, &g->any_w, NULL,
                                                      &g->dst, g->strides, g->pad_l, g->pad_r));
    else if (kind == CPU_CONV_BWD_DATA)
        DNNL_CHECK(dnnl_convolution_backward_data_desc_init(
            cd, dnnl_convolution_direct, act, &g->any_w, &g->dst, g->strides, g->pad_l, g->pad_r));
    else
        DNNL_CHECK(dnnl_convolution_backward_weights_desc_init(cd, dnnl_convolution_direct, act,
                                                               &g->any_w, NULL, &g->dst, g->strides,
                                                               g->pad_l, g->pad_r));
    return MT_OK;
}

static bool is_reference_impl(const_dnnl_primitive_desc_t pd) {
    const char *impl = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success || !impl)
        return false;
    return strncmp(impl, "ref", 3) == 0;
}

/* The primitive of `kind` on the tensors' own layouts, or, when oneDNN only has its slow
 * reference kernel for those, on the input-side layout oneDNN prefers (free_act). */
static mt_status conv_primitive(cpu_backend *cpu, int kind, const conv_geometry *g, bool free_act,
                                dnnl_primitive_desc_t *pd, dnnl_primitive_t *prim) {
    dnnl_memory_desc_t any = g->src;
    any.format_kind = dnnl_format_kind_any;
    dnnl_convolution_desc_t cd, fwd;
    dnnl_primitive_desc_t hint = NULL;
    dnnl_primitive_t hint_prim = NULL;
    const dnnl_memory_desc_t *act = free_act ? &any : &g->src;
    MT_TRY(conv_op_desc(kind, g, act, &cd));
    dnnl_primitive_attr_t attr = NULL;
    if (g->relu6) {
        dnnl_post_ops_t post = NULL;
        mt_status status = MT_OK;
        DNNL_CHECK(dnnl_post_ops_create(&post));
        DNNL_CHECK_GOTO(dnnl_post_ops_append_eltwise(post, 1.0f, dnnl_eltwise_clip_v2, 0.0f, 6.0f),
                        status, post_done);
        DNNL_CHECK_GOTO(dnnl_primitive_attr_create(&attr), status, post_done);
        DNNL_CHECK_GOTO(dnnl_primitive_attr_set_post_ops(attr, post), status, post_done);
    post_done:
        dnnl_post_ops_destroy(post);
        if (status != MT_OK) {
            if (attr) dnnl_primitive_attr_destroy(attr);
            return status;
        }
    }
    if (kind == CPU_CONV_BWD_DATA ||
        kind == CPU_CONV_BWD_WEIGHTS) { /* backward primitives need the forward one as a hint */
        MT_TRY(conv_op_desc(CPU_CONV_FWD, g, act, &fwd));
        MT_TRY(cpu_make_primitive(cpu, &fwd, NULL, NULL, &hint, &hint_prim));
    }
    mt_status status = cpu_make_primitive(cpu, &cd, attr, hint, pd, prim);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (hint_prim) dnnl_primitive_destroy(hint_prim);
    if (hint) dnnl_primitive_desc_destroy(hint);
    return status;
}

/* The weight buffer of an entry, sized for the primitive's weight format. */
static mt_status entry_weights(cpu_entry *e, const dnnl_memory_desc_t *user,
                               const dnnl_memory_desc_t *prim_md) {
    e->user_w_md = *user;
    e->prim_w_md = *prim_md;
    e->w_bytes = dnnl_memory_desc_get_size(prim_md);
    e->w_buf = aligned_alloc(64, (e->w_bytes + 63) / 64 * 64);
    if (!e->w_buf) return MT_FAIL(MT_ERR_NOMEM, "cpu backend: out of memory for conv weights");
    return MT_OK;
}

static mt_status make_entry(cpu_backend *cpu, const cpu_key *key, const mt_conv_desc *d, bool relu6,
                            cpu_entry **out) {
    int kind = key->kind;
    conv_geometry g;
    MT_TRY(geometry(cpu, d, &g));
    g.relu6 = relu6;
    cpu_entry *e = calloc(1, sizeof *e);
    if (!e) return MT_FAIL(MT_ERR_NOMEM, "cpu backend: out of memory");
    e->key = *key;
    mt_status status = conv_primitive(cpu, kind, &g, false, &e->pd, &e->prim);
    if (status == MT_OK && is_reference_impl(e->pd)) {
        dnnl_primitive_desc_t pd;
        dnnl_primitive_t prim;
        if (conv_primitive(cpu, kind, &g, true, &pd, &prim) == MT_OK) {
            if (is_reference_impl(pd)) {
                dnnl_primitive_destroy(prim);
                dnnl_primitive_desc_destroy(pd);
            } else {
                dnnl_primitive_destroy(e->prim);
                dnnl_primitive_desc_destroy(e->pd);
                e->pd = pd;
                e->prim = prim;
            }
        }
        mt_clear_error();
    }
    if (status != MT_OK) goto done;
    /* the input-side activation: src, or diff_src for backward data */
    const dnnl_memory_desc_t *act = dnnl_primitive_desc_query_md(
        e->pd, kind == CPU_CONV_BWD_DATA ? dnnl_query_diff_src_md : dnnl_query_src_md, 0);
    if (!dnnl_memory_desc_equal(act, &g.src)) {
        size_t bytes = dnnl_memory_desc_get_size(act);
        e->act_buf = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!e->act_buf) {
            status = MT_FAIL(MT_ERR_NOMEM, "cpu backend: out of memory for a conv input");
            goto done;
        }
        status = kind == CPU_CONV_BWD_DATA
                     ? cpu_make_reorder(cpu, act, &g.src, &e->act_pd, &e->act)
                     : cpu_make_reorder(cpu, &g.src, act, &e->act_pd, &e->act);
        if (status != MT_OK) goto done;
    }
    const dnnl_memory_desc_t *w = dnnl_primitive_desc_query_md(
        e->pd, kind == CPU_CONV_BWD_WEIGHTS ? dnnl_query_diff_weights_md : dnnl_query_weights_md,
        0);
    status = entry_weights(e, &g.user_w, w);
    if (status != MT_OK) goto done;
    status = kind == CPU_CONV_BWD_WEIGHTS
                 ? cpu_make_reorder(cpu, w, &g.user_w, &e->aux_pd, &e->aux)
                 : cpu_make_reorder(cpu, &g.user_w, w, &e->aux_pd, &e->aux);
done:
    if (status == MT_OK) status = cpu_cache_insert(cpu, e);
    if (status != MT_OK) {
        cpu_entry_free(e);
        mt_shape4 in = d->input;
        return mt_error_context(status,
                                "cpu backend: making a %s convolution (input %dx%dx%dx%d, %d "
                                "outputs, kernel %d, stride %d)",
                                d->depthwise ? "depthwise" : "regular", in.n, in.h, in.w, in.c,
                                d->out_channels, d->kernel, d->stride);
    }
    *out = e;
    return MT_OK;
}

/* The input-side activation in the primitive's layout: x itself, or x reordered into the
 * entry's buffer. */
static mt_status input_side(cpu_backend *cpu, cpu_entry *e, const mt_tensor *x, const void **out) {
    *out = x->data;
    if (!e->act) return MT_OK;
    cpu_arg args[] = {{DNNL_ARG_FROM, x->data}, {DNNL_ARG_TO, e->act_buf}};
    *out = e->act_buf;
    return cpu_execute(cpu, e->act_pd, e->act, 2, args);
}

static mt_status lookup(cpu_backend *cpu, int kind, const mt_conv_desc *d, bool relu6,
                        cpu_entry **out) {
    cpu_key key = conv_key(kind, d);
    key.v[CPU_KEY_INTS - 1] = relu6;
    *out = cpu_cache_find(cpu, &key);
    if (*out) return MT_OK;
    return make_entry(cpu, &key, d, relu6, out);
}

/* Keras' kernel -> the entry's buffer in the primitive's format. */
static mt_status load_weights(cpu_backend *cpu, cpu_entry *e, const float *w) {
    cpu_arg args[] = {{DNNL_ARG_FROM, w}, {DNNL_ARG_TO, e->w_buf}};
    return cpu_execute(cpu, e->aux_pd, e->aux, 2, args);
}

mt_status mt_cpu_conv_forward(mt_backend *backend, const mt_conv_desc *desc, const mt_tensor *x,
                              const float *w, mt_tensor *y) {
    cpu_backend *cpu = cpu_of(backend);
    cpu_entry *e;
    MT_TRY(lookup(cpu, CPU_CONV_FWD, desc, false, &e));
    MT_TRY(cpu_check_tensor(cpu, x, desc->input, "conv_forward's x"));
    MT_TRY(cpu_check_tensor(cpu, y, mt_conv_output_shape(desc), "conv_forward's y"));
    MT_TRY(load_weights(cpu, e, w));
    const void *src;
    MT_TRY(input_side(cpu, e, x, &src));
    cpu_arg args[] = {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, e->w_buf}, {DNNL_ARG_DST, y->data}};
    return cpu_execute(cpu, e->pd, e->prim, 3, args);
}

mt_status mt_cpu_conv_backward_data(mt_backend *backend, const mt_conv_desc *desc,
                                    const mt_tensor *dy, const float *w, mt_tensor *dx) {
    cpu_backend *cpu = cpu_of(backend);
    cpu_entry *e;
    MT_TRY(lookup(cpu, CPU_CONV_BWD_DATA, desc, false, &e));
    MT_TRY(cpu_check_tensor(cpu, dy, mt_conv_output_shape(desc), "conv_backward_data's dy"));
    MT_TRY(cpu_check_tensor(cpu, dx, desc->input, "conv_backward_data's dx"));
    MT_TRY(load_weights(cpu, e, w));
    cpu_arg args[] = {{DNNL_ARG_DIFF_DST, dy->data},
                      {DNNL_ARG_WEIGHTS, e->w_buf},
                      {DNNL_ARG_DIFF_SRC, e->act ? e->act_buf : dx->data}};
    MT_TRY(cpu_execute(cpu, e->pd, e->prim, 3, args));
    if (!e->act) return MT_OK;
    cpu_arg back[] = {{DNNL_ARG_FROM, e->act_buf}, {DNNL_ARG_TO, dx->data}};
    return cpu_execute(cpu, e->act_pd, e->act, 2, back);
}

mt_status mt_cpu_conv_backward_weights(mt_backend *backend, const mt_conv_desc *desc,
                                       const mt_tensor *x, const mt_tensor *dy, float *dw) {
    cpu_backend *cpu = cpu_of(backend);
    cpu_entry *e;
    MT_TRY(lookup(cpu, CPU_CONV_BWD_WEIGHTS, desc, false, &e));
    MT_TRY(cpu_check_tensor(cpu, x, desc->input, "conv_backward_weights's x"));
    MT_TRY(cpu_check_tensor(cpu, dy, mt_conv_output_shape(desc), "conv_backward_weights's dy"));
    const void *src;
    MT_TRY(input_side(cpu, e, x, &src));
    cpu_arg args[] = {
        {DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dy->data}, {DNNL_ARG_DIFF_WEIGHTS, e->w_buf}};
    MT_TRY(cpu_execute(cpu, e->pd, e->prim, 3, args));
    cpu_arg back[] = {{DNNL_ARG_FROM, e->w_buf}, {DNNL_ARG_TO, dw}};
    return cpu_execute(cpu, e->aux_pd, e->aux, 2, back);
}

/* Inference-mode BN folded into the convolution: w' = w * gamma/sqrt(var+eps) per output
 * channel and bias = beta - mean * gamma/sqrt(var+eps), ReLU6 as oneDNN's clip post-op. The
 * folding costs one pass over the (small) weights per call, so the statistics may change freely
 * between calls. */
mt_status mt_cpu_conv_bn_relu6_inference_forward(mt_backend *backend, const mt_conv_desc *conv,
                                                 const mt_batchnorm_desc *bn, const mt_tensor *x,
                                                 const float *w, const float *gamma,
                                                 const float *beta, const float *moving_mean,
                                                 const float *moving_variance, bool relu6,
                                                 mt_tensor *y) {
    cpu_backend *cpu = cpu_of(backend);
    mt_shape4 out = mt_conv_output_shape(conv);
    if (bn->shape.n != out.n || bn->shape.h != out.h || bn->shape.w != out.w ||
        bn->shape.c != out.c || !(bn->epsilon > 0.0f))
        return MT_FAIL(MT_ERR_INVALID,
                       "cpu backend: fused conv+BN: BN shape %dx%dx%dx%d (epsilon %g) must be the "
                       "conv's output shape %dx%dx%dx%d with epsilon > 0",
                       bn->shape.n, bn->shape.h, bn->shape.w, bn->shape.c, (double)bn->epsilon,
                       out.n, out.h, out.w, out.c);
    cpu_entry *e;
    MT_TRY(lookup(cpu, CPU_CONV_BN_RELU6_FWD, conv, relu6, &e));
    MT_TRY(cpu_check_tensor(cpu, x, conv->input, "conv_bn_relu6_inference_forward's x"));
    MT_TRY(cpu_check_tensor(cpu, y, out, "conv_bn_relu6_inference_forward's y"));
    int oc = out.c;
    size_t weights = (size_t)conv->kernel * conv->kernel * (conv->depthwise ? 1 : conv->input.c);
    float *temp;
    MT_TRY(cpu_temp(cpu, weights * oc + 2 * (size_t)oc, &temp));
    float *scale = temp, *bias = temp + oc, *folded = temp + 2 * oc;
    for (int c = 0; c < oc; c++) {
        scale[c] = gamma[c] / sqrtf(moving_variance[c] + bn->epsilon);
        bias[c] = beta[c] - moving_mean[c] * scale[c];
    }
    /* Keras kernels keep the output channel innermost ([kh][kw][cin][cout], [kh][kw][c][1]) */
#pragma omp parallel for schedule(static) if (weights * oc > 65536)
    for (size_t r = 0; r < weights; r++)
        for (int c = 0; c < oc; c++)
            folded[r * oc + c] = w[r * oc + c] * scale[c];
    MT_TRY(load_weights(cpu, e, folded));
    const void *src;
    MT_TRY(input_side(cpu, e, x, &src));
    cpu_arg args[] = {{DNNL_ARG_SRC, src},
                      {DNNL_ARG_WEIGHTS, e->w_buf},
                      {DNNL_ARG_BIAS, bias},
                      {DNNL_ARG_DST, y->data}};
    return cpu_execute(cpu, e->pd, e->prim, 4, args);
}
