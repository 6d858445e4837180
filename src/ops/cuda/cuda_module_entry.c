/* The cuda module's one exported symbol (cuda_module.h): the table the core library reads after
 * dlopen(). Everything else in libmobiletune_cuda.so is hidden (-fvisibility=hidden), so the
 * module cannot interpose on the core's symbols. */
#include "comm/nccl_comm.h"
#include "ops/cuda/cuda_export.h"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda_module.h"

extern const mt_ops mt_ops_cuda;

/* cuda_module.h spells cudaStream_t as struct CUstream_st *: the same type, checked here. */
_Static_assert(_Generic((cudaStream_t)0, struct CUstream_st *: 1, default: 0),
               "cudaStream_t is no longer struct CUstream_st *: update cuda_module.h");

__attribute__((visibility("default"))) const mt_cuda_module *mt_cuda_module_entry(void) {
    static const mt_cuda_module module = {
        .abi = MT_CUDA_MODULE_ABI,
        .size = sizeof(mt_cuda_module),
        .ops = &mt_ops_cuda,
        .nccl_init = mt_nccl_init,
        .nccl_allreduce_sum_f32 = mt_nccl_allreduce_sum_f32,
        .nccl_wait = mt_nccl_wait,
        .nccl_abort = mt_nccl_abort,
        .nccl_destroy = mt_nccl_destroy,
        .comm_nccl_api = mt_nccl_training_api,
        .device_uuid = mt_cuda_device_uuid,
    };
    return &module;
}
