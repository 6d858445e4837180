/* The CUDA runtime stand-in (cuda_runtime_api.h): enough of the runtime for the cuda backend to run
 * on the CPU, with the device's rules that the backend relies on checked, not just assumed:
 *
 * - Device memory is host memory from malloc, each block remembered, so a copy or a memset that
 *   strays outside a live block (or names a host pointer as the device side) fails with
 *   cudaErrorInvalidValue; MT_EMU_DEVICE_MEMORY (bytes) caps the total, for out-of-memory paths.
 * - Every stream runs its work at once, in the calling thread: the order the backend enqueues in is
 *   one valid order of the device's (races between streams are not found here).
 * - Capture (cudaStreamBeginCapture) records a stream's work into a graph instead of running it;
 *   a stream that waits on an event recorded under capture joins it, as on a device. The capturing
 *   thread (thread-local and global modes) may not allocate, free or wait: such a call fails with
 *   cudaErrorStreamCaptureUnsupported and the capture ends in cudaErrorStreamCaptureInvalidated.
 *   A graph replays exactly what was recorded, with the arguments of the capture.
 * - Events measure a virtual device clock that advances one microsecond per piece of work run
 *   (a launch, a copy, a library call), so the backend's per-shape timing picks the same kernels
 *   in every process (resume and graphs on/off compare bit for bit) and MT_CUDA_PROFILE's shares
 *   count work items. MT_EMU_SLOW=KIND[,KIND...] (own: our kernels' launches, cudnn: cuDNN's
 *   convolutions, gemm: cuBLAS' products; algo0: cudnnFind* ranks algorithm 0 last) makes one
 *   kind of work cost 100 microseconds: another "GPU" on which the per-shape timing picks other
 *   implementations (tests/trainer/trainer_checks.py resume_choices).
 * - MT_EMU_DEVICES=N devices (default 1), told apart only by their UUIDs: ranks of one machine
 *   train "on" different GPUs as NCCL requires (memory and clock are shared).
 * - Errors are per thread, as cudaGetLastError's.
 * - MT_EMU_REPORT=FILE: one line "captures C broken B replays R work W" (totals of the process;
 *   W: the pieces of work run, eager or replayed, the device clock's microseconds), rewritten at
 *   each capture's end, each replay and each stream's destruction (a backend's shutdown), for
 *   tests that check that a step really was captured and replayed, and that a replay does no
 *   more work than the eager step it stands for. A "%r" in FILE becomes the process's MPI rank
 *   (OMPI_COMM_WORLD_RANK, else PMIX_RANK, else 0), so the ranks of one mpirun write one file
 *   each. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "emu_internal.hh"

struct CUgraph_st {
    std::vector<std::function<void()>> work;
    bool invalidated = false;
};
struct CUgraphExec_st {
    std::vector<std::function<void()>> work;
};
struct CUstream_st {
    CUgraph_st *capture = nullptr;
};
struct CUevent_st {
    unsigned flags = 0;
    bool recorded = false;
    double seconds = 0;
    CUgraph_st *captured_in = nullptr; /* recorded under this capture */
};

namespace {

const char *const device_name = "mobiletune emulated CUDA device (the CPU)";
const size_t default_device_memory = size_t(16) << 30;

std::mutex lock; /* the maps below: the loader's threads allocate pinned memory */
std::map<const char *, size_t> device_blocks;
std::set<void *> host_blocks;
std::set<CUstream_st *> streams;
std::set<CUgraph_st *> open_captures; /* an event may outlive the capture it was recorded in */
size_t device_used = 0;

thread_local cudaError_t last_error = cudaSuccess;
thread_local CUgraph_st *thread_capture = nullptr;

cudaError_t fail(cudaError_t e) {
    last_error = e;
    return e;
}

/* the virtual device clock (see the top) */
unsigned long long device_microseconds = 0;
unsigned long long captures = 0, broken_captures = 0, replays = 0;

/* MT_EMU_REPORT with its "%r" (at most one) replaced by the MPI rank */
std::string report_path() {
    const char *text = getenv("MT_EMU_REPORT");
    std::string path = text ? text : "";
    const size_t at = path.find("%r");
    if (at != std::string::npos) {
        const char *rank = getenv("OMPI_COMM_WORLD_RANK");
        if (!rank || !*rank) rank = getenv("PMIX_RANK");
        path.replace(at, 2, rank && *rank ? rank : "0");
    }
    return path;
}

void write_report() {
    const std::string path = report_path();
    FILE *f = !path.empty() ? fopen(path.c_str(), "w") : nullptr;
    if (!f) return;
    fprintf(f, "captures %llu broken %llu replays %llu work %llu\n", captures, broken_captures,
            replays, device_microseconds);
    fclose(f);
}

int device_count() {
    const char *text = getenv("MT_EMU_DEVICES");
    const int count = text && *text ? atoi(text) : 1;
    return count >= 1 && count <= 16 ? count : 1;
}

size_t device_memory() {
    const char *text = getenv("MT_EMU_DEVICE_MEMORY");
    return text && *text ? (size_t)strtoull(text, nullptr, 10) : default_device_memory;
}

bool device_range_locked(const void *ptr, size_t bytes) {
    const char *p = static_cast<const char *>(ptr);
    auto it = device_blocks.upper_bound(p);
    if (it == device_blocks.begin()) return false;
    --it;
    return p >= it->first && bytes <= it->second && (size_t)(p - it->first) <= it->second - bytes;
}

/* the capture `graph` if it is still open (being captured), else nullptr */
CUgraph_st *open_capture(CUgraph_st *graph) {
    std::lock_guard<std::mutex> guard(lock);
    return graph && open_captures.count(graph) ? graph : nullptr;
}

/* MT_EMU_SLOW's kinds, read once; a word that names none is a broken test: it ends the process */
struct slow_kinds {
    bool slow[MT_EMU_SLOW_ALGO0 + 1] = {};
    slow_kinds() {
        static const char *const words[] = {"own", "cudnn", "gemm", "algo0"};
        const char *text = getenv("MT_EMU_SLOW");
        std::string list = text ? text : "";
        for (size_t begin = 0; begin < list.size();) {
            size_t end = list.find(',', begin);
            if (end == std::string::npos) end = list.size();
            const std::string word = list.substr(begin, end - begin);
            bool known = false;
            for (int k = 0; k <= MT_EMU_SLOW_ALGO0; k++)
                if (word == words[k]) slow[k] = known = true;
            if (!known) {
                fprintf(stderr, "emulated CUDA: MT_EMU_SLOW='%s': '%s' is not own, cudnn, gemm "
                                "or algo0\n", text, word.c_str());
                abort();
            }
            begin = end + 1;
        }
    }
};

} // namespace

bool mt_emu_slow(mt_emu_slow_kind kind) {
    static const slow_kinds kinds;
    return kinds.slow[kind];
}

void mt_emu_enqueue_kind(cudaStream_t stream, mt_emu_slow_kind kind, std::function<void()> work) {
    if (!mt_emu_slow(kind)) return mt_emu_enqueue(stream, std::move(work));
    /* charged when it runs: now, or at each replay of a graph it was captured into */
    mt_emu_enqueue(stream, [work]() {
        work();
        device_microseconds += 99;
    });
}

void mt_emu_complain(const char *library, const char *format, ...) {
    va_list args;
    va_start(args, format);
    fprintf(stderr, "emulated %s: ", library);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
}

bool mt_emu_is_device_range(const void *ptr, size_t bytes) {
    std::lock_guard<std::mutex> guard(lock);
    return device_range_locked(ptr, bytes);
}

bool mt_emu_capture_refuses(const char *call) {
    if (!thread_capture) return false;
    mt_emu_complain("CUDA", "%s while this thread captures a graph: the capture is invalidated",
                    call);
    thread_capture->invalidated = true;
    return true;
}

void mt_emu_enqueue(cudaStream_t stream, std::function<void()> work) {
    if (stream && stream->capture) {
        if (!stream->capture->invalidated) stream->capture->work.push_back(std::move(work));
        return;
    }
    work();
    device_microseconds++;
}

extern "C" {

const char *cudaGetErrorName(cudaError_t error) {
    switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t error) {
    switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
        return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureWrongThread:
        return "attempt to terminate a thread-local capture sequence from another thread";
    }
    return "unknown error";
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) {
    return last_error;
}

cudaError_t cudaGetDeviceCount(int *count) {
    *count = device_count();
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
    return device >= 0 && device < device_count() ? cudaSuccess : fail(cudaErrorInvalidDevice);
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device) {
    if (device < 0 || device >= device_count()) return fail(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "%s", device_name);
    memcpy(prop->uuid.bytes, "mt-emulated-gpu", 15);
    prop->uuid.bytes[15] = (char)('a' + device); /* device < 16 */
    prop->totalGlobalMem = device_memory();
    prop->major = 9;
    prop->minor = 0;
    prop->multiProcessorCount = 132;
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    std::lock_guard<std::mutex> guard(lock);
    *total_bytes = device_memory();
    *free_bytes = *total_bytes > device_used ? *total_bytes - device_used : 0;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **ptr, size_t bytes) {
    *ptr = nullptr;
    if (mt_emu_capture_refuses("cudaMalloc")) return fail(cudaErrorStreamCaptureUnsupported);
    std::lock_guard<std::mutex> guard(lock);
    if (bytes == 0) return fail(cudaErrorInvalidValue);
    if (bytes > device_memory() - device_used) return fail(cudaErrorMemoryAllocation);
    /* aligned as a device's allocations (256 bytes): the kernels' vector loads rely on it */
    void *block = aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!block) return fail(cudaErrorMemoryAllocation);
    /* a device's fresh memory holds whatever was there: all ones bits here (NaN as fp32, bf16 and
     * fp16), so a read before the first write shows in the results */
    memset(block, 0xff, bytes);
    device_blocks[static_cast<const char *>(block)] = bytes;
    device_used += bytes;
    *ptr = block;
    return cudaSuccess;
}

cudaError_t cudaFree(void *ptr) {
    if (!ptr) return cudaSuccess;
    if (mt_emu_capture_refuses("cudaFree")) return fail(cudaErrorStreamCaptureUnsupported);
    std::lock_guard<std::mutex> guard(lock);
    auto it = device_blocks.find(static_cast<const char *>(ptr));
    if (it == device_blocks.end()) {
        mt_emu_complain("CUDA", "cudaFree(%p): not a live cudaMalloc block", ptr);
        return fail(cudaErrorInvalidValue);
    }
    device_used -= it->second;
    device_blocks.erase(it);
    free(ptr);
    return cudaSuccess;
}

cudaError_t cudaHostAlloc(void **ptr, size_t bytes, unsigned int flags) {
    (void)flags;
    *ptr = nullptr;
    if (mt_emu_capture_refuses("cudaHostAlloc")) return fail(cudaErrorStreamCaptureUnsupported);
    void *block = malloc(bytes ? bytes : 1);
    if (!block) return fail(cudaErrorMemoryAllocation);
    std::lock_guard<std::mutex> guard(lock);
    host_blocks.insert(block);
    *ptr = block;
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **ptr, size_t bytes) {
    return cudaHostAlloc(ptr, bytes, cudaHostAllocDefault);
}

cudaError_t cudaFreeHost(void *ptr) {
    if (!ptr) return cudaSuccess;
    if (mt_emu_capture_refuses("cudaFreeHost")) return fail(cudaErrorStreamCaptureUnsupported);
    std::lock_guard<std::mutex> guard(lock);
    if (!host_blocks.erase(ptr)) {
        mt_emu_complain("CUDA", "cudaFreeHost(%p): not a live cudaHostAlloc block", ptr);
        return fail(cudaErrorInvalidValue);
    }
    free(ptr);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
    if (bytes == 0) return cudaSuccess;
    const bool device_dst = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool device_src = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if ((device_dst && !mt_emu_is_device_range(dst, bytes)) ||
        (device_src && !mt_emu_is_device_range(src, bytes))) {
        mt_emu_complain("CUDA", "cudaMemcpyAsync(%p <- %p, %zu bytes, kind %d): the device side "
                        "is not inside one live cudaMalloc block", dst, src, bytes, (int)kind);
        return fail(cudaErrorInvalidValue);
    }
    mt_emu_enqueue(stream, [=]() { memmove(dst, src, bytes); });
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream) {
    if (bytes == 0) return cudaSuccess;
    if (!mt_emu_is_device_range(ptr, bytes)) {
        mt_emu_complain("CUDA", "cudaMemsetAsync(%p, %zu bytes): not inside one live cudaMalloc "
                        "block", ptr, bytes);
        return fail(cudaErrorInvalidValue);
    }
    mt_emu_enqueue(stream, [=]() { memset(ptr, value, bytes); });
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
    (void)flags;
    *stream = new CUstream_st;
    std::lock_guard<std::mutex> guard(lock);
    streams.insert(*stream);
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    {
        std::lock_guard<std::mutex> guard(lock);
        if (!streams.erase(stream)) return fail(cudaErrorInvalidResourceHandle);
    }
    delete stream;
    write_report(); /* the totals of a backend that shuts down */
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    if ((stream && stream->capture) || mt_emu_capture_refuses("cudaStreamSynchronize")) {
        if (stream && stream->capture) stream->capture->invalidated = true;
        return fail(cudaErrorStreamCaptureUnsupported);
    }
    return cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
    if (stream && stream->capture) {
        stream->capture->invalidated = true;
        return fail(cudaErrorStreamCaptureUnsupported);
    }
    return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
    (void)flags;
    /* a wait on an event of an open capture forks the capture into this stream */
    CUgraph_st *capture = open_capture(event->captured_in);
    if (capture && stream && !stream->capture) stream->capture = capture;
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
    *event = new CUevent_st;
    (*event)->flags = flags;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *event) {
    return cudaEventCreateWithFlags(event, 0);
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    delete event;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    event->captured_in = stream && stream->capture ? stream->capture : nullptr;
    mt_emu_enqueue(stream, [event]() {
        event->recorded = true;
        event->seconds = 1e-6 * (double)device_microseconds;
    });
    return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
    if (CUgraph_st *capture = open_capture(event->captured_in)) {
        capture->invalidated = true;
        return fail(cudaErrorStreamCaptureUnsupported);
    }
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    if (mt_emu_capture_refuses("cudaEventSynchronize")) return fail(cudaErrorStreamCaptureUnsupported);
    return cudaEventQuery(event);
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    if ((start->flags | end->flags) & cudaEventDisableTiming || !start->recorded || !end->recorded)
        return fail(cudaErrorInvalidResourceHandle);
    *ms = (float)((end->seconds - start->seconds) * 1e3);
    return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
    if (!stream || stream->capture || thread_capture) return fail(cudaErrorInvalidValue);
    stream->capture = new CUgraph_st;
    {
        std::lock_guard<std::mutex> guard(lock);
        open_captures.insert(stream->capture);
    }
    if (mode != cudaStreamCaptureModeRelaxed) thread_capture = stream->capture;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph) {
    *graph = nullptr;
    if (!stream || !stream->capture) return fail(cudaErrorInvalidValue);
    CUgraph_st *captured = stream->capture;
    if (thread_capture && thread_capture != captured) return fail(cudaErrorStreamCaptureWrongThread);
    {
        std::lock_guard<std::mutex> guard(lock);
        for (CUstream_st *s : streams)
            if (s->capture == captured) s->capture = nullptr;
        open_captures.erase(captured);
    }
    stream->capture = nullptr;
    thread_capture = nullptr;
    if (captured->invalidated) {
        broken_captures++;
        write_report();
        delete captured;
        return fail(cudaErrorStreamCaptureInvalidated);
    }
    captures++;
    write_report();
    *graph = captured;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph,
                                 unsigned long long flags) {
    (void)flags;
    *exec = new CUgraphExec_st;
    (*exec)->work = graph->work;
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
    replays++;
    write_report();
    for (const std::function<void()> &work : exec->work)
        mt_emu_enqueue(stream, work);
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    delete exec;
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    delete graph;
    return cudaSuccess;
}

} /* extern "C" */
