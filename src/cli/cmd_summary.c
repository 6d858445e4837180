/* `mobiletune summary`: the network as Keras' model.summary() prints it -- every backbone layer
 * with its Keras index, then the head -- and the parameter totals of the chosen training mode.
 * Needs no backend and no weights. */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "mobiletune/model.h"

static const char *buffer_name(mt_param_buffer b) {
    return b == MT_PARAM_TRAINABLE ? "trainable" : b == MT_PARAM_FROZEN ? "frozen" : "state";
}

static void print_size_line(const char *what, size_t params) {
    char buf[32];
    printf("%s: %s (%.2f MB)\n", what, cli_thousands(params, buf, sizeof buf),
           (double)params * 4.0 / (1024.0 * 1024.0));
}

static void print_layers(const mt_model_layout *layout) {
    const char *rule = "========================================================================"
                       "======================";
    printf("%4s  %-50s %-22s %10s  %s\n", "#", "Layer (type)", "Output Shape", "Param #",
           "Trainable");
    printf("%s\n", rule);
    for (int i = 0; i < MT_MODEL_LAYERS; i++) {
        const mt_layer_info *l = &layout->layers[i];
        if (i == MT_MODEL_BACKBONE_LAYERS) printf("%s\n  head\n", rule);
        char name[128], shape[64], params[32];
        snprintf(name, sizeof name, "%s (%s)", l->name, mt_layer_kind_name(l->kind));
        if (l->kind >= MT_LAYER_GLOBAL_POOL)
            snprintf(shape, sizeof shape, "(None, %d)", l->out_c);
        else
            snprintf(shape, sizeof shape, "(None, %d, %d, %d)", l->out_h, l->out_w, l->out_c);
        const char *trainable = l->params == 0 ? "-" : l->trainable ? "Y" : "N";
        printf("%4d  %-50s %-22s %10s  %s%s\n", i, name, shape,
               cli_thousands(l->params, params, sizeof params), trainable,
               l->bn_training ? " (batch statistics)" : "");
    }
    printf("%s\n", rule);
}

static void print_tensors(const mt_model_layout *layout) {
    printf("\n%-55s %-20s %-10s %10s %10s\n", "Tensor", "Shape", "Buffer", "Offset", "Count");
    for (int i = 0; i < layout->tensor_count; i++) {
        const mt_param_tensor *t = &layout->tensors[i];
        char shape[64] = "(";
        for (int d = 0; d < t->rank; d++) {
            char dim[16];
            snprintf(dim, sizeof dim, d ? ", %d" : "%d", t->shape[d]);
            strncat(shape, dim, sizeof shape - strlen(shape) - 1);
        }
        strncat(shape, t->rank == 1 ? ",)" : ")", sizeof shape - strlen(shape) - 1);
        printf("%-55s %-20s %-10s %10zu %10zu\n", t->name, shape, buffer_name(t->buffer), t->offset,
               t->count);
    }
}

typedef struct summary_args {
    mt_model_config model;
    bool tensors;
} summary_args;

#define ARG(f) CLI_FIELD(summary_args, f)
static const mt_config_option summary_options[] = {
    {.key = "alpha",
     .type = MT_CONFIG_FLOAT,
     ARG(model.alpha),
     .metavar = "A",
     .help = "width multiplier: 0.35, 0.5, 0.75, 1.0, 1.3, 1.4"},
    {.key = "size",
     .type = MT_CONFIG_INT,
     ARG(model.input_size),
     .metavar = "S",
     .help = "input side in pixels, a multiple of 32"},
    {.key = "classes",
     .type = MT_CONFIG_INT,
     ARG(model.classes),
     .metavar = "C",
     .help = "classes of the head (2: one sigmoid logit)"},
    {.key = "mode",
     .type = MT_CONFIG_ENUM,
     ARG(model.mode),
     .names = &mt_train_mode_names,
     .metavar = "MODE",
     .help = "what trains"},
    {.key = "fine-tune-at",
     .type = MT_CONFIG_INT,
     ARG(model.fine_tune_at),
     .metavar = "K",
     .help = "finetune: first trainable Keras layer index"},
    {.key = "bn",
     .type = MT_CONFIG_ENUM,
     ARG(model.bn_mode),
     .names = &mt_bn_mode_names,
     .metavar = "BN",
     .help = "BN during training, trainable: with batch statistics"},
    {.key = "tensors",
     .type = MT_CONFIG_FLAG,
     ARG(tensors),
     .help = "also list every parameter tensor with its buffer and offset"},
};

static const cli_spec summary_spec = {
    .program = "mobiletune summary",
    .usage = "[--alpha A] [--size S] [--classes C] [--mode MODE] [--fine-tune-at K]",
    .description = "Print Keras' MobileNetV2(include_top=False) layer by layer with Keras' "
                   "indices and names,\nthen the head (pooling, dropout, dense), and the "
                   "parameter totals of the training mode.",
    .options = summary_options,
    .option_count = sizeof summary_options / sizeof summary_options[0],
};

int mt_cmd_summary(int argc, char **argv) {
    summary_args args = {.model = mt_model_config_default()};
    char **positional = NULL;
    int positional_count = 0;
    mt_status status = cli_parse(&summary_spec, &args, argc, argv, &positional, &positional_count);
    free(positional);
    if (status == MT_END) return CLI_EXIT_OK;
    const mt_model_config config = args.model;
    const bool tensors = args.tensors;
    mt_model_layout *layout = NULL;
    if (status == MT_OK) status = mt_model_layout_create(&config, &layout);
    if (status != MT_OK) return cli_fail("summary", status);

    printf("Model: \"mobilenetv2_%.2f_%d\" + head: alpha %g, input %dx%dx3, %d classes, mode %s",
           (double)config.alpha, config.input_size, (double)config.alpha, config.input_size,
           config.input_size, config.classes, mt_train_mode_name(config.mode));
    if (config.mode == MT_TRAIN_FINETUNE) printf(" from layer %d", config.fine_tune_at);
    printf("\n");
    print_layers(layout);
    size_t trainable = layout->trainable_count;
    print_size_line("Total params", layout->total_params);
    print_size_line("Trainable params", trainable);
    print_size_line("Non-trainable params", layout->total_params - trainable);
    char a[32], b[32], c[32], d[32];
    printf("Backbone (MobileNetV2, include_top=False): %s params, %s trainable; "
           "BN moving statistics: %s\n",
           cli_thousands(layout->backbone_params, a, sizeof a),
           cli_thousands(layout->backbone_trainable, b, sizeof b),
           cli_thousands(layout->state_count, c, sizeof c));
    printf("Buffers (floats): trainable %s, frozen %s, state %s; backward stops at layer %d (%s)\n",
           cli_thousands(trainable, a, sizeof a), cli_thousands(layout->frozen_count, d, sizeof d),
           cli_thousands(layout->state_count, c, sizeof c), layout->lowest_trainable,
           layout->layers[layout->lowest_trainable].name);
    if (tensors) print_tensors(layout);
    mt_model_layout_free(layout);
    return CLI_EXIT_OK;
}
