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
 * scratch area grown, the BN counters grown) may be memory the graph points into: step_replay
 * then refuses it (MT_ERR_INVALID) and the caller captures again.
 *
 * Pool memory (cuda_pool.c). The host's calls end at the capture, but every replay writes the
 * temporaries the step took from the pool (16-bit copies of conv kernels, the widened tensors
 * of bf16/fp16's backward filter, the KRSC staging of a 16-bit filter). So a capture opens a
 * keep (cuda_pool_keep): a block handed out under the capture, or released under it, belongs to
 * the graph. Released, it goes to the keep, not to the pool's idle lists: the capture itself
 * reuses it in stream order, as the eager step did (so it needs no cudaMalloc), and eager work
 * between replays (an evaluation, a checkpoint, the trainer's other ops) never gets it. A block
 * that was live before the capture and released under it is the graph's too: the recorded ops
 * before the release still write it at every replay. A block handed out under the capture and
 * still held at its end joins the keep when its holder releases it. step_graph_free hands the
 * keep's blocks back to the idle lists (the stream orders their reuse after a replay still
 * running). The pool's reserved bytes count them all along; `held` counts the keeps' idle
 * blocks, and the peak is of in_use + held: memory no allocation could get. When a cudaMalloc
 * fails, the keeps' idle blocks go back to the driver with the others (pool_trim): the memory
 * generation moves on, so those graphs are refused and captured again. A block belongs to one
 * graph at most: a block the second of two live graphs used that the first owns goes back to the
 * pool with the first (the trainer holds one graph at a time: it frees the last before it
 * captures the next). Blocks live before the capture and held after it (the model's tensors) are
 * their holders': the trainer drops the graph when its model reallocates.
 *
 * Conv weight copies (cuda_weights.c, cuda_weight_cache.h: KRSC, 16-bit, rounded; fp32 mode
 * too). The cache watches the host's calls, and a replay writes weights without one. Each
 * device op that writes memory (optimizer_update, buffer_copy(_if), buffer_scale, the weight
 * gradient) tells the cache first, as always, and the cache also remembers the range: the
 * memory a step may write (an upload is host data, never part of a step; a freed block is
 * forgotten). Then:
 * - capture begin drops the copies of kernels in that memory (the trainable ones): the step
 *   makes those inside the graph, on its own pool blocks. The others (frozen kernels, which only
 *   uploads ever wrote) stay: the graph reads them, made once, outside it;
 * - capture end drops the copies made while capturing (they hold nothing until a replay makes
 *   them) and pins the copies made before the capture that it read. If the capture dropped one
 *   of those (the step writes or frees a kernel no device op had written before the capture, so
 *   the graph would read a copy of its old values), the capture fails with an error saying so
 *   and the trainer runs eager: not reachable from the trainer, whose warm-up step writes every
 *   trainable kernel before the capture. Deciding at the begin from what device ops wrote before
 *   is the simple, safe side: a wrong guess costs a copy inside the graph or a failed capture,
 *   never a stale read;
 * - a replay first checks that every pinned copy is still there (an upload to a frozen kernel,
 *   e.g. a checkpoint loaded, drops it: the replay is refused, MT_ERR_INVALID, and the caller
 *   captures again), then drops the copies of kernels a step may write (the replay rewrites
 *   them; one an evaluation made since would be stale), and launches. So a replay makes the
 *   trainable kernels' copies only, as an eager step does. */
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
    if (!g) { /* still end the capture: the stream must not stay in capture mode */
        cuda_step_graph none = {0};
        (void)capture_finish(cu, &none);
        graph_release(cu, &none);
        return MT_FAIL(MT_ERR_NOMEM, "cuda: out of host memory for a step graph");
    }
    mt_status status = capture_finish(cu, g);
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
