/* See cuda_runtime_api.h: the CUDA runtime stand-in of the emulated cuda backend. */
#include "cuda_runtime_api.h"
