/* Internal to the kernel files (cuda_kernels_*.cu): the launch geometry they share, the
 * grid-stride loop, the storage types of tensors with their vector loads and stores, and the
 * row-walking plan of the weight-gradient kernels. Device code and C++ only; the C side sees
 * cuda_kernels.h.
 *
 * Storage. A kernel templated on S reads its tensors' elements (S::elem: float, or a bf16 / fp16
 * bit pattern) into fp32 with S::load (exact), computes in fp32 exactly as the fp32 instance does,
 * and rounds once on store with S::store (ops/precision_bits.h: to nearest, ties to even, the
 * host emulation's own functions). So the 16-bit instance on 16-bit inputs equals, bit for bit,
 * the fp32 instance on the widened inputs followed by the cast kernel: what the staging path of
 * cuda_precision.c computed, without the fp32 copies. Statistics, weights and their gradients
 * stay float. */
#ifndef MT_OPS_CUDA_KERNELS_INTERNAL_CUH
#define MT_OPS_CUDA_KERNELS_INTERNAL_CUH

#include <cuda_runtime.h>
#include <math.h> /* fmaf */
#include <stdint.h>

#include "ops/cuda/cuda_kernels.h"
#include "ops/precision_bits.h"

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

/* ---- storage types (see the top) ---- */
struct f32_storage {
    typedef float elem;
    __device__ static float load(float v) {
        return v;
    }
    __device__ static float store(float v) {
        return v;
    }
};
struct bf16_storage {
    typedef uint16_t elem;
    __device__ static float load(uint16_t v) {
        return mt_bf16_bits_to_f32(v);
    }
    __device__ static uint16_t store(float v) {
        return mt_f32_to_bf16_bits(v);
    }
};
struct fp16_storage {
    typedef uint16_t elem;
    __device__ static float load(uint16_t v) {
        return mt_fp16_bits_to_f32(v);
    }
    __device__ static uint16_t store(float v) {
        return mt_f32_to_fp16_bits(v);
    }
};

/* V consecutive elements of storage S to and from fp32: V = 4 is one 16-byte (float4) or 8-byte
 * access, which needs vec_aligned<S> addresses; V = 1 any. */
template <class S> inline bool vec_aligned(const void *p) {
    return ((uintptr_t)p % (4 * sizeof(typename S::elem))) == 0;
}
struct alignas(8) u16x4 {
    uint16_t v[4];
};
template <class S, int V> struct vec_io {
    __device__ static void load(const typename S::elem *p, float *v) {
        for (int i = 0; i < V; i++)
            v[i] = S::load(p[i]);
    }
    __device__ static void store(typename S::elem *p, const float *v) {
        for (int i = 0; i < V; i++)
            p[i] = S::store(v[i]);
    }
};
template <class S> struct vec_io<S, 4> {
    __device__ static void load(const uint16_t *p, float *v) {
        const u16x4 t = *reinterpret_cast<const u16x4 *>(p);
        for (int i = 0; i < 4; i++)
            v[i] = S::load(t.v[i]);
    }
    __device__ static void store(uint16_t *p, const float *v) {
        u16x4 t;
        for (int i = 0; i < 4; i++)
            t.v[i] = S::store(v[i]);
        *reinterpret_cast<u16x4 *>(p) = t;
    }
};
template <> struct vec_io<f32_storage, 4> {
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
/* float arrays (statistics, weights) */
template <int V> using fvec_io = vec_io<f32_storage, V>;

/* Calls f(S()) with the storage type of `storage`: a launcher's body written once for the three
 * (f a generic lambda); an unknown value is cudaErrorInvalidValue. */
template <class F> cudaError_t with_storage(mt_cuda_storage storage, F f) {
    switch (storage) {
    case MT_CUDA_F32:
        return f(f32_storage());
    case MT_CUDA_BF16:
        return f(bf16_storage());
    case MT_CUDA_FP16:
        return f(fp16_storage());
    }
    return cudaErrorInvalidValue;
}
/* a launcher's void pointer as storage S's elements */
template <class S> inline const typename S::elem *as_elem(const void *p) {
    return static_cast<const typename S::elem *>(p);
}
template <class S> inline typename S::elem *as_elem(void *p) {
    return static_cast<typename S::elem *>(p);
}

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
