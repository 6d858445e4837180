/* What the cuda backend lends to the NCCL path of src/comm/nccl_comm.c, which is built into the
 * same cuda module: how many GPUs there are and the backend's two streams. The comm code reaches
 * these, never the backend's internals; the core reaches the NCCL path only through the module's
 * table (src/ops/cuda_module.h: comm_nccl_api). */
#ifndef MT_OPS_CUDA_EXPORT_H
#define MT_OPS_CUDA_EXPORT_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "mobiletune/ops.h"

/* GPUs this process sees (CUDA_VISIBLE_DEVICES applies); 0 when CUDA cannot start. */
int mt_cuda_visible_devices(void);

/* The UUID of GPU `device` (an ordinal among those this process sees): the same physical GPU
 * gives the same 16 bytes in every process, whatever its CUDA_VISIBLE_DEVICES, so ranks can tell
 * whether they share a GPU. */
mt_status mt_cuda_device_uuid(int device, uint8_t out[16]);

/* The stream every op of `backend` runs on, and the one reserved for the gradient all-reduce
 * (ordered against the first by events). An error when `backend` is not the cuda backend. */
mt_status mt_cuda_backend_streams(mt_backend *backend, cudaStream_t *compute,
                                  cudaStream_t *comm);

#endif
