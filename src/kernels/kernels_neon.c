/*
 * AArch64 Advanced SIMD (NEON) kernels: 128-bit vectors of four floats, 32 registers.
 *
 * Micro-kernel: 8 x 12 tile: 24 accumulators, three right-operand vectors and the eight values
 * of the left panel in two vectors, multiplied in by lane (fmla by element), fill 29 of the 32
 * registers.
 *
 * NEON has no masked loads: a tail of fewer than four values goes through a small zero-padded
 * buffer, so every value of a row is computed by the same vector code. max / min keep the
 * scalar table's NaN behaviour explicitly (a compare and a select), since vmaxq_f32 propagates
 * NaN from either operand and vmaxnmq_f32 drops it.
 */
#include "kernels.h"
#include "../base/base.h"

#include <arm_neon.h>
#include <math.h>
#include <string.h>

#define XAN_MR 8
#define XAN_NR 12

/* ---- micro-kernel ----------------------------------------------------------------------- */

/* C (8, 12) = or += A (k, lda>=8)^T-panel * B (k, ldb>=12) */
static void ukr_neon(int64_t k, const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                     int64_t ldc, int accumulate)
{
    float32x4_t c[XAN_MR][3];
#pragma GCC unroll 8
    for (int i = 0; i < XAN_MR; i++) c[i][0] = c[i][1] = c[i][2] = vdupq_n_f32(0.0f);
#pragma GCC unroll 2
    for (int64_t p = 0; p < k; p++) {
        const float32x4_t b0 = vld1q_f32(B), b1 = vld1q_f32(B + 4), b2 = vld1q_f32(B + 8);
        const float32x4_t a0 = vld1q_f32(A), a1 = vld1q_f32(A + 4);
#define XAN_ROW(i, a, l)                                                                           \
    c[i][0] = vfmaq_laneq_f32(c[i][0], b0, a, l);                                                  \
    c[i][1] = vfmaq_laneq_f32(c[i][1], b1, a, l);                                                  \
    c[i][2] = vfmaq_laneq_f32(c[i][2], b2, a, l)
        XAN_ROW(0, a0, 0);
        XAN_ROW(1, a0, 1);
        XAN_ROW(2, a0, 2);
        XAN_ROW(3, a0, 3);
        XAN_ROW(4, a1, 0);
        XAN_ROW(5, a1, 1);
        XAN_ROW(6, a1, 2);
        XAN_ROW(7, a1, 3);
#undef XAN_ROW
        A += lda;
        B += ldb;
    }
#pragma GCC unroll 8
    for (int i = 0; i < XAN_MR; i++) {
        float *o = C + i * ldc;
        for (int j = 0; j < 3; j++) {
            const float32x4_t v = accumulate ? vaddq_f32(vld1q_f32(o + 4 * j), c[i][j]) : c[i][j];
            vst1q_f32(o + 4 * j, v);
        }
    }
}

/* ---- helpers ---------------------------------------------------------------------------- */

/* the first n (< 4) values of p, zeros after */
static inline float32x4_t load_tail(const float *p, int64_t n)
{
    float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    memcpy(t, p, sizeof(float) * (size_t)n);
    return vld1q_f32(t);
}

static inline void store_tail(float *p, int64_t n, float32x4_t v)
{
    float t[4];
    vst1q_f32(t, v);
    memcpy(p, t, sizeof(float) * (size_t)n);
}

/* max(s, m) as the scalar table computes it: s where s > m, else m (a NaN s is skipped, a NaN m
 * stays) */
static inline float32x4_t max_keep(float32x4_t s, float32x4_t m)
{
    return vbslq_f32(vcgtq_f32(s, m), s, m);
}

/* Accumulates four floats into two double-precision vectors. */
static inline void acc_pd(float32x4_t v, float64x2_t *lo, float64x2_t *hi)
{
    *lo = vaddq_f64(*lo, vcvt_f64_f32(vget_low_f32(v)));
    *hi = vaddq_f64(*hi, vcvt_high_f64_f32(v));
}

/* ---- exp -------------------------------------------------------------------------------- */

/* The reduction and polynomial of the x86 tables (kernels_avx512.c explains them); 2^n is
 * applied as two exact powers of two so that the product rounds once (overflow gives +inf, the
 * subnormal range is handled). NaN survives the clamps (vmaxq / vminq propagate it). */
static inline float32x4_t exp128(float32x4_t x)
{
    x = vmaxq_f32(vdupq_n_f32(-104.0f), x);
    x = vminq_f32(vdupq_n_f32(89.0f), x);
    const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.989098087e-04f);
    p = vfmaq_f32(vdupq_n_f32(1.393364103e-03f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.333310934e-03f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.166646501e-02f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.666666668e-01f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.000000013e-01f), p, r);
    float32x4_t y = vfmaq_f32(r, p, vmulq_f32(r, r));
    y = vaddq_f32(y, vdupq_n_f32(1.0f));
    const int32x4_t ni = vcvtq_s32_f32(n);
    const int32x4_t n1 = vshrq_n_s32(ni, 1), n2 = vsubq_s32(ni, n1);
    const int32x4_t bias = vdupq_n_s32(127);
    const float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n1, bias), 23));
    const float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n2, bias), 23));
    return vmulq_f32(vmulq_f32(y, s1), s2);
}

static void vexp_neon(float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float32x4_t a = exp128(vld1q_f32(x + i)), b = exp128(vld1q_f32(x + i + 4));
        vst1q_f32(x + i, a);
        vst1q_f32(x + i + 4, b);
    }
    for (; i + 4 <= n; i += 4) vst1q_f32(x + i, exp128(vld1q_f32(x + i)));
    if (i < n) store_tail(x + i, n - i, exp128(load_tail(x + i, n - i)));
}

/* ---- column-wise online-softmax helpers ------------------------------------------------- */

static void colmax_neon(const float *S, int64_t rows, int64_t cols, int64_t ld, float *m)
{
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16) {
        float32x4_t m0 = vld1q_f32(m + c), m1 = vld1q_f32(m + c + 4);
        float32x4_t m2 = vld1q_f32(m + c + 8), m3 = vld1q_f32(m + c + 12);
        for (int64_t r = 0; r < rows; r++) {
            const float *s = S + r * ld + c;
            m0 = max_keep(vld1q_f32(s), m0);
            m1 = max_keep(vld1q_f32(s + 4), m1);
            m2 = max_keep(vld1q_f32(s + 8), m2);
            m3 = max_keep(vld1q_f32(s + 12), m3);
        }
        vst1q_f32(m + c, m0);
        vst1q_f32(m + c + 4, m1);
        vst1q_f32(m + c + 8, m2);
        vst1q_f32(m + c + 12, m3);
    }
    for (; c + 4 <= cols; c += 4) {
        float32x4_t mv = vld1q_f32(m + c);
        for (int64_t r = 0; r < rows; r++) mv = max_keep(vld1q_f32(S + r * ld + c), mv);
        vst1q_f32(m + c, mv);
    }
    for (; c < cols; c++)
        for (int64_t r = 0; r < rows; r++)
            if (S[r * ld + c] > m[c]) m[c] = S[r * ld + c];
}

static void expsub_neon(float *S, int64_t rows, int64_t cols, int64_t ld, const float *m,
                        float *sum)
{
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) {
        const float32x4_t m0 = vld1q_f32(m + c), m1 = vld1q_f32(m + c + 4);
        float32x4_t s0 = vld1q_f32(sum + c), s1 = vld1q_f32(sum + c + 4);
        for (int64_t r = 0; r < rows; r++) {
            float *s = S + r * ld + c;
            const float32x4_t e0 = exp128(vsubq_f32(vld1q_f32(s), m0));
            const float32x4_t e1 = exp128(vsubq_f32(vld1q_f32(s + 4), m1));
            vst1q_f32(s, e0);
            vst1q_f32(s + 4, e1);
            s0 = vaddq_f32(s0, e0);
            s1 = vaddq_f32(s1, e1);
        }
        vst1q_f32(sum + c, s0);
        vst1q_f32(sum + c + 4, s1);
    }
    for (; c < cols; c += 4) {
        const int64_t w = cols - c < 4 ? cols - c : 4;
        const float32x4_t mv = load_tail(m + c, w);
        float32x4_t sv = load_tail(sum + c, w);
        for (int64_t r = 0; r < rows; r++) {
            float *s = S + r * ld + c;
            const float32x4_t e = exp128(vsubq_f32(load_tail(s, w), mv));
            store_tail(s, w, e);
            sv = vaddq_f32(sv, e);
        }
        store_tail(sum + c, w, sv);
    }
}

/* ---- row-wise softmax and norms --------------------------------------------------------- */

static void softmax_neon(float *x, int64_t n)
{
    if (n <= 0) return;
    float32x4_t mx0 = vdupq_n_f32(x[0]), mx1 = mx0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        mx0 = max_keep(vld1q_f32(x + i), mx0);
        mx1 = max_keep(vld1q_f32(x + i + 4), mx1);
    }
    for (; i + 4 <= n; i += 4) mx0 = max_keep(vld1q_f32(x + i), mx0);
    /* the lanes' maxima combined by the scalar rule (vmaxvq_f32 would propagate a NaN) */
    float l[4];
    vst1q_f32(l, max_keep(mx1, mx0));
    float mx = l[0];
    for (int j = 1; j < 4; j++) mx = l[j] > mx ? l[j] : mx;
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    const float32x4_t mv = vdupq_n_f32(mx);
    float64x2_t s0 = vdupq_n_f64(0.0), s1 = s0;
    for (i = 0; i + 4 <= n; i += 4) {
        const float32x4_t e = exp128(vsubq_f32(vld1q_f32(x + i), mv));
        vst1q_f32(x + i, e);
        acc_pd(e, &s0, &s1);
    }
    if (i < n) {
        float32x4_t e = exp128(vsubq_f32(load_tail(x + i, n - i), mv));
        store_tail(x + i, n - i, e);
        float t[4];
        vst1q_f32(t, e);
        for (int64_t j = n - i; j < 4; j++) t[j] = 0.0f; /* padding lanes are exp(0 - max) */
        acc_pd(vld1q_f32(t), &s0, &s1);
    }
    const float32x4_t inv = vdupq_n_f32((float)(1.0 / vaddvq_f64(vaddq_f64(s0, s1))));
    for (i = 0; i + 4 <= n; i += 4) vst1q_f32(x + i, vmulq_f32(vld1q_f32(x + i), inv));
    for (; i < n; i++) x[i] *= vgetq_lane_f32(inv, 0);
}

static void rmsnorm_neon(const float *x, const float *w, float eps, int64_t n, float *y)
{
    float64x2_t a0 = vdupq_n_f64(0.0), a1 = a0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t v = vld1q_f32(x + i);
        const float64x2_t lo = vcvt_f64_f32(vget_low_f32(v)), hi = vcvt_high_f64_f32(v);
        a0 = vfmaq_f64(a0, lo, lo);
        a1 = vfmaq_f64(a1, hi, hi);
    }
    double ss = vaddvq_f64(vaddq_f64(a0, a1));
    for (; i < n; i++) ss += (double)x[i] * x[i];
    const float r = (float)(1.0 / sqrt(ss / (double)n + eps));
    const float32x4_t rv = vdupq_n_f32(r);
    for (i = 0; i + 4 <= n; i += 4) {
        float32x4_t v = vmulq_f32(vld1q_f32(x + i), rv);
        if (w) v = vmulq_f32(v, vld1q_f32(w + i));
        vst1q_f32(y + i, v);
    }
    for (; i < n; i++) y[i] = x[i] * r * (w ? w[i] : 1.0f);
}

static void layernorm_neon(const float *x, const float *w, const float *b, float eps, int64_t n,
                           float *y)
{
    float64x2_t a0 = vdupq_n_f64(0.0), a1 = a0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) acc_pd(vld1q_f32(x + i), &a0, &a1);
    double s = vaddvq_f64(vaddq_f64(a0, a1));
    for (; i < n; i++) s += x[i];
    const double mean = s / (double)n;
    const float64x2_t md = vdupq_n_f64(mean);
    a0 = a1 = vdupq_n_f64(0.0);
    for (i = 0; i + 4 <= n; i += 4) {
        const float32x4_t v = vld1q_f32(x + i);
        const float64x2_t d0 = vsubq_f64(vcvt_f64_f32(vget_low_f32(v)), md);
        const float64x2_t d1 = vsubq_f64(vcvt_high_f64_f32(v), md);
        a0 = vfmaq_f64(a0, d0, d0);
        a1 = vfmaq_f64(a1, d1, d1);
    }
    double var = vaddvq_f64(vaddq_f64(a0, a1));
    for (; i < n; i++) var += ((double)x[i] - mean) * ((double)x[i] - mean);
    const float r = (float)(1.0 / sqrt(var / (double)n + eps)), mf = (float)mean;
    const float32x4_t rv = vdupq_n_f32(r), mv = vdupq_n_f32(mf);
    for (i = 0; i + 4 <= n; i += 4) {
        float32x4_t v = vmulq_f32(vsubq_f32(vld1q_f32(x + i), mv), rv);
        if (w) v = vmulq_f32(v, vld1q_f32(w + i));
        if (b) v = vaddq_f32(v, vld1q_f32(b + i));
        vst1q_f32(y + i, v);
    }
    for (; i < n; i++) y[i] = (x[i] - mf) * r * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
}

/* ---- GELU ------------------------------------------------------------------------------- */

/* erfc(|x| / sqrt2), |x| <= 28, as the x86 tables compute it (kernels_avx512.c) */
static inline float32x4_t erfc_half128(float32x4_t ax)
{
    const float32x4_t a = vmulq_f32(ax, vdupq_n_f32(0.7071067811865476f));
    const float32x4_t t =
        vdivq_f32(vdupq_n_f32(1.0f), vfmaq_f32(vdupq_n_f32(1.0f), a, vdupq_n_f32(0.4f)));
    static const float Q[] = {
        1.438410693e-01f, -2.430417318e-01f, 1.468032457e-01f, -5.379316633e-02f, 8.712064164e-02f,
        1.180951230e-01f, 1.718905719e-01f,  2.076007204e-01f, 2.256763169e-01f,  2.256758315e-01f};
    float32x4_t q = vdupq_n_f32(-2.986862849e-02f);
    for (int j = 0; j < 10; j++) q = vfmaq_f32(vdupq_n_f32(Q[j]), q, t);
    const float32x4_t h = vdupq_n_f32(-0.5f);
    const float32x4_t x2 = vmulq_f32(ax, ax);
    /* the rounding error of ax * ax, exactly: fma(ax, ax, -x2) */
    const float32x4_t x2lo = vmulq_f32(vfmaq_f32(vnegq_f32(x2), ax, ax), h);
    float32x4_t e = exp128(vmulq_f32(x2, h));
    e = vfmaq_f32(e, e, x2lo);
    return vmulq_f32(vmulq_f32(e, t), q);
}

static inline float32x4_t gelu_erf128(float32x4_t x)
{
    const float32x4_t ax = vminq_f32(vdupq_n_f32(28.0f), vabsq_f32(x)); /* keeps NaN */
    const float32x4_t ec = erfc_half128(ax);
    const uint32x4_t pos = vcgtq_f32(x, vdupq_n_f32(0.0f));
    const float32x4_t onep = vbslq_f32(pos, vsubq_f32(vdupq_n_f32(2.0f), ec), ec);
    return vmulq_f32(vmulq_f32(x, vdupq_n_f32(0.5f)), onep);
}

static inline float32x4_t gelu_tanh128(float32x4_t x)
{
    const float32x4_t x3 = vmulq_f32(vmulq_f32(x, x), x);
    const float32x4_t u = vfmaq_f32(x, x3, vdupq_n_f32(0.044715f));
    const float32x4_t e = exp128(vmulq_f32(u, vdupq_n_f32(-2.0f * 0.7978845608028654f)));
    return vdivq_f32(x, vaddq_f32(e, vdupq_n_f32(1.0f)));
}

static void gelu_neon(float *x, int64_t n, int tanh_form)
{
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t v = vld1q_f32(x + i);
        vst1q_f32(x + i, tanh_form ? gelu_tanh128(v) : gelu_erf128(v));
    }
    if (i < n) {
        const float32x4_t v = load_tail(x + i, n - i);
        store_tail(x + i, n - i, tanh_form ? gelu_tanh128(v) : gelu_erf128(v));
    }
}

/* ---- dot products and row updates ------------------------------------------------------- */

static float dot_neon(const float *a, const float *b, int64_t n)
{
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        s2 = vfmaq_f32(s2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
        s3 = vfmaq_f32(s3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
    }
    for (; i + 4 <= n; i += 4) s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy_neon(float a, const float *x, float *y, int64_t n)
{
    const float32x4_t va = vdupq_n_f32(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), va, vld1q_f32(x + i)));
        vst1q_f32(y + i + 4, vfmaq_f32(vld1q_f32(y + i + 4), va, vld1q_f32(x + i + 4)));
    }
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), va, vld1q_f32(x + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

/* y (rows) = A (rows, lda) x (n): four rows at a time for independent reductions */
static void gemv_neon(const float *A, int64_t lda, int64_t rows, const float *x, int64_t n,
                      float *y)
{
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *a0 = A + r * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
        int64_t i = 0;
        for (; i + 4 <= n; i += 4) {
            const float32x4_t xv = vld1q_f32(x + i);
            s0 = vfmaq_f32(s0, vld1q_f32(a0 + i), xv);
            s1 = vfmaq_f32(s1, vld1q_f32(a1 + i), xv);
            s2 = vfmaq_f32(s2, vld1q_f32(a2 + i), xv);
            s3 = vfmaq_f32(s3, vld1q_f32(a3 + i), xv);
        }
        float t0 = vaddvq_f32(s0), t1 = vaddvq_f32(s1), t2 = vaddvq_f32(s2), t3 = vaddvq_f32(s3);
        for (; i < n; i++) {
            t0 += a0[i] * x[i];
            t1 += a1[i] * x[i];
            t2 += a2[i] * x[i];
            t3 += a3[i] * x[i];
        }
        y[r] = t0, y[r + 1] = t1, y[r + 2] = t2, y[r + 3] = t3;
    }
    for (; r < rows; r++) y[r] = dot_neon(A + r * lda, x, n);
}

/* y (n) += p (rows) A (rows, lda): y kept in registers 16 columns at a time */
static void gemv_t_neon(const float *A, int64_t lda, int64_t rows, const float *p, int64_t n,
                        float *y)
{
    int64_t d = 0;
    for (; d + 16 <= n; d += 16) {
        float32x4_t y0 = vld1q_f32(y + d), y1 = vld1q_f32(y + d + 4), y2 = vld1q_f32(y + d + 8),
                    y3 = vld1q_f32(y + d + 12);
        for (int64_t r = 0; r < rows; r++) {
            const float *a = A + r * lda + d;
            const float32x4_t pv = vdupq_n_f32(p[r]);
            y0 = vfmaq_f32(y0, pv, vld1q_f32(a));
            y1 = vfmaq_f32(y1, pv, vld1q_f32(a + 4));
            y2 = vfmaq_f32(y2, pv, vld1q_f32(a + 8));
            y3 = vfmaq_f32(y3, pv, vld1q_f32(a + 12));
        }
        vst1q_f32(y + d, y0);
        vst1q_f32(y + d + 4, y1);
        vst1q_f32(y + d + 8, y2);
        vst1q_f32(y + d + 12, y3);
    }
    for (; d + 4 <= n; d += 4) {
        float32x4_t y0 = vld1q_f32(y + d);
        for (int64_t r = 0; r < rows; r++)
            y0 = vfmaq_f32(y0, vdupq_n_f32(p[r]), vld1q_f32(A + r * lda + d));
        vst1q_f32(y + d, y0);
    }
    for (; d < n; d++) {
        float s = y[d];
        for (int64_t r = 0; r < rows; r++) s += p[r] * A[r * lda + d];
        y[d] = s;
    }
}

/* four rows of x against one row of weights: each 8 weights loaded once for the four */
static void dotn_4_neon(const float *x, int64_t ldx, const float *w, int64_t n, float *out)
{
    float32x4_t acc[8];
    for (int i = 0; i < 8; i++) acc[i] = vdupq_n_f32(0.0f);
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const float32x4_t w0 = vld1q_f32(w + k), w1 = vld1q_f32(w + k + 4);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            acc[2 * r] = vfmaq_f32(acc[2 * r], vld1q_f32(x + r * ldx + k), w0);
            acc[2 * r + 1] = vfmaq_f32(acc[2 * r + 1], vld1q_f32(x + r * ldx + k + 4), w1);
        }
    }
    for (int r = 0; r < 4; r++) {
        float s = vaddvq_f32(vaddq_f32(acc[2 * r], acc[2 * r + 1]));
        for (int64_t j = k; j < n; j++) s += x[r * ldx + j] * w[j];
        out[r] = s;
    }
}

static void dotn_neon(const float *x, int64_t ldx, int64_t rows, const float *w, int64_t n,
                      float *out)
{
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) dotn_4_neon(x + r * ldx, ldx, w, n, out + r);
    for (; r < rows; r++) out[r] = dot_neon(x + r * ldx, w, n);
}

/* ---- int8 weights ----------------------------------------------------------------------- */

/* 8 int8 weights as two vectors of four floats (exact) */
static inline void q8_load8(const int8_t *q, float32x4_t *w0, float32x4_t *w1)
{
    const int16x8_t h = vmovl_s8(vld1_s8(q));
    *w0 = vcvtq_f32_s32(vmovl_s16(vget_low_s16(h)));
    *w1 = vcvtq_f32_s32(vmovl_high_s16(h));
}

/* four rows of x against one int8 row (pf: an address to prefetch along, 0: none) */
static void dot_q8_4_neon(const float *x, int64_t ldx, const int8_t *q, int64_t n, float *out,
                          uintptr_t pf)
{
    float32x4_t acc[8];
    for (int i = 0; i < 8; i++) acc[i] = vdupq_n_f32(0.0f);
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        xa_q8_prefetch(pf, k);
        float32x4_t w0, w1;
        q8_load8(q + k, &w0, &w1);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            acc[2 * r] = vfmaq_f32(acc[2 * r], vld1q_f32(x + r * ldx + k), w0);
            acc[2 * r + 1] = vfmaq_f32(acc[2 * r + 1], vld1q_f32(x + r * ldx + k + 4), w1);
        }
    }
    float s[4];
    for (int r = 0; r < 4; r++) s[r] = vaddvq_f32(vaddq_f32(acc[2 * r], acc[2 * r + 1]));
    xa_dot_q8_tail4(x, ldx, q, k, n, s, out);
}

static float dot_q8_1_neon(const float *x, const int8_t *q, int64_t n, uintptr_t pf)
{
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        xa_q8_prefetch(pf, k);
        float32x4_t w0, w1, w2, w3;
        q8_load8(q + k, &w0, &w1);
        q8_load8(q + k + 8, &w2, &w3);
        a0 = vfmaq_f32(a0, vld1q_f32(x + k), w0);
        a1 = vfmaq_f32(a1, vld1q_f32(x + k + 4), w1);
        a2 = vfmaq_f32(a2, vld1q_f32(x + k + 8), w2);
        a3 = vfmaq_f32(a3, vld1q_f32(x + k + 12), w3);
    }
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; k < n; k++) s += x[k] * (float)q[k];
    return s;
}

static void dot_q8_neon(const float *x, int64_t ldx, int64_t rows, const int8_t *q, int64_t n,
                        float *out)
{
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) dot_q8_4_neon(x + r * ldx, ldx, q, n, out + r, 0);
    for (; r < rows; r++) out[r] = dot_q8_1_neon(x + r * ldx, q, n, 0);
}

static void dot2_q8_neon(const float *x, int64_t ldx, int64_t rows, const int8_t *q, int64_t ldq,
                         int64_t n, float *out0, float *out1)
{
    const uintptr_t pf = xa_q8_ahead(q, ldq); /* along the first pass over each row */
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        dot_q8_4_neon(x + r * ldx, ldx, q, n, out0 + r, r == 0 ? pf : 0);
        dot_q8_4_neon(x + r * ldx, ldx, q + ldq, n, out1 + r, r == 0 ? pf + (uintptr_t)ldq : 0);
    }
    for (; r < rows; r++) {
        out0[r] = dot_q8_1_neon(x + r * ldx, q, n, r == 0 ? pf : 0);
        out1[r] = dot_q8_1_neon(x + r * ldx, q + ldq, n, r == 0 ? pf + (uintptr_t)ldq : 0);
    }
}

/* bf16: the 16 bits become the top half of a float (a widening shift); f16: fcvtl (exact). */
static void cvt_h_neon(const uint16_t *src, float *dst, int64_t n, int f16)
{
    int64_t i = 0;
    if (f16)
        for (; i + 4 <= n; i += 4)
            vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(src + i))));
    else
        for (; i + 4 <= n; i += 4)
            vst1q_f32(dst + i, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(src + i), 16)));
    for (; i < n; i++) dst[i] = xa_half_to_f32(src[i], f16);
}

const xa_kernels xa_kernels_neon = {
    .name = "neon",
    .mr = XAN_MR,
    .nr = XAN_NR,
    .ukr = ukr_neon,
    .dot = dot_neon,
    .axpy = axpy_neon,
    .gemv = gemv_neon,
    .gemv_t = gemv_t_neon,
    .vexp = vexp_neon,
    .colmax = colmax_neon,
    .expsub = expsub_neon,
    .softmax = softmax_neon,
    .rmsnorm = rmsnorm_neon,
    .layernorm = layernorm_neon,
    .gelu = gelu_neon,
    .dotn = dotn_neon,
    .dot_q8 = dot_q8_neon,
    .dot2_q8 = dot2_q8_neon,
    .cvt_h = cvt_h_neon,
};
