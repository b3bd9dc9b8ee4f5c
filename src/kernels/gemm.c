/*
 * SGEMM framework over the kernel table (BLIS-style): packing, cache blocking and threads
 * around the table's mr x nr micro-kernel.
 *
 *   for ic in M step MC:                      A block (MC x KC), shared by the threads
 *     for pc in K step KC:
 *       pack A block into mr-row panels       (threads split the panels)      -- barrier
 *       for each work item (jc block of NC columns, chunk of A panels)     (threads split)
 *         pack B block (KC x NC) into nr-col panels, private to the thread (L2 resident)
 *         for each A panel (mr x KC, L1 resident):
 *           for each B panel (KC x nr, streamed from L2): micro-kernel    -- barrier
 *
 * Every C element is summed in the same order whatever the thread count (K is never split
 * across threads: each C tile is owned by one thread per K block, K blocks run in order), so
 * results do not depend on the number of threads. alpha is folded into the packed A; beta (or
 * the bias of xattn_linear) is applied to a C tile just before its first K block is added.
 * Tiles that overhang M or N are computed into a small temporary tile (panels are zero
 * padded) and the valid part is merged into C.
 */
#include "kernels.h"
#include "../base/base.h"

#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define XA_GEMM_SSE 1
#endif

/* Problems with M*N*K below this skip packing and threads (direct loops). */
#define XA_GEMM_SMALL 32768
/* Work per thread (multiply-adds) below which fewer threads are used. */
#define XA_GEMM_PER_THREAD (1 << 19)
/* Largest micro-tile any table uses (temporary edge tile). */
#define XA_MAX_TILE (16 * 64)

typedef struct gemm_job {
    const xa_kernels *kt;
    int ta, tb;
    int64_t M, N, K;
    float alpha, beta;
    const float *A, *B, *bias;
    int64_t lda, ldb, ldc;
    float *C;
    int64_t MC, KC, NC;
    float *Ap;        /* MC x KC, packed in mr-row panels (shared)            */
    float *Bp;        /* nt blocks of KC x NC, packed in nr-column panels     */
    int64_t bp_size;  /* floats per thread block                              */
} gemm_job;

/* ---- packing ---------------------------------------------------------------------------- */

/* dst[p*w + i] = alpha * src[i*ld + p] for i < rows, p < kc; zero for rows <= i < w. */
static void pack_t(float *dst, int64_t w, const float *src, int64_t ld, int64_t rows, int64_t kc,
                   float alpha)
{
    int64_t i = 0;
#ifdef XA_GEMM_SSE
    const __m128 va = _mm_set1_ps(alpha);
    for (; i + 4 <= rows; i += 4) {
        const float *s0 = src + i * ld, *s1 = s0 + ld, *s2 = s1 + ld, *s3 = s2 + ld;
        float *d = dst + i;
        int64_t p = 0;
        for (; p + 4 <= kc; p += 4) {
            __m128 r0 = _mm_loadu_ps(s0 + p), r1 = _mm_loadu_ps(s1 + p);
            __m128 r2 = _mm_loadu_ps(s2 + p), r3 = _mm_loadu_ps(s3 + p);
            _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
            if (alpha != 1.0f) {
                r0 = _mm_mul_ps(r0, va);
                r1 = _mm_mul_ps(r1, va);
                r2 = _mm_mul_ps(r2, va);
                r3 = _mm_mul_ps(r3, va);
            }
            _mm_storeu_ps(d + (p + 0) * w, r0);
            _mm_storeu_ps(d + (p + 1) * w, r1);
            _mm_storeu_ps(d + (p + 2) * w, r2);
            _mm_storeu_ps(d + (p + 3) * w, r3);
        }
        for (; p < kc; p++) {
            d[p * w + 0] = alpha * s0[p];
            d[p * w + 1] = alpha * s1[p];
            d[p * w + 2] = alpha * s2[p];
            d[p * w + 3] = alpha * s3[p];
        }
    }
#endif
    for (; i < rows; i++) {
        const float *s = src + i * ld;
        for (int64_t p = 0; p < kc; p++) dst[p * w + i] = alpha * s[p];
    }
    if (rows < w)
        for (int64_t p = 0; p < kc; p++)
            for (int64_t r = rows; r < w; r++) dst[p * w + r] = 0.0f;
}

/* dst[p*w + i] = alpha * src[p*ld + i] for i < rows, p < kc; zero for rows <= i < w. */
static void pack_n(float *dst, int64_t w, const float *src, int64_t ld, int64_t rows, int64_t kc,
                   float alpha)
{
    for (int64_t p = 0; p < kc; p++) {
        const float *s = src + p * ld;
        float *d = dst + p * w;
        if (alpha == 1.0f)
            memcpy(d, s, (size_t)rows * sizeof(float));
        else
            for (int64_t i = 0; i < rows; i++) d[i] = alpha * s[i];
        for (int64_t i = rows; i < w; i++) d[i] = 0.0f;
    }
}

/* Panel of op(A): rows [i0, i0+rows), columns [p0, p0+kc), into mr-wide panel. */
static void pack_a_panel(const gemm_job *g, float *dst, int64_t i0, int64_t rows, int64_t p0,
                         int64_t kc)
{
    int64_t mr = g->kt->mr;
    if (!g->ta)
        pack_t(dst, mr, g->A + i0 * g->lda + p0, g->lda, rows, kc, g->alpha);
    else
        pack_n(dst, mr, g->A + p0 * g->lda + i0, g->lda, rows, kc, g->alpha);
}

/* Panel of op(B): rows [p0, p0+kc), columns [j0, j0+cols), into nr-wide panel. */
static void pack_b_panel(const gemm_job *g, float *dst, int64_t j0, int64_t cols, int64_t p0,
                         int64_t kc)
{
    int64_t nr = g->kt->nr;
    if (!g->tb)
        pack_n(dst, nr, g->B + p0 * g->ldb + j0, g->ldb, cols, kc, 1.0f);
    else
        pack_t(dst, nr, g->B + j0 * g->ldb + p0, g->ldb, cols, kc, 1.0f);
}

/* ---- C tile initialisation (before the first K block) ----------------------------------- */

/* The value C starts from: beta*C (0 when beta == 0, whatever C holds) or the bias. */
static inline float c_init(const gemm_job *g, const float *c, int64_t j)
{
    if (g->bias) return g->bias[j];
    if (g->beta == 0.0f) return 0.0f;
    return g->beta == 1.0f ? *c : g->beta * *c;
}

/* ---- macro kernel ----------------------------------------------------------------------- */

/* A panels [pa0, pa1) of the packed A block (rows from ic) against the packed B block
 * (columns [jc, jc+nc)), K block [pc, pc+kc). */
static void macro_kernel(const gemm_job *g, const float *Bp, int64_t ic, int64_t mc, int64_t pa0,
                         int64_t pa1, int64_t jc, int64_t nc, int64_t pc, int64_t kc)
{
    const xa_kernels *kt = g->kt;
    const int64_t mr = kt->mr, nr = kt->nr, ldc = g->ldc;
    const int first = pc == 0;
    float tmp[XA_MAX_TILE];
    for (int64_t ip = pa0; ip < pa1; ip++) {
        const int64_t i0 = ic + ip * mr, mrows = XA_MIN(mr, ic + mc - i0);
        const float *a = g->Ap + ip * mr * kc;
        for (int64_t j0 = jc; j0 < jc + nc; j0 += nr) {
            const int64_t ncols = XA_MIN(nr, jc + nc - j0);
            const float *b = Bp + (j0 - jc) * kc;
            float *c = g->C + i0 * ldc + j0;
            if (mrows == mr && ncols == nr) {
                int acc = 1;
                if (first) {
                    if (g->bias) {
                        for (int64_t i = 0; i < mr; i++)
                            memcpy(c + i * ldc, g->bias + j0, (size_t)nr * sizeof(float));
                    } else if (g->beta == 0.0f) {
                        acc = 0;
                    } else if (g->beta != 1.0f) {
                        for (int64_t i = 0; i < mr; i++)
                            for (int64_t j = 0; j < nr; j++) c[i * ldc + j] *= g->beta;
                    }
                }
                kt->ukr(kc, a, mr, b, nr, c, ldc, acc);
            } else {
                kt->ukr(kc, a, mr, b, nr, tmp, nr, 0);
                for (int64_t i = 0; i < mrows; i++)
                    for (int64_t j = 0; j < ncols; j++) {
                        float *cij = c + i * ldc + j;
                        float base = first ? c_init(g, cij, j0 + j) : *cij;
                        *cij = base + tmp[i * nr + j];
                    }
            }
        }
    }
}

/* ---- the blocked loops, run by every thread of the team ---------------------------------- */

static void gemm_thread(const gemm_job *g, int tid, int nth)
{
    const int64_t mr = g->kt->mr, nr = g->kt->nr;
    float *Bp = g->Bp + (int64_t)tid * g->bp_size;
    const int64_t nbj = (g->N + g->NC - 1) / g->NC; /* column blocks */
    (void)nr;
    for (int64_t ic = 0; ic < g->M; ic += g->MC) {
        const int64_t mc = XA_MIN(g->MC, g->M - ic);
        const int64_t npa = (mc + mr - 1) / mr; /* A panels in this block */
        /* Row chunks per column block so that there is work for every thread. */
        int64_t nrc = nbj >= nth ? 1 : (nth + nbj - 1) / nbj;
        if (nrc > npa) nrc = npa;
        const int64_t items = nbj * nrc;
        for (int64_t pc = 0; pc < g->K; pc += g->KC) {
            const int64_t kc = XA_MIN(g->KC, g->K - pc);
            /* pack the A block, panels split over the team */
            for (int64_t ip = tid; ip < npa; ip += nth)
                pack_a_panel(g, g->Ap + ip * mr * kc, ic + ip * mr, XA_MIN(mr, mc - ip * mr), pc,
                             kc);
#ifdef _OPENMP
            if (nth > 1) {
#pragma omp barrier
            }
#endif
            /* contiguous ranges of items per thread, so a thread's items share B blocks */
            const int64_t it0 = items * tid / nth, it1 = items * (tid + 1) / nth;
            int64_t packed = -1;
            for (int64_t it = it0; it < it1; it++) {
                const int64_t jb = it / nrc, rc = it % nrc;
                const int64_t jc = jb * g->NC, nc = XA_MIN(g->NC, g->N - jc);
                if (packed != jb) {
                    for (int64_t j0 = 0; j0 < nc; j0 += nr)
                        pack_b_panel(g, Bp + j0 * kc, jc + j0, XA_MIN(nr, nc - j0), pc, kc);
                    packed = jb;
                }
                const int64_t pa0 = npa * rc / nrc, pa1 = npa * (rc + 1) / nrc;
                macro_kernel(g, Bp, ic, mc, pa0, pa1, jc, nc, pc, kc);
            }
#ifdef _OPENMP
            if (nth > 1) {
#pragma omp barrier
            }
#endif
        }
    }
}

/* ---- small problems and fallbacks ------------------------------------------------------- */

/* Direct loops: no packing, no threads. C = alpha * op(A) op(B) + (beta C | bias). */
static void gemm_direct(const gemm_job *g)
{
    enum { JB = 64 };
    float acc[JB];
    for (int64_t i = 0; i < g->M; i++)
        for (int64_t j0 = 0; j0 < g->N; j0 += JB) {
            const int64_t nb = XA_MIN((int64_t)JB, g->N - j0);
            for (int64_t j = 0; j < nb; j++) acc[j] = 0.0f;
            for (int64_t p = 0; p < g->K; p++) {
                const float a = g->ta ? g->A[p * g->lda + i] : g->A[i * g->lda + p];
                if (!g->tb) {
                    const float *b = g->B + p * g->ldb + j0;
                    for (int64_t j = 0; j < nb; j++) acc[j] += a * b[j];
                } else {
                    const float *b = g->B + j0 * g->ldb + p;
                    for (int64_t j = 0; j < nb; j++) acc[j] += a * b[j * g->ldb];
                }
            }
            float *c = g->C + i * g->ldc + j0;
            for (int64_t j = 0; j < nb; j++) c[j] = c_init(g, c + j, j0 + j) + g->alpha * acc[j];
        }
}

/* C = beta*C (or bias): K == 0 or alpha == 0, A and B not referenced. */
static void gemm_scale_only(const gemm_job *g)
{
    for (int64_t i = 0; i < g->M; i++) {
        float *c = g->C + i * g->ldc;
        for (int64_t j = 0; j < g->N; j++) c[j] = c_init(g, c + j, j);
    }
}

/* Block sizes for a table: the A panel (mr x KC) fits well inside L1, the B block
 * (KC x NC) in about half of L2, the A block (MC x KC) in L3. */
static void block_sizes(const xa_kernels *kt, int64_t *MC, int64_t *KC, int64_t *NC)
{
    int64_t mr = kt->mr, nr = kt->nr;
    int64_t kc = 384;
    int64_t nc = 512;
    if (mr * kc * 4 > 20 * 1024) kc = (20 * 1024 / (mr * 4)) & ~(int64_t)7;
    nc = (nc + nr - 1) / nr * nr;
    *KC = kc;
    *NC = nc;
    *MC = (2048 + mr - 1) / mr * mr;
}

static void gemm_run(const xa_kernels *kt, int ta, int tb, int64_t M, int64_t N, int64_t K,
                     float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                     float beta, const float *bias, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0) return;
    if (!kt) kt = xa_kern();
    gemm_job g = {.kt = kt, .ta = ta, .tb = tb, .M = M, .N = N, .K = K, .alpha = alpha,
                  .beta = beta, .A = A, .B = B, .bias = bias, .lda = lda, .ldb = ldb,
                  .ldc = ldc, .C = C};
    if (K <= 0 || alpha == 0.0f) {
        gemm_scale_only(&g);
        return;
    }
    /* M*N*K, saturating (only compared against thresholds) */
    double work = (double)M * (double)N * (double)K;
    if (work < XA_GEMM_SMALL || kt->mr * kt->nr > XA_MAX_TILE) {
        gemm_direct(&g);
        return;
    }
    block_sizes(kt, &g.MC, &g.KC, &g.NC);
    const int64_t mc = XA_MIN(g.MC, (M + kt->mr - 1) / kt->mr * kt->mr);
    const int64_t kc = XA_MIN(g.KC, K);
    const int64_t nc = XA_MIN(g.NC, (N + kt->nr - 1) / kt->nr * kt->nr);

    int nt = 1;
#ifdef _OPENMP
    if (!omp_in_parallel()) {
        nt = xa_threads();
        double cap = work / XA_GEMM_PER_THREAD;
        if (cap < nt) nt = cap < 1 ? 1 : (int)cap;
    }
#endif
    g.bp_size = (kc * nc + 15) & ~(int64_t)15; /* keep each thread's block 64-byte aligned */
    g.Ap = xa_alloc((size_t)(mc * kc) * sizeof(float));
    g.Bp = xa_alloc((size_t)(g.bp_size * nt) * sizeof(float));
    if (!g.Ap || !g.Bp) { /* out of memory: slow but correct */
        xa_free(g.Ap);
        xa_free(g.Bp);
        xa_clear_error();
        gemm_direct(&g);
        return;
    }
#ifdef _OPENMP
    if (nt > 1) {
#pragma omp parallel num_threads(nt)
        gemm_thread(&g, omp_get_thread_num(), omp_get_num_threads());
    } else
#endif
        gemm_thread(&g, 0, 1);
    xa_free(g.Ap);
    xa_free(g.Bp);
}

void xa_sgemm(const xa_kernels *kt, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
              float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
              float *C, int64_t ldc)
{
    gemm_run(kt, trans_a != 0, trans_b != 0, M, N, K, alpha, A, lda, B, ldb, beta, NULL, C, ldc);
}

/* ---- public API ------------------------------------------------------------------------- */

/* A (rows, cols) row-major with row stride ld must be addressable: ld >= cols, sizes fit. */
static xattn_status check_matrix(const char *fn, const char *name, const char *ldname,
                                 const float *p, int64_t rows, int64_t cols, int64_t ld)
{
    if (rows == 0 || cols == 0) return XATTN_OK;
    if (!p) return xa_error(XATTN_ERR_ARG, "%s: %s is NULL", fn, name);
    if (ld < cols)
        return xa_error(XATTN_ERR_ARG, "%s: %s = %lld is smaller than the %lld columns of %s", fn,
                        ldname, (long long)ld, (long long)cols, name);
    int64_t n;
    if (xa_mul_ok(rows - 1, ld, &n) || n > INT64_MAX - cols)
        return xa_error(XATTN_ERR_ARG, "%s: %s (%lld x %lld, %s = %lld) overflows", fn, name,
                        (long long)rows, (long long)cols, ldname, (long long)ld);
    return XATTN_OK;
}

xattn_status xattn_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                         const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                         float *C, int64_t ldc)
{
    static const char fn[] = "xattn_sgemm";
    if (M < 0) return xa_error(XATTN_ERR_ARG, "%s: M = %lld is negative", fn, (long long)M);
    if (N < 0) return xa_error(XATTN_ERR_ARG, "%s: N = %lld is negative", fn, (long long)N);
    if (K < 0) return xa_error(XATTN_ERR_ARG, "%s: K = %lld is negative", fn, (long long)K);
    xattn_status s;
    if ((s = check_matrix(fn, "C", "ldc", C, M, N, ldc))) return s;
    if (M > 0 && N > 0 && K > 0 && alpha != 0.0f) { /* A and B are referenced */
        if ((s = trans_a ? check_matrix(fn, "A", "lda", A, K, M, lda)
                         : check_matrix(fn, "A", "lda", A, M, K, lda)))
            return s;
        if ((s = trans_b ? check_matrix(fn, "B", "ldb", B, N, K, ldb)
                         : check_matrix(fn, "B", "ldb", B, K, N, ldb)))
            return s;
    }
    xa_sgemm(NULL, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    xa_clear_error();
    return XATTN_OK;
}

xattn_status xattn_linear(const float *x, int64_t M, int64_t K, const float *W, const float *b,
                          int64_t N, float *y)
{
    static const char fn[] = "xattn_linear";
    if (M < 0) return xa_error(XATTN_ERR_ARG, "%s: M = %lld is negative", fn, (long long)M);
    if (K < 0) return xa_error(XATTN_ERR_ARG, "%s: K = %lld is negative", fn, (long long)K);
    if (N < 0) return xa_error(XATTN_ERR_ARG, "%s: N = %lld is negative", fn, (long long)N);
    xattn_status s;
    if ((s = check_matrix(fn, "y", "N", y, M, N, N))) return s;
    if (M > 0 && N > 0 && K > 0) {
        if ((s = check_matrix(fn, "x", "K", x, M, K, K))) return s;
        if ((s = check_matrix(fn, "W", "K", W, N, K, K))) return s;
    }
    gemm_run(NULL, 0, 1, M, N, K, 1.0f, x, K, W, K, 0.0f, b, y, N);
    xa_clear_error();
    return XATTN_OK;
}
