/* The model's plan (src/model/model_plan.h) for several layouts and backend capabilities, built
 * without a backend: fused ops only where the capability is there, every activation the backward
 * pass reads kept in its own tensor (never fused away, never shared), tensors that share memory
 * only after their readers ran, and the BN statistics buffer laid out without overlap. */
#include <stdio.h>
#include <string.h>

#include "mobiletune/model.h"
#include "model/model_plan.h"
#include "test_util.h"

static bool is_conv(const mt_layer_info *l) {
    return l->kind == MT_LAYER_CONV || l->kind == MT_LAYER_DEPTHWISE;
}

static void check_plan(const char *what, const mt_model_layout *layout, const mt_model_caps *caps,
                       const mt_model_plan *plan) {
    const mt_layer_plan *p = plan->layer;
    int fused_conv = 0, fused_bn = 0, fused_away = 0, kept = 0;
    size_t saved = 0;
    for (int i = 1; i < MT_MODEL_BACKBONE_LAYERS; i++) {
        const mt_layer_info *l = &layout->layers[i];
        int in = l->inputs[0];
        /* the tensor holding an output: itself, or (in place / folded) its input's */
        int o = p[i].owner;
        CHECK_MSG(o >= 0 && o <= i && p[o].owner == o, "%s: layer %s owner %d", what, l->name, o);
        if (l->kind == MT_LAYER_RELU6 || l->kind == MT_LAYER_ZERO_PAD)
            CHECK_MSG(o == p[in].owner, "%s: %s does not run in its input's tensor", what, l->name);
        CHECK_MSG(p[i].exec_h == p[o].exec_h && p[i].exec_w == p[o].exec_w &&
                      p[i].exec_c == p[o].exec_c,
                  "%s: %s's shape differs from its tensor's", what, l->name);
        if (l->kind != MT_LAYER_ZERO_PAD)
            CHECK_MSG(p[i].exec_h == l->out_h && p[i].exec_w == l->out_w && p[i].exec_c == l->out_c,
                      "%s: %s's executed shape is not the layer's", what, l->name);
        /* a tensor shared with another is free only once every reader of it has run */
        for (int k = 0; k < 2; k++)
            if (l->inputs[k] >= 0)
                CHECK_MSG(p[p[l->inputs[k]].owner].last_use >= i,
                          "%s: %s's input is released before it runs", what, l->name);

        /* fused ops only with the capability, and only where the layout allows them */
        if (p[i].fuse_conv_bn) {
            fused_conv++;
            CHECK_MSG(caps->conv_bn_relu6_inference, "%s: %s fused without the op", what, l->name);
            int bn = p[i].group_bn;
            CHECK_MSG(is_conv(l) && bn > i && layout->layers[bn].kind == MT_LAYER_BATCHNORM &&
                          layout->layers[bn].inputs[0] == i,
                      "%s: %s fused with a layer that is not its BN", what, l->name);
            /* the fused op reads x while writing the BN's tensor */
            if (bn > i) CHECK(p[p[in].owner].last_use >= bn);
        }
        if (p[i].fused_away) {
            fused_away++;
            CHECK_MSG(p[i].fuse_conv_bn && !p[p[i].group_bn].needs_grad &&
                          !layout->layers[p[i].group_bn].bn_training,
                      "%s: %s fused away though a training forward or a backward reads it", what,
                      l->name);
            CHECK_MSG(!p[i].keep, "%s: %s is kept for the backward and fused away", what, l->name);
        }
        if (p[i].fuse_bn_relu6_training) {
            fused_bn++;
            CHECK_MSG(caps->bn_relu6_training && l->kind == MT_LAYER_BATCHNORM && l->bn_training,
                      "%s: %s fused BN+ReLU6 without the op or batch statistics", what, l->name);
            int relu = p[i].group_relu;
            CHECK(relu > i && layout->layers[relu].kind == MT_LAYER_RELU6 &&
                  layout->layers[relu].inputs[0] == i);
        }

        /* an output needs a gradient iff a trainable weight lies at or below it */
        bool needs = l->trainable && l->params > 0;
        for (int k = 0; k < 2; k++)
            if (l->inputs[k] >= 0 && p[l->inputs[k]].needs_grad) needs = true;
        CHECK_MSG(p[i].needs_grad == needs, "%s: %s needs_grad %d", what, l->name, p[i].needs_grad);

        /* what the backward through layer i reads is kept in its own tensor */
        if (p[i].needs_grad) {
            if (l->kind == MT_LAYER_BATCHNORM)
                CHECK_MSG(p[p[in].owner].keep, "%s: %s's input not kept", what, l->name);
            if (l->kind == MT_LAYER_RELU6)
                CHECK_MSG(p[o].keep, "%s: %s's output not kept", what, l->name);
            if (is_conv(l) && l->trainable)
                CHECK_MSG(p[p[in].owner].keep, "%s: %s's input not kept", what, l->name);
        }
        if (p[i].keep) kept++;

        if (l->kind == MT_LAYER_BATCHNORM) {
            CHECK_MSG(p[i].bn_saved_offset == saved, "%s: %s's saved statistics at %zu, not %zu",
                      what, l->name, p[i].bn_saved_offset, saved);
            saved += 2 * (size_t)l->out_c;
        }
    }
    /* activation tensors: what is kept or fused away, and which layers share memory */
    int tensors = 0, busy_until[MT_MODEL_LAYERS];
    size_t floats = 0;
    for (int i = 0; i < MT_MODEL_BACKBONE_LAYERS; i++) {
        const char *name = layout->layers[i].name;
        int s = p[i].storage;
        if (p[i].owner != i || p[i].fused_away) {
            CHECK_MSG(s == -1, "%s: %s has a tensor though it %s", what, name,
                      p[i].fused_away ? "is fused away" : "runs in its input's");
            continue;
        }
        if (p[i].keep) CHECK_MSG(s == i, "%s: kept %s shares layer %d's tensor", what, name, s);
        if (s == i) {
            tensors++;
            floats += (size_t)p[i].exec_h * p[i].exec_w * p[i].exec_c;
            busy_until[i] = p[i].last_use;
            continue;
        }
        CHECK_MSG(s >= 0 && s < i && p[s].storage == s && !p[s].keep,
                  "%s: %s shares layer %d's tensor", what, name, s);
        if (!(s >= 0 && s < i && p[s].storage == s)) continue;
        CHECK_MSG(p[s].exec_h == p[i].exec_h && p[s].exec_w == p[i].exec_w &&
                      p[s].exec_c == p[i].exec_c,
                  "%s: %s shares a tensor of another shape", what, name);
        /* the previous user of the tensor has been read for the last time before i writes */
        CHECK_MSG(busy_until[s] < i, "%s: %s overwrites layer %d's tensor still read at %d", what,
                  name, s, busy_until[s]);
        busy_until[s] = p[i].last_use;
    }
    CHECK_MSG(plan->activation_tensors == tensors && plan->activation_floats == floats,
              "%s: %d activation tensors (%zu floats), the records say %d (%zu)", what,
              plan->activation_tensors, plan->activation_floats, tensors, floats);
    CHECK_MSG(plan->bn_saved_count == saved, "%s: bn_saved %zu floats, layers need %zu", what,
              plan->bn_saved_count, saved);
    if (!caps->conv_bn_relu6_inference) CHECK(fused_conv == 0 && fused_away == 0);
    if (!caps->bn_relu6_training) CHECK(fused_bn == 0);
    printf("%s: %d conv+BN fusable (%d fused away), %d BN+ReLU6 fused, %d kept, %d tensors "
           "(%zu floats per image)\n",
           what, fused_conv, fused_away, fused_bn, kept, tensors, floats);
}

typedef struct plan_case {
    const char *name;
    mt_train_mode mode;
    mt_bn_mode bn;
    float alpha;
    int size;
} plan_case;

int main(void) {
    const plan_case cases[] = {
        {"scratch 0.35@96", MT_TRAIN_SCRATCH, MT_BN_AUTO, 0.35f, 96},
        {"frozen 1.0@160", MT_TRAIN_FROZEN, MT_BN_AUTO, 1.0f, 160},
        {"finetune@100 bn trainable 1.0@160", MT_TRAIN_FINETUNE, MT_BN_TRAINABLE, 1.0f, 160},
        {"finetune@100 bn inference 0.5@128", MT_TRAIN_FINETUNE, MT_BN_INFERENCE, 0.5f, 128},
    };
    const mt_model_caps caps[] = {{false, false}, {true, false}, {false, true}, {true, true}};
    static mt_model_plan plan; /* large: off the stack */
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        mt_model_config config = mt_model_config_default();
        config.mode = cases[c].mode;
        config.bn_mode = cases[c].bn;
        config.alpha = cases[c].alpha;
        config.input_size = cases[c].size;
        config.fine_tune_at = 100;
        mt_model_layout *layout = NULL;
        CHECK_OK(mt_model_layout_create(&config, &layout));
        int any_fused_away = 0, any_bn_fused = 0, kept_scratch = 0;
        size_t floats_unfused = 0, floats_fused = 0;
        for (size_t k = 0; k < sizeof caps / sizeof caps[0]; k++) {
            char what[128];
            snprintf(what, sizeof what, "%s, caps conv_bn %d bn_relu6 %d", cases[c].name,
                     caps[k].conv_bn_relu6_inference, caps[k].bn_relu6_training);
            mt_model_plan_build(layout, &caps[k], &plan);
            check_plan(what, layout, &caps[k], &plan);
            if (k == 0) floats_unfused = plan.activation_floats;
            if (k == 1) floats_fused = plan.activation_floats;
            for (int i = 0; i < MT_MODEL_BACKBONE_LAYERS; i++) {
                any_fused_away += plan.layer[i].fused_away;
                any_bn_fused += plan.layer[i].fuse_bn_relu6_training;
                kept_scratch += plan.layer[i].keep;
            }
        }
        /* the plan's choices are not vacuous: each mode uses what its capabilities allow */
        switch (cases[c].mode) {
        case MT_TRAIN_FROZEN: /* nothing in the backbone trains: every conv+BN fuses away */
            CHECK_MSG(any_fused_away > 0 && kept_scratch == 0, "%s: fused away %d, kept %d",
                      cases[c].name, any_fused_away, kept_scratch);
            /* and the conv outputs fused away need no memory */
            CHECK_MSG(floats_fused < floats_unfused, "%s: %zu floats fused, %zu not", cases[c].name,
                      floats_fused, floats_unfused);
            break;
        case MT_TRAIN_SCRATCH: /* batch statistics everywhere: no conv+BN fuses away */
            CHECK_MSG(any_fused_away == 0 && any_bn_fused > 0 && kept_scratch > 0,
                      "%s: fused away %d, BN+ReLU6 %d, kept %d", cases[c].name, any_fused_away,
                      any_bn_fused, kept_scratch);
            break;
        case MT_TRAIN_FINETUNE: /* the frozen bottom fuses away, the top is kept */
            CHECK_MSG(any_fused_away > 0 && kept_scratch > 0, "%s: fused away %d, kept %d",
                      cases[c].name, any_fused_away, kept_scratch);
            break;
        }
        mt_model_layout_free(layout);
    }
    return mt_test_finish();
}
