/* test_gpu_kernels_stored.c: the kernels' bf16 / fp16 storage against their fp32 instances, bit
 * for bit; called by test_gpu_kernels_emulated.c's main. */
#ifndef MT_TEST_GPU_KERNELS_STORED_H
#define MT_TEST_GPU_KERNELS_STORED_H

void mt_test_stored_kernels(void);

#endif
