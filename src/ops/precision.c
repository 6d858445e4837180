/* bf16 / fp16 rounding on the bit patterns (see precision.h): integer arithmetic only, so the
 * result does not depend on the compiler's or the CPU's floating-point modes. */
#include "ops/precision.h"

#include <string.h>

static uint32_t float_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float bits_float(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

uint16_t mt_f32_to_bf16_bits(float x) {
    uint32_t u = float_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    /* add just under half of the dropped part's unit, plus the kept part's lowest bit: a tie
     * rounds up exactly when that bit is 1 (to even); a carry moves into the exponent, and past
     * the largest finite value into infinity, as it should */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float mt_bf16_bits_to_f32(uint16_t bits) {
    return bits_float((uint32_t)bits << 16);
}

uint16_t mt_f32_to_fp16_bits(float x) {
    const uint32_t u = float_bits(x);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 (and inf): infinity */
    if (a >= 0x38800000u) { /* >= 2^-14: normal; rebias the exponent (127 -> 15), round 13 bits */
        uint32_t r = a - (112u << 23);
        r += 0xfffu + ((r >> 13) & 1u);
        return (uint16_t)(sign | (r >> 13));
    }
    const int e = (int)(a >> 23);
    if (e < 102) return sign; /* below 2^-25, half the smallest subnormal: zero */
    /* subnormal: the value in units of 2^-24 is m x 2^(e - 126) with the implicit bit in m;
     * shift right by 126 - e (14..24) and round the dropped bits to nearest, ties to even (a
     * carry out of the top gives 0x400, the smallest normal's pattern, as it should) */
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const int shift = 126 - e;
    uint32_t q = m >> shift;
    const uint32_t rest = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}

float mt_fp16_bits_to_f32(uint16_t bits) {
    const uint32_t sign = (uint32_t)(bits & 0x8000u) << 16;
    const uint32_t e = (bits >> 10) & 0x1fu, m = bits & 0x3ffu;
    if (e == 0x1f) return bits_float(sign | 0x7f800000u | (m << 13)); /* inf, NaN */
    if (e != 0) return bits_float(sign | ((e + 112u) << 23) | (m << 13));
    /* subnormal (or zero): m x 2^-24, exact in fp32 */
    const float value = (float)m * 5.9604644775390625e-08f;
    return sign ? -value : value;
}

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
