/* The model's plan (model_plan.h): from the layout and the backend's capabilities, what each
 * layer's output tensor is, what the backward pass keeps and which fused ops run. */
#include "model/model_plan.h"

#include <string.h>

mt_model_caps mt_model_caps_of(const mt_ops *ops) {
    return (mt_model_caps){
        .conv_bn_relu6_inference = ops->conv_bn_relu6_inference_forward != NULL,
        .bn_relu6_training = ops->batchnorm_relu6_forward_training != NULL &&
                             ops->relu6_batchnorm_backward_training != NULL,
    };
}

void mt_model_plan_build(const mt_model_layout *layout, const mt_model_caps *caps,
                         mt_model_plan *out) {
    memset(out, 0, sizeof *out);
    mt_layer_plan *p = out->layer;
    for (int i = 0; i < MT_MODEL_LAYERS; i++) {
        p[i].first_tensor = -1;
        p[i].group_bn = -1;
        p[i].group_relu = -1;
    }
    for (int t = layout->tensor_count - 1; t >= 0; t--)
        p[layout->tensors[t].layer_index].first_tensor = t;
    size_t saved = 0;
    for (int i = 0; i < MT_MODEL_LAYERS; i++) {
        const mt_layer_info *l = &layout->layers[i];
        int in = l->inputs[0];
        bool alias = l->kind == MT_LAYER_RELU6 || l->kind == MT_LAYER_ZERO_PAD;
        p[i].owner = alias ? p[in].owner : i;
        if (l->kind == MT_LAYER_ZERO_PAD) {
            p[i].exec_h = p[in].exec_h;
            p[i].exec_w = p[in].exec_w;
            p[i].exec_c = p[in].exec_c;
        } else {
            p[i].exec_h = l->out_h;
            p[i].exec_w = l->out_w;
            p[i].exec_c = l->out_c;
        }
        /* an output needs a gradient when some trainable weight lies at or below it */
        bool needs = l->trainable && l->params > 0;
        for (int k = 0; k < 2; k++)
            if (l->inputs[k] >= 0 && p[l->inputs[k]].needs_grad) needs = true;
        p[i].needs_grad = needs;
        if (l->kind == MT_LAYER_BATCHNORM) {
            p[i].bn_saved_offset = saved;
            saved += 2 * (size_t)l->out_c;
        }
    }
    out->bn_saved_count = saved;

    /* what the backward pass reads: a BN's input, a ReLU6's output, a trainable conv's input */
    for (int j = 1; j < MT_MODEL_BACKBONE_LAYERS; j++) {
        const mt_layer_info *l = &layout->layers[j];
        for (int k = 0; k < 2; k++)
            if (l->inputs[k] >= 0 && j > p[p[l->inputs[k]].owner].last_use)
                p[p[l->inputs[k]].owner].last_use = j;
        if (!p[j].needs_grad) continue;
        if (l->kind == MT_LAYER_BATCHNORM) p[p[l->inputs[0]].owner].keep = true;
        if (l->kind == MT_LAYER_RELU6) p[p[j].owner].keep = true;
        if ((l->kind == MT_LAYER_CONV || l->kind == MT_LAYER_DEPTHWISE) &&
            layout->tensors[p[j].first_tensor].buffer == MT_PARAM_TRAINABLE)
            p[p[l->inputs[0]].owner].keep = true;
    }
    p[p[MT_MODEL_BACKBONE_LAYERS - 1].owner].last_use = MT_MODEL_BACKBONE_LAYERS; /* the pool */

    /* Fusable groups need their output to have exactly one reader (the pool reads the last). */
    int readers[MT_MODEL_LAYERS] = {0}, reader[MT_MODEL_LAYERS];
    readers[MT_MODEL_BACKBONE_LAYERS - 1] = 1;
    reader[MT_MODEL_BACKBONE_LAYERS - 1] = MT_MODEL_BACKBONE_LAYERS;
    for (int j = 1; j < MT_MODEL_BACKBONE_LAYERS; j++)
        for (int k = 0; k < 2; k++) {
            int in = layout->layers[j].inputs[k];
            if (in < 0) continue;
            readers[in]++;
            reader[in] = j;
        }
    for (int i = 1; i < MT_MODEL_BACKBONE_LAYERS; i++) {
        const mt_layer_info *l = &layout->layers[i];
        if (readers[i] != 1 || reader[i] >= MT_MODEL_BACKBONE_LAYERS) continue;
        const mt_layer_info *next = &layout->layers[reader[i]];
        if ((l->kind == MT_LAYER_CONV || l->kind == MT_LAYER_DEPTHWISE) &&
            next->kind == MT_LAYER_BATCHNORM)
            p[i].group_bn = reader[i];
        if (l->kind == MT_LAYER_BATCHNORM && next->kind == MT_LAYER_RELU6) {
            p[i].group_relu = reader[i];
            p[i].fuse_bn_relu6_training = caps->bn_relu6_training && l->bn_training;
        }
    }
    /* The fused conv reads its input while it writes the BN's tensor: that tensor must not
     * share memory with the input, so the input stays busy until the BN. */
    if (caps->conv_bn_relu6_inference)
        for (int i = 1; i < MT_MODEL_BACKBONE_LAYERS; i++) {
            int bn = p[i].group_bn, in = p[layout->layers[i].inputs[0]].owner;
            if (bn < 0) continue;
            p[i].fuse_conv_bn = true;
            if (p[in].last_use < bn) p[in].last_use = bn;
            p[i].fused_away = !p[bn].needs_grad && !layout->layers[bn].bn_training;
        }

    /* Activation tensors: a kept output gets its own; the others take the first tensor of
     * their shape that is not kept and whose previous user's last reader has run. */
    int free_after[MT_MODEL_LAYERS] = {0}; /* for an allocating, shareable layer: busy until this */
    for (int i = 0; i < MT_MODEL_LAYERS; i++)
        p[i].storage = -1;
    for (int i = 0; i < MT_MODEL_BACKBONE_LAYERS; i++) {
        if (p[i].owner != i || p[i].fused_away) continue;
        int share = -1;
        for (int k = 0; k < i && !p[i].keep && share < 0; k++)
            if (p[k].storage == k && !p[k].keep && free_after[k] < i &&
                p[k].exec_h == p[i].exec_h && p[k].exec_w == p[i].exec_w &&
                p[k].exec_c == p[i].exec_c)
                share = k;
        if (share >= 0) {
            p[i].storage = share;
            free_after[share] = p[i].last_use;
            continue;
        }
        p[i].storage = i;
        free_after[i] = p[i].last_use;
        out->activation_tensors++;
        out->activation_floats += (size_t)p[i].exec_h * p[i].exec_w * p[i].exec_c;
    }
}
