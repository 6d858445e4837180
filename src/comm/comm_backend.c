/* Collectives on buffers in a backend's memory. The training loop never looks at where a buffer
 * lives: these take the backend and stage through its explicit copies (download, collective on
 * host memory, upload) when its memory is not host memory (ops->device_memory: cuda, the
 * reference backend's guarded mode); host-memory backends go straight to the collective. A
 * communicator that can read device memory itself (NCCL) is the place to skip the staging. */
#include <stdlib.h>

#include "comm_internal.h"
#include "mobiletune/ops.h"

/* Run `collective` on `bytes` of backend memory at `buffer`, staged through host memory when the
 * backend's memory is not the host's: downloaded first when `reads_own` (the collective reads
 * this rank's bytes: an all-reduce always, a broadcast on its root only), uploaded after. */
static mt_status staged(mt_comm *comm, mt_backend *backend, void *buffer, size_t bytes,
                        bool reads_own, mt_status (*collective)(mt_comm *, void *, size_t, int),
                        int root) {
    if (!backend->ops->device_memory) return collective(comm, buffer, bytes, root);
    void *host = malloc(bytes);
    if (!host)
        return MT_FAIL(MT_ERR_NOMEM, "out of memory staging %zu bytes of backend '%s' for MPI",
                       bytes, backend->ops->name);
    mt_status status = reads_own ? backend->ops->download(backend, host, buffer, bytes) : MT_OK;
    if (status == MT_OK) status = collective(comm, host, bytes, root);
    if (status == MT_OK) status = backend->ops->upload(backend, buffer, host, bytes);
    free(host);
    return status;
}

static mt_status broadcast_bytes(mt_comm *comm, void *host, size_t bytes, int root) {
    return mt_comm_broadcast(comm, host, bytes, root);
}

static mt_status mean_bytes(mt_comm *comm, void *host, size_t bytes, int root) {
    (void)root;
    return mt_comm_allreduce_mean_f32(comm, host, bytes / sizeof(float));
}

mt_status mt_comm_broadcast_backend(mt_comm *comm, mt_backend *backend, void *buffer,
                                    size_t bytes, int root) {
    if (comm->info.world_size == 1 || bytes == 0) return MT_OK;
    /* every rank uploads (the root's bytes come back unchanged) */
    return staged(comm, backend, buffer, bytes, comm->info.rank == root, broadcast_bytes, root);
}

mt_status mt_comm_allreduce_mean_f32_backend(mt_comm *comm, mt_backend *backend, float *buffer,
                                             size_t count) {
    if (comm->info.world_size == 1 || count == 0) return MT_OK;
    return staged(comm, backend, buffer, count * sizeof(float), true, mean_bytes, 0);
}
