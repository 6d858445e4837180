/* Internal to the kernel files (cuda_kernels_*.cu): the launch geometry they share, the
 * grid-stride loop, vector loads and the row-walking plan of the weight-gradient kernels. Device
 * code and C++ only; the C side sees cuda_kernels.h. */
#ifndef MT_OPS_CUDA_KERNELS_INTERNAL_CUH
#define MT_OPS_CUDA_KERNELS_INTERNAL_CUH

#include <cuda_runtime.h>
#include <math.h> /* fmaf */
#include <stdint.h>

#include "ops/cuda/cuda_kernels.h"

/* loops unrolled by nvcc (so arrays they index stay in registers); nothing under the emulation */
#ifdef __CUDACC__
#define MT_UNROLL _Pragma("unroll")
#else
#define MT_UNROLL
#endif

#define GRID_STRIDE(i, count)                                                                      \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (count);                    \
         i += (size_t)gridDim.x * blockDim.x)

namespace {

const int THREADS = 256;
/* reductions: 32 channels (one warp, coalesced in NHWC) x 8 rows per block */
const int RED_X = 32, RED_Y = 8;
/* the depthwise weight gradient accumulates this many taps per pass (3x3 in one) */
const int MAX_TAPS = 9;
/* blocks of the fused BN and row-walking kernels: threads, rows a thread sums per slice, widest
 * vector (float4) */
const int BN_THREADS = 256, BN_ROWS_PER_THREAD = 64, BN_MAX_V = 4;

inline unsigned grid_for(size_t count) {
    size_t blocks = (count + THREADS - 1) / THREADS;
    if (blocks < 1) blocks = 1;
    if (blocks > (size_t)1 << 20) blocks = (size_t)1 << 20; /* grid-stride loops do the rest */
    return (unsigned)blocks;
}

/* float4 loads and stores need 16-byte addresses */
inline bool aligned16(const void *p) {
    return ((uintptr_t)p & 15) == 0;
}

template <int V> struct vec_io;
template <> struct vec_io<1> {
    __device__ static void load(const float *p, float *v) {
        v[0] = *p;
    }
    __device__ static void store(float *p, const float *v) {
        *p = v[0];
    }
};
template <> struct vec_io<4> {
    __device__ static void load(const float *p, float *v) {
        float4 t = *reinterpret_cast<const float4 *>(p);
        v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
    }
    __device__ static void store(float *p, const float *v) {
        float4 t;
        t.x = v[0], t.y = v[1], t.z = v[2], t.w = v[3];
        *reinterpret_cast<float4 *>(p) = t;
    }
};

/* The output position that tap kk maps input position i to, or -1. */
__device__ inline int output_index(int i, int pad, int kk, int stride, int out_size) {
    int t = i + pad - kk;
    if (t < 0 || t % stride != 0) return -1;
    t /= stride;
    return t < out_size ? t : -1;
}

/* The launch of the row-walking weight-gradient kernels (depthwise, and Conv1's over output
 * channels): lanes over groups of V channels, rows of a block, about 64 positions per thread. */
struct rows_plan {
    int vec;
    dim3 block, grid;
    long rows_per_block;
};

inline rows_plan rows_make_plan(const mt_cuda_conv_geom *g, int channels, bool vectorizable) {
    rows_plan p;
    p.vec = vectorizable && channels % 4 == 0 ? 4 : 1;
    const int groups = channels / p.vec;
    const int cols = (groups + BN_THREADS - 1) / BN_THREADS;
    const int lanes = (groups + cols - 1) / cols;
    const int rows = BN_THREADS / lanes > 0 ? BN_THREADS / lanes : 1;
    const long out_rows = (long)g->n * g->ho;
    long per_thread = (64 + g->wo - 1) / g->wo;
    long parts = (out_rows + rows * per_thread - 1) / (rows * per_thread);
    if (parts > 65535) {
        per_thread = (out_rows + (long)rows * 65535 - 1) / ((long)rows * 65535);
        parts = (out_rows + rows * per_thread - 1) / (rows * per_thread);
    }
    p.block = dim3((unsigned)lanes, (unsigned)rows);
    p.grid = dim3((unsigned)cols, (unsigned)parts);
    p.rows_per_block = rows * per_thread;
    return p;
}

} // namespace

/* out[j] = sum over parts of partials[part][j] (count values), in double, in part order: the
 * second stage of the weight gradients (cuda_kernels_conv.cu) */
cudaError_t mt_cuda_launch_sum_parts(cudaStream_t stream, const float *partials, int parts,
                                     size_t count, float *out);

#endif
