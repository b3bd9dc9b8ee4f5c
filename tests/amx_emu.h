/*
 * Portable definitions of the AMX intrinsics src/kernels/kernels_bf16.c uses, so its AMX kernel
 * runs (slowly) on any CPU in the tests. They follow the Intel SDM's operation sections:
 *   LDTILECFG    palette 1: tile t has rows[t] rows of colsb[t] bytes;
 *   TILELOADD    row r of tile t = colsb[t] bytes at base + r * stride;
 *   TILESTORED   the reverse;
 *   TILEZERO     all zero;
 *   TDPBF16PS    dst (m x n float32) += src1 (m x k pairs of bf16) src2 (k x n pairs):
 *                for each m, k, n: dst[m][n] += fp32(src1[m].bf16[2k]) * fp32(src2[k].bf16[2n])
 *                                  dst[m][n] += fp32(src1[m].bf16[2k+1]) * fp32(src2[k].bf16[2n+1])
 *                (each addition rounded to float32; the hardware also treats subnormal inputs as
 *                zero and flushes subnormal results, which the tests' values never produce).
 * A tile's shape is checked against the configuration as the hardware does (#UD there, abort
 * here), so a kernel that configures or addresses its tiles wrongly fails its test.
 */
#ifndef XATTN_AMX_EMU_H
#define XATTN_AMX_EMU_H

#include "base/base.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct xa_amx_state {
    int configured;
    uint16_t colsb[8];
    uint8_t rows[8];
    uint8_t reg[8][16][64];
} xa_amx_state;

static _Thread_local xa_amx_state xa_amx;

static inline void xa_amx_fail(const char *what)
{
    fprintf(stderr, "amx_emu: %s\n", what);
    abort();
}

static inline void xa_amx_loadconfig(const void *p)
{
    const uint8_t *c = (const uint8_t *)p;
    if (c[0] != 1) xa_amx_fail("palette is not 1");
    for (int i = 0; i < 8; i++) {
        uint16_t cb;
        memcpy(&cb, c + 16 + 2 * i, 2);
        const uint8_t r = c[48 + i];
        if (cb > 64 || r > 16 || (cb & 3)) xa_amx_fail("tile shape out of range");
        xa_amx.colsb[i] = cb;
        xa_amx.rows[i] = r;
    }
    xa_amx.configured = 1;
}

static inline void xa_amx_check(int t)
{
    if (!xa_amx.configured) xa_amx_fail("tile used without a configuration");
    if (t < 0 || t > 7 || !xa_amx.rows[t]) xa_amx_fail("tile not configured");
}

static inline void xa_amx_loadd(int t, const void *base, int64_t stride)
{
    xa_amx_check(t);
    memset(xa_amx.reg[t], 0, sizeof xa_amx.reg[t]);
    for (int r = 0; r < xa_amx.rows[t]; r++)
        memcpy(xa_amx.reg[t][r], (const char *)base + r * stride, xa_amx.colsb[t]);
}

static inline void xa_amx_stored(int t, void *base, int64_t stride)
{
    xa_amx_check(t);
    for (int r = 0; r < xa_amx.rows[t]; r++)
        memcpy((char *)base + r * stride, xa_amx.reg[t][r], xa_amx.colsb[t]);
}

/* Element i of a tile row as bf16, widened to float (make_fp32: the 16 bits on top). */
static inline float xa_amx_bf(const uint8_t *row, int i)
{
    uint16_t h;
    memcpy(&h, row + 2 * i, 2);
    return xa_half_to_f32(h, 0);
}

static inline void xa_amx_dpbf16ps(int d, int a, int b)
{
    xa_amx_check(d);
    xa_amx_check(a);
    xa_amx_check(b);
    const int M = xa_amx.rows[d], N = xa_amx.colsb[d] / 4, K = xa_amx.colsb[a] / 4;
    if (xa_amx.rows[a] != M || xa_amx.rows[b] != K || xa_amx.colsb[b] != xa_amx.colsb[d])
        xa_amx_fail("tdpbf16ps: tile shapes do not match");
    for (int m = 0; m < M; m++) {
        float acc[16];
        memcpy(acc, xa_amx.reg[d][m], sizeof acc);
        for (int k = 0; k < K; k++)
            for (int n = 0; n < N; n++) {
                acc[n] += xa_amx_bf(xa_amx.reg[a][m], 2 * k) * xa_amx_bf(xa_amx.reg[b][k], 2 * n);
                acc[n] +=
                    xa_amx_bf(xa_amx.reg[a][m], 2 * k + 1) * xa_amx_bf(xa_amx.reg[b][k], 2 * n + 1);
            }
        memcpy(xa_amx.reg[d][m], acc, sizeof acc);
    }
}

#define _tile_loadconfig(p)           xa_amx_loadconfig(p)
#define _tile_loadd(t, base, stride)  xa_amx_loadd((t), (base), (stride))
#define _tile_stored(t, base, stride) xa_amx_stored((t), (base), (stride))
#define _tile_zero(t)                 (xa_amx_check(t), memset(xa_amx.reg[(t)], 0, sizeof xa_amx.reg[(t)]))
#define _tile_dpbf16ps(d, a, b)       xa_amx_dpbf16ps((d), (a), (b))
#define _tile_release()               memset(&xa_amx, 0, sizeof xa_amx)

#endif
