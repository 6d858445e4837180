/* The cuda backend's memory pool: size classes in quarter steps, blocks kept for reuse instead of
 * cudaFree (after the first step every allocation is a reuse, so the step loop never calls
 * cudaMalloc), and the step graphs' share of it (cuda_pool_keep, cuda_internal.h): a block
 * handed out or released while a step is being captured belongs to that graph, each replay
 * writes it, so it stays out of the idle lists until the graph is freed (cuda_graph.c's top
 * comment). A failed cudaMalloc gives every idle block back to the driver, the graphs' too, and
 * tries again. */
#include <stdio.h>
#include <stdlib.h>

#include "ops/cuda/cuda_internal.h"

/* Size classes in quarter steps between powers of two (at most 25% waste), 512 bytes minimum. */
static int pool_class(size_t bytes, size_t *rounded) {
    if (bytes < 512) bytes = 512;
    int k = 63 - __builtin_clzll((unsigned long long)bytes);
    size_t base = (size_t)1 << k;
    if (bytes == base) {
        *rounded = base;
        return 4 * k;
    }
    size_t step = base / 4, quarters = (bytes - base + step - 1) / step; /* 1..4 */
    *rounded = base + quarters * step;
    return 4 * k + (int)quarters;
}

static size_t pool_bucket(const void *ptr) {
    return (size_t)(((uintptr_t)ptr >> 9) % CUDA_POOL_BUCKETS);
}

static void pool_trim_list(cuda_pool *pool, cuda_block **list) {
    while (*list) {
        cuda_block *b = *list;
        *list = b->next;
        (void)cudaFree(b->ptr);
        pool->reserved -= b->bytes;
        free(b);
    }
}

/* Gives every idle block back to the driver (before retrying a failed cudaMalloc, at shutdown),
 * the step graphs' too: memory_generation moves on, so those graphs are refused from now on. */
static void pool_trim(cuda_backend *cu) {
    cuda_pool *pool = &cu->pool;
    cu->memory_generation++;
    for (int c = 0; c < CUDA_POOL_CLASSES; c++)
        pool_trim_list(pool, &pool->idle[c]);
    for (cuda_pool_keep *k = pool->keeps; k; k = k->next) {
        for (int c = 0; c < CUDA_POOL_CLASSES; c++)
            pool_trim_list(pool, &k->idle[c]);
        pool->held -= k->bytes;
        k->bytes = 0;
    }
}

static void pool_count_use(cuda_pool *pool) {
    if (pool->in_use + pool->held > pool->peak) pool->peak = pool->in_use + pool->held;
}

/* Under a capture a block comes from the capture's own released ones first, then from the
 * pool's idle ones: the eager step's reuse, so the capture needs no cudaMalloc either. */
static cuda_block *pool_take_idle(cuda_pool *pool, int cls) {
    cuda_pool_keep *keep = pool->capture;
    if (keep && keep->idle[cls]) {
        cuda_block *b = keep->idle[cls];
        keep->idle[cls] = b->next;
        keep->bytes -= b->bytes;
        pool->held -= b->bytes;
        return b;
    }
    cuda_block *b = pool->idle[cls];
    if (b) pool->idle[cls] = b->next;
    return b;
}

static mt_status pool_alloc(cuda_backend *cu, size_t bytes, void **out) {
    cuda_pool *pool = &cu->pool;
    size_t rounded;
    int cls = pool_class(bytes, &rounded);
    *out = NULL;
    if (cls >= CUDA_POOL_CLASSES)
        return MT_FAIL(MT_ERR_NOMEM, "cuda: cannot allocate %zu bytes of device memory", bytes);
    cuda_block *b = pool_take_idle(pool, cls);
    /* cudaMalloc would break the capture (and on a device could say "out of memory"): the
     * eager warm-up step should have left every block the step needs in the pool */
    if (!b && cu->capturing)
        return MT_FAIL(MT_ERR_INVALID, "cuda: the captured step asks for a new %zu-byte block "
                       "that its eager warm-up step did not allocate", bytes);
    if (!b) {
        b = calloc(1, sizeof *b);
        if (!b) return MT_FAIL(MT_ERR_NOMEM, "cuda: out of host memory for the pool's records");
        cudaError_t e = cudaMalloc(&b->ptr, rounded);
        if (e == cudaErrorMemoryAllocation) {
            (void)cudaGetLastError();
            CUDA_CHECK(cudaStreamSynchronize(cu->stream));
            pool_trim(cu);
            e = cudaMalloc(&b->ptr, rounded);
        }
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            free(b);
            size_t free_bytes = 0, total_bytes = 0;
            (void)cudaMemGetInfo(&free_bytes, &total_bytes);
            const double mib = 1024.0 * 1024.0;
            return MT_FAIL(
                MT_ERR_NOMEM,
                "cuda: out of device memory on GPU %d: asked for %zu bytes (%.1f MiB); "
                "cudaMemGetInfo says %.1f MiB free of %.1f MiB; mobiletune holds %.1f "
                "MiB (%.1f MiB in use, %.1f MiB kept for step graphs, %.1f MiB of workspace "
                "and scratch): %s. Lower the batch size or free the GPU",
                cu->device, bytes, (double)bytes / mib, (double)free_bytes / mib,
                (double)total_bytes / mib, (double)pool->reserved / mib, (double)pool->in_use / mib,
                (double)pool->held / mib,
                (double)(cu->workspace.bytes + cu->filter.bytes + cu->partials.bytes) / mib,
                cudaGetErrorString(e));
        }
        b->bytes = rounded;
        b->cls = cls;
        pool->reserved += rounded;
        pool->mallocs++;
    }
    if (pool->capture) b->keep = pool->capture; /* the graph writes it: it is the graph's */
    size_t h = pool_bucket(b->ptr);
    b->next = pool->live[h];
    pool->live[h] = b;
    pool->in_use += b->bytes;
    pool_count_use(pool);
    *out = b->ptr;
    return MT_OK;
}

mt_status cuda_pool_alloc(cuda_backend *cu, size_t bytes, void **out) {
    return pool_alloc(cu, bytes, out);
}

/* The live block at `ptr`, unlinked when `unlink`; NULL if the pool did not hand it out. */
static cuda_block *pool_find_live(cuda_pool *pool, const void *ptr, bool unlink) {
    cuda_block **link = &pool->live[pool_bucket(ptr)];
    while (*link && (*link)->ptr != ptr)
        link = &(*link)->next;
    cuda_block *b = *link;
    if (b && unlink) *link = b->next;
    return b;
}

/* Work still queued on the stream may use the block: reuse is safe because every later user is
 * on the same stream. A block of a step graph (handed out under its capture, or released under
 * it: the graph may write it before the release point too) goes to the graph's keep: each replay
 * still writes it. */
static void pool_release(cuda_backend *cu, void *ptr) {
    if (!ptr) return;
    cuda_pool *pool = &cu->pool;
    cuda_block *b = pool_find_live(pool, ptr, true);
    if (!b) {
        fprintf(stderr,
                "mobiletune cuda: freeing %p, which the pool did not hand out (a double "
                "free?); ignored\n",
                ptr);
        return;
    }
    pool->in_use -= b->bytes;
    if (!b->keep) b->keep = pool->capture;
    cuda_pool_keep *keep = b->keep;
    if (keep) {
        b->next = keep->idle[b->cls];
        keep->idle[b->cls] = b;
        keep->bytes += b->bytes;
        pool->held += b->bytes;
    } else {
        b->next = pool->idle[b->cls];
        pool->idle[b->cls] = b;
    }
}

void cuda_pool_release(cuda_backend *cu, void *ptr) {
    pool_release(cu, ptr);
}

mt_status cuda_pool_capture_begin(cuda_backend *cu) {
    cuda_pool *pool = &cu->pool;
    if (pool->capture) return MT_FAIL(MT_ERR_INTERNAL, "cuda: the pool's capture is already open");
    cuda_pool_keep *keep = calloc(1, sizeof *keep);
    if (!keep) return MT_FAIL(MT_ERR_NOMEM, "cuda: out of host memory for a step graph");
    keep->next = pool->keeps;
    pool->keeps = keep;
    pool->capture = keep;
    return MT_OK;
}

cuda_pool_keep *cuda_pool_capture_end(cuda_backend *cu) {
    cuda_pool_keep *keep = cu->pool.capture;
    cu->pool.capture = NULL;
    return keep;
}

void cuda_pool_keep_free(cuda_backend *cu, cuda_pool_keep *keep) {
    cuda_pool *pool = &cu->pool;
    if (!keep) return;
    if (pool->capture == keep) pool->capture = NULL;
    cuda_pool_keep **link = &pool->keeps;
    while (*link && *link != keep)
        link = &(*link)->next;
    if (*link) *link = keep->next;
    for (int c = 0; c < CUDA_POOL_CLASSES; c++) {
        while (keep->idle[c]) {
            cuda_block *b = keep->idle[c];
            keep->idle[c] = b->next;
            b->keep = NULL;
            b->next = pool->idle[c];
            pool->idle[c] = b;
        }
    }
    pool->held -= keep->bytes;
    /* blocks handed out under the capture and still held: their holders' alone from now on */
    for (int h = 0; h < CUDA_POOL_BUCKETS; h++)
        for (cuda_block *b = pool->live[h]; b; b = b->next)
            if (b->keep == keep) b->keep = NULL;
    free(keep);
}

size_t cuda_pool_block_bytes(cuda_backend *cu, const void *ptr) {
    const cuda_block *b = ptr ? pool_find_live(&cu->pool, ptr, false) : NULL;
    return b ? b->bytes : 0;
}

void cuda_pool_free(cuda_backend *cu) {
    cuda_pool *pool = &cu->pool;
    for (int h = 0; h < CUDA_POOL_BUCKETS; h++) { /* blocks the caller never freed */
        while (pool->live[h]) {
            cuda_block *b = pool->live[h];
            pool->live[h] = b->next;
            (void)cudaFree(b->ptr);
            free(b);
        }
    }
    pool_trim(cu);
    while (pool->keeps) { /* graphs the caller never freed: their blocks went just above */
        cuda_pool_keep *k = pool->keeps;
        pool->keeps = k->next;
        free(k);
    }
    pool->capture = NULL;
}
