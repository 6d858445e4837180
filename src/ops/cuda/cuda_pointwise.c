/* The cuBLAS arguments of a pointwise convolution's three products (see cuda_pointwise.h). A
 * row-major [R][C] matrix is the column-major C x R matrix with leading dimension C, so:
 *   forward         y^T[O][M]  = w^T[O][I] x^T[I][M]:  A = w (O x I, ld O), B = x (I x M, ld I)
 *   backward data   dx^T[I][M] = w[I][O] dy^T[O][M]:   A = w seen transposed, B = dy (ld O)
 *   backward filter dw^T[O][I] = dy^T[O][M] x[M][I]:   A = dy (ld O), B = x seen transposed */
#include "ops/cuda/cuda_pointwise.h"

#include <limits.h>

bool mt_cuda_pointwise_gemm(int pass, long rows, int cin, int cout, mt_cuda_gemm *out) {
    if (rows <= 0 || rows > INT_MAX || cin <= 0 || cout <= 0) return false;
    const int M = (int)rows, I = cin, O = cout;
    switch (pass) {
    case MT_CUDA_CONV_FORWARD:
        *out = (mt_cuda_gemm){.trans_a = false,
                              .trans_b = false,
                              .m = O,
                              .n = M,
                              .k = I,
                              .a = MT_CUDA_GEMM_W,
                              .lda = O,
                              .b = MT_CUDA_GEMM_X,
                              .ldb = I,
                              .c = MT_CUDA_GEMM_Y,
                              .ldc = O,
                              .c_fp32 = false};
        return true;
    case MT_CUDA_CONV_BACKWARD_DATA:
        *out = (mt_cuda_gemm){.trans_a = true,
                              .trans_b = false,
                              .m = I,
                              .n = M,
                              .k = O,
                              .a = MT_CUDA_GEMM_W,
                              .lda = O,
                              .b = MT_CUDA_GEMM_DY,
                              .ldb = O,
                              .c = MT_CUDA_GEMM_DX,
                              .ldc = I,
                              .c_fp32 = false};
        return true;
    case MT_CUDA_CONV_BACKWARD_FILTER:
        /* dw is not a stored tensor: the reference's emulation keeps it fp32 (no rounding) */
        *out = (mt_cuda_gemm){.trans_a = false,
                              .trans_b = true,
                              .m = O,
                              .n = I,
                              .k = M,
                              .a = MT_CUDA_GEMM_DY,
                              .lda = O,
                              .b = MT_CUDA_GEMM_X,
                              .ldb = I,
                              .c = MT_CUDA_GEMM_DW,
                              .ldc = O,
                              .c_fp32 = true};
        return true;
    default:
        return false;
    }
}
