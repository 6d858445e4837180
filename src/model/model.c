/* The MobileNetV2 executor: parameter buffers, activations allocated once per batch size, the
 * forward pass (backbone, head, loss) and the backward pass that stops at the lowest trainable
 * layer. Everything runs through the ops table, so the same code drives every backend. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/splitmix64.h"
#include "mobiletune/model.h"
#include "model/model_plan.h"
#include "model/model_testing.h"

enum { GRAD_SLOTS_MAX = 64 };

static const float bn_epsilon = 1e-3f; /* Keras' MobileNetV2 BatchNormalization(epsilon=1e-3) */

/* A gradient tensor of the backward pass, shared by reference where a residual Add hands the
 * same gradient to both of its inputs. A slot either owns its tensor (allocated on the first
 * backward, kept for the next ones) or borrows the activation of a layer the backward walk has
 * passed: once layers above k are done, nothing reads layer k's output again until the next
 * forward, so its memory can hold a gradient of the same shape. Borrowing most gradients from
 * dead activations roughly halves the extra memory of the backward pass. */
typedef struct grad_slot {
    mt_tensor tensor;
    int refs;     /* 0: free */
    int borrowed; /* -1: owned; else the layer whose activation this is */
} grad_slot;

struct mt_model {
    mt_backend *backend;
    const mt_ops *ops;
    mt_model_layout *layout;

    /* backend memory */
    float *params, *grads, *frozen, *state;
    float *bn_saved; /* per BN layer: saved mean [c], saved 1/std [c] of the last training step */
    float *pooled, *dropped, *dpooled, *ddropped, *logits, *dlogits; /* head, batch_size rows */
    uint8_t *mask;
    int32_t *labels;
    float *host_logits;

    /* per layer: its output tensor, what the backward keeps, the fused ops (model_plan.h) */
    mt_model_plan plan;
    bool allocated[MT_MODEL_LAYERS]; /* acts[k] owns its memory (runtime, per batch size) */
    /* BN layers that the last forward ran fused with their ReLU6 in training mode: the backward
     * runs the pair at the ReLU6 and skips the BN */
    bool fused_training[MT_MODEL_LAYERS];

    float loss_scale; /* mt_model_set_loss_scale (1: none) */
    int n;            /* batch the activations are sized for (0: none yet) */
    mt_tensor acts[MT_MODEL_LAYERS];
    grad_slot slots[GRAD_SLOTS_MAX];
    int slot_count;
    int walk_at;                /* backward: the layer being processed (outputs >= it are dead) */
    bool lent[MT_MODEL_LAYERS]; /* activation borrowed by a slot during this backward */
    int grad_of[MT_MODEL_LAYERS];

    /* the last forward */
    bool ready_for_backward, head_only, dropout_applied;
    int last_n;
    /* the last backbone forward's kept outputs are intact (no backward has reused them) */
    bool outputs_intact;

    mt_grad_ready_fn hook;
    void *hook_user;
};

/* ---- small helpers ----------------------------------------------------------------------- */

static float *tensor_ptr(mt_model *m, const mt_param_tensor *t) {
    switch (t->buffer) {
    case MT_PARAM_TRAINABLE:
        return m->params + t->offset;
    case MT_PARAM_FROZEN:
        return m->frozen + t->offset;
    case MT_PARAM_STATE:
        return m->state + t->offset;
    }
    return NULL;
}

static float *grad_ptr(mt_model *m, const mt_param_tensor *t) {
    return t->buffer == MT_PARAM_TRAINABLE ? m->grads + t->offset : NULL;
}

static const mt_param_tensor *layer_tensor(const mt_model *m, int layer, int which) {
    MT_ASSERT(m->plan.layer[layer].first_tensor >= 0);
    return &m->layout->tensors[m->plan.layer[layer].first_tensor + which];
}

static mt_shape4 exec_shape(const mt_model *m, int layer, int n) {
    return (mt_shape4){.n = n,
                       .h = m->plan.layer[layer].exec_h,
                       .w = m->plan.layer[layer].exec_w,
                       .c = m->plan.layer[layer].exec_c};
}

static mt_tensor *act(mt_model *m, int layer) {
    return &m->acts[m->plan.layer[layer].owner];
}

static mt_status alloc_buffer(mt_model *m, size_t bytes, void **out) {
    /* A zero-length buffer (no frozen layers) still gets a valid pointer. */
    return m->ops->buffer_alloc(m->backend, bytes ? bytes : sizeof(float), out);
}

static void free_buffer(mt_model *m, void *buffer) {
    if (buffer) m->ops->buffer_free(m->backend, buffer);
}

/* the weight initializer's random stream (a pure function of seed and tensor) */
static double uniform01(uint64_t *state) {
    return (double)(mt_splitmix64_next(state) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- activations and gradient slots ------------------------------------------------------ */

static void free_grad_slots(mt_model *m) {
    for (int i = 0; i < m->slot_count; i++)
        if (m->slots[i].borrowed < 0) m->ops->tensor_free(m->backend, &m->slots[i].tensor);
    memset(m->slots, 0, sizeof m->slots);
    m->slot_count = 0;
}

static void free_activations(mt_model *m) {
    for (int i = 0; i < MT_MODEL_BACKBONE_LAYERS; i++)
        if (m->allocated[i]) m->ops->tensor_free(m->backend, &m->acts[i]);
    memset(m->acts, 0, sizeof m->acts);
    memset(m->allocated, 0, sizeof m->allocated);
    free_grad_slots(m);
    m->n = 0;
    m->ready_for_backward = false;
    m->outputs_intact = false;
}

static bool same_shape(mt_shape4 a, mt_shape4 b) {
    return a.n == b.n && a.h == b.h && a.w == b.w && a.c == b.c;
}

static mt_status ensure_activations(mt_model *m, int n) {
    if (n < 1 || n > m->layout->config.batch_size)
        return MT_FAIL(MT_ERR_INVALID, "batch of %d images: the model was created for 1 to %d", n,
                       m->layout->config.batch_size);
    if (m->n == n) return MT_OK;
    free_activations(m);
    /* the plan says which layers allocate and which reuse an earlier layer's tensor */
    for (int i = 0; i < MT_MODEL_BACKBONE_LAYERS; i++) {
        int storage = m->plan.layer[i].storage;
        if (storage < 0) continue;
        if (storage != i) {
            m->acts[i] = m->acts[storage]; /* same memory, never freed through acts[i] */
            continue;
        }
        mt_status status = m->ops->tensor_alloc(m->backend, exec_shape(m, i, n), &m->acts[i]);
        if (status != MT_OK) {
            free_activations(m);
            return mt_error_context(status, "allocating the activation of layer %s (batch %d)",
                                    m->layout->layers[i].name, n);
        }
        m->allocated[i] = true;
    }
    m->n = n;
    return MT_OK;
}

static mt_status slot_acquire(mt_model *m, mt_shape4 shape, int *out) {
    for (int i = 0; i < m->slot_count; i++) {
        if (m->slots[i].refs == 0 && same_shape(m->slots[i].tensor.shape, shape)) {
            m->slots[i].refs = 1;
            *out = i;
            return MT_OK;
        }
    }
    if (m->slot_count == GRAD_SLOTS_MAX)
        return MT_FAIL(MT_ERR_INTERNAL, "backward needs more than %d gradient tensors",
                       GRAD_SLOTS_MAX);
    int i = m->slot_count;
    /* A dead activation: layer k's own tensor, k at or above the layer being processed (whose
     * backward reads only its input), not lent yet. */
    for (int k = m->walk_at; k < MT_MODEL_BACKBONE_LAYERS; k++) {
        if (!m->allocated[k] || !m->plan.layer[k].keep || m->lent[k] ||
            !same_shape(m->acts[k].shape, shape))
            continue;
        m->lent[k] = true;
        m->slots[i] = (grad_slot){.tensor = m->acts[k], .refs = 1, .borrowed = k};
        m->slot_count++;
        *out = i;
        return MT_OK;
    }
    MT_TRY(m->ops->tensor_alloc(m->backend, shape, &m->slots[i].tensor));
    m->slots[i].borrowed = -1;
    m->slots[i].refs = 1;
    m->slot_count++;
    *out = i;
    return MT_OK;
}

/* After a backward (or a failed one): drop the borrowed slots, keep the owned ones free. */
static void return_borrowed(mt_model *m) {
    int kept = 0;
    for (int i = 0; i < m->slot_count; i++) {
        if (m->slots[i].borrowed >= 0) continue;
        m->slots[i].refs = 0;
        m->slots[kept++] = m->slots[i];
    }
    m->slot_count = kept;
    memset(m->lent, 0, sizeof m->lent);
    m->walk_at = MT_MODEL_LAYERS;
}

static void slot_release(mt_model *m, int slot) {
    MT_ASSERT(slot >= 0 && m->slots[slot].refs > 0);
    m->slots[slot].refs--;
}

/* Hand gradient `slot` (one reference) to the output of `layer`, summing with what is there
 * (a block input gets gradients from the next block and from the residual Add). */
static mt_status give_grad(mt_model *m, int layer, int slot) {
    int have = m->grad_of[layer];
    if (have < 0) {
        m->grad_of[layer] = slot;
        return MT_OK;
    }
    int target = slot;
    if (m->slots[slot].refs != 1) {
        if (m->slots[have].refs == 1) {
            target = have;
        } else {
            MT_TRY(slot_acquire(m, m->slots[have].tensor.shape, &target));
            MT_TRY(
                m->ops->tensor_copy(m->backend, &m->slots[have].tensor, &m->slots[target].tensor));
        }
    }
    int other = target == slot ? have : slot;
    MT_TRY(m->ops->add(m->backend, &m->slots[target].tensor, &m->slots[other].tensor,
                       &m->slots[target].tensor));
    if (target != slot) slot_release(m, slot);
    if (target != have) slot_release(m, have);
    m->grad_of[layer] = target;
    return MT_OK;
}

/* ---- create / destroy -------------------------------------------------------------------- */

static mt_status init_weights(mt_model *m, uint64_t seed) {
    const mt_model_layout *layout = m->layout;
    size_t largest = 0;
    for (int i = 0; i < layout->tensor_count; i++)
        if (layout->tensors[i].count > largest) largest = layout->tensors[i].count;
    float *host = malloc(largest * sizeof *host);
    if (!host) return MT_FAIL(MT_ERR_NOMEM, "out of memory initializing the weights");
    mt_status status = MT_OK;
    for (int i = 0; i < layout->tensor_count && status == MT_OK; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        if (strcmp(t->weight, "kernel") == 0 || strcmp(t->weight, "depthwise_kernel") == 0) {
            /* glorot_uniform with Keras' fans: receptive field times the last two dims */
            double receptive = 1.0;
            for (int d = 0; d < t->rank - 2; d++)
                receptive *= t->shape[d];
            double fan_in = receptive * t->shape[t->rank - 2];
            double fan_out = receptive * t->shape[t->rank - 1];
            double limit = sqrt(6.0 / (fan_in + fan_out));
            uint64_t state = seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(i + 1));
            for (size_t j = 0; j < t->count; j++)
                host[j] = (float)((uniform01(&state) * 2.0 - 1.0) * limit);
        } else {
            float value =
                strcmp(t->weight, "gamma") == 0 || strcmp(t->weight, "moving_variance") == 0 ? 1.0f
                                                                                             : 0.0f;
            for (size_t j = 0; j < t->count; j++)
                host[j] = value;
        }
        status = mt_model_tensor_upload(m, t, host);
    }
    free(host);
    return status;
}

mt_status mt_model_create(mt_backend *backend, const mt_model_config *config, uint64_t seed,
                          mt_model **out) {
    *out = NULL;
    mt_model *m = calloc(1, sizeof *m);
    if (!m) return MT_FAIL(MT_ERR_NOMEM, "out of memory creating the model");
    m->backend = backend;
    m->ops = backend->ops;
    m->walk_at = MT_MODEL_LAYERS;
    m->loss_scale = 1.0f;
    mt_status status = mt_model_layout_create(config, &m->layout);
    if (status != MT_OK) {
        free(m);
        return status;
    }
    const mt_model_layout *layout = m->layout;

    for (int i = 0; i < MT_MODEL_LAYERS; i++)
        m->grad_of[i] = -1;
    mt_model_caps caps = mt_model_caps_of(m->ops);
    mt_model_plan_build(layout, &caps, &m->plan);
    size_t saved = m->plan.bn_saved_count;

    int batch = config->batch_size;
    size_t features = (size_t)batch * layout->feature_channels;
    size_t logits = (size_t)batch * layout->logit_count;
    if ((status = alloc_buffer(m, layout->trainable_count * sizeof(float), (void **)&m->params)) ||
        /* + the skip flag after the gradients (mt_model_trainable) */
        (status =
             alloc_buffer(m, (layout->trainable_count + 1) * sizeof(float), (void **)&m->grads)) ||
        (status = alloc_buffer(m, layout->frozen_count * sizeof(float), (void **)&m->frozen)) ||
        (status = alloc_buffer(m, layout->state_count * sizeof(float), (void **)&m->state)) ||
        (status = alloc_buffer(m, saved * sizeof(float), (void **)&m->bn_saved)) ||
        (status = alloc_buffer(m, features * sizeof(float), (void **)&m->pooled)) ||
        (status = alloc_buffer(m, features * sizeof(float), (void **)&m->dropped)) ||
        (status = alloc_buffer(m, features * sizeof(float), (void **)&m->dpooled)) ||
        (status = alloc_buffer(m, features * sizeof(float), (void **)&m->ddropped)) ||
        (status = alloc_buffer(m, features, (void **)&m->mask)) ||
        (status = alloc_buffer(m, logits * sizeof(float), (void **)&m->logits)) ||
        (status = alloc_buffer(m, logits * sizeof(float), (void **)&m->dlogits)) ||
        (status = alloc_buffer(m, (size_t)batch * sizeof(int32_t), (void **)&m->labels))) {
        mt_model_destroy(m);
        return mt_error_context(status, "allocating the model's buffers");
    }
    m->host_logits = malloc(logits * sizeof(float));
    if (!m->host_logits) {
        mt_model_destroy(m);
        return MT_FAIL(MT_ERR_NOMEM, "out of memory allocating the logits");
    }
    if ((status = init_weights(m, seed)) != MT_OK ||
        (status = ensure_activations(m, batch)) != MT_OK) {
        mt_model_destroy(m);
        return status;
    }
    *out = m;
    return MT_OK;
}

void mt_model_destroy(mt_model *m) {
    if (!m) return;
    free_activations(m);
    void *buffers[] = {m->params, m->grads,   m->frozen,  m->state,    m->bn_saved,
                       m->pooled, m->dropped, m->dpooled, m->ddropped, m->mask,
                       m->logits, m->dlogits, m->labels};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++)
        free_buffer(m, buffers[i]);
    free(m->host_logits);
    mt_model_layout_free(m->layout);
    free(m);
}

const mt_model_layout *mt_model_get_layout(const mt_model *m) {
    return m->layout;
}

mt_backend *mt_model_backend(const mt_model *m) {
    return m->backend;
}

void mt_model_trainable(mt_model *m, float **params, float **grads, size_t *count) {
    if (params) *params = m->params;
    if (grads) *grads = m->grads;
    if (count) *count = m->layout->trainable_count;
}

void mt_model_frozen(mt_model *m, float **params, size_t *count) {
    if (params) *params = m->frozen;
    if (count) *count = m->layout->frozen_count;
}

void mt_model_state(mt_model *m, float **state, size_t *count) {
    if (state) *state = m->state;
    if (count) *count = m->layout->state_count;
}

void mt_model_set_grad_hook(mt_model *m, mt_grad_ready_fn fn, void *user) {
    m->hook = fn;
    m->hook_user = user;
}

/* The model's own entry for `t`, which may come from another model's layout (matched by name
 * and shape: placement differs between modes). */
static mt_status own_tensor(const mt_model *m, const mt_param_tensor *t,
                            const mt_param_tensor **out) {
    const mt_model_layout *layout = m->layout;
    if (!t) return MT_FAIL(MT_ERR_INVALID, "no tensor given");
    if (t >= layout->tensors && t < layout->tensors + layout->tensor_count) {
        *out = t;
        return MT_OK;
    }
    const mt_param_tensor *own = mt_model_layout_find(layout, t->layer, t->weight);
    if (!own) return MT_FAIL(MT_ERR_INVALID, "this model has no tensor %s", t->name);
    if (own->count != t->count || own->rank != t->rank ||
        memcmp(own->shape, t->shape, sizeof own->shape) != 0)
        return MT_FAIL(MT_ERR_INVALID, "tensor %s has %zu values in this model, %zu in the other",
                       t->name, own->count, t->count);
    *out = own;
    return MT_OK;
}

mt_status mt_model_tensor_upload(mt_model *m, const mt_param_tensor *t, const float *host) {
    MT_TRY(own_tensor(m, t, &t));
    return m->ops->upload(m->backend, tensor_ptr(m, t), host, t->count * sizeof(float));
}

mt_status mt_model_tensor_download(mt_model *m, const mt_param_tensor *t, float *host) {
    MT_TRY(own_tensor(m, t, &t));
    return m->ops->download(m->backend, host, tensor_ptr(m, t), t->count * sizeof(float));
}

mt_status mt_model_copy_weights(mt_model *dst, const mt_model *src) {
    const mt_model_layout *dl = dst->layout, *sl = src->layout;
    for (int i = 0; i < dl->tensor_count; i++) {
        const mt_param_tensor *d = &dl->tensors[i];
        const mt_param_tensor *s = mt_model_layout_find(sl, d->layer, d->weight);
        if (!s) continue;
        if (s->count != d->count || s->rank != d->rank ||
            memcmp(s->shape, d->shape, sizeof s->shape) != 0)
            return MT_FAIL(MT_ERR_INVALID,
                           "copying weights: %s has %zu values in the source model and %zu in "
                           "the destination (alpha or classes differ)",
                           d->name, s->count, d->count);
    }
    size_t largest = 0;
    for (int i = 0; i < dl->tensor_count; i++)
        if (dl->tensors[i].count > largest) largest = dl->tensors[i].count;
    float *host = malloc(largest * sizeof *host);
    if (!host) return MT_FAIL(MT_ERR_NOMEM, "out of memory copying weights");
    mt_status status = MT_OK;
    for (int i = 0; i < dl->tensor_count && status == MT_OK; i++) {
        const mt_param_tensor *d = &dl->tensors[i];
        const mt_param_tensor *s = mt_model_layout_find(sl, d->layer, d->weight);
        if (!s) continue;
        status = mt_model_tensor_download((mt_model *)src, s, host);
        if (status == MT_OK) status = mt_model_tensor_upload(dst, d, host);
    }
    free(host);
    return status;
}

/* ---- forward ----------------------------------------------------------------------------- */

static mt_conv_desc conv_desc(const mt_model *m, int layer, int n) {
    const mt_layer_info *l = &m->layout->layers[layer];
    return (mt_conv_desc){
        .input = exec_shape(m, l->inputs[0], n),
        .out_channels = l->out_c,
        .kernel = l->kernel,
        .stride = l->stride,
        .pad_top = l->pad_top,
        .pad_left = l->pad_left,
        .pad_bottom = l->pad_bottom,
        .pad_right = l->pad_right,
        .depthwise = l->kind == MT_LAYER_DEPTHWISE,
    };
}

static mt_batchnorm_desc bn_desc(const mt_model *m, int layer, int n) {
    return (mt_batchnorm_desc){.shape = exec_shape(m, layer, n),
                               .epsilon = bn_epsilon,
                               .momentum = m->layout->config.bn_momentum};
}

/* Conv layer `i`, its BN and ReLU6 (when there) in one pass, when the backend has the fused
 * op, the BN normalizes with the moving statistics in this forward and no backward will read
 * the conv's or the BN's output (nothing at or below the BN trains, or no backward follows).
 * *last gets the group's last layer, -1 when the group runs as separate ops. */
static mt_status conv_group_forward(mt_model *m, int i, int n, bool training, int *last) {
    *last = -1;
    int bn = m->plan.layer[i].group_bn;
    if (!m->plan.layer[i].fuse_conv_bn) return MT_OK;
    if (training && (m->layout->layers[bn].bn_training || m->plan.layer[bn].needs_grad))
        return MT_OK;
    int relu = m->plan.layer[bn].group_relu;
    mt_conv_desc conv = conv_desc(m, i, n);
    mt_batchnorm_desc desc = bn_desc(m, bn, n);
    mt_tensor *x = act(m, m->layout->layers[i].inputs[0]), *y = act(m, bn);
    MT_ASSERT(x->data != y->data); /* the memory plan keeps x busy until the BN */
    MT_TRY(m->ops->conv_bn_relu6_inference_forward(
        m->backend, &conv, &desc, x, tensor_ptr(m, layer_tensor(m, i, 0)),
        tensor_ptr(m, layer_tensor(m, bn, 0)), tensor_ptr(m, layer_tensor(m, bn, 1)),
        tensor_ptr(m, layer_tensor(m, bn, 2)), tensor_ptr(m, layer_tensor(m, bn, 3)), relu >= 0,
        y));
    *last = relu >= 0 ? relu : bn;
    return MT_OK;
}

/* images: host float (Keras' preprocess_input already applied); or, with staged_slot >= 0, the
 * batch in that staging slot (ops.h input_convert: its pixels scaled and flipped, its labels
 * into m->labels, on the device) */
static mt_status backbone_forward(mt_model *m, const float *images, int staged_slot, int n,
                                  bool training) {
    const mt_ops *ops = m->ops;
    mt_backend *be = m->backend;
    m->outputs_intact = false;
    MT_TRY(ensure_activations(m, n));
    if (staged_slot >= 0)
        MT_TRY(ops->input_convert(be, staged_slot, act(m, 0), m->labels));
    else
        MT_TRY(ops->tensor_from_nhwc(be, images, act(m, 0)));
    memset(m->fused_training, 0, sizeof m->fused_training);
    for (int i = 1; i < MT_MODEL_BACKBONE_LAYERS; i++) {
        const mt_layer_info *l = &m->layout->layers[i];
        int in = l->inputs[0];
        mt_status status = MT_OK;
        switch (l->kind) {
        case MT_LAYER_CONV:
        case MT_LAYER_DEPTHWISE: {
            int last;
            status = conv_group_forward(m, i, n, training, &last);
            if (status != MT_OK || last >= 0) {
                if (last >= 0) i = last;
                break;
            }
            MT_ASSERT(!m->plan.layer[i].fused_away);
            mt_conv_desc desc = conv_desc(m, i, n);
            status = ops->conv_forward(be, &desc, act(m, in), tensor_ptr(m, layer_tensor(m, i, 0)),
                                       act(m, i));
            break;
        }
        case MT_LAYER_BATCHNORM: {
            mt_batchnorm_desc desc = bn_desc(m, i, n);
            const float *gamma = tensor_ptr(m, layer_tensor(m, i, 0));
            const float *beta = tensor_ptr(m, layer_tensor(m, i, 1));
            float *mean = tensor_ptr(m, layer_tensor(m, i, 2));
            float *var = tensor_ptr(m, layer_tensor(m, i, 3));
            int relu = m->plan.layer[i].group_relu;
            if (training && m->plan.layer[i].fuse_bn_relu6_training) {
                /* y apart from x: BN's input is kept (or read by no one) as its own tensor */
                float *saved = m->bn_saved + m->plan.layer[i].bn_saved_offset;
                MT_ASSERT(act(m, in)->data != act(m, i)->data);
                status = ops->batchnorm_relu6_forward_training(be, &desc, act(m, in), gamma, beta,
                                                               mean, var, act(m, relu), saved,
                                                               saved + l->out_c);
                m->fused_training[i] = true;
                i = relu;
            } else if (training && l->bn_training) {
                float *saved = m->bn_saved + m->plan.layer[i].bn_saved_offset;
                status = ops->batchnorm_forward_training(be, &desc, act(m, in), gamma, beta, mean,
                                                         var, act(m, i), saved, saved + l->out_c);
            } else {
                status = ops->batchnorm_forward_inference(be, &desc, act(m, in), gamma, beta, mean,
                                                          var, act(m, i));
            }
            break;
        }
        case MT_LAYER_RELU6:
            status = ops->relu6_forward(be, act(m, in), act(m, i));
            break;
        case MT_LAYER_ZERO_PAD:
            break; /* folded into the next depthwise conv's padding */
        case MT_LAYER_ADD:
            status = ops->add(be, act(m, in), act(m, l->inputs[1]), act(m, i));
            break;
        default:
            status = MT_FAIL(MT_ERR_INTERNAL, "layer %s has no forward", l->name);
        }
        if (status != MT_OK)
            return mt_error_context(status, "forward of layer %d (%s)", i, l->name);
    }
    m->outputs_intact = true;
    return ops->global_avg_pool_forward(be, act(m, MT_MODEL_BACKBONE_LAYERS - 1), m->pooled);
}

mt_status mt_model_check_labels(const mt_model *m, const int32_t *labels, int n, int *valid) {
    const int classes = m->layout->config.classes;
    int count = 0;
    for (int r = 0; r < n; r++) {
        if (labels[r] == -1) continue;
        if (labels[r] < 0 || labels[r] >= classes)
            return MT_FAIL(MT_ERR_INVALID,
                           "label %d of row %d is out of range for %d classes (-1 marks padding)",
                           labels[r], r, classes);
        count++;
    }
    if (valid) *valid = count;
    return MT_OK;
}

/* Dropout, dense, loss on m->pooled (n rows); logits downloaded for the accuracy count, except
 * with an accumulator (accum not NULL: a training step that leaves the loss, the accuracy and
 * the finiteness in backend memory, loss_accumulate; nothing waits for the device).
 * labels_staged: m->labels holds the batch's labels already (input_convert put them there);
 * labels is NULL then. */
static mt_status head_forward(mt_model *m, const int32_t *labels, bool labels_staged, int n,
                              bool training, uint64_t dropout_seed, float *logits_host,
                              mt_step_result *out, uint64_t step, double *accum) {
    const mt_ops *ops = m->ops;
    mt_backend *be = m->backend;
    const mt_model_layout *layout = m->layout;
    int features = layout->feature_channels, outs = layout->logit_count;
    float rate = layout->config.dropout;
    const float *x = m->pooled;
    m->dropout_applied = training && rate > 0.0f;
    if (m->dropout_applied) {
        MT_TRY(ops->dropout_forward(be, (size_t)n * features, rate, dropout_seed, m->pooled,
                                    m->dropped, m->mask));
        x = m->dropped;
    }
    const int dense = MT_MODEL_LAYERS - 1;
    mt_dense_desc desc = {.batch = n, .in_features = features, .out_features = outs};
    MT_TRY(ops->dense_forward(be, &desc, x, tensor_ptr(m, layer_tensor(m, dense, 0)),
                              tensor_ptr(m, layer_tensor(m, dense, 1)), m->logits));
    if (!accum) {
        MT_TRY(ops->download(be, m->host_logits, m->logits, (size_t)n * outs * sizeof(float)));
        if (logits_host) memcpy(logits_host, m->host_logits, (size_t)n * outs * sizeof(float));
    }

    mt_step_result result = {0};
    if (labels) {
        MT_TRY(mt_model_check_labels(m, labels, n, &result.valid));
        if (!accum)
            for (int r = 0; r < n; r++)
                result.correct +=
                    labels[r] >= 0 &&
                    mt_accum_predicted(m->host_logits + (size_t)r * outs, outs) == labels[r];
        MT_TRY(ops->upload(be, m->labels, labels, (size_t)n * sizeof(int32_t)));
    }
    if (labels || labels_staged) {
        mt_loss_desc loss = {.batch = n, .classes = outs};
        if (accum)
            MT_TRY(ops->loss_accumulate(be, &loss, m->logits, m->labels, m->dlogits, step, accum,
                                        m->grads + layout->trainable_count));
        else
            MT_TRY(ops->loss_forward_backward(be, &loss, m->logits, m->labels, &result.loss,
                                              training ? m->dlogits : NULL));
    }
    m->ready_for_backward = training && (labels || labels_staged);
    m->last_n = n;
    if (out) *out = result;
    return MT_OK;
}

mt_status mt_model_forward(mt_model *m, const float *images, const int32_t *labels, int n,
                           bool training, uint64_t dropout_seed, float *logits_host,
                           mt_step_result *out) {
    m->ready_for_backward = false;
    MT_TRY(backbone_forward(m, images, -1, n, training));
    m->head_only = false;
    return head_forward(m, labels, false, n, training, dropout_seed, logits_host, out, 0, NULL);
}

/* Cached pooled features (n rows) become the head's input: the backbone is skipped. */
static mt_status head_input_upload(mt_model *m, const float *features, int n) {
    if (n < 1 || n > m->layout->config.batch_size)
        return MT_FAIL(MT_ERR_INVALID,
                       "batch of %d feature rows: the model was created for 1 to %d", n,
                       m->layout->config.batch_size);
    MT_TRY(m->ops->upload(m->backend, m->pooled, features,
                          (size_t)n * m->layout->feature_channels * sizeof(float)));
    m->head_only = true;
    m->outputs_intact = false; /* the backbone's outputs are no longer this batch's */
    return MT_OK;
}

mt_status mt_model_forward_head(mt_model *m, const float *features, const int32_t *labels, int n,
                                bool training, uint64_t dropout_seed, float *logits_host,
                                mt_step_result *out) {
    m->ready_for_backward = false;
    MT_TRY(head_input_upload(m, features, n));
    return head_forward(m, labels, false, n, training, dropout_seed, logits_host, out, 0, NULL);
}

mt_status mt_model_forward_accumulate(mt_model *m, const mt_model_input *in, uint64_t dropout_seed,
                                      uint64_t step, double *accum, mt_step_result *out) {
    m->ready_for_backward = false;
    const int given = (in->images != NULL) + (in->features != NULL) + in->staged;
    if (!accum || given != 1 || (!in->staged && !in->labels))
        return MT_FAIL(MT_ERR_INVALID,
                       "mt_model_forward_accumulate needs an accumulator and one input: images "
                       "or features (each with labels), or a staged batch");
    if (in->staged && in->slot != 0 && in->slot != 1)
        return MT_FAIL(MT_ERR_INVALID, "a staged batch in slot %d: the staging slots are 0 and 1",
                       in->slot);
    if (in->features) {
        MT_TRY(head_input_upload(m, in->features, in->n));
    } else {
        MT_TRY(backbone_forward(m, in->images, in->staged ? in->slot : -1, in->n, true));
        m->head_only = false;
    }
    const int32_t *labels = in->staged ? NULL : in->labels;
    return head_forward(m, labels, in->staged, in->n, true, dropout_seed, NULL, out, step, accum);
}

mt_status mt_model_layer_output(mt_model *m, int layer, float *host) {
    const mt_model_layout *layout = m->layout;
    if (layer < 1 || layer >= MT_MODEL_BACKBONE_LAYERS)
        return MT_FAIL(MT_ERR_INVALID, "layer %d: backbone layers are 1 to %d", layer,
                       MT_MODEL_BACKBONE_LAYERS - 1);
    const char *name = layout->layers[layer].name;
    if (!m->outputs_intact)
        return MT_FAIL(MT_ERR_INVALID,
                       "output of layer %s: needs a forward just before (backward reuses the "
                       "activations)",
                       name);
    /* only a kept output is still this layer's own: the others share memory with later layers
     * (or are overwritten in place by a ReLU6, or never exist when fused) */
    if (m->plan.layer[layer].owner != layer || !m->plan.layer[layer].keep || !m->allocated[layer] ||
        m->plan.layer[layer].fused_away)
        return MT_FAIL(MT_ERR_INVALID,
                       "output of layer %s: not kept by the forward in this mode (only the "
                       "outputs a backward reads are)",
                       name);
    return m->ops->tensor_to_nhwc(m->backend, &m->acts[layer], host);
}

mt_status mt_model_features(mt_model *m, const float *images, int n, float *features) {
    m->ready_for_backward = false;
    MT_TRY(backbone_forward(m, images, -1, n, false));
    return m->ops->download(m->backend, features, m->pooled,
                            (size_t)n * m->layout->feature_channels * sizeof(float));
}

/* ---- backward ---------------------------------------------------------------------------- */

static mt_status report_layer(mt_model *m, int layer) {
    if (!m->hook || m->plan.layer[layer].first_tensor < 0 || !m->layout->layers[layer].trainable)
        return MT_OK;
    size_t start = 0, count = 0;
    for (int t = m->plan.layer[layer].first_tensor;
         t < m->layout->tensor_count && m->layout->tensors[t].layer_index == layer; t++) {
        const mt_param_tensor *p = &m->layout->tensors[t];
        if (p->buffer != MT_PARAM_TRAINABLE) continue;
        if (count == 0) start = p->offset;
        count += p->count;
    }
    return count ? m->hook(m->hook_user, start, count) : MT_OK;
}

/* The backward of a BN + ReLU6 pair that the forward ran fused (relu6_batchnorm_backward_training
 * at the ReLU6 `relu`): reads the BN's input and the ReLU6's output, takes the gradient `dy` at
 * the ReLU6 and hands the one at the BN's input to the layer below. */
static mt_status fused_bn_relu6_backward(mt_model *m, int relu, int dy, int n) {
    int bn = m->layout->layers[relu].inputs[0];
    int below = m->layout->layers[bn].inputs[0];
    const mt_layer_info *l = &m->layout->layers[bn];
    mt_batchnorm_desc desc = bn_desc(m, bn, n);
    const float *saved = m->bn_saved + m->plan.layer[bn].bn_saved_offset;
    /* dx may alias dy (same shape); the ReLU6's output, read here, sits below walk_at and so is
     * never borrowed by the slot */
    int dx = dy;
    if (m->slots[dy].refs != 1) MT_TRY(slot_acquire(m, exec_shape(m, below, n), &dx));
    mt_status status = m->ops->relu6_batchnorm_backward_training(
        m->backend, &desc, act(m, below), act(m, relu), &m->slots[dy].tensor,
        tensor_ptr(m, layer_tensor(m, bn, 0)), saved, saved + l->out_c, &m->slots[dx].tensor,
        grad_ptr(m, layer_tensor(m, bn, 0)), grad_ptr(m, layer_tensor(m, bn, 1)));
    if (dx != dy) slot_release(m, dy);
    if (status != MT_OK) {
        slot_release(m, dx);
        return status;
    }
    return m->plan.layer[below].needs_grad ? give_grad(m, below, dx) : (slot_release(m, dx), MT_OK);
}

static mt_status backward_layer(mt_model *m, int i, int n) {
    const mt_ops *ops = m->ops;
    mt_backend *be = m->backend;
    const mt_layer_info *l = &m->layout->layers[i];
    int in = l->inputs[0];
    /* already done with its ReLU6 (its gradients are ready: the caller reports them) */
    if (l->kind == MT_LAYER_BATCHNORM && m->fused_training[i]) return MT_OK;
    int dy = m->grad_of[i];
    MT_ASSERT(dy >= 0);
    m->grad_of[i] = -1;
    mt_tensor *dyt = &m->slots[dy].tensor;
    bool want_dx = in >= 0 && m->plan.layer[in].needs_grad;
    switch (l->kind) {
    case MT_LAYER_RELU6: {
        if (m->fused_training[in]) return fused_bn_relu6_backward(m, i, dy, n);
        int dx = dy;
        if (m->slots[dy].refs != 1) MT_TRY(slot_acquire(m, dyt->shape, &dx));
        MT_TRY(ops->relu6_backward(be, act(m, i), dyt, &m->slots[dx].tensor));
        if (dx != dy) slot_release(m, dy);
        return want_dx ? give_grad(m, in, dx) : (slot_release(m, dx), MT_OK);
    }
    case MT_LAYER_ZERO_PAD:
        /* folded: the depthwise conv above already produced the unpadded gradient */
        return want_dx ? give_grad(m, in, dy) : (slot_release(m, dy), MT_OK);
    case MT_LAYER_ADD:
        if (want_dx) {
            m->slots[dy].refs++;
            MT_TRY(give_grad(m, in, dy));
        }
        if (m->plan.layer[l->inputs[1]].needs_grad) {
            m->slots[dy].refs++;
            MT_TRY(give_grad(m, l->inputs[1], dy));
        }
        slot_release(m, dy);
        return MT_OK;
    case MT_LAYER_BATCHNORM: {
        mt_batchnorm_desc desc = bn_desc(m, i, n);
        const float *gamma = tensor_ptr(m, layer_tensor(m, i, 0));
        float *dgamma = grad_ptr(m, layer_tensor(m, i, 0));
        float *dbeta = grad_ptr(m, layer_tensor(m, i, 1));
        int dx = -1;
        mt_status status;
        if (l->bn_training) {
            /* the batch statistics' backward always produces dx */
            MT_TRY(slot_acquire(m, exec_shape(m, in, n), &dx));
            const float *saved = m->bn_saved + m->plan.layer[i].bn_saved_offset;
            status = ops->batchnorm_backward_training(be, &desc, act(m, in), dyt, gamma, saved,
                                                      saved + l->out_c, &m->slots[dx].tensor,
                                                      dgamma, dbeta);
        } else {
            if (want_dx) MT_TRY(slot_acquire(m, exec_shape(m, in, n), &dx));
            status = ops->batchnorm_backward_inference(
                be, &desc, act(m, in), dyt, gamma, tensor_ptr(m, layer_tensor(m, i, 2)),
                tensor_ptr(m, layer_tensor(m, i, 3)), dx >= 0 ? &m->slots[dx].tensor : NULL, dgamma,
                dbeta);
        }
        slot_release(m, dy);
        MT_TRY(status);
        if (dx < 0) return MT_OK;
        return want_dx ? give_grad(m, in, dx) : (slot_release(m, dx), MT_OK);
    }
    case MT_LAYER_CONV:
    case MT_LAYER_DEPTHWISE: {
        mt_conv_desc desc = conv_desc(m, i, n);
        const mt_param_tensor *w = layer_tensor(m, i, 0);
        if (w->buffer == MT_PARAM_TRAINABLE)
            MT_TRY(ops->conv_backward_weights(be, &desc, act(m, in), dyt, grad_ptr(m, w)));
        int dx = -1;
        if (want_dx) {
            MT_TRY(slot_acquire(m, exec_shape(m, in, n), &dx));
            MT_TRY(ops->conv_backward_data(be, &desc, dyt, tensor_ptr(m, w), &m->slots[dx].tensor));
        }
        slot_release(m, dy);
        return dx >= 0 ? give_grad(m, in, dx) : MT_OK;
    }
    default:
        return MT_FAIL(MT_ERR_INTERNAL, "layer %s has no backward", l->name);
    }
}

void mt_model_set_loss_scale(mt_model *m, float scale) {
    m->loss_scale = scale;
}

mt_status mt_model_backward(mt_model *m) {
    m->outputs_intact = false;
    if (!m->ready_for_backward)
        return MT_FAIL(MT_ERR_INVALID,
                       "backward needs a forward with training = true and labels just before it");
    const mt_ops *ops = m->ops;
    mt_backend *be = m->backend;
    const mt_model_layout *layout = m->layout;
    int n = m->last_n;
    int features = layout->feature_channels;
    const int pool = MT_MODEL_BACKBONE_LAYERS, dropout = pool + 1, dense = pool + 2;
    bool into_backbone = m->plan.layer[pool - 1].needs_grad;
    if (m->head_only && into_backbone)
        return MT_FAIL(MT_ERR_INVALID,
                       "backward after a head-only forward needs the frozen mode (this model "
                       "trains backbone layers from index %d)",
                       layout->lowest_trainable);
    m->ready_for_backward = false;
    for (int i = 0; i < MT_MODEL_LAYERS; i++)
        m->grad_of[i] = -1;
    return_borrowed(m);

    if (m->loss_scale != 1.0f)
        MT_TRY(ops->buffer_scale(be, m->dlogits, (size_t)n * layout->logit_count, m->loss_scale,
                                 NULL));
    mt_dense_desc desc = {.batch = n, .in_features = features, .out_features = layout->logit_count};
    const float *x = m->dropout_applied ? m->dropped : m->pooled;
    const mt_param_tensor *kernel = layer_tensor(m, dense, 0), *bias = layer_tensor(m, dense, 1);
    MT_TRY(ops->dense_backward(be, &desc, x, tensor_ptr(m, kernel), m->dlogits,
                               into_backbone ? m->ddropped : NULL, grad_ptr(m, kernel),
                               grad_ptr(m, bias)));
    MT_TRY(report_layer(m, dense));
    if (!into_backbone) return MT_OK;

    const float *dpool = m->ddropped;
    if (m->dropout_applied) {
        MT_TRY(ops->dropout_backward(be, (size_t)n * features, layout->config.dropout, m->mask,
                                     m->ddropped, m->dpooled));
        dpool = m->dpooled;
    }
    int slot;
    MT_TRY(slot_acquire(m, exec_shape(m, pool - 1, n), &slot));
    MT_TRY(ops->global_avg_pool_backward(be, dpool, &m->slots[slot].tensor));
    m->grad_of[pool - 1] = slot;
    (void)dropout;

    for (int i = pool - 1; i >= 1; i--) {
        if (!m->plan.layer[i].needs_grad) continue;
        m->walk_at = i;
        mt_status status = backward_layer(m, i, n);
        if (status == MT_OK) status = report_layer(m, i);
        if (status != MT_OK) {
            return_borrowed(m);
            return mt_error_context(status, "backward of layer %d (%s)", i, layout->layers[i].name);
        }
    }
    for (int s = 0; s < m->slot_count; s++)
        MT_ASSERT(m->slots[s].refs == 0);
    return_borrowed(m);
    return MT_OK;
}
