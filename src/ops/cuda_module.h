/* The cuda module: everything that links CUDA, cuBLAS, cuDNN or NCCL (the "cuda" backend of
 * src/ops/cuda and the NCCL communicator of src/comm/nccl_comm.c) is built as one loadable module,
 * libmobiletune_cuda.so, that the core library dlopen()s the first time something asks for it. The
 * core and the programs then start on machines without those libraries (issue 10), and asking for
 * cuda there fails with one line naming the library that is missing.
 *
 * The module exports one function, MT_CUDA_MODULE_ENTRY, returning a table. Growing the table:
 * append fields at the end and keep `size` = sizeof the module's struct, so a core reading an
 * older module can tell which fields it has (mt_cuda_module_has); change MT_CUDA_MODULE_ABI only
 * when an existing field changes meaning or type.
 *
 * Private to mobiletune (core <-> module), no CUDA header needed: cudaStream_t is
 * `struct CUstream_st *` in cuda_runtime_api.h, so the stream arguments below are the same type. */
#ifndef MT_OPS_CUDA_MODULE_H
#define MT_OPS_CUDA_MODULE_H

#include <stddef.h>
#include <stdint.h>

#include "mobiletune/ops.h"

#define MT_CUDA_MODULE_ABI 1
#define MT_CUDA_MODULE_ENTRY "mt_cuda_module_entry"
#define MT_CUDA_MODULE_FILE "libmobiletune_cuda.so"

struct CUstream_st;
typedef struct mt_nccl mt_nccl;
/* mobiletune/comm.h's communicator, by name only: src/ops does not include src/comm
 * (docs/architecture.md) */
typedef struct mt_comm mt_comm;

typedef struct mt_cuda_module {
    uint32_t abi;  /* MT_CUDA_MODULE_ABI of the module's build */
    uint32_t size; /* sizeof(mt_cuda_module) in the module's build */
    const mt_ops *ops; /* the "cuda" backend's table */
    /* The NCCL communicator of src/comm/nccl_comm.h, same signatures (see there). */
    mt_status (*nccl_init)(mt_comm *comm, int device, double timeout_s, mt_nccl **out);
    mt_status (*nccl_allreduce_sum_f32)(mt_nccl *nccl, float *device_buffer, size_t count,
                                        struct CUstream_st *stream);
    mt_status (*nccl_wait)(mt_nccl *nccl, struct CUstream_st *stream);
    void (*nccl_abort)(mt_nccl *nccl);
    void (*nccl_destroy)(mt_nccl *nccl);
    /* src/comm's NCCL training path (train.comm = nccl): returns a const mt_comm_nccl_api *
     * (src/comm/comm_internal.h), opaque here so that src/ops needs no src/comm type. */
    const void *(*comm_nccl_api)(void);
    /* The UUID of GPU `device` (ordinal among the visible ones): equal across processes for the
     * same physical GPU, whatever their CUDA_VISIBLE_DEVICES (src/ops/cuda/cuda_export.h). */
    mt_status (*device_uuid)(int device, uint8_t out[16]);
} mt_cuda_module;

/* The module's one exported function (defined in src/ops/cuda/cuda_module_entry.c, in the
 * module only: the core looks it up with dlsym). */
const mt_cuda_module *mt_cuda_module_entry(void);
typedef const mt_cuda_module *(*mt_cuda_module_entry_fn)(void);

/* True when the loaded module's table reaches `field` (a later field than it was built with
 * reads as absent). */
#define mt_cuda_module_has(module, field)                                                          \
    ((module)->size >= offsetof(mt_cuda_module, field) + sizeof((module)->field))

/* Loads the module once per process (thread-safe; later calls return the same table or the same
 * error). Search order: $MT_CUDA_MODULE (a path to the file); the running program's folder and
 * its parent; the core library's own folder; the install lib folder. On failure the message is one
 * line naming the file and what is missing, and the fix. A build without CUDA fails with
 * MT_ERR_INVALID saying so. */
mt_status mt_cuda_module_load(const mt_cuda_module **out);

#endif
