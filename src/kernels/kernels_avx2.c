/*
 * AVX2 + FMA kernels (compiled with -mavx2 -mfma). Only called after dispatch.c has checked
 * the CPU supports them.
 *
 * Micro-kernel: 6 x 16 tile (two ymm per row of C): 12 accumulators, 2 right-operand vectors
 * and 1 broadcast fill 15 of the 16 ymm registers.
 */
#include "kernels.h"
#include "../base/base.h"

#include <immintrin.h>
#include <math.h>

#define XA2_MR 6
#define XA2_NR 16

/* ---- micro-kernel ----------------------------------------------------------------------- */

/* C (6, 16) = or += A (k, lda>=6)^T-panel * B (k, ldb>=16) */
static void ukr_avx2(int64_t k, const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                     int64_t ldc, int accumulate)
{
    __m256 c0[XA2_MR], c1[XA2_MR];
#pragma GCC unroll 8
    for (int i = 0; i < XA2_MR; i++) {
        c0[i] = _mm256_setzero_ps();
        c1[i] = _mm256_setzero_ps();
        _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(C + i * ldc + XA2_NR - 1), _MM_HINT_T0);
    }
#pragma GCC unroll 4
    for (int64_t p = 0; p < k; p++) {
        __m256 b0 = _mm256_loadu_ps(B), b1 = _mm256_loadu_ps(B + 8);
#pragma GCC unroll 8
        for (int i = 0; i < XA2_MR; i++) {
            __m256 a = _mm256_broadcast_ss(A + i);
            c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
            c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
        }
        A += lda;
        B += ldb;
    }
    if (accumulate) {
#pragma GCC unroll 8
        for (int i = 0; i < XA2_MR; i++) {
            float *c = C + i * ldc;
            _mm256_storeu_ps(c, _mm256_add_ps(_mm256_loadu_ps(c), c0[i]));
            _mm256_storeu_ps(c + 8, _mm256_add_ps(_mm256_loadu_ps(c + 8), c1[i]));
        }
    } else {
#pragma GCC unroll 8
        for (int i = 0; i < XA2_MR; i++) {
            _mm256_storeu_ps(C + i * ldc, c0[i]);
            _mm256_storeu_ps(C + i * ldc + 8, c1[i]);
        }
    }
}

/* ---- helpers ---------------------------------------------------------------------------- */

/* Lanes [0, rem) set (rem clamped to 8). */
static inline __m256i tail_mask(int64_t rem)
{
    int r = rem >= 8 ? 8 : (int)rem;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline __m256 load_m(const float *p, __m256i k) { return _mm256_maskload_ps(p, k); }
static inline void store_m(float *p, __m256i k, __m256 v) { _mm256_maskstore_ps(p, k, v); }

static inline float hmax8(__m256 v)
{
    __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_max_ps(a, _mm_movehl_ps(a, a));
    a = _mm_max_ss(a, _mm_shuffle_ps(a, a, 1));
    return _mm_cvtss_f32(a);
}

static inline double hsum4d(__m256d v)
{
    __m128d a = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    a = _mm_add_sd(a, _mm_unpackhi_pd(a, a));
    return _mm_cvtsd_f64(a);
}

/* ---- exp -------------------------------------------------------------------------------- */

/*
 * exp(x) = 2^n exp(r), n = round(x / ln2), r = x - n ln2 in [-ln2/2, ln2/2] (the Cody-Waite
 * split of ln2 of the AVX-512 version); n by the 1.5 * 2^23 shift inside one FMA (the integer
 * lands in the low mantissa bits, rounded to nearest from the exact product). exp(r) = 1 + r +
 * r^2 P(r), P of degree 4 (a near-minimax fit on [-ln2/2, ln2/2]: 1.2 ulp in float32). Without
 * vscalefps, 2^n is added into the exponent bits where that is exact: when every lane has n in
 * [-125, 126] (what softmax arguments near their maximum give); a vector with another n (results
 * in or near the subnormals or near overflow, -inf included) or a NaN applies it as two exact
 * powers of two 2^(n>>1) and 2^(n - (n>>1)), each a normal float, so the product rounds once:
 * overflow gives +inf and the subnormal range is handled. x is clamped to [-104, 89] first
 * (the clamps keep NaN). Nine multiply-adds or multiplies on the FMA pipes, which the fused
 * attention shares with its products.
 */

/* exp(r) for x clamped to [-104, 89] (or NaN): y, with t (n in its low mantissa bits, after the
 * shift) and n. */
static inline __m256 exp256_y(__m256 x, __m256 *t, __m256 *n)
{
    const __m256 shift = _mm256_set1_ps(0x1.8p23f);
    *t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), shift);
    *n = _mm256_sub_ps(*t, shift);
    __m256 r = _mm256_fnmadd_ps(*n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(*n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.3814540579915047e-3f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.36874544620514e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166838899254799e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666652113199234e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.999999403953552e-1f));
    const __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    return _mm256_add_ps(y, _mm256_set1_ps(1.0f));
}

/* Whether some lane has n < -125, n > 126 or NaN (the unordered compare is true for NaN). */
static inline int exp256_outside(__m256 n)
{
    return _mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(n, _mm256_set1_ps(-125.0f), _CMP_NGE_UQ),
                                           _mm256_cmp_ps(n, _mm256_set1_ps(126.0f), _CMP_GT_OQ)));
}

/* y 2^n by the exponent bits (n in [-125, 126] in every lane: exact). */
static inline __m256 exp256_fast(__m256 y, __m256 t)
{
    const __m256i e = _mm256_slli_epi32(
        _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(_mm256_set1_ps(0x1.8p23f))),
        23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y), e));
}

static inline __m256 exp256(__m256 x)
{
    x = _mm256_max_ps(_mm256_set1_ps(-104.0f), x); /* NaN (second operand) is kept */
    x = _mm256_min_ps(_mm256_set1_ps(89.0f), x);
    __m256 t, n;
    const __m256 y = exp256_y(x, &t, &n);
    if (exp256_outside(n)) { /* two exact powers of two, one rounding */
        const __m256i ni = _mm256_cvtps_epi32(n);
        const __m256i n1 = _mm256_srai_epi32(ni, 1);
        const __m256i n2 = _mm256_sub_epi32(ni, n1);
        const __m256i bias = _mm256_set1_epi32(127);
        const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
        const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
        return _mm256_mul_ps(_mm256_mul_ps(y, s1), s2);
    }
    return exp256_fast(y, t);
}

/* exp256 for the online softmax's x - max, which is <= 0 (or NaN): without the upper clamp on
 * the common path; a vector the fast path cannot take (also any x > 87, should a caller break
 * the contract) goes through exp256 whole. */
static inline __m256 exp256_nonpos(__m256 x)
{
    const __m256 xc = _mm256_max_ps(_mm256_set1_ps(-104.0f), x);
    __m256 t, n;
    const __m256 y = exp256_y(xc, &t, &n);
    return exp256_outside(n) ? exp256(x) : exp256_fast(y, t);
}

static void vexp_avx2(float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = exp256(_mm256_loadu_ps(x + i)), b = exp256(_mm256_loadu_ps(x + i + 8));
        _mm256_storeu_ps(x + i, a);
        _mm256_storeu_ps(x + i + 8, b);
    }
    for (; i < n; i += 8) {
        __m256i k = tail_mask(n - i);
        store_m(x + i, k, exp256(load_m(x + i, k)));
    }
}

/* ---- column-wise online-softmax helpers ------------------------------------------------- */

static void colmax_avx2(const float *S, int64_t rows, int64_t cols, int64_t ld, float *m)
{
    int64_t c = 0;
    for (; c + 32 <= cols; c += 32) {
        __m256 m0 = _mm256_loadu_ps(m + c), m1 = _mm256_loadu_ps(m + c + 8);
        __m256 m2 = _mm256_loadu_ps(m + c + 16), m3 = _mm256_loadu_ps(m + c + 24);
        for (int64_t r = 0; r < rows; r++) {
            const float *s = S + r * ld + c;
            /* max(s, m) returns m (the second operand) when either is NaN */
            m0 = _mm256_max_ps(_mm256_loadu_ps(s), m0);
            m1 = _mm256_max_ps(_mm256_loadu_ps(s + 8), m1);
            m2 = _mm256_max_ps(_mm256_loadu_ps(s + 16), m2);
            m3 = _mm256_max_ps(_mm256_loadu_ps(s + 24), m3);
        }
        _mm256_storeu_ps(m + c, m0);
        _mm256_storeu_ps(m + c + 8, m1);
        _mm256_storeu_ps(m + c + 16, m2);
        _mm256_storeu_ps(m + c + 24, m3);
    }
    for (; c < cols; c += 8) {
        __m256i k = tail_mask(cols - c);
        __m256 mv = load_m(m + c, k);
        for (int64_t r = 0; r < rows; r++) mv = _mm256_max_ps(load_m(S + r * ld + c, k), mv);
        store_m(m + c, k, mv);
    }
}

static void expsub_avx2(float *S, int64_t rows, int64_t cols, int64_t ld, const float *m,
                        float *sum)
{
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16) {
        __m256 m0 = _mm256_loadu_ps(m + c), m1 = _mm256_loadu_ps(m + c + 8);
        __m256 s0 = _mm256_loadu_ps(sum + c), s1 = _mm256_loadu_ps(sum + c + 8);
        for (int64_t r = 0; r < rows; r++) {
            float *s = S + r * ld + c;
            __m256 e0 = exp256_nonpos(_mm256_sub_ps(_mm256_loadu_ps(s), m0));
            __m256 e1 = exp256_nonpos(_mm256_sub_ps(_mm256_loadu_ps(s + 8), m1));
            _mm256_storeu_ps(s, e0);
            _mm256_storeu_ps(s + 8, e1);
            s0 = _mm256_add_ps(s0, e0);
            s1 = _mm256_add_ps(s1, e1);
        }
        _mm256_storeu_ps(sum + c, s0);
        _mm256_storeu_ps(sum + c + 8, s1);
    }
    for (; c < cols; c += 8) {
        __m256i k = tail_mask(cols - c);
        __m256 mv = load_m(m + c, k), sv = load_m(sum + c, k);
        for (int64_t r = 0; r < rows; r++) {
            float *s = S + r * ld + c;
            __m256 e = exp256_nonpos(_mm256_sub_ps(load_m(s, k), mv));
            store_m(s, k, e);
            sv = _mm256_add_ps(sv, e);
        }
        store_m(sum + c, k, sv);
    }
}

/* ---- row-wise softmax and norms --------------------------------------------------------- */

static inline void acc_pd(__m256 v, __m256d *lo, __m256d *hi)
{
    *lo = _mm256_add_pd(*lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    *hi = _mm256_add_pd(*hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

static void softmax_avx2(float *x, int64_t n)
{
    if (n <= 0) return;
    __m256 mx0 = _mm256_set1_ps(x[0]), mx1 = mx0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        mx0 = _mm256_max_ps(_mm256_loadu_ps(x + i), mx0);
        mx1 = _mm256_max_ps(_mm256_loadu_ps(x + i + 8), mx1);
    }
    for (; i < n; i += 8) {
        __m256i k = tail_mask(n - i);
        /* masked-off lanes load 0: replace them by the running max before comparing */
        __m256 v = _mm256_blendv_ps(mx0, load_m(x + i, k), _mm256_castsi256_ps(k));
        mx0 = _mm256_max_ps(v, mx0);
    }
    __m256 mv = _mm256_set1_ps(hmax8(_mm256_max_ps(mx0, mx1)));
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (i = 0; i < n; i += 8) {
        __m256i k = tail_mask(n - i);
        __m256 e = exp256(_mm256_sub_ps(load_m(x + i, k), mv));
        e = _mm256_and_ps(e, _mm256_castsi256_ps(k));
        store_m(x + i, k, e);
        acc_pd(e, &s0, &s1);
    }
    __m256 inv = _mm256_set1_ps((float)(1.0 / hsum4d(_mm256_add_pd(s0, s1))));
    for (i = 0; i < n; i += 8) {
        __m256i k = tail_mask(n - i);
        store_m(x + i, k, _mm256_mul_ps(load_m(x + i, k), inv));
    }
}

static void rmsnorm_avx2(const float *x, const float *w, float eps, int64_t n, float *y)
{
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int64_t i;
    for (i = 0; i < n; i += 8) {
        __m256i k = tail_mask(n - i);
        __m256 v = load_m(x + i, k);
        __m256d v0 = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        __m256d v1 = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        a0 = _mm256_fmadd_pd(v0, v0, a0);
        a1 = _mm256_fmadd_pd(v1, v1, a1);
    }
    double ss = hsum4d(_mm256_add_pd(a0, a1));
    __m256 r = _mm256_set1_ps((float)(1.0 / sqrt(ss / (double)n + eps)));
    for (i = 0; i < n; i += 8) {
        __m256i k = tail_mask(n - i);
        __m256 v = _mm256_mul_ps(load_m(x + i, k), r);
        if (w) v = _mm256_mul_ps(v, load_m(w + i, k));
        store_m(y + i, k, v);
    }
}

static void layernorm_avx2(const float *x, const float *w, const float *b, float eps, int64_t n,
                           float *y)
{
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int64_t i;
    for (i = 0; i < n; i += 8) acc_pd(load_m(x + i, tail_mask(n - i)), &a0, &a1);
    double mean = hsum4d(_mm256_add_pd(a0, a1)) / (double)n;
    __m256d md = _mm256_set1_pd(mean);
    a0 = a1 = _mm256_setzero_pd();
    for (i = 0; i < n; i += 8) {
        __m256i k = tail_mask(n - i);
        __m256 v = load_m(x + i, k);
        __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), md);
        __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), md);
        /* zero the deviation of masked-off lanes (their v is 0, not the mean) */
        __m256i klo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(k));
        __m256i khi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(k, 1));
        d0 = _mm256_and_pd(d0, _mm256_castsi256_pd(klo));
        d1 = _mm256_and_pd(d1, _mm256_castsi256_pd(khi));
        a0 = _mm256_fmadd_pd(d0, d0, a0);
        a1 = _mm256_fmadd_pd(d1, d1, a1);
    }
    double var = hsum4d(_mm256_add_pd(a0, a1)) / (double)n;
    __m256 r = _mm256_set1_ps((float)(1.0 / sqrt(var + eps)));
    __m256 mf = _mm256_set1_ps((float)mean);
    for (i = 0; i < n; i += 8) {
        __m256i k = tail_mask(n - i);
        __m256 v = _mm256_mul_ps(_mm256_sub_ps(load_m(x + i, k), mf), r);
        if (w) v = _mm256_mul_ps(v, load_m(w + i, k));
        if (b) v = _mm256_add_ps(v, load_m(b + i, k));
        store_m(y + i, k, v);
    }
}

/* ---- GELU ------------------------------------------------------------------------------- */

/* erfc(|x| / sqrt2), |x| <= 28: exp(-x^2/2) t Q(t), t = 1/(1 + 0.4a); see kernels_avx512.c. */
static inline __m256 erfc_half256(__m256 ax)
{
    __m256 a = _mm256_mul_ps(ax, _mm256_set1_ps(0.7071067811865476f));
    __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f),
                             _mm256_fmadd_ps(a, _mm256_set1_ps(0.4f), _mm256_set1_ps(1.0f)));
    __m256 q = _mm256_set1_ps(-2.986862849e-02f);
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(1.438410693e-01f));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(-2.430417318e-01f));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(1.468032457e-01f));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(-5.379316633e-02f));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(8.712064164e-02f));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(1.180951230e-01f));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(1.718905719e-01f));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(2.076007204e-01f));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(2.256763169e-01f));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(2.256758315e-01f));
    __m256 h = _mm256_set1_ps(-0.5f);
    __m256 x2 = _mm256_mul_ps(ax, ax);
    __m256 x2lo = _mm256_mul_ps(_mm256_fmsub_ps(ax, ax, x2), h);
    __m256 e = exp256(_mm256_mul_ps(x2, h));
    e = _mm256_fmadd_ps(e, x2lo, e);
    return _mm256_mul_ps(_mm256_mul_ps(e, t), q);
}

static inline __m256 gelu_erf256(__m256 x)
{
    __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    ax = _mm256_min_ps(_mm256_set1_ps(28.0f), ax); /* keeps NaN */
    __m256 ec = erfc_half256(ax);
    __m256 pos = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ);
    __m256 onep = _mm256_blendv_ps(ec, _mm256_sub_ps(_mm256_set1_ps(2.0f), ec), pos);
    return _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.5f)), onep);
}

static inline __m256 gelu_tanh256(__m256 x)
{
    __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
    __m256 u = _mm256_fmadd_ps(x3, _mm256_set1_ps(0.044715f), x);
    __m256 e = exp256(_mm256_mul_ps(u, _mm256_set1_ps(-2.0f * 0.7978845608028654f)));
    return _mm256_div_ps(x, _mm256_add_ps(e, _mm256_set1_ps(1.0f)));
}

static void gelu_avx2(float *x, int64_t n, int tanh_form)
{
    for (int64_t i = 0; i < n; i += 8) {
        __m256i k = tail_mask(n - i);
        __m256 v = load_m(x + i, k);
        v = tanh_form ? gelu_tanh256(v) : gelu_erf256(v);
        store_m(x + i, k, v);
    }
}

/* a (n), b (n): four independent accumulators, masked tail */
static float dot_avx2(const float *a, const float *b, int64_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
           s3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    if (i < n) {
        __m256i k = tail_mask(n - i);
        s1 = _mm256_fmadd_ps(load_m(a + i, k), load_m(b + i, k), s1);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* y (n) += a * x (n) */
static void axpy_avx2(float a, const float *x, float *y, int64_t n)
{
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(y + i,
                         _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
        _mm256_storeu_ps(
            y + i + 8, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8)));
    }
    for (; i < n; i += 8) {
        __m256i k = tail_mask(n - i >= 8 ? 8 : n - i);
        store_m(y + i, k, _mm256_fmadd_ps(va, load_m(x + i, k), load_m(y + i, k)));
    }
}

static inline float hsum8(__m256 s)
{
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* y (rows) = A (rows, lda) x (n): four rows at a time for independent reductions */
static void gemv_avx2(const float *A, int64_t lda, int64_t rows, const float *x, int64_t n,
                      float *y)
{
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *a0 = A + r * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
               s3 = _mm256_setzero_ps();
        for (int64_t i = 0; i < n; i += 8) {
            __m256i k = tail_mask(n - i >= 8 ? 8 : n - i);
            __m256 xv = load_m(x + i, k);
            s0 = _mm256_fmadd_ps(load_m(a0 + i, k), xv, s0);
            s1 = _mm256_fmadd_ps(load_m(a1 + i, k), xv, s1);
            s2 = _mm256_fmadd_ps(load_m(a2 + i, k), xv, s2);
            s3 = _mm256_fmadd_ps(load_m(a3 + i, k), xv, s3);
        }
        y[r] = hsum8(s0);
        y[r + 1] = hsum8(s1);
        y[r + 2] = hsum8(s2);
        y[r + 3] = hsum8(s3);
    }
    for (; r < rows; r++) y[r] = dot_avx2(A + r * lda, x, n);
}

/* y (n) += p (rows) A (rows, lda): y kept in registers 32 columns at a time */
static void gemv_t_avx2(const float *A, int64_t lda, int64_t rows, const float *p, int64_t n,
                        float *y)
{
    int64_t d = 0;
    for (; d + 32 <= n; d += 32) {
        __m256 y0 = _mm256_loadu_ps(y + d), y1 = _mm256_loadu_ps(y + d + 8),
               y2 = _mm256_loadu_ps(y + d + 16), y3 = _mm256_loadu_ps(y + d + 24);
        for (int64_t r = 0; r < rows; r++) {
            const float *a = A + r * lda + d;
            __m256 pv = _mm256_set1_ps(p[r]);
            y0 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(a), y0);
            y1 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(a + 8), y1);
            y2 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(a + 16), y2);
            y3 = _mm256_fmadd_ps(pv, _mm256_loadu_ps(a + 24), y3);
        }
        _mm256_storeu_ps(y + d, y0);
        _mm256_storeu_ps(y + d + 8, y1);
        _mm256_storeu_ps(y + d + 16, y2);
        _mm256_storeu_ps(y + d + 24, y3);
    }
    for (; d < n; d += 8) {
        __m256i k = tail_mask(n - d >= 8 ? 8 : n - d);
        __m256 y0 = load_m(y + d, k);
        for (int64_t r = 0; r < rows; r++)
            y0 = _mm256_fmadd_ps(_mm256_set1_ps(p[r]), load_m(A + r * lda + d, k), y0);
        store_m(y + d, k, y0);
    }
}

/* acc[2r + h] += x[r * ldx + k + 8h .. + 8] * w_h for the four rows r of x: one step of 16 of
 * the four-row kernels (the weights w0, w1 loaded or converted once for the four rows) */
static inline void fma_4x16(__m256 acc[8], const float *x, int64_t ldx, int64_t k, __m256 w0,
                            __m256 w1)
{
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
        acc[2 * r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * ldx + k), w0, acc[2 * r]);
        acc[2 * r + 1] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * ldx + k + 8), w1, acc[2 * r + 1]);
    }
}

static inline void hsum_4x2(const __m256 acc[8], float s[4])
{
    for (int r = 0; r < 4; r++) s[r] = hsum8(_mm256_add_ps(acc[2 * r], acc[2 * r + 1]));
}

/* four rows of x against one row of weights: each 16 weights loaded once for the four */
static void dotn_4_avx2(const float *x, int64_t ldx, const float *w, int64_t n, float *out)
{
    __m256 acc[8];
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= n; k += 16)
        fma_4x16(acc, x, ldx, k, _mm256_loadu_ps(w + k), _mm256_loadu_ps(w + k + 8));
    float s[4];
    hsum_4x2(acc, s);
    for (; k < n; k++)
        for (int r = 0; r < 4; r++) s[r] += x[r * ldx + k] * w[k];
    for (int r = 0; r < 4; r++) out[r] = s[r];
}

static void dotn_avx2(const float *x, int64_t ldx, int64_t rows, const float *w, int64_t n,
                      float *out)
{
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) dotn_4_avx2(x + r * ldx, ldx, w, n, out + r);
    for (; r < rows; r++) out[r] = dot_avx2(x + r * ldx, w, n);
}

/* 16 int8 weights as two vectors of 8 floats (exact) */
static inline void q8_load16(const int8_t *q, __m256 *w0, __m256 *w1)
{
    /* two 8-byte loads that the sign extension takes as memory operands (no shuffle) */
    *w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
    *w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8))));
}

/* four rows of x against one int8 row: the weights are converted once for the four */
static void dot_q8_4_avx2(const float *x, int64_t ldx, const int8_t *q, int64_t n, float *out)
{
    __m256 acc[8];
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        __m256 w0, w1;
        q8_load16(q + k, &w0, &w1);
        fma_4x16(acc, x, ldx, k, w0, w1);
    }
    float s[4];
    hsum_4x2(acc, s);
    xa_dot_q8_tail4(x, ldx, q, k, n, s, out);
}

/* one row of x against one int8 row; pf: an address to prefetch along (0: none) */
static float dot_q8_1_avx2(const float *x, const int8_t *q, int64_t n, uintptr_t pf)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 32 <= n; k += 32) {
        xa_q8_prefetch(pf, k);
        __m256 w0, w1, w2, w3;
        q8_load16(q + k, &w0, &w1);
        q8_load16(q + k + 16, &w2, &w3);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), w0, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), w1, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 16), w2, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 24), w3, a3);
    }
    for (; k + 16 <= n; k += 16) {
        __m256 w0, w1;
        q8_load16(q + k, &w0, &w1);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), w0, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), w1, a1);
    }
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; k < n; k++) s += x[k] * (float)q[k];
    return s;
}

static void dot_q8_avx2(const float *x, int64_t ldx, int64_t rows, const int8_t *q, int64_t n,
                        float *out)
{
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) dot_q8_4_avx2(x + r * ldx, ldx, q, n, out + r);
    for (; r < rows; r++) out[r] = dot_q8_1_avx2(x + r * ldx, q, n, 0);
}

/* two int8 rows against four rows of x: eight accumulators, each 16 weights converted once
 * for the four rows and each 8 activations loaded once for the two weight rows */
static void dot2_q8_4_avx2(const float *x, int64_t ldx, const int8_t *q, int64_t ldq, int64_t n,
                           float *out0, float *out1)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx;
    const int8_t *p = q, *r = q + ldq;
    const uintptr_t pf = xa_q8_ahead(q, ldq);
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        xa_q8_prefetch(pf, k);
        xa_q8_prefetch(pf + (uintptr_t)ldq, k);
        __m256 u0, u1, v0, v1;
        q8_load16(p + k, &u0, &u1);
        q8_load16(r + k, &v0, &v1);
        __m256 y = _mm256_loadu_ps(x0 + k), z = _mm256_loadu_ps(x0 + k + 8);
        a0 = _mm256_fmadd_ps(z, u1, _mm256_fmadd_ps(y, u0, a0));
        b0 = _mm256_fmadd_ps(z, v1, _mm256_fmadd_ps(y, v0, b0));
        y = _mm256_loadu_ps(x1 + k), z = _mm256_loadu_ps(x1 + k + 8);
        a1 = _mm256_fmadd_ps(z, u1, _mm256_fmadd_ps(y, u0, a1));
        b1 = _mm256_fmadd_ps(z, v1, _mm256_fmadd_ps(y, v0, b1));
        y = _mm256_loadu_ps(x2 + k), z = _mm256_loadu_ps(x2 + k + 8);
        a2 = _mm256_fmadd_ps(z, u1, _mm256_fmadd_ps(y, u0, a2));
        b2 = _mm256_fmadd_ps(z, v1, _mm256_fmadd_ps(y, v0, b2));
        y = _mm256_loadu_ps(x3 + k), z = _mm256_loadu_ps(x3 + k + 8);
        a3 = _mm256_fmadd_ps(z, u1, _mm256_fmadd_ps(y, u0, a3));
        b3 = _mm256_fmadd_ps(z, v1, _mm256_fmadd_ps(y, v0, b3));
    }
    const float s0[4] = {hsum8(a0), hsum8(a1), hsum8(a2), hsum8(a3)};
    const float s1[4] = {hsum8(b0), hsum8(b1), hsum8(b2), hsum8(b3)};
    xa_dot_q8_tail4(x, ldx, p, k, n, s0, out0);
    xa_dot_q8_tail4(x, ldx, r, k, n, s1, out1);
}

static void dot2_q8_avx2(const float *x, int64_t ldx, int64_t rows, const int8_t *q, int64_t ldq,
                         int64_t n, float *out0, float *out1)
{
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) dot2_q8_4_avx2(x + r * ldx, ldx, q, ldq, n, out0 + r, out1 + r);
    const uintptr_t pf = r < rows ? xa_q8_ahead(q, ldq) : 0; /* once, with the first row of x */
    for (; r < rows; r++) {
        out0[r] = dot_q8_1_avx2(x + r * ldx, q, n, r == 0 ? pf : 0);
        out1[r] = dot_q8_1_avx2(x + r * ldx, q + ldq, n, r == 0 ? pf + (uintptr_t)ldq : 0);
    }
}

/* bf16: the 16 bits become the top half of a float; f16: F16C's vcvtph2ps (exact). */
static void cvt_h_avx2(const uint16_t *src, float *dst, int64_t n, int f16)
{
    int64_t i = 0;
    if (f16)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    else
        for (; i + 8 <= n; i += 8) {
            const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
        }
    for (; i < n; i++) dst[i] = xa_half_to_f32(src[i], f16);
}

const xa_kernels xa_kernels_avx2 = {
    .name = "avx2",
    .mr = XA2_MR,
    .nr = XA2_NR,
    .ukr = ukr_avx2,
    .dot = dot_avx2,
    .axpy = axpy_avx2,
    .gemv = gemv_avx2,
    .gemv_t = gemv_t_avx2,
    .vexp = vexp_avx2,
    .colmax = colmax_avx2,
    .expsub = expsub_avx2,
    .softmax = softmax_avx2,
    .rmsnorm = rmsnorm_avx2,
    .layernorm = layernorm_avx2,
    .gelu = gelu_avx2,
    .dotn = dotn_avx2,
    .dot_q8 = dot_q8_avx2,
    .dot2_q8 = dot2_q8_avx2,
    .cvt_h = cvt_h_avx2,
};
