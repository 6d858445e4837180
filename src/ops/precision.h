/* The 16-bit storage types of train.precision = bf16 | fp16 in plain C: round to nearest, ties to
 * even, from fp32, and back (exact). The reference backend emulates reduced precision with these
 * (it keeps float storage and rounds each op's activation outputs, ops.h "precision"), and the
 * cuda backend's cast kernels are tested against them (tests/gpu/test_gpu_kernels_emulated.c).
 *   bf16: 1 sign, 8 exponent, 7 mantissa bits (fp32's range): unit roundoff 2^-8
 *   fp16: 1 sign, 5 exponent, 10 mantissa bits, subnormals below 2^-14, largest 65504: unit
 *         roundoff 2^-11; a value of magnitude >= 65520 (65504 + half its spacing) becomes
 *         infinity, as IEEE rounding says
 * NaN stays NaN (quiet), infinities and signed zeros stay what they are. */
#ifndef MT_OPS_PRECISION_H
#define MT_OPS_PRECISION_H

#include <stddef.h>
#include <stdint.h>

#include "mobiletune/ops.h"
#include "ops/precision_bits.h" /* mt_f32_to_bf16_bits, mt_fp16_bits_to_f32, ... */

/* x rounded to the format, as the fp32 value (which the format holds exactly) */
float mt_round_bf16(float x);
float mt_round_fp16(float x);

/* Every x[i] rounded to the storage type of `precision` in place (fp32 and tf32: unchanged). */
void mt_round_to_storage(mt_compute_precision precision, float *x, size_t count);

#endif
