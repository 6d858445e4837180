/* The model's plan: one record per layer, saying what the executor (model.c, model_forward.c,
 * model_backward.c) does with it: which tensor holds its output, whether that output is kept
 * for the backward pass or shares memory, and which fused op runs it. A pure function of the
 * layout and of the backend's capabilities, so a test can check the plan for any (layout,
 * capabilities) pair without creating a backend; mt_model_create builds it once and allocates
 * from it. Internal to the library. */
#ifndef MT_MODEL_PLAN_H
#define MT_MODEL_PLAN_H

#include <stdbool.h>
#include <stddef.h>

#include "mobiletune/model.h"
#include "mobiletune/ops.h"

/* What the plan needs to know about a backend: which optional fused ops its table has. */
typedef struct mt_model_caps {
    bool conv_bn_relu6_inference; /* ops.h conv_bn_relu6_inference_forward */
    bool bn_relu6_training;       /* batchnorm_relu6_forward_training + its backward */
} mt_model_caps;

mt_model_caps mt_model_caps_of(const mt_ops *ops);

typedef struct mt_layer_plan {
    int first_tensor; /* first tensor in layout->tensors (-1: none) */
    /* the layer whose tensor holds this output: ReLU6 runs in place, a pad layer is folded into
     * the next conv */
    int owner;
    int exec_h, exec_w, exec_c; /* the executed output shape without the batch */
    bool needs_grad;            /* some trainable weight lies at or below this output */
    /* activation memory: `keep` outputs are read by the backward pass and get their own tensor;
     * the others share tensors of their shape once the previous user's last forward reader
     * (`last_use`, a layer index; MT_MODEL_BACKBONE_LAYERS: the pool) has run */
    bool keep;
    int last_use;
    /* fusable groups (-1: none): for a conv, the BN that is its output's only reader; for a BN,
     * the ReLU6 that is its output's only reader */
    int group_bn, group_relu;
    /* a conv whose group may run as conv_bn_relu6_inference_forward (the capability is there);
     * whether it does is decided per forward (training, BN mode, a backward passing through) */
    bool fuse_conv_bn;
    /* a conv output that every forward fuses away (its BN always normalizes with the moving
     * statistics and no backward reaches it): it gets no tensor */
    bool fused_away;
    /* a BN whose training-mode forward runs fused with its ReLU6 */
    bool fuse_bn_relu6_training;
    size_t bn_saved_offset; /* BN: its saved mean [c] and 1/std [c] in the bn_saved buffer */
    /* the activation tensor this layer's output is written to: itself (it allocates one), an
     * earlier layer k (the same shape, k's tensor free again: layers k..this one share memory),
     * or -1 (no tensor: it runs in its owner's, or is fused away) */
    int storage;
} mt_layer_plan;

typedef struct mt_model_plan {
    mt_layer_plan layer[MT_MODEL_LAYERS];
    size_t bn_saved_count;    /* floats of the bn_saved buffer */
    int activation_tensors;   /* backbone layers with storage == their own index */
    size_t activation_floats; /* their sizes summed, per image of the batch */
} mt_model_plan;

void mt_model_plan_build(const mt_model_layout *layout, const mt_model_caps *caps,
                         mt_model_plan *out);

#endif
