/*
 * AVX-512 kernels (compiled with -mavx512f -mavx512dq -mavx512bw -mavx512vl -mfma).
 * Everything here is only called after dispatch.c has checked the CPU supports these sets.
 *
 * Micro-kernel: XA512_MR x 32 tile (two zmm per row of C), XA512_MR * 2 zmm accumulators.
 * The right operand's row of 32 floats is loaded as two vectors per k step; each of the
 * XA512_MR left values is broadcast and multiplied into both. Operands are read with the
 * caller's lda / ldb, so panels need not be packed contiguously.
 */
#include "kernels.h"
#include "../base/base.h"

#if defined(XA_X86_EMU) /* tests/x86_emu.c: over portable intrinsics */
#include "avx512_emu.h"
#else
#include <immintrin.h>
#endif
#include <math.h>

#define XA512_MR 8
#define XA512_NR 32

/* ---- micro-kernel ----------------------------------------------------------------------- */

/* C (MR, 32) = or += A (k, lda>=MR)^T-panel * B (k, ldb>=32) */
static void ukr_avx512(int64_t k, const float *A, int64_t lda, const float *B, int64_t ldb,
                       float *C, int64_t ldc, int accumulate)
{
    __m512 c0[XA512_MR], c1[XA512_MR];
#pragma GCC unroll 16
    for (int i = 0; i < XA512_MR; i++) {
        c0[i] = _mm512_setzero_ps();
        c1[i] = _mm512_setzero_ps();
        /* C is read (or written) at the end: start pulling it in now. */
        _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(C + i * ldc + XA512_NR - 1), _MM_HINT_T0);
    }
#pragma GCC unroll 4
    for (int64_t p = 0; p < k; p++) {
        __m512 b0 = _mm512_loadu_ps(B), b1 = _mm512_loadu_ps(B + 16);
#pragma GCC unroll 16
        for (int i = 0; i < XA512_MR; i++) {
            __m512 a = _mm512_set1_ps(A[i]);
            c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
            c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
        }
        A += lda;
        B += ldb;
    }
    if (accumulate) {
#pragma GCC unroll 16
        for (int i = 0; i < XA512_MR; i++) {
            float *c = C + i * ldc;
            _mm512_storeu_ps(c, _mm512_add_ps(_mm512_loadu_ps(c), c0[i]));
            _mm512_storeu_ps(c + 16, _mm512_add_ps(_mm512_loadu_ps(c + 16), c1[i]));
        }
    } else {
#pragma GCC unroll 16
        for (int i = 0; i < XA512_MR; i++) {
            _mm512_storeu_ps(C + i * ldc, c0[i]);
            _mm512_storeu_ps(C + i * ldc + 16, c1[i]);
        }
    }
}

/* ---- exp -------------------------------------------------------------------------------- */

/*
 * exp(x) = 2^n * exp(r), n = round(x / ln2), r = x - n ln2 in [-ln2/2, ln2/2] (Cody-Waite
 * split of ln2, the high part exact in 9 bits so n * hi is exact). exp(r) = 1 + r + r^2 P(r)
 * with P a degree-5 near-minimax fit (approximation error 2.4e-10 relative, far under the
 * float rounding). 2^n is applied with vscalefps, which rounds once and handles overflow
 * (+inf), gradual underflow (subnormals) and 0 exactly; x is clamped to [-104, 89] first
 * (exp(-104) rounds to 0, exp(89) overflows), and the clamp keeps NaN. Max error ~1 ulp.
 */
static inline __m512 exp512(__m512 x)
{
    const __m512 lo = _mm512_set1_ps(-104.0f), hi = _mm512_set1_ps(89.0f);
    x = _mm512_max_ps(lo, x); /* second operand returned for NaN: keeps NaN */
    x = _mm512_min_ps(hi, x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.989098087e-04f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.393364103e-03f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.333310934e-03f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166646501e-02f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666666668e-01f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.000000013e-01f));
    __m512 r2 = _mm512_mul_ps(r, r);
    __m512 y = _mm512_fmadd_ps(p, r2, r);
    y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
}

static inline __mmask16 tail_mask(int64_t rem) { return (__mmask16)((1u << rem) - 1u); }

static void vexp_avx512(float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 a = exp512(_mm512_loadu_ps(x + i)), b = exp512(_mm512_loadu_ps(x + i + 16));
        _mm512_storeu_ps(x + i, a);
        _mm512_storeu_ps(x + i + 16, b);
    }
    for (; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
        _mm512_mask_storeu_ps(x + i, k, exp512(_mm512_maskz_loadu_ps(k, x + i)));
    }
}

/* ---- column-wise online-softmax helpers ------------------------------------------------- */

/* S (rows, cols) row stride ld; m (cols). NaN in S is ignored like the scalar `S > m` test. */
static void colmax_avx512(const float *S, int64_t rows, int64_t cols, int64_t ld, float *m)
{
    int64_t c = 0;
    for (; c + 64 <= cols; c += 64) {
        __m512 m0 = _mm512_loadu_ps(m + c), m1 = _mm512_loadu_ps(m + c + 16);
        __m512 m2 = _mm512_loadu_ps(m + c + 32), m3 = _mm512_loadu_ps(m + c + 48);
        for (int64_t r = 0; r < rows; r++) {
            const float *s = S + r * ld + c;
            /* max(s, m) returns m (the second operand) when either is NaN */
            m0 = _mm512_max_ps(_mm512_loadu_ps(s), m0);
            m1 = _mm512_max_ps(_mm512_loadu_ps(s + 16), m1);
            m2 = _mm512_max_ps(_mm512_loadu_ps(s + 32), m2);
            m3 = _mm512_max_ps(_mm512_loadu_ps(s + 48), m3);
        }
        _mm512_storeu_ps(m + c, m0);
        _mm512_storeu_ps(m + c + 16, m1);
        _mm512_storeu_ps(m + c + 32, m2);
        _mm512_storeu_ps(m + c + 48, m3);
    }
    for (; c < cols; c += 16) {
        __mmask16 k = cols - c >= 16 ? (__mmask16)0xffff : tail_mask(cols - c);
        __m512 mv = _mm512_maskz_loadu_ps(k, m + c);
        for (int64_t r = 0; r < rows; r++)
            mv = _mm512_max_ps(_mm512_maskz_loadu_ps(k, S + r * ld + c), mv);
        _mm512_mask_storeu_ps(m + c, k, mv);
    }
}

/* S (rows, cols) row stride ld; m, sum (cols). Sums accumulate in row order like the scalar. */
static void expsub_avx512(float *S, int64_t rows, int64_t cols, int64_t ld, const float *m,
                          float *sum)
{
    int64_t c = 0;
    for (; c + 32 <= cols; c += 32) {
        __m512 m0 = _mm512_loadu_ps(m + c), m1 = _mm512_loadu_ps(m + c + 16);
        __m512 s0 = _mm512_loadu_ps(sum + c), s1 = _mm512_loadu_ps(sum + c + 16);
        for (int64_t r = 0; r < rows; r++) {
            float *s = S + r * ld + c;
            __m512 e0 = exp512(_mm512_sub_ps(_mm512_loadu_ps(s), m0));
            __m512 e1 = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + 16), m1));
            _mm512_storeu_ps(s, e0);
            _mm512_storeu_ps(s + 16, e1);
            s0 = _mm512_add_ps(s0, e0);
            s1 = _mm512_add_ps(s1, e1);
        }
        _mm512_storeu_ps(sum + c, s0);
        _mm512_storeu_ps(sum + c + 16, s1);
    }
    for (; c < cols; c += 16) {
        __mmask16 k = cols - c >= 16 ? (__mmask16)0xffff : tail_mask(cols - c);
        __m512 mv = _mm512_maskz_loadu_ps(k, m + c), sv = _mm512_maskz_loadu_ps(k, sum + c);
        for (int64_t r = 0; r < rows; r++) {
            float *s = S + r * ld + c;
            __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s), mv));
            _mm512_mask_storeu_ps(s, k, e);
            sv = _mm512_add_ps(sv, e);
        }
        _mm512_mask_storeu_ps(sum + c, k, sv);
    }
}

/* ---- row-wise softmax and norms --------------------------------------------------------- */

/* Adds the 16 floats of v, widened to double, into the two 8-double accumulators. */
static inline void acc_pd(__m512 v, __m512d *lo, __m512d *hi)
{
    *lo = _mm512_add_pd(*lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    *hi = _mm512_add_pd(*hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)));
}

static inline double hsum_pd(__m512d a, __m512d b)
{
    return _mm512_reduce_add_pd(_mm512_add_pd(a, b));
}

static void softmax_avx512(float *x, int64_t n)
{
    if (n <= 0) return;
    __m512 mx0 = _mm512_set1_ps(x[0]), mx1 = mx0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        mx0 = _mm512_max_ps(_mm512_loadu_ps(x + i), mx0);
        mx1 = _mm512_max_ps(_mm512_loadu_ps(x + i + 16), mx1);
    }
    for (; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
        mx0 = _mm512_mask_max_ps(mx0, k, _mm512_maskz_loadu_ps(k, x + i), mx0);
    }
    __m512 mv = _mm512_set1_ps(_mm512_reduce_max_ps(_mm512_max_ps(mx0, mx1)));
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), mv));
        e = _mm512_maskz_mov_ps(k, e);
        _mm512_mask_storeu_ps(x + i, k, e);
        acc_pd(e, &s0, &s1);
    }
    __m512 inv = _mm512_set1_ps((float)(1.0 / hsum_pd(s0, s1)));
    for (i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
        _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), inv));
    }
}

static void rmsnorm_avx512(const float *x, const float *w, float eps, int64_t n, float *y)
{
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    __m512d b0 = _mm512_setzero_pd(), b1 = _mm512_setzero_pd();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 v = _mm512_loadu_ps(x + i), u = _mm512_loadu_ps(x + i + 16);
        __m512d v0 = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        __m512d v1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
        __m512d u0 = _mm512_cvtps_pd(_mm512_castps512_ps256(u));
        __m512d u1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(u, 1));
        a0 = _mm512_fmadd_pd(v0, v0, a0);
        a1 = _mm512_fmadd_pd(v1, v1, a1);
        b0 = _mm512_fmadd_pd(u0, u0, b0);
        b1 = _mm512_fmadd_pd(u1, u1, b1);
    }
    for (; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(k, x + i);
        __m512d v0 = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        __m512d v1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
        a0 = _mm512_fmadd_pd(v0, v0, a0);
        a1 = _mm512_fmadd_pd(v1, v1, a1);
    }
    double ss = hsum_pd(_mm512_add_pd(a0, b0), _mm512_add_pd(a1, b1));
    __m512 r = _mm512_set1_ps((float)(1.0 / sqrt(ss / (double)n + eps)));
    for (i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), r);
        if (w) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, w + i));
        _mm512_mask_storeu_ps(y + i, k, v);
    }
}

static void layernorm_avx512(const float *x, const float *w, const float *b, float eps, int64_t n,
                             float *y)
{
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    int64_t i;
    for (i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
        acc_pd(_mm512_maskz_loadu_ps(k, x + i), &a0, &a1);
    }
    double mean = hsum_pd(a0, a1) / (double)n;
    __m512d md = _mm512_set1_pd(mean);
    a0 = a1 = _mm512_setzero_pd();
    for (i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(k, x + i);
        /* masked-off lanes are 0 in v; zero their deviation too */
        __m512d d0 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), md);
        __m512d d1 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)), md);
        d0 = _mm512_maskz_mov_pd((__mmask8)(k & 0xff), d0);
        d1 = _mm512_maskz_mov_pd((__mmask8)(k >> 8), d1);
        a0 = _mm512_fmadd_pd(d0, d0, a0);
        a1 = _mm512_fmadd_pd(d1, d1, a1);
    }
    double var = hsum_pd(a0, a1) / (double)n;
    __m512 r = _mm512_set1_ps((float)(1.0 / sqrt(var + eps)));
    __m512 mf = _mm512_set1_ps((float)mean);
    for (i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
        __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), mf), r);
        if (w) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, w + i));
        if (b) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, b + i));
        _mm512_mask_storeu_ps(y + i, k, v);
    }
}

/* ---- GELU ------------------------------------------------------------------------------- */

/*
 * erfc(|x| / sqrt2) for |x| <= 28 (erfc(20) is 0 in float): exp(-x^2/2) * t * Q(t),
 * t = 1 / (1 + 0.4 a), a = |x|/sqrt2, with Q a degree-10 near-minimax (Chebyshev) fit on t in
 * [0, 1]: |error| < 7e-9 with Q in [0.22, 1], so the relative error of erfc is ~4e-8 plus float
 * rounding, uniformly for all a (no cancellation in the tail). The exponent x^2/2 is taken from
 * x itself as hi + lo (lo from an fma; halving is exact), so large |x| loses no accuracy to
 * the rounding of x/sqrt2 or of the square.
 */
static inline __m512 erfc_half512(__m512 ax)
{
    __m512 a = _mm512_mul_ps(ax, _mm512_set1_ps(0.7071067811865476f));
    __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f),
                             _mm512_fmadd_ps(a, _mm512_set1_ps(0.4f), _mm512_set1_ps(1.0f)));
    __m512 q = _mm512_set1_ps(-2.986862849e-02f);
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.438410693e-01f));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(-2.430417318e-01f));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.468032457e-01f));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(-5.379316633e-02f));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(8.712064164e-02f));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.180951230e-01f));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.718905719e-01f));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(2.076007204e-01f));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(2.256763169e-01f));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(2.256758315e-01f));
    __m512 h = _mm512_set1_ps(-0.5f);
    __m512 x2 = _mm512_mul_ps(ax, ax);
    __m512 x2lo = _mm512_mul_ps(_mm512_fmsub_ps(ax, ax, x2), h); /* -(ax*ax - x2)/2, exact */
    __m512 e = exp512(_mm512_mul_ps(x2, h));
    e = _mm512_fmadd_ps(e, x2lo, e); /* exp(-x2/2 + x2lo) ~ exp(-x2/2) (1 + x2lo) */
    return _mm512_mul_ps(_mm512_mul_ps(e, t), q);
}

/* gelu(x) = x/2 (1 + erf(x/sqrt2)); 1 + erf(z) = erfc(-z) for z < 0, 2 - erfc(z) for z >= 0 */
static inline __m512 gelu_erf512(__m512 x)
{
    __m512 ax = _mm512_abs_ps(x);
    ax = _mm512_min_ps(_mm512_set1_ps(28.0f), ax); /* erfc(28/sqrt2) = 0 in float; keeps NaN */
    __m512 ec = erfc_half512(ax);
    __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
    __m512 onep = _mm512_mask_sub_ps(ec, pos, _mm512_set1_ps(2.0f), ec);
    return _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.5f)), onep);
}

/* gelu_tanh(x) = x/2 (1 + tanh(u)) = x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3) */
static inline __m512 gelu_tanh512(__m512 x)
{
    __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    __m512 u = _mm512_fmadd_ps(x3, _mm512_set1_ps(0.044715f), x);
    __m512 e = exp512(_mm512_mul_ps(u, _mm512_set1_ps(-2.0f * 0.7978845608028654f)));
    return _mm512_div_ps(x, _mm512_add_ps(e, _mm512_set1_ps(1.0f)));
}

static void gelu_avx512(float *x, int64_t n, int tanh_form)
{
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(k, x + i);
        v = tanh_form ? gelu_tanh512(v) : gelu_erf512(v);
        _mm512_mask_storeu_ps(x + i, k, v);
    }
}

/* a (n), b (n): four independent accumulators, masked tail */
static float dot_avx512(const float *a, const float *b, int64_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(),
           s3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + 16 <= n; i += 16)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < n) {
        __mmask16 k = tail_mask(n - i);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

/* y (n) += a * x (n) */
static void axpy_avx512(float a, const float *x, float *y, int64_t n)
{
    const __m512 va = _mm512_set1_ps(a);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        _mm512_storeu_ps(y + i,
                         _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
        _mm512_storeu_ps(y + i + 16, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i + 16),
                                                     _mm512_loadu_ps(y + i + 16)));
    }
    for (; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
        _mm512_mask_storeu_ps(
            y + i, k,
            _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, y + i)));
    }
}

/* y (rows) = A (rows, lda) x (n): four rows at a time for independent reductions */
static void gemv_avx512(const float *A, int64_t lda, int64_t rows, const float *x, int64_t n,
                        float *y)
{
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *a0 = A + r * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(),
               s3 = _mm512_setzero_ps();
        for (int64_t i = 0; i < n; i += 16) {
            __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
            __m512 xv = _mm512_maskz_loadu_ps(k, x + i);
            s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a0 + i), xv, s0);
            s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a1 + i), xv, s1);
            s2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a2 + i), xv, s2);
            s3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a3 + i), xv, s3);
        }
        y[r] = _mm512_reduce_add_ps(s0);
        y[r + 1] = _mm512_reduce_add_ps(s1);
        y[r + 2] = _mm512_reduce_add_ps(s2);
        y[r + 3] = _mm512_reduce_add_ps(s3);
    }
    for (; r < rows; r++) y[r] = dot_avx512(A + r * lda, x, n);
}

/* y (n) += p (rows) A (rows, lda): y kept in registers 64 columns at a time */
static void gemv_t_avx512(const float *A, int64_t lda, int64_t rows, const float *p, int64_t n,
                          float *y)
{
    int64_t d = 0;
    for (; d + 64 <= n; d += 64) {
        __m512 y0 = _mm512_loadu_ps(y + d), y1 = _mm512_loadu_ps(y + d + 16),
               y2 = _mm512_loadu_ps(y + d + 32), y3 = _mm512_loadu_ps(y + d + 48);
        for (int64_t r = 0; r < rows; r++) {
            const float *a = A + r * lda + d;
            __m512 pv = _mm512_set1_ps(p[r]);
            y0 = _mm512_fmadd_ps(pv, _mm512_loadu_ps(a), y0);
            y1 = _mm512_fmadd_ps(pv, _mm512_loadu_ps(a + 16), y1);
            y2 = _mm512_fmadd_ps(pv, _mm512_loadu_ps(a + 32), y2);
            y3 = _mm512_fmadd_ps(pv, _mm512_loadu_ps(a + 48), y3);
        }
        _mm512_storeu_ps(y + d, y0);
        _mm512_storeu_ps(y + d + 16, y1);
        _mm512_storeu_ps(y + d + 32, y2);
        _mm512_storeu_ps(y + d + 48, y3);
    }
    for (; d < n; d += 16) {
        __mmask16 k = n - d >= 16 ? (__mmask16)0xffff : tail_mask(n - d);
        __m512 y0 = _mm512_maskz_loadu_ps(k, y + d);
        for (int64_t r = 0; r < rows; r++)
            y0 = _mm512_fmadd_ps(_mm512_set1_ps(p[r]), _mm512_maskz_loadu_ps(k, A + r * lda + d),
                                 y0);
        _mm512_mask_storeu_ps(y + d, k, y0);
    }
}

static void dotn_avx512(const float *x, int64_t ldx, int64_t rows, const float *w, int64_t n,
                        float *out)
{
    for (int64_t r = 0; r < rows; r++) out[r] = dot_avx512(x + r * ldx, w, n);
}

/* 16 int8 weights as 16 floats (exact) */
static inline __m512 q8_load16_512(const int8_t *q)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
}

/* four rows of x against one int8 row: the weights are converted once for the four (pf: an
 * address to prefetch along, 0: none) */
static void dot_q8_4_avx512(const float *x, int64_t ldx, const int8_t *q, int64_t n, float *out,
                            uintptr_t pf)
{
    __m512 a = _mm512_setzero_ps(), b = a, c = a, d = a;
    const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx;
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        xa_q8_prefetch(pf, k);
        __m512 w = q8_load16_512(q + k);
        a = _mm512_fmadd_ps(_mm512_loadu_ps(x0 + k), w, a);
        b = _mm512_fmadd_ps(_mm512_loadu_ps(x1 + k), w, b);
        c = _mm512_fmadd_ps(_mm512_loadu_ps(x2 + k), w, c);
        d = _mm512_fmadd_ps(_mm512_loadu_ps(x3 + k), w, d);
    }
    float s[4] = {_mm512_reduce_add_ps(a), _mm512_reduce_add_ps(b), _mm512_reduce_add_ps(c),
                  _mm512_reduce_add_ps(d)};
    xa_dot_q8_tail4(x, ldx, q, k, n, s, out);
}

static float dot_q8_1_avx512(const float *x, const int8_t *q, int64_t n, uintptr_t pf)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    int64_t k = 0;
    for (; k + 32 <= n; k += 32) {
        xa_q8_prefetch(pf, k);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), q8_load16_512(q + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16), q8_load16_512(q + k + 16), a1);
    }
    for (; k + 16 <= n; k += 16)
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), q8_load16_512(q + k), a0);
    float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    for (; k < n; k++) s += x[k] * (float)q[k];
    return s;
}

/* rows of x against one int8 row; the first pass over the row prefetches along pf */
static void dot_q8_pf_avx512(const float *x, int64_t ldx, int64_t rows, const int8_t *q, int64_t n,
                             float *out, uintptr_t pf)
{
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) dot_q8_4_avx512(x + r * ldx, ldx, q, n, out + r, r ? 0 : pf);
    for (; r < rows; r++) out[r] = dot_q8_1_avx512(x + r * ldx, q, n, r ? 0 : pf);
}

static void dot_q8_avx512(const float *x, int64_t ldx, int64_t rows, const int8_t *q, int64_t n,
                          float *out)
{
    dot_q8_pf_avx512(x, ldx, rows, q, n, out, 0);
}

/* two int8 rows, each read once, fetching the rows XA_Q8_AHEAD on (kernels.h) */
static void dot2_q8_avx512(const float *x, int64_t ldx, int64_t rows, const int8_t *q, int64_t ldq,
                           int64_t n, float *out0, float *out1)
{
    const uintptr_t pf = xa_q8_ahead(q, ldq);
    dot_q8_pf_avx512(x, ldx, rows, q, n, out0, pf);
    dot_q8_pf_avx512(x, ldx, rows, q + ldq, n, out1, pf + (uintptr_t)ldq);
}

/* bf16: the 16 bits become the top half of a float; f16: vcvtph2ps (exact). */
static void cvt_h_avx512(const uint16_t *src, float *dst, int64_t n, int f16)
{
    int64_t i = 0;
    if (f16)
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(dst + i,
                             _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
    else
        for (; i + 16 <= n; i += 16) {
            const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i)));
            _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
        }
    for (; i < n; i++) dst[i] = xa_half_to_f32(src[i], f16);
}

/* The avx512 table's entries, shared by the tables that add bf16 dot products to it. */
#define XA_AVX512_ENTRIES                                                                          \
    .mr = XA512_MR, .nr = XA512_NR, .ukr = ukr_avx512, .dot = dot_avx512, .axpy = axpy_avx512,     \
    .gemv = gemv_avx512, .gemv_t = gemv_t_avx512, .vexp = vexp_avx512, .colmax = colmax_avx512,    \
    .expsub = expsub_avx512, .softmax = softmax_avx512, .rmsnorm = rmsnorm_avx512,                 \
    .layernorm = layernorm_avx512, .gelu = gelu_avx512, .dotn = dotn_avx512,                       \
    .dot_q8 = dot_q8_avx512, .dot2_q8 = dot2_q8_avx512, .cvt_h = cvt_h_avx512

const xa_kernels xa_kernels_avx512 = {.name = "avx512", XA_AVX512_ENTRIES};

#if defined(XATTN_HAVE_BF16_KERNELS)
/* AVX512_BF16: compute bf16's products with vdpbf16ps (8 x 32 tiles, pairs along k). */
const xa_kernels xa_kernels_avx512bf16 = {.name = "avx512bf16",
                                          XA_AVX512_ENTRIES,
                                          .ukr_bf16 = xa_ukr_dpbf16_avx512,
                                          .mr_bf16 = XA_DPBF16_MR,
                                          .nr_bf16 = XA_DPBF16_NR,
                                          .kb_bf16 = XA_DPBF16_KB};

/* AMX-BF16: compute bf16's products on 16 x 16 tiles (32 x 32 micro-tiles, k in 32s). */
const xa_kernels xa_kernels_amx = {.name = "amx",
                                   XA_AVX512_ENTRIES,
                                   .ukr_bf16 = xa_ukr_amx_bf16,
                                   .mr_bf16 = XA_AMX_MR,
                                   .nr_bf16 = XA_AMX_NR,
                                   .kb_bf16 = XA_AMX_KB};
#endif
