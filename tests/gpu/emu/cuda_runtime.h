/* See cuda_runtime_api.h: the CUDA runtime stand-in of test_gpu_kernels_emulated. */
#include "cuda_runtime_api.h"
