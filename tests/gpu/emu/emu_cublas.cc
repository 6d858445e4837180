/* The cuBLAS stand-in (cublas_v2.h): C = alpha op(A) op(B) + beta C, column-major, on the
 * handle's stream (so under capture it is recorded like a kernel). Sums in double and rounds once
 * to C's type: at least as accurate as cuBLAS' fp32 accumulation, so the backend's tolerances,
 * written for the device, hold here too. What cuBLAS would reject is rejected (leading dimensions
 * too small, a compute type other than fp32, a matrix not inside one device block), with a line
 * naming the argument, so a wrong GEMM set-up fails here rather than reading past a buffer. */
#include <stdio.h>

#include "cublas_v2.h"
#include "emu_internal.hh"

struct cublasContext {
    cudaStream_t stream = nullptr;
    bool workspace_set = false; /* cublasSetWorkspace since the last cublasSetStream */
};

namespace {

bool element_type(cudaDataType_t type, mt_emu_element *out) {
    switch (type) {
    case CUDA_R_32F: *out = MT_EMU_F32; return true;
    case CUDA_R_16BF: *out = MT_EMU_BF16; return true;
    case CUDA_R_16F: *out = MT_EMU_FP16; return true;
    }
    return false;
}

/* a column-major rows x cols matrix with leading dimension ld, inside one device block */
bool matrix_ok(const char *name, const void *base, mt_emu_element type, int rows, int cols,
               int ld) {
    if (rows < 1 || cols < 1 || ld < rows) {
        mt_emu_complain("cuBLAS", "%s: %d x %d with leading dimension %d", name, rows, cols, ld);
        return false;
    }
    const size_t elements = (size_t)(cols - 1) * (size_t)ld + (size_t)rows;
    if (!mt_emu_is_device_range(base, elements * mt_emu_element_bytes(type))) {
        mt_emu_complain("cuBLAS", "%s (%p, %d x %d, ld %d) is not inside one device block", name,
                        base, rows, cols, ld);
        return false;
    }
    return true;
}

cublasStatus_t gemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                    int m, int n, int k, float alpha, const void *A, mt_emu_element a_type,
                    int lda, const void *B, mt_emu_element b_type, int ldb, float beta, void *C,
                    mt_emu_element c_type, int ldc) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    /* Under capture, a handle on cuBLAS' default workspace pool gets a workspace of its own for
     * each graph (more memory per capture, and perhaps other kernels than eager): the backend
     * gives cuBLAS its workspace, so a product captured without one is treated as the
     * allocation it would be. */
    if (!handle->workspace_set && mt_emu_capture_refuses("a cuBLAS product without "
                                                         "cublasSetWorkspace"))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
    if (m < 0 || n < 0 || k < 1 || !matrix_ok("A", A, a_type, ta ? k : m, ta ? m : k, lda) ||
        !matrix_ok("B", B, b_type, tb ? n : k, tb ? k : n, ldb) ||
        !matrix_ok("C", C, c_type, m, n, ldc))
        return CUBLAS_STATUS_INVALID_VALUE;
    mt_emu_enqueue_kind(handle->stream, MT_EMU_SLOW_GEMM, [=]() {
        for (int j = 0; j < n; j++) {
            for (int i = 0; i < m; i++) {
                double sum = 0;
                for (int l = 0; l < k; l++) {
                    const size_t a = ta ? (size_t)i * lda + l : (size_t)l * lda + i;
                    const size_t b = tb ? (size_t)l * ldb + j : (size_t)j * ldb + l;
                    sum += (double)mt_emu_load(A, a_type, a) * (double)mt_emu_load(B, b_type, b);
                }
                const size_t c = (size_t)j * ldc + i;
                /* beta == 0: C is not read (it may hold anything, NaN included), as cuBLAS */
                double value = (double)alpha * sum;
                if (beta != 0) value += (double)beta * (double)mt_emu_load(C, c_type, c);
                mt_emu_store(C, c_type, c, (float)value);
            }
        }
    });
    return CUBLAS_STATUS_SUCCESS;
}

} // namespace

extern "C" {

const char *cublasGetStatusString(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

cublasStatus_t cublasCreate(cublasHandle_t *handle) {
    *handle = new cublasContext;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

/* as cuBLAS: setting the stream puts the handle back on the default workspace pool */
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
    handle->stream = stream;
    handle->workspace_set = false;
    return CUBLAS_STATUS_SUCCESS;
}

/* cuBLAS wants the workspace device memory aligned to 256 bytes */
cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void *workspace, size_t bytes) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((uintptr_t)workspace % 256 != 0 || !mt_emu_is_device_range(workspace, bytes)) {
        mt_emu_complain("cuBLAS", "workspace %p (%zu bytes) is not 256-byte aligned device memory",
                        workspace, bytes);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    handle->workspace_set = true;
    return CUBLAS_STATUS_SUCCESS;
}

/* TF32 and the other modes only change a device's speed and rounding; here every product is the
 * exact one rounded once */
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    (void)handle, (void)mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa,
                           cublasOperation_t transb, int m, int n, int k, const float *alpha,
                           const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc) {
    return gemm(handle, transa, transb, m, n, k, *alpha, A, MT_EMU_F32, lda, B, MT_EMU_F32, ldb,
                *beta, C, MT_EMU_F32, ldc);
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void *alpha,
                            const void *A, cudaDataType_t Atype, int lda, const void *B,
                            cudaDataType_t Btype, int ldb, const void *beta, void *C,
                            cudaDataType_t Ctype, int ldc, cublasComputeType_t computeType,
                            cublasGemmAlgo_t algo) {
    (void)algo;
    mt_emu_element a_type, b_type, c_type;
    if (computeType != CUBLAS_COMPUTE_32F || !element_type(Atype, &a_type) ||
        !element_type(Btype, &b_type) || !element_type(Ctype, &c_type) || Atype != Btype) {
        mt_emu_complain("cuBLAS", "GemmEx: types A %d B %d C %d compute %d not supported",
                        (int)Atype, (int)Btype, (int)Ctype, (int)computeType);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    /* CUBLAS_COMPUTE_32F: alpha and beta are floats */
    return gemm(handle, transa, transb, m, n, k, *static_cast<const float *>(alpha), A, a_type,
                lda, B, b_type, ldb, *static_cast<const float *>(beta), C, c_type, ldc);
}

} /* extern "C" */
