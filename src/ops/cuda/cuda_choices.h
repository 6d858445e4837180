/* The cuda backend's per-shape convolution choices as text (ops.h choices_save / choices_load):
 * which implementation runs each (shape, pass) -- cuDNN, our kernels or the cuBLAS product --
 * and, for cuDNN, the algorithm, math type and workspace cudnnFind* picked. A checkpoint carries
 * the text (metadata "backend_choices") so that a resumed run, a fresh process that would time
 * differently, runs exactly the implementations and algorithms of the run it continues: the
 * floating-point summation order, and so the bits, stay those of the straight run.
 *
 * This header and cuda_choices.c are the text format only, plain C without CUDA, so its round
 * trip and its errors are unit-tested on any machine (tests/gpu/test_gpu_conv_plan.c); applying
 * a choice to the convolution cache is cuda_conv.c's.
 *
 * The text: a header line, then one line per decided (shape, pass), '\n'-terminated:
 *   mobiletune-cuda-choices 1 precision fp32 tf32 0
 *   conv N8 16x16x32 -> 32 k3 s1 pads 1 1 1 1 depthwise forward own
 *   conv N8 16x16x32 -> 64 k1 s1 pads 0 0 0 0 regular backward-filter cudnn algo 1 math 0 \
 *       workspace 0          (one line: broken here to fit)
 * (pads: top left bottom right; the pass forward | backward-data | backward-filter; the
 * implementation cudnn | own | gemm; algo, math and workspace only after cudnn: cuDNN's algorithm
 * enum of that pass, cudnnMathType_t, bytes). The header's precision and tf32 are the backend's
 * arithmetic when the choices were made: choices made for other arithmetic do not apply. */
#ifndef MT_OPS_CUDA_CHOICES_H
#define MT_OPS_CUDA_CHOICES_H

#include <stdbool.h>
#include <stddef.h>

#include "mobiletune/ops.h"

/* Who runs a pass (cuda_conv.c's cache entry holds one per pass); UNDECIDED until the first
 * call times the candidates or a loaded choice says. */
typedef enum mt_cuda_conv_impl {
    MT_CUDA_IMPL_UNDECIDED = 0,
    MT_CUDA_IMPL_CUDNN,
    MT_CUDA_IMPL_OWN,
    MT_CUDA_IMPL_GEMM,
} mt_cuda_conv_impl;

/* One decided (shape, pass). */
typedef struct mt_cuda_choice {
    mt_conv_desc desc; /* the convolution, as the ops receive it */
    int pass; /* MT_CUDA_CONV_FORWARD, _BACKWARD_DATA, _BACKWARD_FILTER (cuda_pointwise.h) */
    mt_cuda_conv_impl impl;
    /* MT_CUDA_IMPL_CUDNN only: the algorithm of the pass' enum, the cudnnMathType_t, the
     * workspace bytes it runs with */
    int algo, math;
    size_t workspace;
    int line; /* parse: the text's line it came from, for messages (format ignores it) */
} mt_cuda_choice;

/* The arithmetic the choices were made for (the header line). */
typedef struct mt_cuda_choices_header {
    mt_compute_precision precision;
    bool tf32; /* cuDNN / cuBLAS may use TF32 (train.precision tf32 or MT_CUDA_TF32=1) */
} mt_cuda_choices_header;

/* *text = the header line and one line per choice (malloc'd; the caller frees it). */
mt_status mt_cuda_choices_format(const mt_cuda_choices_header *header, const mt_cuda_choice *list,
                                 size_t count, char **text);

/* The reverse: *list (malloc'd, *count entries; NULL when none) and *header. A line that is not
 * one of the above (an unknown word, a number out of range, a cuDNN choice without its algorithm,
 * trailing text) is MT_ERR_FORMAT naming the line's number and text. */
mt_status mt_cuda_choices_parse(const char *text, mt_cuda_choices_header *header,
                                mt_cuda_choice **list, size_t *count);

#endif
