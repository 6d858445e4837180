/* NCCL all-reduce for the cuda backend's data-parallel ranks, one GPU each (issue 6).
 *
 * Bootstrap: rank 0 makes an ncclUniqueId and mt_comm_broadcast (MPI, or nothing for a single
 * process) hands it to every rank, so this file needs no MPI itself. The communicator is
 * non-blocking (ncclConfig_t.blocking = 0): no NCCL call can hang the host, and every wait polls
 * ncclCommGetAsyncError against a timeout; on an error or a timeout the communicator is aborted
 * and the call returns MT_ERR_COMM naming the rank and the error, after which the caller takes the
 * job down with mt_comm_abort (the other ranks' NCCL calls then fail or time out in turn).
 *
 * Typical use with a second stream for overlap: enqueue mt_nccl_allreduce_sum_f32 on the
 * communication stream as a bucket's gradients become ready (after a cudaStreamWaitEvent on the
 * compute stream), and mt_nccl_wait on it before the optimizer step.
 *
 * These functions live in the cuda module (libmobiletune_cuda.so), which links NCCL; code in the
 * core library calls them through mt_cuda_module_load()'s table (src/ops/cuda_module.h), whose
 * function pointers have exactly these signatures. */
#ifndef MT_COMM_NCCL_COMM_H
#define MT_COMM_NCCL_COMM_H

#include <cuda_runtime_api.h>
#include <stddef.h>

#include "mobiletune/comm.h"
#include "mobiletune/status.h"

typedef struct mt_nccl mt_nccl;

/* Collective over every rank of `comm`: joins the NCCL communicator on GPU `device` (cudaSetDevice
 * is called). timeout_s bounds every later wait as well (e.g. 300). */
mt_status mt_nccl_init(mt_comm *comm, int device, double timeout_s, mt_nccl **out);

/* In-place sum over the ranks of `count` floats in device memory, enqueued on `stream`; returns
 * once enqueued (the data is summed when the stream gets there). */
mt_status mt_nccl_allreduce_sum_f32(mt_nccl *nccl, float *device_buffer, size_t count,
                                    cudaStream_t stream);

/* Waits for `stream` while polling the communicator for an asynchronous error. */
mt_status mt_nccl_wait(mt_nccl *nccl, cudaStream_t stream);

/* Aborts the communicator (pending collectives are cancelled); later calls fail. */
void mt_nccl_abort(mt_nccl *nccl);

/* Finalizes (flushing pending work, within the timeout, else aborts) and frees. NULL is fine. */
void mt_nccl_destroy(mt_nccl *nccl);

/* The training path's table (comm_internal.h's mt_comm_nccl_api), for the cuda module's table:
 * buckets on the backend's communication stream, ordered by events (grad_sync.h). */
const void *mt_nccl_training_api(void);

#endif
