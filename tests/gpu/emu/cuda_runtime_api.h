/* A stand-in for the CUDA runtime headers, for test_gpu_kernels_emulated only: just enough for
 * src/ops/cuda/cuda_kernels_*.cu (rewritten by tests/gpu/CMakeLists.txt so that every
 * `kernel<<<grid, block, shared, stream>>>(args)` becomes `mt_emu_launch(grid, block, ...)
 * .run(kernel, args)`) to compile with a host C++ compiler and run on the CPU. The C part is
 * what the launchers' declarations need; the C++ part runs a kernel: blocks one after another,
 * __shared__ as static storage (one block at a time, so static is shared by exactly one block's
 * threads). A block's threads run one after another in the calling thread until a kernel calls
 * __syncthreads: that throws (before the kernel has written anything but shared memory, which
 * holds for mobiletune's kernels), and from then on that kernel's blocks run as real threads with
 * __syncthreads as a barrier. */
#ifndef MT_EMU_CUDA_RUNTIME_API_H
#define MT_EMU_CUDA_RUNTIME_API_H

typedef enum cudaError { cudaSuccess = 0, cudaErrorInvalidValue = 1 } cudaError_t;
typedef struct mt_emu_stream *cudaStream_t;

#ifdef __cplusplus
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <set>
#include <utility> // std::pair

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

/* inline (C++17): one definition for the whole program without a separate source file */
inline thread_local dim3 threadIdx;
inline dim3 blockIdx, blockDim, gridDim;
inline pthread_barrier_t mt_emu_barrier;
inline thread_local bool mt_emu_sequential = false;
inline std::set<const void *> mt_emu_threaded_kernels;
struct mt_emu_needs_threads {};

#define __global__
#define __device__
#define __host__
#define __shared__ static

static inline void __syncthreads() {
    if (mt_emu_sequential) throw mt_emu_needs_threads();
    pthread_barrier_wait(&mt_emu_barrier);
}
static inline int atomicMin(int *p, int v) {
    int old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (v < old &&
           !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
static inline int atomicAdd(int *p, int v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
static inline unsigned atomicAdd(unsigned *p, unsigned v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
/* blocks run one after another here: memory is ordered already */
static inline void __threadfence() {}
template <class T> static inline T __ldcg(const T *p) {
    return *p;
}
struct alignas(16) float4 {
    float x, y, z, w;
};
static inline cudaError_t cudaGetLastError() {
    return cudaSuccess;
}

template <class T> struct mt_emu_same { typedef T type; };

/* One launch: grid and block as given, shared bytes and stream ignored. The arguments convert to
 * the kernel's parameter types at the call, as in a real launch (NULL for a pointer, say). */
struct mt_emu_launch {
    dim3 grid, block;
    mt_emu_launch(dim3 g, dim3 b, size_t = 0, cudaStream_t = nullptr) : grid(g), block(b) {}

    template <class... P> void run(void (*kernel)(P...), typename mt_emu_same<P>::type... args) {
        const unsigned threads = block.x * block.y * block.z;
        blockDim = block, gridDim = grid;
        const void *id = reinterpret_cast<const void *>(kernel);
        if (!mt_emu_threaded_kernels.count(id)) {
            try {
                mt_emu_sequential = true;
                for (unsigned by = 0; by < grid.y; by++) {
                    for (unsigned bx = 0; bx < grid.x; bx++) {
                        blockIdx = dim3(bx, by, 0);
                        for (unsigned t = 0; t < threads; t++) {
                            threadIdx =
                                dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                            kernel(args...);
                        }
                    }
                }
                mt_emu_sequential = false;
                return;
            } catch (const mt_emu_needs_threads &) {
                mt_emu_sequential = false;
                mt_emu_threaded_kernels.insert(id);
            }
        }
        pthread_barrier_init(&mt_emu_barrier, nullptr, threads);
        for (unsigned by = 0; by < grid.y; by++) {
            for (unsigned bx = 0; bx < grid.x; bx++) {
                blockIdx = dim3(bx, by, 0);
                auto body = [&](unsigned t) {
                    threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                    kernel(args...);
                };
                run_block(threads, body);
            }
        }
        pthread_barrier_destroy(&mt_emu_barrier);
    }

  private:
    template <class F> static void *thread_main(void *arg) {
        auto *job = static_cast<std::pair<F *, unsigned> *>(arg);
        (*job->first)(job->second);
        return nullptr;
    }
    template <class F> static void run_block(unsigned threads, F &body) {
        pthread_t *ids = new pthread_t[threads];
        auto *jobs = new std::pair<F *, unsigned>[threads];
        for (unsigned t = 0; t < threads; t++) {
            jobs[t] = {&body, t};
            if (pthread_create(&ids[t], nullptr, thread_main<F>, &jobs[t]) != 0) {
                fprintf(stderr, "emulated launch: pthread_create failed\n");
                abort();
            }
        }
        for (unsigned t = 0; t < threads; t++)
            pthread_join(ids[t], nullptr);
        delete[] ids;
        delete[] jobs;
    }
};
#endif /* __cplusplus */
#endif
