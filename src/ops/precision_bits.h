/* fp32 <-> bf16 / fp16 bit patterns, round to nearest, ties to even (precision.h has the formats),
 * in integer arithmetic only, so the result does not depend on the compiler's or the device's
 * floating-point modes. One copy for the host (precision.c, the reference's emulation) and the
 * device (the kernels in cuda_kernels_*.cu): usable from C and CUDA, as loss_row.h. */
#ifndef MT_OPS_PRECISION_BITS_H
#define MT_OPS_PRECISION_BITS_H

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define MT_PRECISION_FN static inline __host__ __device__
#else
#define MT_PRECISION_FN static inline
#endif

MT_PRECISION_FN uint32_t mt_float_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

MT_PRECISION_FN float mt_bits_float(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

MT_PRECISION_FN uint16_t mt_f32_to_bf16_bits(float x) {
    uint32_t u = mt_float_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    /* add just under half of the dropped part's unit, plus the kept part's lowest bit: a tie
     * rounds up exactly when that bit is 1 (to even); a carry moves into the exponent, and past
     * the largest finite value into infinity, as it should */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

MT_PRECISION_FN float mt_bf16_bits_to_f32(uint16_t bits) {
    return mt_bits_float((uint32_t)bits << 16);
}

MT_PRECISION_FN uint16_t mt_f32_to_fp16_bits(float x) {
    const uint32_t u = mt_float_bits(x);
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

MT_PRECISION_FN float mt_fp16_bits_to_f32(uint16_t bits) {
    const uint32_t sign = (uint32_t)(bits & 0x8000u) << 16;
    const uint32_t e = (bits >> 10) & 0x1fu, m = bits & 0x3ffu;
    if (e == 0x1f) return mt_bits_float(sign | 0x7f800000u | (m << 13)); /* inf, NaN */
    if (e != 0) return mt_bits_float(sign | ((e + 112u) << 23) | (m << 13));
    /* subnormal (or zero): m x 2^-24, exact in fp32 */
    const float value = (float)m * 5.9604644775390625e-08f;
    return sign ? -value : value;
}

#endif
