/* The executor's state (struct mt_model) and the small helpers its three parts share: model.c
 * (creation, buffers, activations, weights), model_forward.c and model_backward.c (with the
 * gradient slots); keras_import.c stages through mt_model_host_tensor too. Internal to
 * src/model: the public face is include/mobiletune/model.h. */
#ifndef MOBILETUNE_MODEL_INTERNAL_H
#define MOBILETUNE_MODEL_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "mobiletune/model.h"
#include "model/model_plan.h"

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

/* What one layer holds at run time, beside its plan record (m->plan.layer[k]): the plan says
 * what the layer is to run; this, what the last forward and the backward under way left in it. */
typedef struct mt_layer_state {
    /* its output tensor (backbone layers, sized for m->n): its own memory when `allocated`, else
     * an earlier layer's (plan storage) or none */
    mt_tensor act;
    bool allocated;
    /* a BN that the last forward ran fused with its ReLU6 in training mode: the backward runs
     * the pair at the ReLU6 and skips the BN */
    bool fused_training;
    bool lent;   /* act is borrowed by a gradient slot during this backward */
    int grad_of; /* the gradient slot holding the gradient at this output; -1: none yet */
} mt_layer_state;

/* The per-step values in backend memory, written by scalars_write before the step:
 * mt_model_set_step (seed, step) and mt_model_set_loss_scale. */
typedef struct model_step_values {
    uint64_t dropout_seed; /* dropout_forward's seed */
    uint64_t step;         /* loss_accumulate's step number */
    float loss_scale;      /* backward's factor on dlogits (fp16) */
} model_step_values;

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

    /* per layer: what it is to run (model_plan.h, fixed at creation) and what it holds now */
    mt_model_plan plan;
    mt_layer_state layer_state[MT_MODEL_LAYERS];

    /* the per-step values the step's ops read (ops.h "Per-step values"), backend memory */
    model_step_values *step_values;
    bool loss_scaled;           /* mt_model_set_loss_scale was called: backward scales dlogits */
    int prepared_valid;         /* mt_model_prepare_input: the batch's rows with a label */
    uint64_t memory_generation; /* mt_model_memory_generation: tensors (re)allocated */
    int n;                      /* batch the activations are sized for (0: none yet) */
    grad_slot slots[GRAD_SLOTS_MAX];
    int slot_count;
    int walk_at; /* backward: the layer being processed (outputs >= it are dead) */

    /* the last forward */
    bool ready_for_backward, head_only, dropout_applied;
    int last_n;
    /* the last backbone forward's kept outputs are intact (no backward has reused them) */
    bool outputs_intact;

    mt_grad_ready_fn hook;
    void *hook_user;
};

/* ---- small helpers ----------------------------------------------------------------------- */

static inline float *tensor_ptr(mt_model *m, const mt_param_tensor *t) {
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

static inline float *grad_ptr(mt_model *m, const mt_param_tensor *t) {
    return t->buffer == MT_PARAM_TRAINABLE ? m->grads + t->offset : NULL;
}

static inline const mt_param_tensor *layer_tensor(const mt_model *m, int layer, int which) {
    MT_ASSERT(m->plan.layer[layer].first_tensor >= 0);
    return &m->layout->tensors[m->plan.layer[layer].first_tensor + which];
}

static inline mt_shape4 exec_shape(const mt_model *m, int layer, int n) {
    return (mt_shape4){.n = n,
                       .h = m->plan.layer[layer].exec_h,
                       .w = m->plan.layer[layer].exec_w,
                       .c = m->plan.layer[layer].exec_c};
}

static inline mt_tensor *act(mt_model *m, int layer) {
    return &m->layer_state[m->plan.layer[layer].owner].act;
}

static inline mt_conv_desc conv_desc(const mt_model *m, int layer, int n) {
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

static inline mt_batchnorm_desc bn_desc(const mt_model *m, int layer, int n) {
    return (mt_batchnorm_desc){.shape = exec_shape(m, layer, n),
                               .epsilon = bn_epsilon,
                               .momentum = m->layout->config.bn_momentum};
}

/* Size the activations for a batch of n (1..batch_size) as the plan says; nothing when they
 * already are (model.c). */
mt_status mt_model_activations_ensure(mt_model *m, int n);

/* A host buffer (malloc'd, NULL when out of memory) for any one tensor of `layout`: the staging
 * of every tensor-by-tensor upload and download (init, copy, Keras save). */
float *mt_model_host_tensor(const mt_model_layout *layout);

/* Free the owned gradient tensors and forget the borrowed ones (model_backward.c). */
void mt_model_grad_slots_free(mt_model *m);

#endif
