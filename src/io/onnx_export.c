/* The classifier as an ONNX ModelProto (include/mobiletune/onnx_export.h has the graph).
 *
 * The messages are protobuf-c structs generated from ONNX's own onnx.proto, so the bytes are
 * protobuf-c's, not ours. Every struct, string and array the model points to comes from one
 * arena (a list of allocations freed together), which keeps the many small failure paths to one
 * status: each helper does nothing once the builder has failed, and the caller checks once. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mobiletune/files.h"
#include "mobiletune/onnx_export.h"
#include "onnx/onnx.pb-c.h"

/* Keras' BatchNormalization epsilon in MobileNetV2 (model.h): the fold must use the same. */
#define BN_EPSILON 1e-3

typedef struct builder {
    void **allocs;
    size_t alloc_count, alloc_capacity;
    Onnx__NodeProto **nodes;
    size_t node_count, node_capacity;
    Onnx__TensorProto **initializers;
    size_t initializer_count, initializer_capacity;
    mt_status status;
} builder;

static bool grow(builder *b, void ***array, size_t *count, size_t *capacity) {
    if (b->status != MT_OK) return false;
    if (*count < *capacity) return true;
    size_t next = *capacity ? *capacity * 2 : 64;
    void **bigger = realloc(*array, next * sizeof *bigger);
    if (!bigger) {
        b->status = MT_FAIL(MT_ERR_NOMEM, "out of memory building the ONNX graph");
        return false;
    }
    *array = bigger;
    *capacity = next;
    return true;
}

/* Zeroed memory owned by the builder (NULL once the builder has failed). */
static void *arena(builder *b, size_t bytes) {
    if (!grow(b, &b->allocs, &b->alloc_count, &b->alloc_capacity)) return NULL;
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) {
        b->status = MT_FAIL(MT_ERR_NOMEM, "out of memory building the ONNX graph");
        return NULL;
    }
    b->allocs[b->alloc_count++] = p;
    return p;
}

static char *text(builder *b, const char *format, ...) __attribute__((format(printf, 2, 3)));
static char *text(builder *b, const char *format, ...) {
    va_list args;
    va_start(args, format);
    int length = vsnprintf(NULL, 0, format, args);
    va_end(args);
    char *s = length >= 0 ? arena(b, (size_t)length + 1) : NULL;
    if (!s) return NULL;
    va_start(args, format);
    vsnprintf(s, (size_t)length + 1, format, args);
    va_end(args);
    return s;
}

/* A float32 initializer of shape dims[rank], its values copied as little-endian raw_data (every
 * platform mobiletune builds on is little-endian, which ONNX's raw_data requires). */
static void add_initializer(builder *b, const char *name, const int64_t *dims, int rank,
                            const float *values) {
    Onnx__TensorProto *t = arena(b, sizeof *t);
    int64_t *shape = arena(b, (size_t)rank * sizeof *shape);
    size_t count = 1;
    for (int d = 0; d < rank; d++) count *= (size_t)dims[d];
    uint8_t *raw = arena(b, count * sizeof(float));
    if (!t || !shape || !raw ||
        !grow(b, (void ***)&b->initializers, &b->initializer_count, &b->initializer_capacity))
        return;
    onnx__tensor_proto__init(t);
    if (rank) memcpy(shape, dims, (size_t)rank * sizeof *shape); /* scalars: dims is NULL */
    memcpy(raw, values, count * sizeof(float));
    t->name = text(b, "%s", name);
    t->n_dims = (size_t)rank;
    t->dims = shape;
    t->has_data_type = true;
    t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    t->has_raw_data = true;
    t->raw_data.len = count * sizeof(float);
    t->raw_data.data = raw;
    b->initializers[b->initializer_count++] = t;
}

static Onnx__NodeProto *add_node(builder *b, const char *op_type, const char *name,
                                 const char *const *inputs, size_t input_count,
                                 const char *output) {
    Onnx__NodeProto *n = arena(b, sizeof *n);
    char **in = arena(b, input_count * sizeof *in);
    char **out = arena(b, sizeof *out);
    if (!n || !in || !out || !grow(b, (void ***)&b->nodes, &b->node_count, &b->node_capacity))
        return NULL;
    onnx__node_proto__init(n);
    n->op_type = text(b, "%s", op_type);
    n->name = text(b, "%s", name);
    for (size_t i = 0; i < input_count; i++) in[i] = text(b, "%s", inputs[i]);
    out[0] = text(b, "%s", output);
    n->n_input = input_count;
    n->input = in;
    n->n_output = 1;
    n->output = out;
    b->nodes[b->node_count++] = n;
    return n;
}

/* Attributes: an int, or a list of ints (count > 1 or `list`). */
static void add_attribute(builder *b, Onnx__NodeProto *node, const char *name,
                          const int64_t *values, size_t count, bool list) {
    if (!node) return;
    Onnx__AttributeProto *a = arena(b, sizeof *a);
    Onnx__AttributeProto **all = arena(b, (node->n_attribute + 1) * sizeof *all);
    int64_t *ints = arena(b, count * sizeof *ints);
    if (!a || !all || !ints) return;
    onnx__attribute_proto__init(a);
    a->name = text(b, "%s", name);
    a->has_type = true;
    if (list) {
        a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS;
        memcpy(ints, values, count * sizeof *ints);
        a->n_ints = count;
        a->ints = ints;
    } else {
        a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
        a->has_i = true;
        a->i = values[0];
    }
    if (node->n_attribute) memcpy(all, node->attribute, node->n_attribute * sizeof *all);
    all[node->n_attribute++] = a;
    node->attribute = all;
}

static Onnx__ValueInfoProto *value_info(builder *b, const char *name, const int64_t *dims,
                                        int rank) {
    Onnx__ValueInfoProto *v = arena(b, sizeof *v);
    Onnx__TypeProto *type = arena(b, sizeof *type);
    Onnx__TypeProto__Tensor *tensor = arena(b, sizeof *tensor);
    Onnx__TensorShapeProto *shape = arena(b, sizeof *shape);
    Onnx__TensorShapeProto__Dimension **dim = arena(b, (size_t)rank * sizeof *dim);
    if (!v || !type || !tensor || !shape || !dim) return NULL;
    onnx__value_info_proto__init(v);
    onnx__type_proto__init(type);
    onnx__type_proto__tensor__init(tensor);
    onnx__tensor_shape_proto__init(shape);
    for (int d = 0; d < rank; d++) {
        dim[d] = arena(b, sizeof *dim[d]);
        if (!dim[d]) return NULL;
        onnx__tensor_shape_proto__dimension__init(dim[d]);
        if (dims[d] < 0) { /* the batch: any size */
            dim[d]->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            dim[d]->dim_param = text(b, "batch");
        } else {
            dim[d]->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            dim[d]->dim_value = dims[d];
        }
    }
    shape->n_dim = (size_t)rank;
    shape->dim = dim;
    tensor->has_elem_type = true;
    tensor->elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    tensor->shape = shape;
    type->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    type->tensor_type = tensor;
    v->name = text(b, "%s", name);
    v->type = type;
    return v;
}

/* Download tensor layer/weight of the model into host memory of its Keras shape. */
static float *download(builder *b, mt_model *model, const char *layer, const char *weight,
                       const mt_param_tensor **info) {
    const mt_param_tensor *p = mt_model_layout_find(mt_model_get_layout(model), layer, weight);
    if (b->status != MT_OK) return NULL;
    if (!p) {
        b->status = MT_FAIL(MT_ERR_INTERNAL, "ONNX export: the model has no tensor %s/%s", layer,
                            weight);
        return NULL;
    }
    float *host = arena(b, p->count * sizeof *host);
    if (host) b->status = mt_model_tensor_download(model, p, host);
    if (info) *info = p;
    return b->status == MT_OK ? host : NULL;
}

/* A Conv2D or DepthwiseConv2D and the BatchNormalization `bn` after it, as one ONNX Conv whose
 * weights and bias carry the normalization: y = (conv(x) - mean) * s + beta with
 * s = gamma / sqrt(var + eps) is conv with kernel * s and bias beta - mean * s. The products are
 * formed in double and rounded once, so the folded kernel is within half an ulp of the exact
 * product (the error the 1e-5 runtime check leaves room for). */
static void add_conv_bn(builder *b, mt_model *model, const mt_layer_info *conv,
                        const mt_layer_info *bn, const char *input) {
    const bool depthwise = conv->kind == MT_LAYER_DEPTHWISE;
    const mt_param_tensor *k = NULL;
    float *kernel = download(b, model, conv->name, depthwise ? "depthwise_kernel" : "kernel", &k);
    float *gamma = download(b, model, bn->name, "gamma", NULL);
    float *beta = download(b, model, bn->name, "beta", NULL);
    float *mean = download(b, model, bn->name, "moving_mean", NULL);
    float *var = download(b, model, bn->name, "moving_variance", NULL);
    if (b->status != MT_OK) return;
    /* Keras: conv [kh][kw][cin][cout], depthwise [kh][kw][c][1]; ONNX: [cout][cin/group][kh][kw] */
    const int kh = k->shape[0], kw = k->shape[1];
    const int cout = depthwise ? k->shape[2] : k->shape[3];
    const int cin = depthwise ? 1 : k->shape[2];
    float *w = arena(b, (size_t)cout * cin * kh * kw * sizeof *w);
    float *bias = arena(b, (size_t)cout * sizeof *bias);
    if (!w || !bias) return;
    for (int o = 0; o < cout; o++) {
        const double s = (double)gamma[o] / sqrt((double)var[o] + BN_EPSILON);
        bias[o] = (float)((double)beta[o] - (double)mean[o] * s);
        for (int i = 0; i < cin; i++)
            for (int y = 0; y < kh; y++)
                for (int x = 0; x < kw; x++) {
                    size_t from = depthwise ? ((size_t)y * kw + x) * cout + o
                                            : (((size_t)y * kw + x) * cin + i) * cout + o;
                    w[(((size_t)o * cin + i) * kh + y) * kw + x] =
                        (float)((double)kernel[from] * s);
                }
    }
    char *w_name = text(b, "%s/kernel", conv->name), *b_name = text(b, "%s/bias", conv->name);
    if (!w_name || !b_name) return;
    add_initializer(b, w_name, (const int64_t[]){cout, cin, kh, kw}, 4, w);
    add_initializer(b, b_name, (const int64_t[]){cout}, 1, bias);
    Onnx__NodeProto *node =
        add_node(b, "Conv", conv->name, (const char *const[]){input, w_name, b_name}, 3, bn->name);
    add_attribute(b, node, "kernel_shape", (const int64_t[]){kh, kw}, 2, true);
    add_attribute(b, node, "strides", (const int64_t[]){conv->stride, conv->stride}, 2, true);
    /* ONNX pads: [H begin, W begin, H end, W end]; TF 'SAME' and the folded ZeroPadding2D are
     * asymmetric (more at the bottom/right), which explicit pads express exactly */
    add_attribute(b, node, "pads",
                  (const int64_t[]){conv->pad_top, conv->pad_left, conv->pad_bottom,
                                    conv->pad_right},
                  4, true);
    if (depthwise) add_attribute(b, node, "group", (const int64_t[]){cout}, 1, false);
}

/* The graph's nodes and initializers for every layer; `names[i]` is the ONNX tensor holding
 * layer i's output (layers that are not executed alias their input's). */
static void build_graph(builder *b, mt_model *model, const char **names) {
    const mt_model_layout *layout = mt_model_get_layout(model);
    static const float relu6_bounds[2] = {0.0f, 6.0f};
    add_initializer(b, "relu6_min", NULL, 0, &relu6_bounds[0]);
    add_initializer(b, "relu6_max", NULL, 0, &relu6_bounds[1]);
    for (int i = 0; i < MT_MODEL_LAYERS && b->status == MT_OK; i++) {
        const mt_layer_info *l = &layout->layers[i];
        const char *in = l->inputs[0] >= 0 ? names[l->inputs[0]] : NULL;
        switch (l->kind) {
        case MT_LAYER_INPUT:
            add_attribute(b, add_node(b, "Transpose", "input_to_nchw",
                                      (const char *const[]){"input"}, 1, "input_nchw"),
                          "perm", (const int64_t[]){0, 3, 1, 2}, 4, true);
            names[i] = "input_nchw";
            break;
        case MT_LAYER_CONV:
        case MT_LAYER_DEPTHWISE: {
            const mt_layer_info *bn = i + 1 < MT_MODEL_LAYERS ? &layout->layers[i + 1] : NULL;
            if (!bn || bn->kind != MT_LAYER_BATCHNORM || bn->inputs[0] != i) {
                b->status = MT_FAIL(MT_ERR_INTERNAL, "ONNX export: layer %s is not followed by "
                                    "its BatchNormalization", l->name);
                break;
            }
            add_conv_bn(b, model, l, bn, in);
            names[i] = names[i + 1] = bn->name;
            i++; /* the BN layer is part of this Conv */
            break;
        }
        case MT_LAYER_BATCHNORM:
            b->status = MT_FAIL(MT_ERR_INTERNAL, "ONNX export: BatchNormalization %s does not "
                                "follow a convolution", l->name);
            break;
        case MT_LAYER_RELU6:
            add_node(b, "Clip", l->name, (const char *const[]){in, "relu6_min", "relu6_max"}, 3,
                     l->name);
            names[i] = l->name;
            break;
        case MT_LAYER_ZERO_PAD: /* executed as the next depthwise conv's pads */
        case MT_LAYER_DROPOUT:  /* the identity at inference */
            names[i] = in;
            break;
        case MT_LAYER_ADD:
            add_node(b, "Add", l->name, (const char *const[]){in, names[l->inputs[1]]}, 2,
                     l->name);
            names[i] = l->name;
            break;
        case MT_LAYER_GLOBAL_POOL: {
            char *pooled = text(b, "%s/nchw", l->name);
            if (!pooled) break;
            add_node(b, "GlobalAveragePool", pooled, (const char *const[]){in}, 1, pooled);
            add_attribute(b, add_node(b, "Flatten", l->name, (const char *const[]){pooled}, 1,
                                      l->name),
                          "axis", (const int64_t[]){1}, 1, false);
            names[i] = l->name;
            break;
        }
        case MT_LAYER_DENSE: {
            const mt_param_tensor *k = NULL;
            float *kernel = download(b, model, l->name, "kernel", &k);
            float *bias = download(b, model, l->name, "bias", NULL);
            char *k_name = text(b, "%s/kernel", l->name), *b_name = text(b, "%s/bias", l->name);
            if (!kernel || !bias || !k_name || !b_name) break;
            /* Keras' Dense kernel is [in][out], Gemm's B without transB */
            add_initializer(b, k_name, (const int64_t[]){k->shape[0], k->shape[1]}, 2, kernel);
            add_initializer(b, b_name, (const int64_t[]){k->shape[1]}, 1, bias);
            add_node(b, "Gemm", l->name, (const char *const[]){in, k_name, b_name}, 3, l->name);
            names[i] = l->name;
            break;
        }
        }
    }
    if (b->status != MT_OK) return;
    const char *logits = names[MT_MODEL_LAYERS - 1];
    if (layout->config.classes == 2) {
        /* one logit z: p(class 1) = sigmoid(z), p(class 0) = sigmoid(-z) = 1 - sigmoid(z) */
        add_node(b, "Neg", "negated_logit", (const char *const[]){logits}, 1, "negated_logit");
        add_attribute(b, add_node(b, "Concat", "both_logits",
                                  (const char *const[]){"negated_logit", logits}, 2,
                                  "both_logits"),
                      "axis", (const int64_t[]){1}, 1, false);
        add_node(b, "Sigmoid", "probabilities", (const char *const[]){"both_logits"}, 1,
                 "probabilities");
    } else {
        add_attribute(b, add_node(b, "Softmax", "probabilities", (const char *const[]){logits}, 1,
                                  "probabilities"),
                      "axis", (const int64_t[]){1}, 1, false);
    }
}

static Onnx__StringStringEntryProto *property(builder *b, const char *key, const char *value) {
    Onnx__StringStringEntryProto *p = arena(b, sizeof *p);
    if (!p) return NULL;
    onnx__string_string_entry_proto__init(p);
    p->key = text(b, "%s", key);
    p->value = text(b, "%s", value);
    return p;
}

static mt_status write_file(const char *path, const uint8_t *bytes, size_t size) {
    char temporary[4096];
    if (snprintf(temporary, sizeof temporary, "%s.tmp-%ld", path, (long)getpid()) >=
        (int)sizeof temporary)
        return MT_FAIL(MT_ERR_INVALID, "ONNX output path '%s' is too long", path);
    FILE *f = fopen(temporary, "wb");
    if (!f)
        return MT_FAIL(MT_ERR_IO, "cannot create '%s': %s (is the folder there and writable?)",
                       temporary, strerror(errno));
    bool ok = fwrite(bytes, 1, size, f) == size;
    ok = fflush(f) == 0 && ok;
    int saved = errno;
    ok = fclose(f) == 0 && ok;
    mt_status status = ok ? mt_sync_path(temporary)
                          : MT_FAIL(MT_ERR_IO, "cannot write '%s': %s", temporary, strerror(saved));
    if (status == MT_OK && rename(temporary, path) != 0)
        status = MT_FAIL(MT_ERR_IO, "cannot rename '%s' to '%s': %s", temporary, path,
                         strerror(errno));
    if (status != MT_OK) {
        remove(temporary);
        return status;
    }
    return mt_sync_parent(path);
}

mt_status mt_model_save_onnx(mt_model *model, const char *path, const char *const *class_names) {
    if (!model || !path || !*path)
        return MT_FAIL(MT_ERR_INVALID, "ONNX export needs a model and an output path");
    const mt_model_layout *layout = mt_model_get_layout(model);
    const mt_model_config *config = &layout->config;
    builder b = {.status = MT_OK};
    const char **names = arena(&b, MT_MODEL_LAYERS * sizeof *names);
    if (names) build_graph(&b, model, names);

    /* one class name per line, as the checkpoints keep them */
    size_t names_bytes = 1;
    for (int k = 0; k < config->classes; k++)
        names_bytes += (class_names ? strlen(class_names[k]) : 16) + 1;
    char *classes_text = arena(&b, names_bytes);
    for (int k = 0; classes_text && k < config->classes; k++) {
        size_t used = strlen(classes_text);
        if (class_names)
            snprintf(classes_text + used, names_bytes - used, "%s%s", k ? "\n" : "",
                     class_names[k]);
        else
            snprintf(classes_text + used, names_bytes - used, "%sclass_%d", k ? "\n" : "", k);
    }
    Onnx__StringStringEntryProto *props[] = {
        property(&b, "class_names", classes_text ? classes_text : ""),
        property(&b, "input_size", text(&b, "%d", config->input_size)),
        property(&b, "alpha", text(&b, "%g", config->alpha)),
        property(&b, "preprocessing",
                 "RGB, resized to input_size x input_size as mobiletune-pack does, x/127.5 - 1, "
                 "NHWC float32"),
    };
    const int64_t input_dims[4] = {-1, config->input_size, config->input_size, 3};
    const int64_t output_dims[2] = {-1, config->classes};
    Onnx__ValueInfoProto *input = value_info(&b, "input", input_dims, 4);
    Onnx__ValueInfoProto *output = value_info(&b, "probabilities", output_dims, 2);
    Onnx__OperatorSetIdProto opset;
    onnx__operator_set_id_proto__init(&opset);
    opset.domain = "";
    opset.has_version = true;
    opset.version = MT_ONNX_OPSET;
    Onnx__OperatorSetIdProto *opsets[1] = {&opset};
    Onnx__GraphProto graph;
    onnx__graph_proto__init(&graph);
    char *graph_name = text(&b, "mobilenetv2_%.2f_%d", config->alpha, config->input_size);

    mt_status status = b.status;
    uint8_t *bytes = NULL;
    size_t size = 0;
    if (status == MT_OK) {
        graph.name = graph_name;
        graph.doc_string = "MobileNetV2 classifier trained with mobiletune: input NHWC float32 "
                           "RGB in [-1, 1], output class probabilities";
        graph.n_node = b.node_count;
        graph.node = b.nodes;
        graph.n_initializer = b.initializer_count;
        graph.initializer = b.initializers;
        graph.n_input = 1;
        graph.input = &input;
        graph.n_output = 1;
        graph.output = &output;
        Onnx__ModelProto m;
        onnx__model_proto__init(&m);
        m.has_ir_version = true;
        m.ir_version = MT_ONNX_IR_VERSION;
        m.n_opset_import = 1;
        m.opset_import = opsets;
        m.producer_name = "mobiletune";
        m.graph = &graph;
        m.n_metadata_props = sizeof props / sizeof props[0];
        m.metadata_props = props;
        size = onnx__model_proto__get_packed_size(&m);
        bytes = malloc(size);
        if (!bytes) status = MT_FAIL(MT_ERR_NOMEM, "out of memory packing the ONNX model");
        else if (onnx__model_proto__pack(&m, bytes) != size)
            status = MT_FAIL(MT_ERR_INTERNAL, "protobuf-c packed a size other than it measured");
    }
    if (status == MT_OK) status = write_file(path, bytes, size);
    free(bytes);
    for (size_t i = 0; i < b.alloc_count; i++) free(b.allocs[i]);
    free(b.allocs);
    free(b.nodes);
    free(b.initializers);
    if (status != MT_OK) return mt_error_context(status, "exporting ONNX to '%s'", path);
    return MT_OK;
}
