/*
 * The AVX-512 intrinsics the kernel sources use, over SIMDe's portable AVX-512 (Debian's
 * libsimde-dev), so the tests can run src/kernels/kernels_avx512.c and kernels_bf16.c on a CPU
 * without AVX-512. SIMDe 0.7 lacks a few of them; those are defined here, lane by lane, after the
 * Intel intrinsics guide's operation sections (the reductions add in their own order: results
 * are compared against the scalar kernels with the tests' tolerances, as the hardware's are).
 */
#ifndef XATTN_AVX512_EMU_H
#define XATTN_AVX512_EMU_H

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>

#include "base/base.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#if !defined(__AVX512F__)
typedef simde__mmask8 __mmask8;
typedef simde__mmask16 __mmask16;
#endif
#ifndef _MM_FROUND_NO_EXC
#define _MM_FROUND_NO_EXC SIMDE_MM_FROUND_NO_EXC
#endif
#ifndef _MM_FROUND_TO_NEAREST_INT
#define _MM_FROUND_TO_NEAREST_INT SIMDE_MM_FROUND_TO_NEAREST_INT
#endif

/* vscalefps: a * 2^floor(b), rounded once (SIMDe multiplies by exp2(floor(b)), which overflows
 * for floor(b) = 128 and rounds twice into the subnormals). */
static inline simde__m512 xa_emu_scalef_ps(simde__m512 a, simde__m512 b)
{
    float x[16], e[16], r[16];
    simde_mm512_storeu_ps(x, a);
    simde_mm512_storeu_ps(e, b);
    for (int i = 0; i < 16; i++) {
        if (isnan(x[i]) || isnan(e[i])) {
            r[i] = x[i] + e[i];
        } else {
            const float f = floorf(e[i]);
            const int n = f > 400.0f ? 400 : f < -400.0f ? -400 : (int)f;
            r[i] = ldexpf(x[i], n);
        }
    }
    return simde_mm512_loadu_ps(r);
}
#undef _mm512_scalef_ps
#define _mm512_scalef_ps(a, b) xa_emu_scalef_ps((a), (b))

static inline simde__m512 xa_emu_maskz_loadu_ps(simde__mmask16 k, const void *p)
{
    float t[16];
    const float *s = (const float *)p;
    for (int i = 0; i < 16; i++) t[i] = (k >> i) & 1 ? s[i] : 0.0f; /* masked lanes not read */
    return simde_mm512_loadu_ps(t);
}
#define _mm512_maskz_loadu_ps(k, p) xa_emu_maskz_loadu_ps((k), (p))

static inline void xa_emu_mask_storeu_ps(void *p, simde__mmask16 k, simde__m512 v)
{
    float t[16], *d = (float *)p;
    simde_mm512_storeu_ps(t, v);
    for (int i = 0; i < 16; i++)
        if ((k >> i) & 1) d[i] = t[i];
}
#define _mm512_mask_storeu_ps(p, k, v) xa_emu_mask_storeu_ps((p), (k), (v))

static inline simde__m512 xa_emu_cvtepi32_ps(simde__m512i a)
{
    int32_t x[16];
    float r[16];
    memcpy(x, &a, sizeof x);
    for (int i = 0; i < 16; i++) r[i] = (float)x[i];
    return simde_mm512_loadu_ps(r);
}
#define _mm512_cvtepi32_ps(a) xa_emu_cvtepi32_ps(a)

static inline simde__m512i xa_emu_cvtepi8_epi32(simde__m128i a)
{
    int8_t x[16];
    int32_t r[16];
    memcpy(x, &a, sizeof x);
    for (int i = 0; i < 16; i++) r[i] = x[i];
    return simde_mm512_loadu_si512(r);
}
#define _mm512_cvtepi8_epi32(a) xa_emu_cvtepi8_epi32(a)

static inline simde__m512i xa_emu_cvtepu16_epi32(simde__m256i a)
{
    uint16_t x[16];
    int32_t r[16];
    memcpy(x, &a, sizeof x);
    for (int i = 0; i < 16; i++) r[i] = x[i];
    return simde_mm512_loadu_si512(r);
}
#define _mm512_cvtepu16_epi32(a) xa_emu_cvtepu16_epi32(a)

static inline simde__m512 xa_emu_cvtph_ps(simde__m256i a)
{
    uint16_t x[16];
    float r[16];
    memcpy(x, &a, sizeof x);
    for (int i = 0; i < 16; i++) r[i] = xa_half_to_f32(x[i], 1); /* exact, as vcvtph2ps */
    return simde_mm512_loadu_ps(r);
}
#define _mm512_cvtph_ps(a) xa_emu_cvtph_ps(a)

static inline simde__m512d xa_emu_cvtps_pd(simde__m256 a)
{
    float x[8];
    double r[8];
    memcpy(x, &a, sizeof x);
    for (int i = 0; i < 8; i++) r[i] = x[i];
    return simde_mm512_loadu_pd(r);
}
#define _mm512_cvtps_pd(a) xa_emu_cvtps_pd(a)

static inline simde__m256 xa_emu_extractf32x8_ps(simde__m512 a, int imm)
{
    float x[16];
    simde_mm512_storeu_ps(x, a);
    return simde_mm256_loadu_ps(x + 8 * (imm & 1));
}
#define _mm512_extractf32x8_ps(a, imm) xa_emu_extractf32x8_ps((a), (imm))

static inline double xa_emu_reduce_add_pd(simde__m512d a)
{
    double x[8];
    simde_mm512_storeu_pd(x, a);
    return ((x[0] + x[4]) + (x[2] + x[6])) + ((x[1] + x[5]) + (x[3] + x[7]));
}
#define _mm512_reduce_add_pd(a) xa_emu_reduce_add_pd(a)

static inline float xa_emu_reduce_add_ps(simde__m512 a)
{
    float x[16];
    simde_mm512_storeu_ps(x, a);
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) x[i] += x[i + w];
    return x[0];
}
#define _mm512_reduce_add_ps(a) xa_emu_reduce_add_ps(a)

static inline float xa_emu_reduce_max_ps(simde__m512 a)
{
    float x[16];
    simde_mm512_storeu_ps(x, a);
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) x[i] = x[i] > x[i + w] ? x[i] : x[i + w];
    return x[0];
}
#define _mm512_reduce_max_ps(a) xa_emu_reduce_max_ps(a)

#endif
