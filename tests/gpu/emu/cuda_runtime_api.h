/* A stand-in for the CUDA runtime headers, so that the cuda backend (src/ops/cuda, including the
 * kernels of cuda_kernels_*.cu and cuda_optimizer.cu) compiles with the host compilers and runs on
 * the CPU: the kernels in test_gpu_kernels_emulated, the whole backend as the emulated cuda module
 * (libmobiletune_cuda_emulated.so, tests/gpu/CMakeLists.txt). tests/gpu/CMakeLists.txt rewrites
 * every `kernel<<<grid, block, shared, stream>>>(args)` into `mt_emu_launch(grid, block, shared,
 * stream).run(kernel, args)`.
 *
 * The C part declares the runtime calls the backend makes (emu_cudart.cc implements them: device
 * memory is host memory, every stream runs its work at once in the calling thread, a stream under
 * capture records it into a graph instead). The C++ part runs a kernel: blocks one after another,
 * __shared__ as static storage (one block at a time, so static is shared by exactly one block's
 * threads). A block's threads run one after another in the calling thread until a kernel calls
 * __syncthreads: that throws (before the kernel has written anything but shared memory, which
 * holds for mobiletune's kernels), and from then on that kernel's blocks run their threads as
 * coroutines (ucontext) of the calling thread, each on its own stack, with __syncthreads handing
 * over to the next thread of the block: every thread of a block reaches a barrier before any
 * passes it, as on a device, and in a fixed order (the results do not depend on scheduling).
 * A missing __syncthreads shows only if some thread reads before another writes; in one fixed
 * order, the writer may always come first. MT_EMU_THREAD_ORDER=reverse runs blocks and the
 * threads of each block (between barriers) last to first, so a kernel tested in both orders has
 * each pair of threads in either order (ctest gpu_kernels_emulated_reverse). Each coroutine's
 * stack has an inaccessible guard page below it: an overflow faults at once instead of writing
 * over a neighbour's stack.
 *
 * Names, values and signatures follow the CUDA runtime's documented API, so the same sources
 * compile against either; only what the backend uses is here. */
#ifndef MT_EMU_CUDA_RUNTIME_API_H
#define MT_EMU_CUDA_RUNTIME_API_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorStreamCaptureWrongThread = 908,
} cudaError_t;

/* the same struct names as the real runtime's (cuda_module.h spells cudaStream_t by its name) */
typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;
typedef struct CUgraph_st *cudaGraph_t;
typedef struct CUgraphExec_st *cudaGraphExec_t;

typedef enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
} cudaMemcpyKind;

typedef enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
} cudaStreamCaptureMode;

/* library_types.h's element types (cuBLAS' GemmEx) */
typedef enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 } cudaDataType_t;

typedef struct cudaUUID_t {
    char bytes[16];
} cudaUUID_t;

typedef struct cudaDeviceProp {
    char name[256];
    cudaUUID_t uuid;
    size_t totalGlobalMem;
    int major, minor;
    int multiProcessorCount;
} cudaDeviceProp;

#define cudaStreamNonBlocking 0x01u
#define cudaEventDisableTiming 0x02u
#define cudaHostAllocDefault 0x00u

const char *cudaGetErrorName(cudaError_t error);
const char *cudaGetErrorString(cudaError_t error);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);

cudaError_t cudaMalloc(void **ptr, size_t bytes);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMallocHost(void **ptr, size_t bytes);
cudaError_t cudaHostAlloc(void **ptr, size_t bytes, unsigned int flags);
cudaError_t cudaFreeHost(void *ptr);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream);
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream);

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags);

cudaError_t cudaEventCreate(cudaEvent_t *event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph,
                                 unsigned long long flags);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);

/* cudaGetLastError: the kernels' launchers call it after every launch */
cudaError_t cudaGetLastError(void);

#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <functional>
#include <memory>
#include <set>
#include <vector>

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

/* inline (C++17): one definition for the whole program without a separate source file */
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
inline thread_local bool mt_emu_sequential = false;
inline std::set<const void *> mt_emu_threaded_kernels;
struct mt_emu_needs_threads {};

#define __global__
#define __device__
#define __host__
#define __shared__ static

void mt_emu_yield_to_block(); /* below */
static inline void __syncthreads() {
    if (mt_emu_sequential) throw mt_emu_needs_threads();
    mt_emu_yield_to_block();
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

template <class T> struct mt_emu_same { typedef T type; };

/* MT_EMU_THREAD_ORDER (the top): whether blocks and threads run last to first. Anything but
 * unset, "forward" or "reverse" ends the process with a line saying so. */
inline bool mt_emu_reverse_order() {
    static const bool reverse = [] {
        const char *order = getenv("MT_EMU_THREAD_ORDER");
        if (!order || !*order || strcmp(order, "forward") == 0) return false;
        if (strcmp(order, "reverse") == 0) return true;
        fprintf(stderr, "emulated CUDA: MT_EMU_THREAD_ORDER='%s': use forward or reverse\n", order);
        exit(2);
    }();
    return reverse;
}

/* The i-th of `count` in the run order: i, or count - 1 - i under MT_EMU_THREAD_ORDER=reverse. */
inline unsigned mt_emu_in_order(unsigned i, unsigned count) {
    return mt_emu_reverse_order() ? count - 1 - i : i;
}

/* One coroutine's stack: `bytes` usable above an inaccessible guard page (mmap'd). */
class mt_emu_stack {
  public:
    explicit mt_emu_stack(size_t bytes) : bytes_(bytes) {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        map_ = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                    -1, 0);
        if (map_ == MAP_FAILED || mprotect(map_, page, PROT_NONE) != 0) {
            perror("emulated CUDA: a thread's stack");
            abort();
        }
        base_ = static_cast<char *>(map_) + page;
        mapped_ = bytes + page;
    }
    ~mt_emu_stack() { munmap(map_, mapped_); }
    mt_emu_stack(const mt_emu_stack &) = delete;
    mt_emu_stack &operator=(const mt_emu_stack &) = delete;
    char *base() const { return base_; }
    size_t bytes() const { return bytes_; }

  private:
    size_t bytes_, mapped_ = 0;
    void *map_ = nullptr;
    char *base_ = nullptr;
};

/* A block's threads as coroutines of the calling thread (see the top): run(shape, body) runs
 * body() for every thread t of a block of that shape as its own coroutine, with threadIdx set to
 * t's whenever t runs, round after round: each coroutine runs until it
 * calls __syncthreads (mt_emu_yield_to_block) or returns, then the next; a round ends when every
 * unfinished coroutine has reached the barrier. The stacks are made once and kept. */
class mt_emu_block {
  public:
    static mt_emu_block &get() {
        static thread_local mt_emu_block block;
        return block;
    }
    void run(dim3 shape, const std::function<void()> &body) {
        const unsigned count = shape.x * shape.y * shape.z;
        while (stacks_.size() < count)
            stacks_.emplace_back(new mt_emu_stack(stack_bytes));
        contexts_.resize(count);
        finished_.assign(count, false);
        body_ = &body;
        for (unsigned t = 0; t < count; t++) {
            getcontext(&contexts_[t]);
            contexts_[t].uc_stack.ss_sp = stacks_[t]->base();
            contexts_[t].uc_stack.ss_size = stacks_[t]->bytes();
            contexts_[t].uc_link = &scheduler_;
            makecontext(&contexts_[t], (void (*)())entry, 1, t);
        }
        unsigned left = count;
        while (left) {
            for (unsigned i = 0; i < count; i++) {
                const unsigned t = mt_emu_in_order(i, count);
                if (finished_[t]) continue;
                current_ = t;
                threadIdx = dim3(t % shape.x, (t / shape.x) % shape.y, t / (shape.x * shape.y));
                swapcontext(&scheduler_, &contexts_[t]);
                if (finished_[t]) left--;
            }
        }
        body_ = nullptr;
    }
    void yield() { swapcontext(&contexts_[current_], &scheduler_); }

  private:
    static const size_t stack_bytes = 64 * 1024;
    static void entry(unsigned t) {
        mt_emu_block &self = get();
        (*self.body_)();
        self.finished_[t] = true; /* then uc_link returns to the scheduler */
    }
    std::vector<std::unique_ptr<mt_emu_stack>> stacks_;
    std::vector<ucontext_t> contexts_;
    std::vector<bool> finished_;
    ucontext_t scheduler_;
    unsigned current_ = 0;
    const std::function<void()> *body_ = nullptr;
};

inline void mt_emu_yield_to_block() {
    mt_emu_block::get().yield();
}

/* Runs `work` now, or records it into the graph `stream` is being captured into (emu_cudart.cc);
 * a launch or copy on a stream is either, as on a device. */
void mt_emu_enqueue(cudaStream_t stream, std::function<void()> work);

/* The kinds of work MT_EMU_SLOW can make slower on the virtual device clock (emu_cudart.cc's
 * top): our kernels' launches, cuDNN's convolutions, cuBLAS' products; ALGO0 is no work but
 * makes the emulated cudnnFind* rank algorithm 0 last (emu_cudnn.cc). */
enum mt_emu_slow_kind { MT_EMU_SLOW_OWN, MT_EMU_SLOW_CUDNN, MT_EMU_SLOW_GEMM, MT_EMU_SLOW_ALGO0 };
bool mt_emu_slow(mt_emu_slow_kind kind);
/* mt_emu_enqueue of one piece of work of `kind`: it advances the clock by 100 microseconds
 * instead of 1 when MT_EMU_SLOW names the kind. */
void mt_emu_enqueue_kind(cudaStream_t stream, mt_emu_slow_kind kind, std::function<void()> work);

/* One launch: grid and block as given, shared bytes ignored. The arguments convert to the
 * kernel's parameter types at the call, as in a real launch (NULL for a pointer, say), and are
 * kept by value when the stream is being captured, as a graph's kernel node keeps them. */
struct mt_emu_launch {
    dim3 grid, block;
    cudaStream_t stream;
    mt_emu_launch(dim3 g, dim3 b, size_t = 0, cudaStream_t s = nullptr)
        : grid(g), block(b), stream(s) {}

    template <class... P> void run(void (*kernel)(P...), typename mt_emu_same<P>::type... args) {
        const dim3 g = grid, b = block;
        mt_emu_enqueue_kind(stream, MT_EMU_SLOW_OWN, [=]() { execute(g, b, kernel, args...); });
    }

  private:
    template <class... P>
    static void execute(dim3 grid, dim3 block, void (*kernel)(P...), P... args) {
        const unsigned threads = block.x * block.y * block.z;
        blockDim = block, gridDim = grid;
        const void *id = reinterpret_cast<const void *>(kernel);
        if (!mt_emu_threaded_kernels.count(id)) {
            try {
                mt_emu_sequential = true;
                for (unsigned b = 0; b < grid.x * grid.y; b++) {
                    const unsigned block_index = mt_emu_in_order(b, grid.x * grid.y);
                    blockIdx = dim3(block_index % grid.x, block_index / grid.x, 0);
                    for (unsigned i = 0; i < threads; i++) {
                        const unsigned t = mt_emu_in_order(i, threads);
                        threadIdx =
                            dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                        kernel(args...);
                    }
                }
                mt_emu_sequential = false;
                return;
            } catch (const mt_emu_needs_threads &) {
                mt_emu_sequential = false;
                mt_emu_threaded_kernels.insert(id);
            }
        }
        blockDim = block, gridDim = grid;
        for (unsigned b = 0; b < grid.x * grid.y; b++) {
            const unsigned block_index = mt_emu_in_order(b, grid.x * grid.y);
            blockIdx = dim3(block_index % grid.x, block_index / grid.x, 0);
            mt_emu_block::get().run(block, [&]() { kernel(args...); });
        }
    }
};
#endif /* __cplusplus */
#endif
