/* The MobileNetV2 backward pass: the dense head, then the backbone from the top down to the
 * lowest layer that needs a gradient, reporting each layer's weight gradients to the hook as
 * soon as they are final. The gradients live in slots (grad_slot, model_internal.h) that mostly
 * borrow the memory of activations the walk has passed. */
#include <string.h>

#include "model/model_internal.h"

/* ---- gradient slots ---------------------------------------------------------------------- */

void mt_model_grad_slots_free(mt_model *m) {
    for (int i = 0; i < m->slot_count; i++)
        if (m->slots[i].borrowed < 0) m->ops->tensor_free(m->backend, &m->slots[i].tensor);
    memset(m->slots, 0, sizeof m->slots);
    m->slot_count = 0;
}

static bool same_shape(mt_shape4 a, mt_shape4 b) {
    return a.n == b.n && a.h == b.h && a.w == b.w && a.c == b.c;
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
        if (!m->layer_state[k].allocated || !m->plan.layer[k].keep || m->layer_state[k].lent ||
            !same_shape(m->layer_state[k].act.shape, shape))
            continue;
        m->layer_state[k].lent = true;
        m->slots[i] = (grad_slot){.tensor = m->layer_state[k].act, .refs = 1, .borrowed = k};
        m->slot_count++;
        *out = i;
        return MT_OK;
    }
    MT_TRY(m->ops->tensor_alloc(m->backend, shape, &m->slots[i].tensor));
    m->memory_generation++;
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
    for (int i = 0; i < MT_MODEL_LAYERS; i++)
        m->layer_state[i].lent = false;
    m->walk_at = MT_MODEL_LAYERS;
}

static void slot_release(mt_model *m, int slot) {
    MT_ASSERT(slot >= 0 && m->slots[slot].refs > 0);
    m->slots[slot].refs--;
}

/* Hand gradient `slot` (one reference) to the output of `layer`, summing with what is there
 * (a block input gets gradients from the next block and from the residual Add). */
static mt_status give_grad(mt_model *m, int layer, int slot) {
    int have = m->layer_state[layer].grad_of;
    if (have < 0) {
        m->layer_state[layer].grad_of = slot;
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
    m->layer_state[layer].grad_of = target;
    return MT_OK;
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
    if (l->kind == MT_LAYER_BATCHNORM && m->layer_state[i].fused_training) return MT_OK;
    int dy = m->layer_state[i].grad_of;
    MT_ASSERT(dy >= 0);
    m->layer_state[i].grad_of = -1;
    mt_tensor *dyt = &m->slots[dy].tensor;
    bool want_dx = in >= 0 && m->plan.layer[in].needs_grad;
    switch (l->kind) {
    case MT_LAYER_RELU6: {
        if (m->layer_state[in].fused_training) return fused_bn_relu6_backward(m, i, dy, n);
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

mt_status mt_model_set_loss_scale(mt_model *m, float scale) {
    m->loss_scaled = true;
    return m->ops->scalars_write(m->backend, &m->step_values->loss_scale, &scale, sizeof scale);
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
        m->layer_state[i].grad_of = -1;
    return_borrowed(m);

    if (m->loss_scaled)
        MT_TRY(ops->buffer_scale(be, m->dlogits, (size_t)n * layout->logit_count,
                                 &m->step_values->loss_scale, NULL));
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
    m->layer_state[pool - 1].grad_of = slot;
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
