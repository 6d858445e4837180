/* What the cuda backend lends to code outside src/ops (the NCCL path of src/comm/nccl_comm.c):
 * how many GPUs there are and the backend's two streams. The comm code reaches these, never the
 * backend's internals; they are entries of the cuda module's table once the backend is loaded at
 * run time. Nothing in src/ops includes a src/comm header. */
#ifndef MT_OPS_CUDA_EXPORT_H
#define MT_OPS_CUDA_EXPORT_H

#include <cuda_runtime_api.h>

#include "mobiletune/ops.h"

/* GPUs this process sees (CUDA_VISIBLE_DEVICES applies); 0 when CUDA cannot start. */
int mt_cuda_visible_devices(void);

/* The stream every op of `backend` runs on, and the one reserved for the gradient all-reduce
 * (ordered against the first by events). An error when `backend` is not the cuda backend. */
mt_status mt_cuda_backend_streams(mt_backend *backend, cudaStream_t *compute,
                                  cudaStream_t *comm);

#endif
