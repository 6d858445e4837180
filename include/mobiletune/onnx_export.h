/* The whole classifier as an ONNX model (docs/deploy.md), for ONNX Runtime, TensorRT and the
 * converters that start from ONNX.
 *
 * The graph, opset MT_ONNX_OPSET (IR version 8, what Debian 12's ONNX 1.12 schema writes):
 *   input         "input", float [batch, S, S, 3] NHWC, RGB scaled x/127.5 - 1 (Keras'
 *                 mobilenet_v2.preprocess_input: what `mobiletune predict` feeds the network)
 *   Transpose     to NCHW, the layout ONNX's Conv defines
 *   backbone      every Conv2D/DepthwiseConv2D with its BatchNormalization folded into the
 *                 convolution's weights and a bias (in double, then rounded once to float),
 *                 ReLU6 as Clip(0, 6), the residual Adds; ZeroPadding2D becomes the asymmetric
 *                 pads of the depthwise conv after it, exactly as mobiletune executes it
 *   head          GlobalAveragePool, Flatten, Gemm (the Dense layer); dropout is gone
 *   output        "probabilities", float [batch, classes]: softmax of the logits, or for two
 *                 classes [sigmoid(-z), sigmoid(z)] of the one logit z, as `mobiletune predict`
 *                 prints them
 * Node and tensor names are Keras' layer names. The model's metadata_props carry the class names
 * ("class_names", one per line), the input size, alpha and the preprocessing.
 * The file is written with protobuf-c from C code generated from ONNX's own schema (onnx.proto of
 * Debian's libonnx-dev) at build time. */
#ifndef MOBILETUNE_ONNX_EXPORT_H
#define MOBILETUNE_ONNX_EXPORT_H

#include "mobiletune/model.h"
#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    MT_ONNX_OPSET = 13,     /* default-domain opset the graph is written against */
    MT_ONNX_IR_VERSION = 8, /* the IR version of ONNX 1.10..1.12 */
};

/* Write `model`'s classifier (inference mode: BN moving statistics, no dropout) to `path`,
 * atomically (a temporary "<path>.tmp-<pid>", fsync'ed and renamed). class_names: the model's
 * `classes` names (may be NULL: "class_0", ...). Errors name the file. */
mt_status mt_model_save_onnx(mt_model *model, const char *path, const char *const *class_names);

#ifdef __cplusplus
}
#endif
#endif
