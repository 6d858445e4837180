/* The emulated launch's shared state (see cuda_runtime_api.h). */
#include "cuda_runtime_api.h"

thread_local dim3 threadIdx;
dim3 blockIdx, blockDim, gridDim;
pthread_barrier_t mt_emu_barrier;
thread_local bool mt_emu_sequential;
std::set<const void *> mt_emu_threaded_kernels;
