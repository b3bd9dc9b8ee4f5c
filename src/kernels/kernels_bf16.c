/*
 * bf16 dot-product micro-kernels for compute bf16 (xa_kernels.ukr_bf16), on the CPUs that have
 * the instructions:
 *   AVX512_BF16  vdpbf16ps: 16 lanes, each the dot product of one pair of bf16 values from each
 *                operand added to a float32 accumulator;
 *   AMX-BF16     tdpbf16ps: a 16 x 16 float32 tile += a 16 x 32 bf16 tile times a 32 x 16 bf16
 *                tile (the pairs laid out as for vdpbf16ps).
 * Operands come packed in pairs along k (see kernels.h): uint32 = bf16(x[2q]) | bf16(x[2q+1]) <<
 * 16. The products of two bf16 values are exact in float32; the instructions add them with
 * round-to-nearest-even, treat subnormal inputs as zero and flush subnormal results to zero.
 *
 * Compiled with -mavx512f -mavx512bf16 -mamx-tile -mamx-bf16; everything here is only called
 * after dispatch.c has checked the CPU (and, for AMX, the kernel's permission to use the tile
 * state). tests/x86_emu.c compiles the same code against portable definitions of the
 * intrinsics (SIMDe's AVX-512, tests/amx_emu.h) under other names, so the tests run these
 * kernels on any CPU.
 */
#include "kernels.h"

#include <string.h>

#if defined(XA_X86_EMU) /* tests/x86_emu.c */
#include "avx512_emu.h"
#include "amx_emu.h"
#else
#include <immintrin.h>
#endif

/* ---- AVX512_BF16: 8 x 32 tile, 16 accumulators -------------------------------------------- */

static inline __m512bh as_bh(__m512i v)
{
    __m512bh r;
    memcpy(&r, &v, sizeof r);
    return r;
}

/* C (8, 32) = or += A B over k values (k even): A (k/2, 8) pairs, B (k/2, 32) pairs. */
void xa_ukr_dpbf16_avx512(int64_t k, const uint32_t *A, const uint32_t *B, float *C, int64_t ldc,
                          int accumulate)
{
    __m512 c0[XA_DPBF16_MR], c1[XA_DPBF16_MR];
#pragma GCC unroll 8
    for (int i = 0; i < XA_DPBF16_MR; i++) {
        c0[i] = _mm512_setzero_ps();
        c1[i] = _mm512_setzero_ps();
    }
#pragma GCC unroll 2
    for (int64_t q = 0; q < k / 2; q++) {
        const __m512bh b0 = as_bh(_mm512_loadu_si512((const void *)B));
        const __m512bh b1 = as_bh(_mm512_loadu_si512((const void *)(B + 16)));
#pragma GCC unroll 8
        for (int i = 0; i < XA_DPBF16_MR; i++) {
            const __m512bh a = as_bh(_mm512_set1_epi32((int)A[i]));
            c0[i] = _mm512_dpbf16_ps(c0[i], a, b0);
            c1[i] = _mm512_dpbf16_ps(c1[i], a, b1);
        }
        A += XA_DPBF16_MR;
        B += XA_DPBF16_NR;
    }
#pragma GCC unroll 8
    for (int i = 0; i < XA_DPBF16_MR; i++) {
        float *c = C + i * ldc;
        if (accumulate) {
            c0[i] = _mm512_add_ps(_mm512_loadu_ps(c), c0[i]);
            c1[i] = _mm512_add_ps(_mm512_loadu_ps(c + 16), c1[i]);
        }
        _mm512_storeu_ps(c, c0[i]);
        _mm512_storeu_ps(c + 16, c1[i]);
    }
}

/* ---- AMX-BF16: 32 x 32 tile as 2 x 2 tiles of 16 x 16 ------------------------------------- */

/* Tile registers: 0-3 the four 16 x 16 float32 blocks of C, 4-5 the two 16-row blocks of A
 * (16 rows x 16 pairs each), 6-7 the two 16-column blocks of B (16 pair rows x 16 columns). */
typedef struct tilecfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg;

static void amx_config(void)
{
    tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

/* C (32, 32) = or += A B over k values (k a multiple of 32): A in blocks of 16 pairs, (k/32,
 * 32, 16) pairs (a tile row is 16 pairs of one row of A), B (k/2, 32) pairs. */
void xa_ukr_amx_bf16(int64_t k, const uint32_t *A, const uint32_t *B, float *C, int64_t ldc,
                     int accumulate)
{
    const int64_t cs = ldc * (int64_t)sizeof(float);
    amx_config();
    if (accumulate) {
        _tile_loadd(0, C, cs);
        _tile_loadd(1, C + 16, cs);
        _tile_loadd(2, C + 16 * ldc, cs);
        _tile_loadd(3, C + 16 * ldc + 16, cs);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int64_t kb = 0; kb < k / 32; kb++) {
        const uint32_t *a = A + kb * 32 * 16, *b = B + kb * 16 * 32;
        _tile_loadd(4, a, 64);
        _tile_loadd(5, a + 16 * 16, 64);
        _tile_loadd(6, b, 128);
        _tile_loadd(7, b + 16, 128);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, C, cs);
    _tile_stored(1, C + 16, cs);
    _tile_stored(2, C + 16 * ldc, cs);
    _tile_stored(3, C + 16 * ldc + 16, cs);
    _tile_release();
}
