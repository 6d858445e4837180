/* The recording stand-in for step capture (step_recorder.h). One record per captured call: the op,
 * up to 6 tensors and 2 descriptors copied by value, up to 8 pointers, the by-value scalars, and
 * scalars_write's bytes. The file is long because it lists every op of the table once to wrap
 * and once to replay; each is a line or two. */
#include "step_recorder.h"

#include <stdlib.h>
#include <string.h>

enum rec_op {
    OP_BUFFER_COPY, OP_BUFFER_COPY_IF, OP_BUFFER_SCALE, OP_SCALARS_WRITE, OP_TENSOR_ZERO,
    OP_TENSOR_COPY, OP_ADD, OP_RELU6_FORWARD, OP_RELU6_BACKWARD, OP_CONV_FORWARD,
    OP_CONV_BACKWARD_DATA, OP_CONV_BACKWARD_WEIGHTS, OP_BN_FORWARD_TRAINING,
    OP_BN_FORWARD_INFERENCE, OP_BN_BACKWARD_TRAINING, OP_BN_BACKWARD_INFERENCE,
    OP_ZERO_PAD_FORWARD, OP_ZERO_PAD_BACKWARD, OP_POOL_FORWARD, OP_POOL_BACKWARD,
    OP_DROPOUT_FORWARD, OP_DROPOUT_BACKWARD, OP_DENSE_FORWARD, OP_DENSE_BACKWARD,
    OP_LOSS_ACCUMULATE, OP_OPTIMIZER_UPDATE, OP_CONV_BN_RELU6_INFERENCE,
    OP_BN_RELU6_FORWARD_TRAINING, OP_RELU6_BN_BACKWARD_TRAINING,
};

typedef union rec_desc {
    mt_conv_desc conv;
    mt_batchnorm_desc bn;
    mt_zero_pad_desc pad;
    mt_dense_desc dense;
    mt_loss_desc loss;
    mt_optimizer_desc opt;
} rec_desc;

typedef struct rec_call {
    enum rec_op op;
    mt_tensor t[6];
    bool has_t[6];
    rec_desc d[2];
    void *p[8];
    size_t count;
    float rate;
    bool flag;
    unsigned char bytes[MT_SCALARS_MAX_BYTES];
} rec_call;

typedef struct rec_graph {
    rec_call *calls;
    size_t count;
    uint64_t generation;
} rec_graph;

typedef struct recorder {
    mt_backend *inner;
    mt_ops table;
    rec_graph *open; /* the capture in progress, or NULL */
    bool broken;
    uint64_t generation; /* frees outside a capture */
    int refuse_begins;   /* step_capture_begin calls still to refuse */
} recorder;

static step_recorder_stats last_stats;
static int next_refuse_begins; /* step_recorder_refuse_begins, for the next recorder */

static recorder *rec_of(mt_backend *b) {
    return b->impl;
}

/* A new record of the capture in progress, or NULL when none is open. */
static rec_call *push(mt_backend *b, enum rec_op op) {
    recorder *r = rec_of(b);
    rec_graph *g = r->open;
    if (!g) return NULL;
    rec_call *grown = realloc(g->calls, (g->count + 1) * sizeof *grown);
    if (!grown) abort();
    g->calls = grown;
    rec_call *c = &g->calls[g->count++];
    memset(c, 0, sizeof *c);
    c->op = op;
    return c;
}

static void keep_t(rec_call *c, int i, const mt_tensor *t) {
    c->has_t[i] = t != NULL;
    if (t) c->t[i] = *t;
}

static mt_tensor *T(rec_call *c, int i) {
    return c->has_t[i] ? &c->t[i] : NULL;
}

/* A call a captured step must not make: the capture breaks (as a host wait breaks CUDA's). */
static mt_status refuse(mt_backend *b, const char *op) {
    rec_of(b)->broken = true;
    return MT_FAIL(MT_ERR_INVALID, "step recorder: %s inside a step capture", op);
}

#define INNER(b) (rec_of(b)->inner)
#define PASS(b, op, ...) INNER(b)->ops->op(INNER(b), __VA_ARGS__)

/* ---- memory and the host: passed through, refused while capturing ---- */

static mt_status w_init(mt_backend *b, const mt_backend_options *o) {
    (void)b, (void)o;
    return MT_OK;
}
static void w_shutdown(mt_backend *b) {
    recorder *r = rec_of(b);
    mt_backend_destroy(r->inner);
    free(r);
    b->impl = NULL;
}
static mt_status w_buffer_alloc(mt_backend *b, size_t bytes, void **out) {
    if (rec_of(b)->open) return refuse(b, "buffer_alloc");
    return PASS(b, buffer_alloc, bytes, out);
}
static void w_buffer_free(mt_backend *b, void *buffer) {
    if (rec_of(b)->open) rec_of(b)->broken = true;
    rec_of(b)->generation++;
    PASS(b, buffer_free, buffer);
}
static mt_status w_upload(mt_backend *b, void *dst, const void *src, size_t bytes) {
    if (rec_of(b)->open) return refuse(b, "upload");
    return PASS(b, upload, dst, src, bytes);
}
static mt_status w_download(mt_backend *b, void *dst, const void *src, size_t bytes) {
    if (rec_of(b)->open) return refuse(b, "download");
    return PASS(b, download, dst, src, bytes);
}
static mt_status w_tensor_alloc(mt_backend *b, mt_shape4 shape, mt_tensor *out) {
    if (rec_of(b)->open) return refuse(b, "tensor_alloc");
    return PASS(b, tensor_alloc, shape, out);
}
static void w_tensor_free(mt_backend *b, mt_tensor *t) {
    if (rec_of(b)->open) rec_of(b)->broken = true;
    rec_of(b)->generation++;
    PASS(b, tensor_free, t);
}
static mt_status w_host_alloc(mt_backend *b, size_t bytes, void **out) {
    return PASS(b, host_alloc, bytes, out);
}
static void w_host_free(mt_backend *b, void *buffer) {
    PASS(b, host_free, buffer);
}
static mt_status w_input_upload(mt_backend *b, int slot, const mt_input_batch *batch) {
    if (rec_of(b)->open) return refuse(b, "input_upload");
    return PASS(b, input_upload, slot, batch);
}
static mt_status w_input_convert(mt_backend *b, int slot, mt_tensor *images, int32_t *labels) {
    if (rec_of(b)->open) return refuse(b, "input_convert");
    return PASS(b, input_convert, slot, images, labels);
}
static mt_status w_input_wait(mt_backend *b, int slot) {
    if (rec_of(b)->open) return refuse(b, "input_wait");
    return PASS(b, input_wait, slot);
}
static mt_status w_tensor_from_nhwc(mt_backend *b, const float *src, mt_tensor *dst) {
    if (rec_of(b)->open) return refuse(b, "tensor_from_nhwc");
    return PASS(b, tensor_from_nhwc, src, dst);
}
static mt_status w_tensor_to_nhwc(mt_backend *b, const mt_tensor *src, float *dst) {
    if (rec_of(b)->open) return refuse(b, "tensor_to_nhwc");
    return PASS(b, tensor_to_nhwc, src, dst);
}
static mt_status w_synchronize(mt_backend *b) {
    if (rec_of(b)->open) return refuse(b, "synchronize");
    return INNER(b)->ops->synchronize(INNER(b));
}
static mt_status w_readback_start(mt_backend *b, void *dst, const void *src, size_t bytes) {
    if (rec_of(b)->open) return refuse(b, "readback_start");
    return PASS(b, readback_start, dst, src, bytes);
}
static mt_status w_readback_wait(mt_backend *b) {
    if (rec_of(b)->open) return refuse(b, "readback_wait");
    return INNER(b)->ops->readback_wait(INNER(b));
}
static mt_status w_loss_forward_backward(mt_backend *b, const mt_loss_desc *d, const float *z,
                                         const int32_t *l, float *loss, float *dz) {
    if (rec_of(b)->open) return refuse(b, "loss_forward_backward"); /* its value goes to the host */
    return PASS(b, loss_forward_backward, d, z, l, loss, dz);
}

/* ---- the step's ops: recorded while capturing ---- */

static mt_status w_buffer_copy(mt_backend *b, void *dst, const void *src, size_t bytes) {
    rec_call *c = push(b, OP_BUFFER_COPY);
    if (!c) return PASS(b, buffer_copy, dst, src, bytes);
    c->p[0] = dst, c->p[1] = (void *)src, c->count = bytes;
    return MT_OK;
}
static mt_status w_buffer_copy_if(mt_backend *b, void *dst, const void *src, size_t bytes,
                                  const float *flag, double *count) {
    rec_call *c = push(b, OP_BUFFER_COPY_IF);
    if (!c) return PASS(b, buffer_copy_if, dst, src, bytes, flag, count);
    c->p[0] = dst, c->p[1] = (void *)src, c->p[2] = (void *)flag, c->p[3] = count;
    c->count = bytes;
    return MT_OK;
}
static mt_status w_buffer_scale(mt_backend *b, float *x, size_t count, const float *factor,
                                float *flag) {
    rec_call *c = push(b, OP_BUFFER_SCALE);
    if (!c) return PASS(b, buffer_scale, x, count, factor, flag);
    c->p[0] = x, c->p[1] = (void *)factor, c->p[2] = flag, c->count = count;
    return MT_OK;
}
static mt_status w_scalars_write(mt_backend *b, void *dst, const void *src, size_t bytes) {
    rec_call *c = push(b, OP_SCALARS_WRITE);
    if (!c) return PASS(b, scalars_write, dst, src, bytes);
    if (bytes > MT_SCALARS_MAX_BYTES) return refuse(b, "scalars_write (too many bytes)");
    c->p[0] = dst, c->count = bytes;
    memcpy(c->bytes, src, bytes); /* by value, as cuda's kernel argument */
    return MT_OK;
}
static mt_status w_tensor_zero(mt_backend *b, mt_tensor *t) {
    rec_call *c = push(b, OP_TENSOR_ZERO);
    if (!c) return PASS(b, tensor_zero, t);
    keep_t(c, 0, t);
    return MT_OK;
}
static mt_status w_tensor_copy(mt_backend *b, const mt_tensor *src, mt_tensor *dst) {
    rec_call *c = push(b, OP_TENSOR_COPY);
    if (!c) return PASS(b, tensor_copy, src, dst);
    keep_t(c, 0, src), keep_t(c, 1, dst);
    return MT_OK;
}
static mt_status w_add(mt_backend *b, const mt_tensor *x, const mt_tensor *y, mt_tensor *z) {
    rec_call *c = push(b, OP_ADD);
    if (!c) return PASS(b, add, x, y, z);
    keep_t(c, 0, x), keep_t(c, 1, y), keep_t(c, 2, z);
    return MT_OK;
}
static mt_status w_relu6_forward(mt_backend *b, const mt_tensor *x, mt_tensor *y) {
    rec_call *c = push(b, OP_RELU6_FORWARD);
    if (!c) return PASS(b, relu6_forward, x, y);
    keep_t(c, 0, x), keep_t(c, 1, y);
    return MT_OK;
}
static mt_status w_relu6_backward(mt_backend *b, const mt_tensor *y, const mt_tensor *dy,
                                  mt_tensor *dx) {
    rec_call *c = push(b, OP_RELU6_BACKWARD);
    if (!c) return PASS(b, relu6_backward, y, dy, dx);
    keep_t(c, 0, y), keep_t(c, 1, dy), keep_t(c, 2, dx);
    return MT_OK;
}
static mt_status w_conv_forward(mt_backend *b, const mt_conv_desc *d, const mt_tensor *x,
                                const float *w, mt_tensor *y) {
    rec_call *c = push(b, OP_CONV_FORWARD);
    if (!c) return PASS(b, conv_forward, d, x, w, y);
    c->d[0].conv = *d, keep_t(c, 0, x), c->p[0] = (void *)w, keep_t(c, 1, y);
    return MT_OK;
}
static mt_status w_conv_backward_data(mt_backend *b, const mt_conv_desc *d, const mt_tensor *dy,
                                      const float *w, mt_tensor *dx) {
    rec_call *c = push(b, OP_CONV_BACKWARD_DATA);
    if (!c) return PASS(b, conv_backward_data, d, dy, w, dx);
    c->d[0].conv = *d, keep_t(c, 0, dy), c->p[0] = (void *)w, keep_t(c, 1, dx);
    return MT_OK;
}
static mt_status w_conv_backward_weights(mt_backend *b, const mt_conv_desc *d, const mt_tensor *x,
                                         const mt_tensor *dy, float *dw) {
    rec_call *c = push(b, OP_CONV_BACKWARD_WEIGHTS);
    if (!c) return PASS(b, conv_backward_weights, d, x, dy, dw);
    c->d[0].conv = *d, keep_t(c, 0, x), keep_t(c, 1, dy), c->p[0] = dw;
    return MT_OK;
}

/* the BN forward signature (training, and the fused one with ReLU6) */
static mt_status bn_forward_rec(mt_backend *b, enum rec_op op, const mt_batchnorm_desc *d,
                                const mt_tensor *x, const float *gamma, const float *beta,
                                float *mm, float *mv, mt_tensor *y, float *sm, float *sis) {
    rec_call *c = push(b, op);
    if (!c) {
        if (op == OP_BN_FORWARD_TRAINING)
            return PASS(b, batchnorm_forward_training, d, x, gamma, beta, mm, mv, y, sm, sis);
        return PASS(b, batchnorm_relu6_forward_training, d, x, gamma, beta, mm, mv, y, sm, sis);
    }
    c->d[0].bn = *d, keep_t(c, 0, x), keep_t(c, 1, y);
    void *p[] = {(void *)gamma, (void *)beta, mm, mv, sm, sis};
    memcpy(c->p, p, sizeof p);
    return MT_OK;
}
static mt_status w_bn_forward_training(mt_backend *b, const mt_batchnorm_desc *d,
                                       const mt_tensor *x, const float *gamma, const float *beta,
                                       float *mm, float *mv, mt_tensor *y, float *sm, float *sis) {
    return bn_forward_rec(b, OP_BN_FORWARD_TRAINING, d, x, gamma, beta, mm, mv, y, sm, sis);
}
static mt_status w_bn_relu6_forward_training(mt_backend *b, const mt_batchnorm_desc *d,
                                             const mt_tensor *x, const float *gamma,
                                             const float *beta, float *mm, float *mv, mt_tensor *y,
                                             float *sm, float *sis) {
    return bn_forward_rec(b, OP_BN_RELU6_FORWARD_TRAINING, d, x, gamma, beta, mm, mv, y, sm, sis);
}
static mt_status w_bn_forward_inference(mt_backend *b, const mt_batchnorm_desc *d,
                                        const mt_tensor *x, const float *gamma, const float *beta,
                                        const float *mm, const float *mv, mt_tensor *y) {
    rec_call *c = push(b, OP_BN_FORWARD_INFERENCE);
    if (!c) return PASS(b, batchnorm_forward_inference, d, x, gamma, beta, mm, mv, y);
    c->d[0].bn = *d, keep_t(c, 0, x), keep_t(c, 1, y);
    void *p[] = {(void *)gamma, (void *)beta, (void *)mm, (void *)mv};
    memcpy(c->p, p, sizeof p);
    return MT_OK;
}
static mt_status w_bn_backward_training(mt_backend *b, const mt_batchnorm_desc *d,
                                        const mt_tensor *x, const mt_tensor *dy, const float *gamma,
                                        const float *sm, const float *sis, mt_tensor *dx,
                                        float *dgamma, float *dbeta) {
    rec_call *c = push(b, OP_BN_BACKWARD_TRAINING);
    if (!c)
        return PASS(b, batchnorm_backward_training, d, x, dy, gamma, sm, sis, dx, dgamma, dbeta);
    c->d[0].bn = *d, keep_t(c, 0, x), keep_t(c, 1, dy), keep_t(c, 2, dx);
    void *p[] = {(void *)gamma, (void *)sm, (void *)sis, dgamma, dbeta};
    memcpy(c->p, p, sizeof p);
    return MT_OK;
}
static mt_status w_bn_backward_inference(mt_backend *b, const mt_batchnorm_desc *d,
                                         const mt_tensor *x, const mt_tensor *dy,
                                         const float *gamma, const float *mm, const float *mv,
                                         mt_tensor *dx, float *dgamma, float *dbeta) {
    rec_call *c = push(b, OP_BN_BACKWARD_INFERENCE);
    if (!c)
        return PASS(b, batchnorm_backward_inference, d, x, dy, gamma, mm, mv, dx, dgamma, dbeta);
    c->d[0].bn = *d, keep_t(c, 0, x), keep_t(c, 1, dy), keep_t(c, 2, dx);
    void *p[] = {(void *)gamma, (void *)mm, (void *)mv, dgamma, dbeta};
    memcpy(c->p, p, sizeof p);
    return MT_OK;
}
static mt_status w_relu6_bn_backward_training(mt_backend *b, const mt_batchnorm_desc *d,
                                              const mt_tensor *x, const mt_tensor *y,
                                              const mt_tensor *dy, const float *gamma,
                                              const float *sm, const float *sis, mt_tensor *dx,
                                              float *dgamma, float *dbeta) {
    rec_call *c = push(b, OP_RELU6_BN_BACKWARD_TRAINING);
    if (!c)
        return PASS(b, relu6_batchnorm_backward_training, d, x, y, dy, gamma, sm, sis, dx, dgamma,
                    dbeta);
    c->d[0].bn = *d, keep_t(c, 0, x), keep_t(c, 1, y), keep_t(c, 2, dy), keep_t(c, 3, dx);
    void *p[] = {(void *)gamma, (void *)sm, (void *)sis, dgamma, dbeta};
    memcpy(c->p, p, sizeof p);
    return MT_OK;
}
static mt_status w_conv_bn_relu6_inference(mt_backend *b, const mt_conv_desc *conv,
                                           const mt_batchnorm_desc *bn, const mt_tensor *x,
                                           const float *w, const float *gamma, const float *beta,
                                           const float *mm, const float *mv, bool relu6,
                                           mt_tensor *y) {
    rec_call *c = push(b, OP_CONV_BN_RELU6_INFERENCE);
    if (!c)
        return PASS(b, conv_bn_relu6_inference_forward, conv, bn, x, w, gamma, beta, mm, mv,
                    relu6, y);
    c->d[0].conv = *conv, c->d[1].bn = *bn, keep_t(c, 0, x), keep_t(c, 1, y), c->flag = relu6;
    void *p[] = {(void *)w, (void *)gamma, (void *)beta, (void *)mm, (void *)mv};
    memcpy(c->p, p, sizeof p);
    return MT_OK;
}
static mt_status w_zero_pad_forward(mt_backend *b, const mt_zero_pad_desc *d, const mt_tensor *x,
                                    mt_tensor *y) {
    rec_call *c = push(b, OP_ZERO_PAD_FORWARD);
    if (!c) return PASS(b, zero_pad_forward, d, x, y);
    c->d[0].pad = *d, keep_t(c, 0, x), keep_t(c, 1, y);
    return MT_OK;
}
static mt_status w_zero_pad_backward(mt_backend *b, const mt_zero_pad_desc *d,
                                     const mt_tensor *dy, mt_tensor *dx) {
    rec_call *c = push(b, OP_ZERO_PAD_BACKWARD);
    if (!c) return PASS(b, zero_pad_backward, d, dy, dx);
    c->d[0].pad = *d, keep_t(c, 0, dy), keep_t(c, 1, dx);
    return MT_OK;
}
static mt_status w_pool_forward(mt_backend *b, const mt_tensor *x, float *y) {
    rec_call *c = push(b, OP_POOL_FORWARD);
    if (!c) return PASS(b, global_avg_pool_forward, x, y);
    keep_t(c, 0, x), c->p[0] = y;
    return MT_OK;
}
static mt_status w_pool_backward(mt_backend *b, const float *dy, mt_tensor *dx) {
    rec_call *c = push(b, OP_POOL_BACKWARD);
    if (!c) return PASS(b, global_avg_pool_backward, dy, dx);
    c->p[0] = (void *)dy, keep_t(c, 0, dx);
    return MT_OK;
}
static mt_status w_dropout_forward(mt_backend *b, size_t count, float rate, const uint64_t *seed,
                                   const float *x, float *y, uint8_t *mask) {
    rec_call *c = push(b, OP_DROPOUT_FORWARD);
    if (!c) return PASS(b, dropout_forward, count, rate, seed, x, y, mask);
    c->count = count, c->rate = rate;
    void *p[] = {(void *)seed, (void *)x, y, mask};
    memcpy(c->p, p, sizeof p);
    return MT_OK;
}
static mt_status w_dropout_backward(mt_backend *b, size_t count, float rate, const uint8_t *mask,
                                    const float *dy, float *dx) {
    rec_call *c = push(b, OP_DROPOUT_BACKWARD);
    if (!c) return PASS(b, dropout_backward, count, rate, mask, dy, dx);
    c->count = count, c->rate = rate;
    void *p[] = {(void *)mask, (void *)dy, dx};
    memcpy(c->p, p, sizeof p);
    return MT_OK;
}
static mt_status w_dense_forward(mt_backend *b, const mt_dense_desc *d, const float *x,
                                 const float *w, const float *bias, float *y) {
    rec_call *c = push(b, OP_DENSE_FORWARD);
    if (!c) return PASS(b, dense_forward, d, x, w, bias, y);
    c->d[0].dense = *d;
    void *p[] = {(void *)x, (void *)w, (void *)bias, y};
    memcpy(c->p, p, sizeof p);
    return MT_OK;
}
static mt_status w_dense_backward(mt_backend *b, const mt_dense_desc *d, const float *x,
                                  const float *w, const float *dy, float *dx, float *dw,
                                  float *db) {
    rec_call *c = push(b, OP_DENSE_BACKWARD);
    if (!c) return PASS(b, dense_backward, d, x, w, dy, dx, dw, db);
    c->d[0].dense = *d;
    void *p[] = {(void *)x, (void *)w, (void *)dy, dx, dw, db};
    memcpy(c->p, p, sizeof p);
    return MT_OK;
}
static mt_status w_loss_accumulate(mt_backend *b, const mt_loss_desc *d, const float *z,
                                   const int32_t *labels, float *dz, const uint64_t *step,
                                   double *accum, float *skip) {
    rec_call *c = push(b, OP_LOSS_ACCUMULATE);
    if (!c) return PASS(b, loss_accumulate, d, z, labels, dz, step, accum, skip);
    c->d[0].loss = *d;
    void *p[] = {(void *)z, (void *)labels, dz, (void *)step, accum, skip};
    memcpy(c->p, p, sizeof p);
    return MT_OK;
}
static mt_status w_optimizer_update(mt_backend *b, const mt_optimizer_desc *d, float *params,
                                    const float *grads, float *slots) {
    rec_call *c = push(b, OP_OPTIMIZER_UPDATE);
    if (!c) return PASS(b, optimizer_update, d, params, grads, slots);
    c->d[0].opt = *d;
    void *p[] = {params, (void *)grads, slots};
    memcpy(c->p, p, sizeof p);
    return MT_OK;
}

/* ---- the capture ---- */

static mt_status w_capture_begin(mt_backend *b) {
    recorder *r = rec_of(b);
    if (r->open) return MT_FAIL(MT_ERR_INVALID, "step recorder: a capture is already open");
    if (r->refuse_begins > 0) {
        r->refuse_begins--;
        last_stats.refused_begins++;
        return MT_FAIL(MT_ERR_INVALID, "step recorder: capture refused (as while profiling)");
    }
    r->open = calloc(1, sizeof *r->open);
    if (!r->open) return MT_FAIL(MT_ERR_NOMEM, "step recorder: out of memory");
    r->broken = false;
    return MT_OK;
}

static void w_graph_free(mt_backend *b, void *graph) {
    (void)b;
    rec_graph *g = graph;
    if (!g) return;
    free(g->calls);
    free(g);
}

static mt_status w_capture_end(mt_backend *b, void **out) {
    recorder *r = rec_of(b);
    *out = NULL;
    rec_graph *g = r->open;
    if (!g) return MT_FAIL(MT_ERR_INVALID, "step recorder: no capture is open");
    r->open = NULL;
    if (r->broken) {
        last_stats.broken_captures++;
        w_graph_free(b, g);
        return MT_FAIL(MT_ERR_INVALID, "step recorder: the capture broke (a host call inside)");
    }
    g->generation = r->generation;
    last_stats.captures++;
    *out = g;
    return MT_OK;
}

static mt_status replay_one(mt_backend *b, rec_call *c) {
    void **p = c->p;
    switch (c->op) {
    case OP_BUFFER_COPY: return PASS(b, buffer_copy, p[0], p[1], c->count);
    case OP_BUFFER_COPY_IF: return PASS(b, buffer_copy_if, p[0], p[1], c->count, p[2], p[3]);
    case OP_BUFFER_SCALE: return PASS(b, buffer_scale, p[0], c->count, p[1], p[2]);
    case OP_SCALARS_WRITE: return PASS(b, scalars_write, p[0], c->bytes, c->count);
    case OP_TENSOR_ZERO: return PASS(b, tensor_zero, T(c, 0));
    case OP_TENSOR_COPY: return PASS(b, tensor_copy, T(c, 0), T(c, 1));
    case OP_ADD: return PASS(b, add, T(c, 0), T(c, 1), T(c, 2));
    case OP_RELU6_FORWARD: return PASS(b, relu6_forward, T(c, 0), T(c, 1));
    case OP_RELU6_BACKWARD: return PASS(b, relu6_backward, T(c, 0), T(c, 1), T(c, 2));
    case OP_CONV_FORWARD: return PASS(b, conv_forward, &c->d[0].conv, T(c, 0), p[0], T(c, 1));
    case OP_CONV_BACKWARD_DATA:
        return PASS(b, conv_backward_data, &c->d[0].conv, T(c, 0), p[0], T(c, 1));
    case OP_CONV_BACKWARD_WEIGHTS:
        return PASS(b, conv_backward_weights, &c->d[0].conv, T(c, 0), T(c, 1), p[0]);
    case OP_BN_FORWARD_TRAINING:
        return PASS(b, batchnorm_forward_training, &c->d[0].bn, T(c, 0), p[0], p[1], p[2], p[3],
                    T(c, 1), p[4], p[5]);
    case OP_BN_RELU6_FORWARD_TRAINING:
        return PASS(b, batchnorm_relu6_forward_training, &c->d[0].bn, T(c, 0), p[0], p[1], p[2],
                    p[3], T(c, 1), p[4], p[5]);
    case OP_BN_FORWARD_INFERENCE:
        return PASS(b, batchnorm_forward_inference, &c->d[0].bn, T(c, 0), p[0], p[1], p[2], p[3],
                    T(c, 1));
    case OP_BN_BACKWARD_TRAINING:
        return PASS(b, batchnorm_backward_training, &c->d[0].bn, T(c, 0), T(c, 1), p[0], p[1],
                    p[2], T(c, 2), p[3], p[4]);
    case OP_BN_BACKWARD_INFERENCE:
        return PASS(b, batchnorm_backward_inference, &c->d[0].bn, T(c, 0), T(c, 1), p[0], p[1],
                    p[2], T(c, 2), p[3], p[4]);
    case OP_RELU6_BN_BACKWARD_TRAINING:
        return PASS(b, relu6_batchnorm_backward_training, &c->d[0].bn, T(c, 0), T(c, 1), T(c, 2),
                    p[0], p[1], p[2], T(c, 3), p[3], p[4]);
    case OP_CONV_BN_RELU6_INFERENCE:
        return PASS(b, conv_bn_relu6_inference_forward, &c->d[0].conv, &c->d[1].bn, T(c, 0), p[0],
                    p[1], p[2], p[3], p[4], c->flag, T(c, 1));
    case OP_ZERO_PAD_FORWARD: return PASS(b, zero_pad_forward, &c->d[0].pad, T(c, 0), T(c, 1));
    case OP_ZERO_PAD_BACKWARD: return PASS(b, zero_pad_backward, &c->d[0].pad, T(c, 0), T(c, 1));
    case OP_POOL_FORWARD: return PASS(b, global_avg_pool_forward, T(c, 0), p[0]);
    case OP_POOL_BACKWARD: return PASS(b, global_avg_pool_backward, p[0], T(c, 0));
    case OP_DROPOUT_FORWARD:
        return PASS(b, dropout_forward, c->count, c->rate, p[0], p[1], p[2], p[3]);
    case OP_DROPOUT_BACKWARD:
        return PASS(b, dropout_backward, c->count, c->rate, p[0], p[1], p[2]);
    case OP_DENSE_FORWARD: return PASS(b, dense_forward, &c->d[0].dense, p[0], p[1], p[2], p[3]);
    case OP_DENSE_BACKWARD:
        return PASS(b, dense_backward, &c->d[0].dense, p[0], p[1], p[2], p[3], p[4], p[5]);
    case OP_LOSS_ACCUMULATE:
        return PASS(b, loss_accumulate, &c->d[0].loss, p[0], p[1], p[2], p[3], p[4], p[5]);
    case OP_OPTIMIZER_UPDATE: return PASS(b, optimizer_update, &c->d[0].opt, p[0], p[1], p[2]);
    }
    return MT_FAIL(MT_ERR_INTERNAL, "step recorder: unknown record %d", (int)c->op);
}

static mt_status w_replay(mt_backend *b, void *graph) {
    rec_graph *g = graph;
    if (g->generation != rec_of(b)->generation)
        return MT_FAIL(MT_ERR_INVALID, "step recorder: memory was freed since the capture");
    for (size_t i = 0; i < g->count; i++) {
        MT_TRY(replay_one(b, &g->calls[i]));
        last_stats.replayed_calls++;
    }
    last_stats.replays++;
    return MT_OK;
}

mt_status step_recorder_wrap(mt_backend *inner, mt_backend **out) {
    *out = NULL;
    last_stats = (step_recorder_stats){0};
    recorder *r = calloc(1, sizeof *r);
    mt_backend *b = calloc(1, sizeof *b);
    if (!r || !b) {
        free(r), free(b);
        mt_backend_destroy(inner);
        return MT_FAIL(MT_ERR_NOMEM, "step recorder: out of memory");
    }
    const mt_ops *in = inner->ops;
    r->inner = inner;
    r->refuse_begins = next_refuse_begins;
    next_refuse_begins = 0;
    r->table = (mt_ops){
        .name = in->name,
        .device_memory = in->device_memory,
        .init = w_init,
        .shutdown = w_shutdown,
        .buffer_alloc = w_buffer_alloc,
        .buffer_free = w_buffer_free,
        .upload = w_upload,
        .download = w_download,
        .tensor_alloc = w_tensor_alloc,
        .tensor_free = w_tensor_free,
        .host_alloc = w_host_alloc,
        .host_free = w_host_free,
        .input_upload = w_input_upload,
        .input_convert = w_input_convert,
        .input_wait = w_input_wait,
        .tensor_from_nhwc = w_tensor_from_nhwc,
        .tensor_to_nhwc = w_tensor_to_nhwc,
        .synchronize = w_synchronize,
        .buffer_copy = w_buffer_copy,
        .buffer_copy_if = w_buffer_copy_if,
        .buffer_scale = w_buffer_scale,
        .scalars_write = w_scalars_write,
        .readback_start = w_readback_start,
        .readback_wait = w_readback_wait,
        .tensor_zero = w_tensor_zero,
        .tensor_copy = w_tensor_copy,
        .add = w_add,
        .relu6_forward = w_relu6_forward,
        .relu6_backward = w_relu6_backward,
        .conv_forward = w_conv_forward,
        .conv_backward_data = w_conv_backward_data,
        .conv_backward_weights = w_conv_backward_weights,
        .batchnorm_forward_training = w_bn_forward_training,
        .batchnorm_forward_inference = w_bn_forward_inference,
        .batchnorm_backward_training = w_bn_backward_training,
        .batchnorm_backward_inference = w_bn_backward_inference,
        .zero_pad_forward = w_zero_pad_forward,
        .zero_pad_backward = w_zero_pad_backward,
        .global_avg_pool_forward = w_pool_forward,
        .global_avg_pool_backward = w_pool_backward,
        .dropout_forward = w_dropout_forward,
        .dropout_backward = w_dropout_backward,
        .dense_forward = w_dense_forward,
        .dense_backward = w_dense_backward,
        .loss_forward_backward = w_loss_forward_backward,
        .loss_accumulate = w_loss_accumulate,
        .optimizer_update = w_optimizer_update,
        /* the optional ops exactly where the inner backend has them (the model's plan reads
         * their presence) */
        .conv_bn_relu6_inference_forward =
            in->conv_bn_relu6_inference_forward ? w_conv_bn_relu6_inference : NULL,
        .batchnorm_relu6_forward_training =
            in->batchnorm_relu6_forward_training ? w_bn_relu6_forward_training : NULL,
        .relu6_batchnorm_backward_training =
            in->relu6_batchnorm_backward_training ? w_relu6_bn_backward_training : NULL,
        .step_capture_begin = w_capture_begin,
        .step_capture_end = w_capture_end,
        .step_replay = w_replay,
        .step_graph_free = w_graph_free,
    };
    b->ops = &r->table;
    b->impl = r;
    b->options = inner->options;
    *out = b;
    return MT_OK;
}

void step_recorder_refuse_begins(int count) {
    next_refuse_begins = count;
}

step_recorder_stats step_recorder_last_stats(void) {
    return last_stats;
}
