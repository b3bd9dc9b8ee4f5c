/* The emulated x86 kernel tables of tests/x86_emu.c (built where SIMDe's headers were found:
 * XATTN_TEST_X86_EMU). */
#ifndef XATTN_X86_EMU_H
#define XATTN_X86_EMU_H
#include "kernels/kernels.h"
#if defined(XATTN_TEST_X86_EMU)
extern const xa_kernels xa_kernels_avx512_emu;
extern const xa_kernels xa_kernels_avx512bf16_emu;
extern const xa_kernels xa_kernels_amx_emu;
#endif
#endif
