/*
 * Kernel tables: every ISA table this CPU supports against double-precision references and the
 * scalar table, on odd shapes; the GEMM framework (xa_sgemm) for every table, all transposes,
 * alpha/beta variants, padded strides and 1 vs 2 threads; xattn_sgemm / xattn_linear argument
 * checks.
 *
 * Tolerances (u = 2^-24, the fp32 unit roundoff):
 *  - dot products / GEMM: per element |got - ref| <= 2 (K + 2) u (|alpha| sum_p |a_ip b_pj| +
 *    |beta c_ij|) + 1e-30. Recursive (or blocked) fp32 summation of K products satisfies
 *    |err| <= gamma_K sum |a b| with gamma_K = K u / (1 - K u) (Higham, Accuracy and Stability of
 *    Numerical Algorithms, 3.1); the +2 and the factor 2 cover the alpha/beta/C update and the
 *    alpha folded into packing. An indexing or blocking bug gives O(1) relative errors.
 *  - exp: <= 2.5e-7 relative (about 2 ulp) against libm expf for normal results; the kernels
 *    measure <= 1.0 ulp against expf over every float in [-104, 89]. Subnormal results: within
 *    2 ulp of the subnormal spacing. Special values exactly.
 *  - GELU: 5e-7 (abs + rel, tu_rel_err) against double-precision erfc / tanh references (the
 *    kernels measure <= 1e-7 over [-12, 12]; 2e-6 would let a wrong coefficient through).
 *  - softmax / norms: 1e-6 (abs + rel) against the scalar table (float64 accumulation in both).
 */
#include "base/base.h"
#include "kernels/kernels.h"
#include "testutil.h"
#include "x86_emu.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define U32 (1.0 / 16777216.0) /* 2^-24 */

static uint64_t rng = 0x1234567ULL;

static float *fbuf(int64_t n)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static float frand(float lo, float hi)
{
    float v;
    tu_fill_uniform(&v, 1, lo, hi, &rng);
    return v;
}

/* ---- micro-kernel ----------------------------------------------------------------------- */

static void test_ukr(const xa_kernels *kt)
{
    const int64_t ks[] = {0, 1, 7, 64, 333};
    const int mr = kt->mr, nr = kt->nr;
    for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++)
        for (int pad = 0; pad < 2; pad++)
            for (int acc = 0; acc < 2; acc++) {
                const int64_t k = ks[ki];
                const int64_t lda = mr + 5 * pad, ldb = nr + 3 * pad, ldc = nr + 7 * pad;
                /* exact sizes: the kernel must not read past the last row it needs */
                const int64_t na = k ? (k - 1) * lda + mr : 0, nb = k ? (k - 1) * ldb + nr : 0;
                float *A = fbuf(na), *B = fbuf(nb), *C = fbuf(mr * ldc), *C0 = fbuf(mr * ldc);
                tu_fill_uniform(A, na, -1, 1, &rng);
                tu_fill_uniform(B, nb, -1, 1, &rng);
                tu_fill_uniform(C0, mr * ldc, -1, 1, &rng);
                for (int i = 0; i < mr; i++)
                    for (int64_t j = nr; j < ldc; j++) C0[i * ldc + j] = 12345.0f; /* sentinel */
                if (!acc) /* overwrite mode must ignore C, NaN included */
                    for (int i = 0; i < mr; i++)
                        for (int j = 0; j < nr; j++) C0[i * ldc + j] = NAN;
                memcpy(C, C0, sizeof(float) * (size_t)(mr * ldc));
                kt->ukr(k, A, lda, B, ldb, C, ldc, acc);
                int bad = 0;
                for (int i = 0; i < mr; i++) {
                    for (int j = 0; j < nr; j++) {
                        double ref = acc ? C0[i * ldc + j] : 0.0, mag = fabs(ref);
                        for (int64_t p = 0; p < k; p++) {
                            double t = (double)A[p * lda + i] * B[p * ldb + j];
                            ref += t;
                            mag += fabs(t);
                        }
                        double tol = 2.0 * (double)(k + 2) * U32 * mag + 1e-30;
                        if (!(fabs(C[i * ldc + j] - ref) <= tol)) bad++;
                    }
                    for (int64_t j = nr; j < ldc; j++)
                        if (C[i * ldc + j] != 12345.0f) bad++;
                }
                CHECK(bad == 0);
                if (bad)
                    fprintf(stderr, "  %s ukr k=%lld pad=%d acc=%d: %d bad elements\n", kt->name,
                            (long long)k, pad, acc, bad);
                free(A);
                free(B);
                free(C);
                free(C0);
            }
}

/* ---- exp -------------------------------------------------------------------------------- */

/* Error of got against ref = expf(x) in units that make 1.0 mean "2 ulp". */
static int exp_ok(float got, float ref)
{
    if (isnan(ref)) return isnan(got);
    if (isinf(ref) || ref == 0.0f) return got == ref || fabsf(got) <= 2 * FLT_TRUE_MIN;
    if (ref < FLT_MIN) return fabs((double)got - ref) <= 2.0 * FLT_TRUE_MIN;
    return fabs((double)got - ref) <= 2.5e-7 * ref;
}

/* dot over odd lengths against a float64 sum; fp32 summation error bound n * 2^-24 * sum|a*b| */
static void test_dot(const xa_kernels *kt)
{
    static const int64_t ns[] = {0,  1,  3,  7,  8,  15,  16,  17,  31,
                                 33, 63, 64, 65, 80, 127, 129, 256, 1000};
    uint64_t st = 99;
    float a[1000], b[1000];
    tu_fill_uniform(a, 1000, -2.0f, 2.0f, &st);
    tu_fill_uniform(b, 1000, -2.0f, 2.0f, &st);
    for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
        int64_t n = ns[t];
        for (int off = 0; off < 2; off++) { /* unaligned start too */
            double ref = 0, mag = 0;
            for (int64_t i = 0; i < n; i++) {
                ref += (double)a[i + off * (n < 999)] * b[i];
                mag += fabs((double)a[i + off * (n < 999)] * b[i]);
            }
            float got = kt->dot(a + off * (n < 999), b, n);
            double bound = (double)(n + 2) * 0x1p-24 * mag + 1e-30;
            CHECK(fabs((double)got - ref) <= bound);
            /* dotn: rows 1..6 of a (row stride n + 1) against b, the first row the same sum */
            if (n <= 160) {
                float outn[6];
                kt->dotn(a + off, n + 1, 6, b, n, outn);
                for (int r = 0; r < 6; r++) {
                    double rr = 0, mg = 0;
                    for (int64_t i = 0; i < n; i++) {
                        rr += (double)a[off + r * (n + 1) + i] * b[i];
                        mg += fabs((double)a[off + r * (n + 1) + i] * b[i]);
                    }
                    CHECK(fabs((double)outn[r] - rr) <= (double)(n + 2) * 0x1p-24 * mg + 1e-30);
                }
            }
        }
    }
}

/* int8 dot products: rows 1..9 of x against one int8 row (every value -128..127 occurs), odd
 * lengths and unaligned starts, against float64 with the dot-product bound */
static void test_dot_q8(const xa_kernels *kt)
{
    static const int64_t ns[] = {0, 1, 5, 15, 16, 17, 31, 32, 33, 47, 64, 100, 257, 768};
    enum { NMAX = 769, RMAX = 9 };
    uint64_t st = 7;
    float *x = fbuf(RMAX * NMAX + 1);
    int8_t q[NMAX + 1];
    tu_fill_uniform(x, RMAX * NMAX + 1, -2.0f, 2.0f, &st);
    for (int64_t i = 0; i <= NMAX; i++) q[i] = (int8_t)((i * 37 + 11) % 256 - 128);
    int bad = 0;
    for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++)
        for (int64_t rows = 1; rows <= RMAX; rows++)
            for (int off = 0; off < 2; off++) {
                const int64_t n = ns[t], ld = n + off;
                float out[RMAX];
                float out2[2][RMAX];
                kt->dot_q8(x + off, ld, rows, q + off, n, out);
                /* two rows: q and the row 7 bytes further (an odd stride) */
                kt->dot2_q8(x + off, ld, rows, q + off, 7, n - 7 > 0 ? n - 7 : 0, out2[0], out2[1]);
                for (int64_t r = 0; r < rows && n > 7; r++)
                    for (int j = 0; j < 2; j++) {
                        double ref = 0, mag = 0;
                        for (int64_t k = 0; k < n - 7; k++) {
                            const double v = (double)x[off + r * ld + k] * q[off + 7 * j + k];
                            ref += v;
                            mag += fabs(v);
                        }
                        bad += !(fabs((double)out2[j][r] - ref) <=
                                 (double)(n + 2) * 0x1p-24 * mag + 1e-30);
                    }
                for (int64_t r = 0; r < rows; r++) {
                    double ref = 0, mag = 0;
                    for (int64_t k = 0; k < n; k++) {
                        const double v = (double)x[off + r * ld + k] * q[off + k];
                        ref += v;
                        mag += fabs(v);
                    }
                    bad += !(fabs((double)out[r] - ref) <= (double)(n + 2) * 0x1p-24 * mag + 1e-30);
                }
            }
    CHECK(bad == 0);
    if (bad) fprintf(stderr, "  %s dot_q8: %d bad\n", kt->name, bad);
    free(x);
}

/* axpy against float64, unaligned starts, odd lengths */
static void test_axpy(const xa_kernels *kt)
{
    static const int64_t ns[] = {0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 80, 100, 257};
    uint64_t st = 7;
    float x[260], y[260], y0[260];
    tu_fill_uniform(x, 260, -2.0f, 2.0f, &st);
    tu_fill_uniform(y0, 260, -2.0f, 2.0f, &st);
    for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
        int64_t n = ns[t];
        memcpy(y, y0, sizeof y);
        kt->axpy(-0.75f, x + 1, y + 2, n);
        int bad = 0;
        for (int64_t i = 0; i < 258; i++) {
            double want = (i >= 2 && i < n + 2) ? (double)y0[i] - 0.75 * x[i - 1] : y0[i];
            if (fabs(y[i] - want) >
                2.4e-7 * (fabs(y0[i]) + fabs(0.75 * x[i > 0 ? i - 1 : 0]) + 1e-30))
                bad++;
        }
        CHECK(bad == 0);
    }
}

/* gemv / gemv_t against float64 on odd sizes with a row stride larger than n */
static void test_gemv(const xa_kernels *kt)
{
    static const int64_t rs[] = {1, 3, 4, 5, 17, 64};
    static const int64_t ns[] = {1, 7, 16, 33, 64, 80, 100, 256};
    uint64_t st = 5;
    static float A[64 * 260], x[260], y[260], y0[260];
    tu_fill_uniform(A, 64 * 260, -1.0f, 1.0f, &st);
    tu_fill_uniform(x, 260, -1.0f, 1.0f, &st);
    tu_fill_uniform(y0, 260, -1.0f, 1.0f, &st);
    for (size_t a = 0; a < sizeof rs / sizeof rs[0]; a++)
        for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++) {
            int64_t rows = rs[a], n = ns[b], lda = n + 3;
            int bad = 0;
            kt->gemv(A, lda, rows, x, n, y);
            for (int64_t r = 0; r < rows; r++) {
                double ref = 0, mag = 0;
                for (int64_t d = 0; d < n; d++) {
                    ref += (double)A[r * lda + d] * x[d];
                    mag += fabs((double)A[r * lda + d] * x[d]);
                }
                if (fabs(y[r] - ref) > (double)(n + 2) * 0x1p-24 * mag + 1e-30) bad++;
            }
            memcpy(y, y0, sizeof y);
            kt->gemv_t(A, lda, rows, x, n, y);
            for (int64_t d = 0; d < 260; d++) {
                double ref = y0[d], mag = fabs((double)y0[d]);
                if (d < n)
                    for (int64_t r = 0; r < rows; r++) {
                        ref += (double)x[r] * A[r * lda + d];
                        mag += fabs((double)x[r] * A[r * lda + d]);
                    }
                if (fabs(y[d] - ref) > (double)(rows + 2) * 0x1p-24 * mag + 1e-30) bad++;
            }
            CHECK(bad == 0);
        }
}

static void test_vexp(const xa_kernels *kt)
{
    const float special[] = {-INFINITY, -1000.0f, -104.0f, -103.9f, -100.0f,  -88.0f,
                             -87.5f,    -87.3f,   -50.0f,  -1.0f,   -1e-8f,   -0.0f,
                             0.0f,      1e-8f,    0.5f,    1.0f,    10.0f,    88.0f,
                             88.72f,    88.73f,   89.0f,   100.0f,  INFINITY, NAN};
    const int ns = (int)(sizeof special / sizeof special[0]);
    /* lengths around the vector widths; the special values at every position */
    const int64_t lens[] = {0, 1, 5, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 100};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        int64_t n = lens[li];
        float *x = fbuf(n + 1), *y = fbuf(n + 1);
        for (int s = 0; s < ns; s++) {
            for (int64_t i = 0; i < n; i++) x[i] = special[(s + i) % ns];
            x[n] = 777.0f; /* guard: must stay */
            memcpy(y, x, sizeof(float) * (size_t)(n + 1));
            kt->vexp(y, n);
            int bad = 0;
            for (int64_t i = 0; i < n; i++) bad += !exp_ok(y[i], expf(x[i]));
            CHECK(bad == 0);
            CHECK(y[n] == 777.0f);
            if (bad)
                fprintf(stderr, "  %s vexp specials n=%lld: %d bad\n", kt->name, (long long)n, bad);
        }
        free(x);
        free(y);
    }
    /* random in [-80, 80] and a dense sweep over the whole finite range */
    const int64_t n = 200000;
    float *x = fbuf(n), *y = fbuf(n);
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 0)
            tu_fill_uniform(x, n, -80.0f, 80.0f, &rng);
        else
            for (int64_t i = 0; i < n; i++) x[i] = -104.0f + 193.0f * (float)i / (float)n;
        memcpy(y, x, sizeof(float) * (size_t)n);
        kt->vexp(y, n);
        int64_t bad = 0;
        double worst = 0;
        for (int64_t i = 0; i < n; i++) {
            float r = expf(x[i]);
            if (!exp_ok(y[i], r)) bad++;
            if (r >= FLT_MIN && isfinite(r)) {
                double e = fabs((double)y[i] - r) / r;
                if (e > worst) worst = e;
            }
        }
        CHECK(bad == 0);
        if (bad || pass == 1)
            fprintf(bad ? stderr : stdout, "  %s vexp %s: max rel err %.3g, %lld bad\n", kt->name,
                    pass ? "sweep [-104,89]" : "random [-80,80]", worst, (long long)bad);
    }
    free(x);
    free(y);
}

/* ---- column helpers --------------------------------------------------------------------- */

static void test_colmax_expsub(const xa_kernels *kt, const xa_kernels *sc)
{
    const int64_t dims[] = {1, 3, 17, 33, 100};
    for (size_t ri = 0; ri < 5; ri++)
        for (size_t ci = 0; ci < 5; ci++) {
            const int64_t rows = dims[ri], cols = dims[ci], ld = cols + 5;
            float *S = fbuf(rows * ld), *S2 = fbuf(rows * ld);
            float *m = fbuf(cols + 1), *m2 = fbuf(cols + 1);
            float *sum = fbuf(cols + 1), *sum2 = fbuf(cols + 1);
            tu_fill_uniform(S, rows * ld, -30, 30, &rng);
            for (int64_t i = 0; i < rows * ld; i += 7) S[i] = -INFINITY; /* masked logits */
            for (int64_t c = 0; c < cols; c++) {
                m[c] = (c % 3 == 0) ? -INFINITY : frand(-5, 5); /* running max from before */
                sum[c] = frand(0, 3);
            }
            m[cols] = sum[cols] = 4242.0f; /* guards */
            memcpy(S2, S, sizeof(float) * (size_t)(rows * ld));
            memcpy(m2, m, sizeof(float) * (size_t)(cols + 1));
            memcpy(sum2, sum, sizeof(float) * (size_t)(cols + 1));
            kt->colmax(S, rows, cols, ld, m);
            sc->colmax(S2, rows, cols, ld, m2);
            CHECK(memcmp(m, m2, sizeof(float) * (size_t)(cols + 1)) == 0); /* max is exact */
            kt->expsub(S, rows, cols, ld, m, sum);
            sc->expsub(S2, rows, cols, ld, m2, sum2);
            int bad = 0;
            for (int64_t r = 0; r < rows; r++) {
                for (int64_t c = 0; c < cols; c++) bad += !exp_ok(S[r * ld + c], S2[r * ld + c]);
                for (int64_t c = cols; c < ld; c++) bad += S[r * ld + c] != S2[r * ld + c];
            }
            /* sums: each addend within 2.5e-7 relative, the same order of additions; the
             * rounding of the two running sums can drift apart by up to rows * u each */
            double tol = 2.5e-7 + 2.0 * (double)rows * U32;
            for (int64_t c = 0; c < cols; c++) {
                /* m = -inf with S = -inf gives NaN in both (exp(-inf - -inf)) */
                if (isnan(sum2[c])) {
                    bad += !isnan(sum[c]);
                    continue;
                }
                bad += !(fabs((double)sum[c] - sum2[c]) <= tol * fabs((double)sum2[c]) + 1e-30);
            }
            CHECK(sum[cols] == 4242.0f);
            CHECK(bad == 0);
            if (bad)
                fprintf(stderr, "  %s expsub rows=%lld cols=%lld: %d bad\n", kt->name,
                        (long long)rows, (long long)cols, bad);
            free(S);
            free(S2);
            free(m);
            free(m2);
            free(sum);
            free(sum2);
        }
}

/* ---- softmax and norms ------------------------------------------------------------------ */

static void test_rows(const xa_kernels *kt, const xa_kernels *sc)
{
    const int64_t ns[] = {1, 2, 15, 16, 17, 63, 64, 65, 333, 4096};
    char what[128];
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
        const int64_t n = ns[ni];
        float *x = fbuf(n + 1), *y = fbuf(n + 1), *y2 = fbuf(n + 1);
        float *w = fbuf(n), *b = fbuf(n);
        tu_fill_uniform(w, n, 0.5f, 1.5f, &rng);
        tu_fill_uniform(b, n, -1, 1, &rng);

        /* softmax, logits spread over +-20 with a masked entry */
        tu_fill_uniform(x, n, -20, 20, &rng);
        if (n > 2) x[n / 2] = -INFINITY;
        x[n] = 999.0f;
        memcpy(y, x, sizeof(float) * (size_t)(n + 1));
        memcpy(y2, x, sizeof(float) * (size_t)(n + 1));
        kt->softmax(y, n);
        sc->softmax(y2, n);
        snprintf(what, sizeof what, "%s softmax n=%lld", kt->name, (long long)n);
        tu_check_close(what, y, y2, n, 1e-6);
        CHECK(y[n] == 999.0f);
        double s = 0;
        for (int64_t i = 0; i < n; i++) s += y[i];
        CHECK(fabs(s - 1.0) < 1e-5);

        for (int variant = 0; variant < 4; variant++) {
            const float *wv = (variant & 1) ? w : NULL, *bv = (variant & 2) ? b : NULL;
            /* inputs with a large common offset: float accumulation of the mean/variance would
             * lose the variance entirely; the float64 two-pass reference does not */
            float off = variant >= 2 ? 1000.0f : 0.0f;
            tu_fill_uniform(x, n, off - 2, off + 2, &rng);
            y[n] = y2[n] = 999.0f;
            kt->rmsnorm(x, wv, 1e-6f, n, y);
            sc->rmsnorm(x, wv, 1e-6f, n, y2);
            snprintf(what, sizeof what, "%s rmsnorm n=%lld w=%d", kt->name, (long long)n, !!wv);
            tu_check_close(what, y, y2, n, 1e-6);
            kt->layernorm(x, wv, bv, 1e-5f, n, y);
            sc->layernorm(x, wv, bv, 1e-5f, n, y2);
            snprintf(what, sizeof what, "%s layernorm n=%lld w=%d b=%d off=%g", kt->name,
                     (long long)n, !!wv, !!bv, off);
            tu_check_close(what, y, y2, n, 1e-6);
            CHECK(y[n] == 999.0f);
        }
        free(x);
        free(y);
        free(y2);
        free(w);
        free(b);
    }
}

/* ---- GELU ------------------------------------------------------------------------------- */

/* 16-bit weights to float: every bf16 and f16 pattern, exactly (NaN as NaN), at odd lengths
 * and offsets so the vector loops and their tails both run. */
static void test_cvt_h(const xa_kernels *kt)
{
    uint16_t *h = malloc(65536 * sizeof *h);
    float *got = fbuf(65536);
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    int bad = 0;
    for (int f16 = 0; f16 <= 1; f16++)
        for (int64_t off = 0; off < 65536; off += 4099) {
            const int64_t n = XA_MIN((int64_t)4099, 65536 - off) - (off % 3);
            kt->cvt_h(h + off, got + off, n, f16);
            for (int64_t i = off; i < off + n; i++) {
                const float w = xa_half_to_f32(h[i], f16);
                bad += (w != w) ? got[i] == got[i] : memcmp(&w, got + i, sizeof w) != 0;
            }
        }
    if (bad) fprintf(stderr, "  %s cvt_h: %d wrong\n", kt->name, bad);
    CHECK(bad == 0);
    free(h);
    free(got);
}

static void test_gelu(const xa_kernels *kt)
{
    const int64_t n = 20000;
    /* (-inf gives NaN in the scalar reference, x * 0; not asserted either way) */
    const float special[] = {0.0f, -0.0f, 1e-20f, -1e-20f, 1e-6f, -30.0f, 30.0f, -1e4f, 1e4f, NAN};
    const int64_t nsp = (int64_t)(sizeof special / sizeof special[0]);
    float *x = fbuf(n + nsp + 1), *y = fbuf(n + nsp + 1), *ref = fbuf(n + nsp);
    for (int64_t i = 0; i < n; i++) x[i] = -10.0f + 20.0f * (float)i / (float)n;
    memcpy(x + n, special, sizeof special);
    const int64_t tot = n + nsp;
    for (int form = 0; form < 2; form++) {
        for (int64_t i = 0; i < tot; i++) {
            double v = x[i];
            ref[i] = form ? (float)(0.5 * v *
                                    (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))))
                          : (float)(0.5 * v * erfc(-v / sqrt(2.0)));
        }
        /* odd lengths: tails of the vector loop */
        for (int64_t len = tot; len >= tot - 9; len -= 3) {
            memcpy(y, x, sizeof(float) * (size_t)tot);
            y[len] = 555.0f;
            kt->gelu(y, len, form);
            char what[96];
            snprintf(what, sizeof what, "%s gelu %s n=%lld", kt->name, form ? "tanh" : "erf",
                     (long long)len);
            tu_check_close(what, y, ref, len, 5e-7);
            CHECK(y[len] == 555.0f);
        }
        float inf[3] = {INFINITY, 1e30f, -1e30f};
        kt->gelu(inf, 3, form);
        CHECK(inf[0] == INFINITY && inf[1] == 1e30f && inf[2] == 0.0f);
    }
    free(x);
    free(y);
    free(ref);
}

/* ---- GEMM ------------------------------------------------------------------------------- */

/* op(X)[r][c] of a row-major matrix stored as (rows, cols) or transposed */
static inline float opget(const float *X, int64_t ld, int trans, int64_t r, int64_t c)
{
    return trans ? X[c * ld + r] : X[r * ld + c];
}

static int gemm_case(const xa_kernels *kt, int ta, int tb, int64_t M, int64_t N, int64_t K,
                     float alpha, float beta, int pad, int threads)
{
    const int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    const int64_t lda = ac + 3 * pad, ldb = bc + 5 * pad, ldc = N + 2 * pad;
    /* exact allocations (last row only as long as needed) so overreads are caught by ASan */
    const int64_t na = ar ? (ar - 1) * lda + ac : 0, nb = br ? (br - 1) * ldb + bc : 0;
    const int64_t nc = M * ldc;
    float *A = fbuf(na), *B = fbuf(nb), *C = fbuf(nc), *C0 = fbuf(nc);
    tu_fill_uniform(A, na, -1, 1, &rng);
    tu_fill_uniform(B, nb, -1, 1, &rng);
    tu_fill_uniform(C0, nc, -1, 1, &rng);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = N; j < ldc; j++) C0[i * ldc + j] = 31337.0f;
    if (beta == 0.0f) /* beta = 0 must ignore C, NaN included */
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) C0[i * ldc + j] = NAN;
    memcpy(C, C0, sizeof(float) * (size_t)nc);
    xattn_set_threads(threads);
    xa_sgemm(kt, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    int bad = 0;
    for (int64_t i = 0; i < M; i++) {
        for (int64_t j = 0; j < N; j++) {
            double s = 0, mag = 0;
            for (int64_t p = 0; p < K; p++) {
                double t = (double)opget(A, lda, ta, i, p) * opget(B, ldb, tb, p, j);
                s += t;
                mag += fabs(t);
            }
            double c0 = beta == 0.0f ? 0.0 : (double)beta * C0[i * ldc + j];
            double ref = alpha * s + c0;
            double tol = 2.0 * (double)(K + 2) * U32 * (fabs(alpha) * mag + fabs(c0)) + 1e-30;
            if (!(fabs(C[i * ldc + j] - ref) <= tol)) {
                if (bad < 3)
                    fprintf(stderr, "    C[%lld][%lld] = %.9g, want %.9g (tol %.3g)\n",
                            (long long)i, (long long)j, C[i * ldc + j], ref, tol);
                bad++;
            }
        }
        for (int64_t j = N; j < ldc; j++) bad += C[i * ldc + j] != 31337.0f;
    }
    CHECK(bad == 0);
    if (bad)
        fprintf(stderr,
                "  %s sgemm ta=%d tb=%d M=%lld N=%lld K=%lld alpha=%g beta=%g pad=%d "
                "threads=%d: %d bad\n",
                kt->name, ta, tb, (long long)M, (long long)N, (long long)K, alpha, beta, pad,
                threads, bad);
    /* the same problem on the other thread count must give bit-identical results */
    float *C2 = fbuf(nc);
    memcpy(C2, C0, sizeof(float) * (size_t)nc);
    xattn_set_threads(threads == 1 ? 2 : 1);
    xa_sgemm(kt, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C2, ldc);
    int same = memcmp(C, C2, sizeof(float) * (size_t)nc) == 0;
    CHECK(same);
    if (!same)
        fprintf(stderr, "  %s sgemm M=%lld N=%lld K=%lld: result depends on thread count\n",
                kt->name, (long long)M, (long long)N, (long long)K);
    xattn_set_threads(0);
    free(A);
    free(B);
    free(C);
    free(C0);
    free(C2);
    return bad;
}

static void test_gemm(const xa_kernels *kt)
{
    const float ab[][2] = {{1.0f, 0.0f}, {1.0f, 1.0f}, {-0.5f, 2.0f}, {2.5f, -1.0f}, {0.0f, 0.5f}};
    const int nab = (int)(sizeof ab / sizeof ab[0]);
    /* every combination of small odd sizes (direct path and small packed problems) */
    const int64_t s1[] = {1, 2, 3, 7, 17, 33, 65};
    int v = 0, fails = 0;
    for (int a = 0; a < 7; a++)
        for (int b = 0; b < 7; b++)
            for (int c = 0; c < 7; c++, v++) {
                int t = v % 4, x = v % nab;
                fails += gemm_case(kt, t & 1, t >> 1, s1[a], s1[b], s1[c], ab[x][0], ab[x][1],
                                   v % 3 == 0, 1 + v % 2);
            }
    /* larger odd sizes: several K blocks, several column blocks, more than one row block,
     * edge tiles on both sides, skinny shapes; all four transposes, alpha/beta pairs */
    const int64_t big[][3] = {{129, 257, 65},
                              {257, 129, 129},
                              {65, 33, 1000},
                              {33, 700, 257},
                              {300, 17, 777},
                              {2100, 40, 30},
                              {257, 257, 257},
                              {1, 1000, 300},
                              {1000, 1, 300},
                              /* skinny (direct, threaded) and just past it (packed) */
                              {4, 3000, 200},
                              {3000, 2, 100},
                              {2, 70, 1500},
                              {5, 600, 300},
                              {600, 5, 300},
                              {3, 40000, 1}};
    /* under emulation (about 1000x slower) one transpose case of each, in turn */
    const int emu = tu_emulated();
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
        for (int t = emu ? (int)(i % 4) : 0; t < (emu ? (int)(i % 4) + 1 : 4); t++) {
            int x = (int)(i + (size_t)t) % nab;
            fails += gemm_case(kt, t & 1, t >> 1, big[i][0], big[i][1], big[i][2], ab[x][0],
                               ab[x][1], (int)(i + (size_t)t) % 2, 1 + t % 2);
        }
    /* 3 threads (an odd grid) against 1, bitwise */
    fails += gemm_case(kt, 0, 1, 257, 129, 129, 1.0f, 0.0f, 1, 3);
    fails += gemm_case(kt, 1, 0, 3000, 3, 77, 1.0f, 1.0f, 0, 3);
    /* K = 0 and alpha = 0: C = beta C */
    fails += gemm_case(kt, 0, 0, 17, 33, 0, 1.0f, 0.5f, 1, 1);
    fails += gemm_case(kt, 1, 1, 65, 65, 65, 0.0f, 2.0f, 0, 2);
    fails += gemm_case(kt, 0, 1, 65, 65, 0, 1.0f, 0.0f, 0, 2);
    printf("  %s sgemm: %d bad elements\n", kt->name, fails);
}

/* ---- public API ------------------------------------------------------------------------- */

/* Forcing a kernel set: each one this CPU and build have is taken, each other one refused
 * with a message that names it; an unknown name is an argument error; "auto" is the best. */
static void test_forced_sets(void)
{
    const char *names[] = TU_ISAS;
    for (int t = 0; t < TU_N_ISAS; t++) {
        if (xa_kern_by_name(names[t])) {
            CHECK_OK(xattn_set_isa(names[t]));
            CHECK(strcmp(xattn_isa(), names[t]) == 0);
        } else {
            CHECK_FAIL(xattn_set_isa(names[t]), XATTN_ERR_UNSUPPORTED);
            CHECK(strstr(xattn_last_error(), names[t]) != NULL &&
                  strstr(xattn_last_error(), "not available") != NULL);
        }
    }
    CHECK_FAIL(xattn_set_isa("sse9"), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "unknown kernel set 'sse9'") != NULL);
    CHECK_OK(xattn_set_isa("auto"));
    CHECK(strcmp(xattn_isa(), xa_kern_best()->name) == 0);
}

static void test_api(void)
{
    float A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {1, 0, 0, 1, 1, 1}, C[4] = {0};
    CHECK_OK(xattn_sgemm(0, 0, 2, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 2));
    CHECK(C[0] == 4 && C[1] == 5 && C[2] == 10 && C[3] == 11);
    CHECK_FAIL(xattn_sgemm(0, 0, -1, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 2), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "M") != NULL);
    CHECK_FAIL(xattn_sgemm(0, 0, 2, 2, 3, 1.0f, NULL, 3, B, 2, 0.0f, C, 2), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "A") != NULL);
    CHECK_FAIL(xattn_sgemm(0, 0, 2, 2, 3, 1.0f, A, 2, B, 2, 0.0f, C, 2), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "lda") != NULL);
    CHECK_FAIL(xattn_sgemm(0, 1, 2, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 2), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "ldb") != NULL);
    CHECK_FAIL(xattn_sgemm(0, 0, 2, 2, 3, 1.0f, A, 3, B, 2, 0.0f, NULL, 2), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_sgemm(0, 0, 2, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 1), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "ldc") != NULL);
    CHECK_FAIL(xattn_sgemm(0, 0, 3, (int64_t)1 << 40, 3, 1.0f, A, 3, B, (int64_t)1 << 40, 0.0f, C,
                           (int64_t)1 << 62),
               XATTN_ERR_ARG);
    /* empty problems are fine with NULL operands; alpha = 0 does not read A or B */
    CHECK_OK(xattn_sgemm(0, 0, 0, 0, 0, 1.0f, NULL, 0, NULL, 0, 0.0f, NULL, 0));
    C[0] = C[1] = C[2] = C[3] = 2.0f;
    CHECK_OK(xattn_sgemm(0, 0, 2, 2, 3, 0.0f, NULL, 0, NULL, 0, 0.5f, C, 2));
    CHECK(C[0] == 1.0f && C[3] == 1.0f);

    /* linear: y = x W^T + b, with sizes through the packed path too */
    /* (M, K, N): direct, skinny (few rows / few columns) and packed paths */
    const int64_t shapes[][3] = {{2, 3, 2},     {5, 7, 3},     {1, 300, 400}, {3, 200, 100},
                                 {5000, 20, 3}, {77, 96, 130}, {300, 64, 200}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
        float *x = fbuf(M * K), *W = fbuf(N * K), *b = fbuf(N), *y = fbuf(M * N), *r = fbuf(M * N);
        tu_fill_uniform(x, M * K, -1, 1, &rng);
        tu_fill_uniform(W, N * K, -1, 1, &rng);
        tu_fill_uniform(b, N, -1, 1, &rng);
        for (int withb = 0; withb < 2; withb++) {
            for (int64_t i = 0; i < M * N; i++) y[i] = NAN;
            CHECK_OK(xattn_linear(x, M, K, W, withb ? b : NULL, N, y));
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < N; j++) {
                    double acc = withb ? b[j] : 0.0;
                    for (int64_t p = 0; p < K; p++) acc += (double)x[i * K + p] * W[j * K + p];
                    r[i * N + j] = (float)acc;
                }
            char what[64];
            snprintf(what, sizeof what, "linear M=%lld K=%lld N=%lld b=%d", (long long)M,
                     (long long)K, (long long)N, withb);
            tu_check_close(what, y, r, M * N, 2.0 * (double)(K + 2) * U32 * (double)(K + 1));
        }
        free(x);
        free(W);
        free(b);
        free(y);
        free(r);
    }
    float y1[2];
    float bb[2] = {3, 4};
    CHECK_OK(xattn_linear(NULL, 1, 0, NULL, bb, 2, y1)); /* K = 0: y = b */
    CHECK(y1[0] == 3 && y1[1] == 4);
    CHECK_FAIL(xattn_linear(A, 2, 3, NULL, NULL, 2, C), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "W") != NULL);
    CHECK_FAIL(xattn_linear(A, 2, -3, B, NULL, 2, C), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_linear(A, 2, 3, B, NULL, 2, NULL), XATTN_ERR_ARG);
}

static void test_table(const xa_kernels *kt, const xa_kernels *sc)
{
    printf("%s: mr=%d nr=%d\n", kt->name, kt->mr, kt->nr);
    CHECK(kt->ukr && kt->dot && kt->axpy && kt->gemv && kt->gemv_t && kt->vexp && kt->colmax &&
          kt->expsub && kt->softmax && kt->rmsnorm && kt->layernorm && kt->gelu && kt->dotn &&
          kt->dot_q8 && kt->dot2_q8);
    CHECK(kt->mr > 0 && kt->nr > 0);
    test_ukr(kt);
    test_dot(kt);
    test_dot_q8(kt);
    test_axpy(kt);
    test_gemv(kt);
    test_vexp(kt);
    test_colmax_expsub(kt, sc);
    test_rows(kt, sc);
    test_gelu(kt);
    test_cvt_h(kt);
    test_gemm(kt);
}

int main(void)
{
    const char *names[] = TU_ISAS;
    const xa_kernels *sc = xa_kern_by_name("scalar");
    CHECK(sc != NULL);
    CHECK(xa_kern() != NULL);
    for (int t = 0; t < TU_N_ISAS; t++) {
        const xa_kernels *kt = xa_kern_by_name(names[t]);
        if (!kt) {
            printf("%s: not available on this CPU/build, skipped\n", names[t]);
            continue;
        }
        test_table(kt, sc);
    }
#if defined(XATTN_TEST_X86_EMU)
    /* the AVX-512 kernels over portable intrinsics (tests/x86_emu.c), on any CPU */
    printf("avx512 over emulated intrinsics:\n");
    test_table(&xa_kernels_avx512_emu, sc);
#else
    printf("avx512 over emulated intrinsics: not built (no SIMDe headers at configure time)\n");
#endif
    test_api();
    test_forced_sets();
    return tu_finish("test_kernels");
}
