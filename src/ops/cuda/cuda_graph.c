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
    cuda_pool_keep *keep;       /* the pool blocks the graph alone writes */
    mt_cuda_weight_pins pins;   /* conv weight copies made before the capture that it reads */
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
    MT_TRY(cuda_pool_capture_begin(cu));
    cuda_weights_capture_begin(cu);
    cudaError_t e = cudaStreamBeginCapture(cu->stream, cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        mt_cuda_weight_pins none;
        (void)cuda_weights_capture_end(cu, false, &none);
        cuda_pool_keep_free(cu, cuda_pool_capture_end(cu));
        return MT_FAIL(MT_ERR_BACKEND, "cuda: cudaStreamBeginCapture failed: %s",
                       cudaGetErrorString(e));
    }
    cu->capturing = true;
    return MT_OK;
}

/* Destroys the graph and hands its pool blocks back (the stream orders their reuse after any
 * replay still running); also what a failed capture left. */
static void graph_release(cuda_backend *cu, cuda_step_graph *g) {
    if (g->exec) (void)cudaGraphExecDestroy(g->exec);
    if (g->graph) (void)cudaGraphDestroy(g->graph);
    cuda_pool_keep_free(cu, g->keep);
    mt_cuda_weight_pins_free(&g->pins);
    *g = (cuda_step_graph){0};
}

/* The capture's end, the graph's instantiation and its share of the pool and the weight copies;
 * on failure nothing of it is kept. */
static mt_status capture_finish(cuda_backend *cu, cuda_step_graph *g) {
    cudaError_t e = cudaStreamEndCapture(cu->stream, &g->graph);
    const bool captured = e == cudaSuccess && g->graph;
    /* the copies made under the capture hold nothing yet (the replays make them); those made
     * before it that it read are pinned */
    mt_status weights = cuda_weights_capture_end(cu, captured, &g->pins);
    g->keep = cuda_pool_capture_end(cu);
    if (!captured) {
        (void)cudaGetLastError(); /* a broken capture is reported here, not by a later call */
        return MT_FAIL(MT_ERR_BACKEND, "cuda: the step capture broke (%s): some call in the "
                       "step waits for the device or allocates", cudaGetErrorString(e));
    }
    MT_TRY(weights);
    e = cudaGraphInstantiate(&g->exec, g->graph, 0);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        g->exec = NULL;
        return MT_FAIL(MT_ERR_BACKEND, "cuda: cudaGraphInstantiate of the step failed: %s",
                       cudaGetErrorString(e));
    }
    return MT_OK;
}

mt_status mt_cuda_step_capture_end(mt_backend *backend, void **out) {
    cuda_backend *cu = cuda_of(backend);
    *out = NULL;
    if (!cu->capturing) return MT_FAIL(MT_ERR_INVALID, "cuda: no step capture is open");
    cu->capturing = false;
    cuda_step_graph *g = calloc(1, sizeof *g);
    mt_status status = g ? capture_finish(cu, g)
                         : MT_FAIL(MT_ERR_NOMEM, "cuda: out of host memory for a step graph");
    if (!g) { /* still end the capture: the stream must not stay in capture mode */
        cuda_step_graph none = {0};
        (void)capture_finish(cu, &none);
        graph_release(cu, &none);
        return status;
    }
    g->memory_generation = cu->memory_generation;
    if (status != MT_OK) {
        mt_cuda_step_graph_free(backend, g);
        return status;
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
    if (!cuda_weights_replay(cu, &g->pins))
        return MT_FAIL(MT_ERR_INVALID, "cuda: a conv kernel the captured step reads through a copy "
                       "made before the capture was written or freed since: capture it again");
    CUDA_CHECK(cudaGraphLaunch(g->exec, cu->stream));
    return MT_OK;
}

void mt_cuda_step_graph_free(mt_backend *backend, void *graph) {
    cuda_step_graph *g = graph;
    if (!g) return;
    graph_release(cuda_of(backend), g);
    free(g);
}

void cuda_readback_free(cuda_backend *cu) {
    if (cu->readback) (void)cudaEventDestroy(cu->readback);
    cu->readback = NULL;
}
