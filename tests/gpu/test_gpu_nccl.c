/* The NCCL path with one rank (issue 6's "NCCL path with one rank"): bootstrap through the comm
 * interface (single process: no MPI), an in-place all-reduce of device memory on a stream of our
 * own, the wait that polls for asynchronous errors, and the error after an abort. Two ranks on one
 * GPU are not possible with NCCL (it refuses); multi-rank runs need mpirun on the GPU machine.
 * The NCCL functions come from the cuda module's table, as the core library reaches them.
 * Skips (77) without a GPU. */
#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>

#include "mobiletune/comm.h"
#include "mobiletune/ops.h"
#include "ops/cuda_module.h"
#include "test_util.h"

enum { COUNT = 100003 }; /* odd: no alignment luck */

int main(void) {
    mt_backend *gpu = NULL;
    if (mt_backend_create("cuda", NULL, &gpu) != MT_OK) {
        printf("skipped: no GPU (%s)\n", mt_last_error());
        return MT_TEST_SKIP_CODE;
    }
    const mt_cuda_module *cuda = NULL;
    CHECK_OK(mt_cuda_module_load(&cuda)); /* loaded already by mt_backend_create */
    mt_comm *comm = NULL;
    CHECK_OK(mt_comm_init(NULL, NULL, &comm));
    const int world = mt_comm_get_info(comm).world_size;
    mt_nccl *nccl = NULL;
    CHECK_OK(cuda->nccl_init(comm, 0, 60.0, &nccl));

    float *host = malloc(COUNT * sizeof *host), *back = malloc(COUNT * sizeof *back);
    for (int i = 0; i < COUNT; i++)
        host[i] = (float)(i % 1000) * 0.25f - 7.0f;
    void *device = NULL;
    CHECK_OK(gpu->ops->buffer_alloc(gpu, COUNT * sizeof(float), &device));
    CHECK_OK(gpu->ops->upload(gpu, device, host, COUNT * sizeof(float)));
    cudaStream_t stream;
    CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
    CHECK_OK(cuda->nccl_allreduce_sum_f32(nccl, device, COUNT, stream));
    CHECK_OK(cuda->nccl_allreduce_sum_f32(nccl, device, COUNT, stream));
    CHECK_OK(cuda->nccl_wait(nccl, stream));
    CHECK_OK(gpu->ops->download(gpu, back, device, COUNT * sizeof(float)));
    int wrong = 0;
    for (int i = 0; i < COUNT; i++)
        wrong += back[i] != host[i] * (float)(world * world);
    CHECK_MSG(wrong == 0, "%d of %d sums wrong (world %d)", wrong, COUNT, world);

    cuda->nccl_abort(nccl);
    CHECK(cuda->nccl_allreduce_sum_f32(nccl, device, COUNT, stream) == MT_ERR_COMM);
    CHECK_MSG(strstr(mt_last_error(), "aborted"), "message: %s", mt_last_error());
    cuda->nccl_destroy(nccl);

    cudaStreamDestroy(stream);
    gpu->ops->buffer_free(gpu, device);
    free(host), free(back);
    mt_backend_destroy(gpu);
    mt_comm_finalize(comm);
    return mt_test_finish();
}
