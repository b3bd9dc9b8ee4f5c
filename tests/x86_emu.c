/*
 * The x86 kernel sources compiled over portable definitions of their intrinsics (SIMDe's AVX-512
 * with tests/avx512_emu.h, and tests/amx_emu.h), their tables and kernels renamed *_emu, so
 * test_kernels and test_bf16_kernels run the AVX-512, AVX512_BF16 and AMX kernels on any CPU.
 */
#define XA_X86_EMU            1
#define xa_kernels_avx512     xa_kernels_avx512_emu
#define xa_kernels_avx512bf16 xa_kernels_avx512bf16_emu
#define xa_kernels_amx        xa_kernels_amx_emu
#define xa_ukr_dpbf16_avx512  xa_ukr_dpbf16_avx512_emu
#define xa_ukr_amx_bf16       xa_ukr_amx_bf16_emu
#include "kernels/kernels_avx512.c"
#include "kernels/kernels_bf16.c"
