/* What the stand-ins of cuBLAS, cuDNN and NCCL (emu_cublas.cc, emu_cudnn.cc, emu_nccl.cc) share
 * with the runtime's (emu_cudart.cc): where work goes (now, or into a graph under capture), the
 * calls a capturing thread may not make, and whether a pointer is device memory. */
#ifndef MT_EMU_INTERNAL_HH
#define MT_EMU_INTERNAL_HH

#include <stddef.h>
#include <stdint.h>

#include <functional>

#include "cuda_runtime_api.h"
#include "ops/precision_bits.h"

void mt_emu_enqueue(cudaStream_t stream, std::function<void()> work);

/* A call that waits for the device or allocates, made by a thread that is capturing (thread-local
 * or global mode), breaks that capture, as on a device: true then (the caller fails the call). */
bool mt_emu_capture_refuses(const char *call);

/* Whether [ptr, ptr + bytes) lies inside one live cudaMalloc block. */
bool mt_emu_is_device_range(const void *ptr, size_t bytes);

/* One "emulated <library>: <what>" line on stderr: a real library would only return a status, but
 * a test that trips a stand-in's check should say which argument was wrong. */
void mt_emu_complain(const char *library, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* The element types the stand-ins read and write: fp32, bf16 and fp16 bit patterns, with the
 * rounding of ops/precision_bits.h (to nearest, ties to even, as the devices' stores). */
enum mt_emu_element { MT_EMU_F32, MT_EMU_BF16, MT_EMU_FP16 };

static inline float mt_emu_load(const void *base, mt_emu_element type, size_t i) {
    switch (type) {
    case MT_EMU_BF16: return mt_bf16_bits_to_f32(static_cast<const uint16_t *>(base)[i]);
    case MT_EMU_FP16: return mt_fp16_bits_to_f32(static_cast<const uint16_t *>(base)[i]);
    default: return static_cast<const float *>(base)[i];
    }
}

static inline void mt_emu_store(void *base, mt_emu_element type, size_t i, float value) {
    switch (type) {
    case MT_EMU_BF16: static_cast<uint16_t *>(base)[i] = mt_f32_to_bf16_bits(value); break;
    case MT_EMU_FP16: static_cast<uint16_t *>(base)[i] = mt_f32_to_fp16_bits(value); break;
    default: static_cast<float *>(base)[i] = value; break;
    }
}

static inline size_t mt_emu_element_bytes(mt_emu_element type) {
    return type == MT_EMU_F32 ? 4 : 2;
}

#endif
