/* bf16 / fp16 rounding of fp32 values (see precision.h), through the bit patterns of
 * precision_bits.h. */
#include "ops/precision.h"

float mt_round_bf16(float x) {
    return mt_bf16_bits_to_f32(mt_f32_to_bf16_bits(x));
}

float mt_round_fp16(float x) {
    return mt_fp16_bits_to_f32(mt_f32_to_fp16_bits(x));
}

void mt_round_to_storage(mt_compute_precision precision, float *x, size_t count) {
    if (precision == MT_COMPUTE_BF16)
        for (size_t i = 0; i < count; i++)
            x[i] = mt_round_bf16(x[i]);
    else if (precision == MT_COMPUTE_FP16)
        for (size_t i = 0; i < count; i++)
            x[i] = mt_round_fp16(x[i]);
}
