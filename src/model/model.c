/* The MobileNetV2 executor, its creation: the parameter and head buffers, the weight
 * initializer, the activations allocated from the plan once per batch size, and the weights'
 * upload, download and copy. The forward pass is model_forward.c, the backward (which stops at
 * the lowest trainable layer) model_backward.c; everything runs through the ops table, so the
 * same code drives every backend. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/splitmix64.h"
#include "model/model_internal.h"

/* ---- small helpers ----------------------------------------------------------------------- */

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

/* ---- activations ------------------------------------------------------------------------ */

static void free_activations(mt_model *m) {
    for (int i = 0; i < MT_MODEL_BACKBONE_LAYERS; i++)
        if (m->layer_state[i].allocated) m->ops->tensor_free(m->backend, &m->layer_state[i].act);
    for (int i = 0; i < MT_MODEL_LAYERS; i++) {
        m->layer_state[i].act = (mt_tensor){0};
        m->layer_state[i].allocated = false;
    }
    mt_model_grad_slots_free(m);
    m->n = 0;
    m->ready_for_backward = false;
    m->outputs_intact = false;
}

mt_status mt_model_activations_ensure(mt_model *m, int n) {
    if (n < 1 || n > m->layout->config.batch_size)
        return MT_FAIL(MT_ERR_INVALID, "batch of %d images: the model was created for 1 to %d", n,
                       m->layout->config.batch_size);
    if (m->n == n) return MT_OK;
    free_activations(m);
    m->memory_generation++;
    /* the plan says which layers allocate and which reuse an earlier layer's tensor */
    for (int i = 0; i < MT_MODEL_BACKBONE_LAYERS; i++) {
        int storage = m->plan.layer[i].storage;
        if (storage < 0) continue;
        if (storage != i) {
            /* same memory, never freed through layer i */
            m->layer_state[i].act = m->layer_state[storage].act;
            continue;
        }
        mt_status status =
            m->ops->tensor_alloc(m->backend, exec_shape(m, i, n), &m->layer_state[i].act);
        if (status != MT_OK) {
            free_activations(m);
            return mt_error_context(status, "allocating the activation of layer %s (batch %d)",
                                    m->layout->layers[i].name, n);
        }
        m->layer_state[i].allocated = true;
    }
    m->n = n;
    return MT_OK;
}

float *mt_model_host_tensor(const mt_model_layout *layout) {
    size_t largest = 1;
    for (int i = 0; i < layout->tensor_count; i++)
        if (layout->tensors[i].count > largest) largest = layout->tensors[i].count;
    return malloc(largest * sizeof(float));
}

/* ---- create / destroy -------------------------------------------------------------------- */

static mt_status init_weights(mt_model *m, uint64_t seed) {
    const mt_model_layout *layout = m->layout;
    float *host = mt_model_host_tensor(layout);
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
    mt_status status = mt_model_layout_create(config, &m->layout);
    if (status != MT_OK) {
        free(m);
        return status;
    }
    const mt_model_layout *layout = m->layout;

    for (int i = 0; i < MT_MODEL_LAYERS; i++)
        m->layer_state[i].grad_of = -1;
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
        (status = alloc_buffer(m, (size_t)batch * sizeof(int32_t), (void **)&m->labels)) ||
        (status = alloc_buffer(m, sizeof *m->step_values, (void **)&m->step_values))) {
        mt_model_destroy(m);
        return mt_error_context(status, "allocating the model's buffers");
    }
    m->host_logits = malloc(logits * sizeof(float));
    if (!m->host_logits) {
        mt_model_destroy(m);
        return MT_FAIL(MT_ERR_NOMEM, "out of memory allocating the logits");
    }
    if ((status = init_weights(m, seed)) != MT_OK ||
        (status = mt_model_activations_ensure(m, batch)) != MT_OK) {
        mt_model_destroy(m);
        return status;
    }
    *out = m;
    return MT_OK;
}

void mt_model_destroy(mt_model *m) {
    if (!m) return;
    free_activations(m);
    void *buffers[] = {m->params, m->grads,   m->frozen,  m->state,      m->bn_saved,
                       m->pooled, m->dropped, m->dpooled, m->ddropped,   m->mask,
                       m->logits, m->dlogits, m->labels,  m->step_values};
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
    float *host = mt_model_host_tensor(dl);
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
