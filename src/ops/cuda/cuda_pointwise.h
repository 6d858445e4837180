/* A pointwise convolution (1x1, stride 1, no padding) on NHWC activations as one matrix product
 * per pass, with M = N*H*W rows: y[M][O] = x[M][I] w[I][O], dx[M][I] = dy[M][O] w^T,
 * dw[I][O] = x^T dy, where Keras' HWIO kernel w is already the row-major [I][O] matrix. cuBLAS
 * is column-major, so each row-major product is issued as its transpose (C^T = B^T A^T on the
 * same memory). This file derives every argument of that call (operations, m, n, k, which
 * tensor is A, B, C, the leading dimensions, whether C is fp32) in plain C, so the fp32 path
 * (cublasSgemm) and the 16-bit one (cublasGemmEx) share it and tests/gpu/test_gpu_conv_plan.c
 * checks it on the CPU against the reference backend's indexing. */
#ifndef MT_OPS_CUDA_POINTWISE_H
#define MT_OPS_CUDA_POINTWISE_H

#include <stdbool.h>

/* the three passes of a convolution, in cuda_conv.c's order */
enum { MT_CUDA_CONV_FORWARD, MT_CUDA_CONV_BACKWARD_DATA, MT_CUDA_CONV_BACKWARD_FILTER };

/* the tensors a product reads or writes */
typedef enum mt_cuda_gemm_operand {
    MT_CUDA_GEMM_X,  /* x: [M][I] */
    MT_CUDA_GEMM_W,  /* w: [I][O] */
    MT_CUDA_GEMM_DY, /* dy: [M][O] */
    MT_CUDA_GEMM_Y,  /* y: [M][O] */
    MT_CUDA_GEMM_DX, /* dx: [M][I] */
    MT_CUDA_GEMM_DW  /* dw: [I][O] */
} mt_cuda_gemm_operand;

/* C = op(A) op(B), column-major, as cuBLAS takes it: op(A) is m x k, op(B) k x n, C m x n. */
typedef struct mt_cuda_gemm {
    bool trans_a, trans_b;
    int m, n, k;
    mt_cuda_gemm_operand a, b, c;
    int lda, ldb, ldc;
    bool c_fp32; /* 16-bit mode: C is written in fp32 (dw, into the fp32 gradient buffer) */
} mt_cuda_gemm;

/* The product of `pass` for `rows` = N*H*W pixels of `cin` -> `cout` channels. false when a
 * dimension does not fit cuBLAS' int (rows > INT_MAX) or is not positive. */
bool mt_cuda_pointwise_gemm(int pass, long rows, int cin, int cout, mt_cuda_gemm *out);

#endif
