/* The MobileNetV2 forward pass: the backbone layer by layer as the plan says (with the fused
 * conv + BN + ReLU6 and BN + ReLU6 ops where the backend has them), then the head (dropout,
 * dense) and the loss; also the features and a kept layer's output for the tests. */
#include <string.h>

#include "model/model_internal.h"
#include "model/model_testing.h"

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

/* The network's input: images, host float (Keras' preprocess_input already applied); or, with
 * staged_slot >= 0, the batch in that staging slot (ops.h input_convert: its pixels scaled and
 * flipped, its labels into m->labels, on the device) */
static mt_status load_input(mt_model *m, const float *images, int staged_slot, int n) {
    m->outputs_intact = false;
    MT_TRY(mt_model_activations_ensure(m, n));
    if (staged_slot >= 0)
        return m->ops->input_convert(m->backend, staged_slot, act(m, 0), m->labels);
    return m->ops->tensor_from_nhwc(m->backend, images, act(m, 0));
}

/* The backbone on the loaded input (load_input) */
static mt_status backbone_forward(mt_model *m, int n, bool training) {
    const mt_ops *ops = m->ops;
    mt_backend *be = m->backend;
    m->outputs_intact = false;
    for (int i = 0; i < MT_MODEL_LAYERS; i++)
        m->layer_state[i].fused_training = false;
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
                m->layer_state[i].fused_training = true;
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
                              bool training, float *logits_host, mt_step_result *out,
                              double *accum) {
    const mt_ops *ops = m->ops;
    mt_backend *be = m->backend;
    const mt_model_layout *layout = m->layout;
    int features = layout->feature_channels, outs = layout->logit_count;
    float rate = layout->config.dropout;
    const float *x = m->pooled;
    m->dropout_applied = training && rate > 0.0f;
    if (m->dropout_applied) {
        MT_TRY(ops->dropout_forward(be, (size_t)n * features, rate, &m->step_values->dropout_seed,
                                    m->pooled, m->dropped, m->mask));
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
            MT_TRY(ops->loss_accumulate(be, &loss, m->logits, m->labels, m->dlogits,
                                        &m->step_values->step, accum,
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
    MT_TRY(mt_model_set_step(m, dropout_seed, 0));
    MT_TRY(load_input(m, images, -1, n));
    MT_TRY(backbone_forward(m, n, training));
    m->head_only = false;
    return head_forward(m, labels, false, n, training, logits_host, out, NULL);
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
    MT_TRY(mt_model_set_step(m, dropout_seed, 0));
    MT_TRY(head_input_upload(m, features, n));
    return head_forward(m, labels, false, n, training, logits_host, out, NULL);
}

uint64_t mt_model_memory_generation(const mt_model *m) {
    return m->memory_generation;
}

mt_status mt_model_set_step(mt_model *m, uint64_t dropout_seed, uint64_t step) {
    const uint64_t values[2] = {dropout_seed, step}; /* the struct's first two fields */
    return m->ops->scalars_write(m->backend, m->step_values, values, sizeof values);
}

mt_status mt_model_prepare_input(mt_model *m, const mt_model_input *in) {
    m->ready_for_backward = false;
    const int given = (in->images != NULL) + (in->features != NULL) + in->staged;
    if (given != 1 || (!in->staged && !in->labels))
        return MT_FAIL(MT_ERR_INVALID,
                       "mt_model_prepare_input needs one input: images or features (each with "
                       "labels), or a staged batch");
    if (in->staged && in->slot != 0 && in->slot != 1)
        return MT_FAIL(MT_ERR_INVALID, "a staged batch in slot %d: the staging slots are 0 and 1",
                       in->slot);
    m->prepared_valid = 0;
    if (!in->staged) {
        if (in->n < 1 || in->n > m->layout->config.batch_size)
            return MT_FAIL(MT_ERR_INVALID, "batch of %d rows: the model was created for 1 to %d",
                           in->n, m->layout->config.batch_size);
        MT_TRY(mt_model_check_labels(m, in->labels, in->n, &m->prepared_valid));
        MT_TRY(m->ops->upload(m->backend, m->labels, in->labels, (size_t)in->n * sizeof(int32_t)));
    }
    if (in->features) {
        MT_TRY(head_input_upload(m, in->features, in->n));
    } else {
        MT_TRY(load_input(m, in->images, in->staged ? in->slot : -1, in->n));
        m->head_only = false;
    }
    return MT_OK;
}

mt_status mt_model_forward_accumulate(mt_model *m, const mt_model_input *in, double *accum,
                                      mt_step_result *out) {
    if (!accum) return MT_FAIL(MT_ERR_INVALID, "mt_model_forward_accumulate needs an accumulator");
    if (!in->prepared) MT_TRY(mt_model_prepare_input(m, in));
    m->ready_for_backward = false;
    if (!m->head_only) MT_TRY(backbone_forward(m, in->n, true));
    MT_TRY(head_forward(m, NULL, true, in->n, true, NULL, out, accum));
    if (out) out->valid = m->prepared_valid;
    return MT_OK;
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
    if (m->plan.layer[layer].owner != layer || !m->plan.layer[layer].keep ||
        !m->layer_state[layer].allocated || m->plan.layer[layer].fused_away)
        return MT_FAIL(MT_ERR_INVALID,
                       "output of layer %s: not kept by the forward in this mode (only the "
                       "outputs a backward reads are)",
                       name);
    return m->ops->tensor_to_nhwc(m->backend, &m->layer_state[layer].act, host);
}

mt_status mt_model_features(mt_model *m, const float *images, int n, float *features) {
    m->ready_for_backward = false;
    MT_TRY(load_input(m, images, -1, n));
    MT_TRY(backbone_forward(m, n, false));
    return m->ops->download(m->backend, features, m->pooled,
                            (size_t)n * m->layout->feature_channels * sizeof(float));
}
