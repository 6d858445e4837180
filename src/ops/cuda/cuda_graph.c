/* The cuda backend's step capture (ops.h step_capture_begin/end, step_replay, step_graph_free:
 * a CUDA graph of one training step) and its read back without a wait (readback_start/wait).
 *
 * The capture is cudaStreamBeginCapture on the compute stream in thread-local mode: every op
 * enqueued there by this thread until the end is recorded, not run; a stream that waits on an
 * event recorded during the capture joins it and must be joined back before the end. A call
 * that would make the host wait (upload, download, a scratch area growing, cudaMalloc in the
 * pool, the depthwise and pointwise timing at a shape's first call) breaks the capture, and
 * cudaStreamEndCapture then fails: the trainer runs the step eager instead. That is why a shape
 * runs eager once before it is captured (every pool block, algorithm and scratch size is then
 * in place). Device memory handed back to the driver after a capture (the pool trimmed, a
 * scratch area grown) may be memory the graph points into: step_replay then refuses it
 * (MT_ERR_INVALID) and the caller captures again. Pool blocks released and reused in stream
 * order inside the step (the 16-bit staging buffers) are fine: the graph reuses them in the
 * same order, and nothing else runs while it does. The conv weight copies (cuda_weights.c: KRSC,
 * 16-bit, rounded; fp32 mode too) are a cache that watches the host's calls: a replay updates
 * weights without any, so the cache is emptied when a capture begins (every copy the step needs
 * is then made inside the graph, on memory the graph alone uses), when it ends (the copies made
 * while capturing hold nothing yet) and at every replay (the copies made since would be
 * stale). */
#include <stdlib.h>

#include "ops/cuda/cuda_internal.h"

typedef struct cuda_step_graph {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    uint64_t memory_generation; /* cuda_backend.memory_generation at the capture */
} cuda_step_graph;

mt_status mt_cuda_readback_start(mt_backend *backend, void *host_dst, const void *src,
                                 size_t bytes) {
    cuda_backend *cu = cuda_of(backend);
    if (!cu->readback) CUDA_CHECK(cudaEventCreateWithFlags(&cu->readback, cudaEventDisableTiming));
    CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, cu->stream));
    CUDA_CHECK(cudaEventRecord(cu->readback, cu->stream));
    return MT_OK;
}

mt_status mt_cuda_readback_wait(mt_backend *backend) {
    cuda_backend *cu = cuda_of(backend);
    if (cu->readback) CUDA_CHECK(cudaEventSynchronize(cu->readback));
    return MT_OK;
}

mt_status mt_cuda_step_capture_begin(mt_backend *backend) {
    cuda_backend *cu = cuda_of(backend);
    if (cu->capturing) return MT_FAIL(MT_ERR_INVALID, "cuda: a step capture is already open");
    if (cu->profile)
        return MT_FAIL(MT_ERR_INVALID, "cuda: MT_CUDA_PROFILE times the ops one by one, which a "
                       "captured step would hide");
    cuda_weights_touched(cu, NULL, 0); /* every conv weight copy */
    CUDA_CHECK(cudaStreamBeginCapture(cu->stream, cudaStreamCaptureModeThreadLocal));
    cu->capturing = true;
    return MT_OK;
}

mt_status mt_cuda_step_capture_end(mt_backend *backend, void **out) {
    cuda_backend *cu = cuda_of(backend);
    *out = NULL;
    if (!cu->capturing) return MT_FAIL(MT_ERR_INVALID, "cuda: no step capture is open");
    cu->capturing = false;
    /* copies made while capturing hold nothing yet: the replay makes them */
    cuda_weights_touched(cu, NULL, 0); /* every conv weight copy */
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(cu->stream, &graph);
    if (e != cudaSuccess || !graph) {
        (void)cudaGetLastError(); /* a broken capture is reported here, not by a later call */
        if (graph) (void)cudaGraphDestroy(graph);
        return MT_FAIL(MT_ERR_BACKEND, "cuda: the step capture broke (%s): some call in the "
                       "step waits for the device or allocates", cudaGetErrorString(e));
    }
    cuda_step_graph *g = calloc(1, sizeof *g);
    if (!g) {
        (void)cudaGraphDestroy(graph);
        return MT_FAIL(MT_ERR_NOMEM, "cuda: out of host memory for a step graph");
    }
    g->graph = graph;
    g->memory_generation = cu->memory_generation;
    e = cudaGraphInstantiate(&g->exec, graph, 0);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        (void)cudaGraphDestroy(graph);
        free(g);
        return MT_FAIL(MT_ERR_BACKEND, "cuda: cudaGraphInstantiate of the step failed: %s",
                       cudaGetErrorString(e));
    }
    *out = g;
    return MT_OK;
}

mt_status mt_cuda_step_replay(mt_backend *backend, void *graph) {
    cuda_backend *cu = cuda_of(backend);
    cuda_step_graph *g = graph;
    if (g->memory_generation != cu->memory_generation)
        return MT_FAIL(MT_ERR_INVALID, "cuda: device memory went back to the driver since the "
                       "step was captured: capture it again");
    cuda_weights_touched(cu, NULL, 0); /* every conv weight copy */
    CUDA_CHECK(cudaGraphLaunch(g->exec, cu->stream));
    return MT_OK;
}

void mt_cuda_step_graph_free(mt_backend *backend, void *graph) {
    (void)backend;
    cuda_step_graph *g = graph;
    if (!g) return;
    if (g->exec) (void)cudaGraphExecDestroy(g->exec);
    if (g->graph) (void)cudaGraphDestroy(g->graph);
    free(g);
}

void cuda_readback_free(cuda_backend *cu) {
    if (cu->readback) (void)cudaEventDestroy(cu->readback);
    cu->readback = NULL;
}
