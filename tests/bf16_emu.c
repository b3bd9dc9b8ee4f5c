/* src/kernels/kernels_bf16.c over portable intrinsics (SIMDe's AVX-512, tests/amx_emu.h), its
 * functions named *_emu, for test_bf16_kernels on any CPU. */
#define XA_BF16_EMU 1
#include "kernels/kernels_bf16.c"
