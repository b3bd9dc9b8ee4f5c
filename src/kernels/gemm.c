/*
 * SGEMM framework over the kernel table (BLIS-style): packing, cache blocking and threads
 * around the table's mr x nr micro-kernel.
 *
 * Threads: C is cut into a tm x tn grid of rectangles (tm * tn = threads, edges on mr / nr tile
 * boundaries, the grid chosen for balance and least packing); each thread computes its
 * rectangle alone with its own packing buffers, so there are no barriers and no cache lines
 * shared between cores. Within a rectangle:
 *
 *   for ic in rows step MC:
 *     for pc in K step KC:
 *       pack A block (MC x KC) into mr-row panels
 *       for jc in columns step NC:
 *         pack B block (KC x NC) into nr-column panels                 (L2 resident)
 *         for each A panel (mr x KC, L1 resident):
 *           for each B panel (KC x nr, streamed from L2): micro-kernel
 *
 * Every C element is summed in the same order whatever the thread count (K is never split
 * across threads: K blocks always start at 0 and run in order, and the micro-kernel's sum of a
 * K block does not depend on the tile's position), so results do not depend on the number of
 * threads. alpha is folded into the packed A; beta (or the bias of xattn_linear) is applied to
 * a C tile just before its first K block is added. Tiles that overhang M or N are computed into
 * a small temporary tile (panels are zero padded) and the valid part is merged into C.
 */
#if !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* sysconf's cache sizes */
#endif
#include "kernels.h"
#include "../base/base.h"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

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
/* Problems with at most this many rows or columns skip packing (direct loops, threaded). */
#define XA_GEMM_SKINNY 4
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
    int tm, tn;               /* thread grid over (M, N)                                */
    float *ws;                /* per thread: A block (MC x KC) then B block (KC x NC)   */
    int64_t ap_size, bp_size; /* floats of each, multiples of 16 (64 bytes)     */
    /* B = W^T with W (N, K) kept in 16 bits or int8 (tb = 1, B unused): converted rows of W
     * (nr x KC per thread, after the B block) are packed like float ones */
    xa_wt w;
    int64_t cv_size;
    int bf16; /* operands rounded to bfloat16 as they are packed (XATTN_COMPUTE_BF16) */
    /* bf16 on a table with a bf16 dot-product micro-kernel: the packed float32 blocks are
     * converted to bf16 pairs (kc padded to kcp, a multiple of kt->kb_bf16) after the A block
     * and the B block of each thread, and the tiles run kt->ukr_bf16 */
    int pairs;
    int64_t mr, nr; /* the micro-tile in use: kt->mr, nr, or kt->mr_bf16, nr_bf16 with pairs */
    int64_t ap2_size, bp2_size;
} gemm_job;

/* ---- packing ---------------------------------------------------------------------------- */

/* dst[p*w + i] = alpha * src[i*ld + p] for i < rows, p < kc; zero for rows <= i < w.
 * (Transposing: source rows are contiguous along p. 4x4 blocks go through SSE registers; the
 * next four source rows are prefetched while the current four are transposed.) */
static void pack_t(float *dst, int64_t w, const float *src, int64_t ld, int64_t rows, int64_t kc,
                   float alpha)
{
    int64_t i = 0;
#ifdef XA_GEMM_SSE
    const __m128 va = _mm_set1_ps(alpha);
    for (; i + 4 <= rows; i += 4) {
        const float *s0 = src + i * ld, *s1 = s0 + ld, *s2 = s1 + ld, *s3 = s2 + ld;
        const float *n0 = s3 + ld; /* next rows (prefetch only; may lie past the matrix) */
        float *d = dst + i;
        int64_t p = 0;
        for (; p + 4 <= kc; p += 4) {
            if ((p & 15) == 0) {
                _mm_prefetch((const char *)(n0 + p), _MM_HINT_T0);
                _mm_prefetch((const char *)(n0 + ld + p), _MM_HINT_T0);
                _mm_prefetch((const char *)(n0 + 2 * ld + p), _MM_HINT_T0);
                _mm_prefetch((const char *)(n0 + 3 * ld + p), _MM_HINT_T0);
            }
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

/* Block of n lanes in w-wide panels (panel q at dst + q*w*kc):
 *   panel[q][p*w + i] = alpha * src[p*ld + q*w + i], zero past n.
 * (Not transposing. Panels are filled in groups about 128 floats wide: each source row segment
 * is read once, contiguously, and the stores go to a few panels (pages) at a time.) */
static void pack_block_n(float *dst, int64_t w, const float *src, int64_t ld, int64_t n, int64_t kc,
                         float alpha)
{
    const int64_t np = (n + w - 1) / w, G = w >= 128 ? 1 : 128 / w;
    for (int64_t q0 = 0; q0 < np; q0 += G) {
        const int64_t q1 = XA_MIN(np, q0 + G), seg = XA_MIN(n, q1 * w) - q0 * w;
        for (int64_t p = 0; p < kc; p++) {
            const float *s = src + p * ld + q0 * w;
            float *d = dst + q0 * w * kc + p * w;
            /* rows are short runs in different pages, which the hardware prefetchers pick up
             * late: fetch the segment 4 rows ahead (prefetches never fault) */
            for (int64_t off = 0; off < seg; off += 16) XA_PREFETCH(s + 4 * ld + off);
            for (int64_t q = q0; q < q1; q++, s += w, d += w * kc) {
                const int64_t cnt = XA_MIN(w, n - q * w);
                if (alpha == 1.0f && cnt == w && (w == 8 || w == 16 || w == 32)) {
                    /* constant sizes: inlined as a few vector moves */
                    if (w == 32)
                        memcpy(d, s, 32 * sizeof(float));
                    else if (w == 16)
                        memcpy(d, s, 16 * sizeof(float));
                    else
                        memcpy(d, s, 8 * sizeof(float));
                    continue;
                }
                if (alpha == 1.0f)
                    for (int64_t i = 0; i < cnt; i++) d[i] = s[i];
                else
                    for (int64_t i = 0; i < cnt; i++) d[i] = alpha * s[i];
                for (int64_t i = cnt; i < w; i++) d[i] = 0.0f;
            }
        }
    }
}

/* op(A) rows [i0, i0+mc), columns [p0, p0+kc) into mr-row panels at dst. */
static void pack_a_block(const gemm_job *g, float *dst, int64_t i0, int64_t mc, int64_t p0,
                         int64_t kc)
{
    const int64_t mr = g->mr;
    if (g->ta) {
        pack_block_n(dst, mr, g->A + p0 * g->lda + i0, g->lda, mc, kc, g->alpha);
        return;
    }
    for (int64_t ir = 0; ir < mc; ir += mr)
        pack_t(dst + ir * kc, mr, g->A + (i0 + ir) * g->lda + p0, g->lda, XA_MIN(mr, mc - ir), kc,
               g->alpha);
}

/* Values [p0, p0 + n) of row `row` of a weight matrix with K values per row, as float32. */
static void wt_seg(const xa_kernels *kt, xa_wt w, int64_t K, int64_t row, int64_t p0, int64_t n,
                   float *dst)
{
    const int64_t off = row * K + p0;
    switch (w.dt) {
    case XA_W_BF16:
    case XA_W_F16: kt->cvt_h((const uint16_t *)w.p + off, dst, n, w.dt == XA_W_F16); break;
    case XA_W_Q8: {
        const int8_t *q = (const int8_t *)w.p + off;
        const float sc = w.scale[row];
        for (int64_t i = 0; i < n; i++) dst[i] = (float)q[i] * sc;
        break;
    }
    default: memcpy(dst, (const float *)w.p + off, (size_t)n * sizeof(float));
    }
}

void xa_wt_rows_f32(const xa_kernels *kt, xa_wt w, int64_t r0, int64_t n, int64_t K, float *dst)
{
    if (!kt) kt = xa_kern();
    for (int64_t r = 0; r < n; r++) wt_seg(kt, w, K, r0 + r, 0, K, dst + r * K);
}

/* op(B) rows [p0, p0+kc), columns [j0, j0+nc) into nr-column panels at dst. */
static void pack_b_block(const gemm_job *g, float *dst, int64_t j0, int64_t nc, int64_t p0,
                         int64_t kc)
{
    const int64_t nr = g->nr;
    if (!g->tb) {
        pack_block_n(dst, nr, g->B + p0 * g->ldb + j0, g->ldb, nc, kc, 1.0f);
        return;
    }
    if (g->w.dt != XA_W_F32) { /* rows of W converted (into this thread's buffer after dst) */
        float *cv = dst + g->bp_size;
        for (int64_t jr = 0; jr < nc; jr += nr) {
            const int64_t rows = XA_MIN(nr, nc - jr);
            for (int64_t i = 0; i < rows; i++)
                wt_seg(g->kt, g->w, g->K, j0 + jr + i, p0, kc, cv + i * kc);
            pack_t(dst + jr * kc, nr, cv, kc, rows, kc, 1.0f);
        }
        return;
    }
    for (int64_t jr = 0; jr < nc; jr += nr)
        pack_t(dst + jr * kc, nr, g->B + (j0 + jr) * g->ldb + p0, g->ldb, XA_MIN(nr, nc - jr), kc,
               1.0f);
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

/* One micro-tile: A panel ir and B panel jr of the packed blocks (float32 panels, or bf16
 * pairs), kk packed values along K (kc, or kc padded to kb_bf16 in pairs), into c (row stride
 * ldc). */
static inline void tile(const gemm_job *g, const void *Ap, const void *Bp, int64_t ir, int64_t jr,
                        int64_t kk, float *c, int64_t ldc, int acc)
{
    if (g->pairs)
        g->kt->ukr_bf16(kk, (const uint32_t *)Ap + ir * kk / 2, (const uint32_t *)Bp + jr * kk / 2,
                        c, ldc, acc);
    else
        g->kt->ukr(kk, (const float *)Ap + ir * kk, g->mr, (const float *)Bp + jr * kk, g->nr, c,
                   ldc, acc);
}

/* Rows [i0, i0 + mc) of C (packed A block Ap) times columns [j0, j0 + nc) (packed B block
 * Bp), the K block starting at pc, kk values long as packed. */
static void macro_kernel(const gemm_job *g, const void *Ap, const void *Bp, int64_t i0, int64_t mc,
                         int64_t j0, int64_t nc, int64_t pc, int64_t kk)
{
    const int64_t mr = g->mr, nr = g->nr, ldc = g->ldc;
    const int first = pc == 0;
    float tmp[XA_MAX_TILE];
    for (int64_t ir = 0; ir < mc; ir += mr) {
        const int64_t mrows = XA_MIN(mr, mc - ir);
        for (int64_t jr = 0; jr < nc; jr += nr) {
            const int64_t ncols = XA_MIN(nr, nc - jr);
            float *c = g->C + (i0 + ir) * ldc + j0 + jr;
            if (mrows == mr && ncols == nr) {
                int acc = 1;
                if (first) {
                    if (g->bias) {
                        for (int64_t i = 0; i < mr; i++)
                            memcpy(c + i * ldc, g->bias + j0 + jr, (size_t)nr * sizeof(float));
                    } else if (g->beta == 0.0f) {
                        acc = 0;
                    } else if (g->beta != 1.0f) {
                        for (int64_t i = 0; i < mr; i++)
                            for (int64_t j = 0; j < nr; j++) c[i * ldc + j] *= g->beta;
                    }
                }
                tile(g, Ap, Bp, ir, jr, kk, c, ldc, acc);
            } else {
                tile(g, Ap, Bp, ir, jr, kk, tmp, nr, 0);
                for (int64_t i = 0; i < mrows; i++)
                    for (int64_t j = 0; j < ncols; j++) {
                        float *cij = c + i * ldc + j;
                        float base = first ? c_init(g, cij, j0 + jr + j) : *cij;
                        *cij = base + tmp[i * nr + j];
                    }
            }
        }
    }
}

/* n packed values rounded to bfloat16 in place (compute bf16). */
static void round_bf16(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) x[i] = xa_round_bf16(x[i]);
}

/* Packed float32 panels (kc, w), n of them, into bf16 pair panels (kc padded to kcp with
 * zeros): pair q of lane i of a panel at ((q / hb) * w + i) * hb + q % hb, in blocks of hb pairs
 * (hb = 1: (kcp / 2, w), pair after pair). */
static void to_pairs(const float *src, int64_t n, int64_t w, int64_t kc, int64_t kcp, int64_t hb,
                     uint32_t *dst)
{
    for (int64_t t = 0; t < n; t++, src += w * kc, dst += w * kcp / 2)
        for (int64_t q = 0; q < kcp / 2; q++) {
            const float *r0 = 2 * q < kc ? src + 2 * q * w : NULL;
            const float *r1 = 2 * q + 1 < kc ? src + (2 * q + 1) * w : NULL;
            uint32_t *d = dst + (q / hb) * w * hb + q % hb;
            for (int64_t i = 0; i < w; i++)
                d[i * hb] = xa_bf16_pair(r0 ? r0[i] : 0.0f, r1 ? r1[i] : 0.0f);
        }
}

/* The blocked loops over C rows [m0, m1) x columns [n0, n1), with this thread's buffers (the
 * bf16 pair buffers, with pairs, at Ap2 and Bp2). */
static void gemm_rect(const gemm_job *g, float *Ap, float *Bp, uint32_t *Ap2, uint32_t *Bp2,
                      int64_t m0, int64_t m1, int64_t n0, int64_t n1)
{
    const int64_t mr = g->mr, nr = g->nr, kb = g->pairs ? g->kt->kb_bf16 : 1;
    for (int64_t ic = m0; ic < m1; ic += g->MC) {
        const int64_t mc = XA_MIN(g->MC, m1 - ic), mcp = (mc + mr - 1) / mr * mr;
        for (int64_t pc = 0; pc < g->K; pc += g->KC) {
            const int64_t kc = XA_MIN(g->KC, g->K - pc), kcp = (kc + kb - 1) / kb * kb;
            pack_a_block(g, Ap, ic, mc, pc, kc);
            if (g->pairs)
                to_pairs(Ap, mcp / mr, mr, kc, kcp, kb / 2, Ap2);
            else if (g->bf16)
                round_bf16(Ap, mcp * kc);
            for (int64_t jc = n0; jc < n1; jc += g->NC) {
                const int64_t nc = XA_MIN(g->NC, n1 - jc), ncp = (nc + nr - 1) / nr * nr;
                pack_b_block(g, Bp, jc, nc, pc, kc);
                if (g->pairs)
                    to_pairs(Bp, ncp / nr, nr, kc, kcp, 1, Bp2);
                else if (g->bf16)
                    round_bf16(Bp, ncp * kc);
                macro_kernel(g, g->pairs ? (const void *)Ap2 : Ap,
                             g->pairs ? (const void *)Bp2 : Bp, ic, mc, jc, nc, pc, kcp);
            }
        }
    }
}

/* Rectangle r (of tm * tn) of C, on tile boundaries. */
static void gemm_part(const gemm_job *g, float *ws, int r)
{
    const int64_t mr = g->mr, nr = g->nr;
    const int64_t tiles_m = (g->M + mr - 1) / mr, tiles_n = (g->N + nr - 1) / nr;
    const int64_t ti = r / g->tn, tj = r % g->tn;
    const int64_t m0 = tiles_m * ti / g->tm * mr,
                  m1 = XA_MIN(g->M, tiles_m * (ti + 1) / g->tm * mr);
    const int64_t n0 = tiles_n * tj / g->tn * nr,
                  n1 = XA_MIN(g->N, tiles_n * (tj + 1) / g->tn * nr);
    float *Ap = ws, *Bp = Ap + g->ap_size;
    uint32_t *Ap2 = (uint32_t *)(Bp + g->bp_size + g->cv_size), *Bp2 = Ap2 + g->ap2_size;
    if (m0 < m1 && n0 < n1) gemm_rect(g, Ap, Bp, Ap2, Bp2, m0, m1, n0, n1);
}

/* Thread grid tm x tn (tm * tn = nt, each at most the tile count of its side) minimising the
 * largest rectangle's multiply-adds plus its packing (weighted as 8 multiply-adds a float). */
static void thread_grid(int64_t M, int64_t N, int64_t mr, int64_t nr, int nt, int *tm, int *tn)
{
    const int64_t tiles_m = (M + mr - 1) / mr, tiles_n = (N + nr - 1) / nr;
    double best = -1;
    *tm = *tn = 1;
    for (int a = 1; a <= nt; a++) {
        if (nt % a) continue;
        int b = nt / a;
        if (a > tiles_m || b > tiles_n) continue;
        double rm = (double)((tiles_m + a - 1) / a * mr), rn = (double)((tiles_n + b - 1) / b * nr);
        double cost = rm * rn + 8.0 * (rm + rn);
        if (best < 0 || cost < best) {
            best = cost;
            *tm = a;
            *tn = b;
        }
    }
}

/* ---- small problems and fallbacks ------------------------------------------------------- */

/* sum_p a[p] * b[p] in a fixed order (16 partial sums, then the tail). */
static float dot(const float *a, const float *b, int64_t n)
{
    int64_t p = 0;
    float s = 0.0f;
#ifdef XA_GEMM_SSE
    __m128 s0 = _mm_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (; p + 16 <= n; p += 16) {
        s0 = _mm_add_ps(s0, _mm_mul_ps(_mm_loadu_ps(a + p), _mm_loadu_ps(b + p)));
        s1 = _mm_add_ps(s1, _mm_mul_ps(_mm_loadu_ps(a + p + 4), _mm_loadu_ps(b + p + 4)));
        s2 = _mm_add_ps(s2, _mm_mul_ps(_mm_loadu_ps(a + p + 8), _mm_loadu_ps(b + p + 8)));
        s3 = _mm_add_ps(s3, _mm_mul_ps(_mm_loadu_ps(a + p + 12), _mm_loadu_ps(b + p + 12)));
    }
    float t[4];
    _mm_storeu_ps(t, _mm_add_ps(_mm_add_ps(s0, s1), _mm_add_ps(s2, s3)));
    s = (t[0] + t[1]) + (t[2] + t[3]);
#endif
    for (; p < n; p++) s += a[p] * b[p];
    return s;
}

/* Direct loops, no packing, no threads: small problems. */
static void gemm_direct(const gemm_job *g)
{
    enum { JB = 64, PC = 256 };
    float acc[JB], arow[PC];
    for (int64_t i = 0; i < g->M; i++)
        for (int64_t j0 = 0; j0 < g->N; j0 += JB) {
            const int64_t nb = XA_MIN((int64_t)JB, g->N - j0);
            for (int64_t j = 0; j < nb; j++) acc[j] = 0.0f;
            if (!g->tb) {
                for (int64_t p = 0; p < g->K; p++) {
                    const float a = g->ta ? g->A[p * g->lda + i] : g->A[i * g->lda + p];
                    const float *b = g->B + p * g->ldb + j0;
                    for (int64_t j = 0; j < nb; j++) acc[j] += a * b[j];
                }
            } else {
                for (int64_t p0 = 0; p0 < g->K; p0 += PC) {
                    const int64_t len = XA_MIN((int64_t)PC, g->K - p0);
                    const float *a = g->A + i * g->lda + p0;
                    if (g->ta) {
                        for (int64_t p = 0; p < len; p++) arow[p] = g->A[(p0 + p) * g->lda + i];
                        a = arow;
                    }
                    for (int64_t j = 0; j < nb; j++)
                        acc[j] += dot(a, g->B + (j0 + j) * g->ldb + p0, len);
                }
            }
            float *c = g->C + i * g->ldc + j0;
            for (int64_t j = 0; j < nb; j++) c[j] = c_init(g, c + j, j0 + j) + g->alpha * acc[j];
        }
}

/*
 * Skinny products: C (or C^T) has at most XA_GEMM_SKINNY rows, so the work is a pass over the
 * big operand and packing it would cost as much as the arithmetic. Written for
 *   R (ms x nb) = X (ms x K) * Y (K x nb),  ms <= XA_GEMM_SKINNY,
 * with element strides, so that C^T = op(B)^T op(A)^T is the same case for few columns.
 * Y is read once, along its contiguous direction: by rows (ys_n == 1: rows of R accumulate
 * scaled rows of Y) or by columns (ys_k == 1: dot products). Columns [n0, n1) of R only.
 */
typedef struct skinny {
    int64_t ms, nb;
    const float *X;
    int64_t xs_r, xs_k;
    const float *Y;
    int64_t ys_k, ys_n;
    float *R;
    int64_t rs_r, rs_n;
    int r_is_row; /* R = C (the bias index is the column n), else R = C^T (the row r) */
} skinny;

/* cv: K floats for a converted weight row (g->w kept in 16 bits or int8; Y is then W) */
static void skinny_range(const gemm_job *g, const skinny *k, int64_t n0, int64_t n1, float *cv)
{
    enum { JR = 1024 };
    const int64_t K = g->K;
    if (k->ys_n == 1) {
        /* rows of Y in runs of up to JR floats (one page), accumulated for all rows of R */
        float acc[XA_GEMM_SKINNY][JR];
        for (int64_t j0 = n0; j0 < n1; j0 += JR) {
            const int64_t nb = XA_MIN((int64_t)JR, n1 - j0);
            for (int64_t r = 0; r < k->ms; r++)
                for (int64_t j = 0; j < nb; j++) acc[r][j] = 0.0f;
            for (int64_t p = 0; p < K; p++) {
                const float *y = k->Y + p * k->ys_k + j0;
                /* each run starts a new page: fetch the run 4 rows ahead (never faults) */
                for (int64_t off = 0; off < nb; off += 16) XA_PREFETCH(y + 4 * k->ys_k + off);
                for (int64_t r = 0; r < k->ms; r++) {
                    const float x = k->X[r * k->xs_r + p * k->xs_k];
                    float *a = acc[r];
                    for (int64_t j = 0; j < nb; j++) a[j] += x * y[j];
                }
            }
            for (int64_t r = 0; r < k->ms; r++)
                for (int64_t j = 0; j < nb; j++) {
                    float *c = k->R + r * k->rs_r + (j0 + j) * k->rs_n;
                    *c = c_init(g, c, k->r_is_row ? j0 + j : r) + g->alpha * acc[r][j];
                }
        }
    } else {
        /* columns of Y are contiguous: one dot product over all of K per element, the rows
         * of X together so that each column of Y is read once (X rows are contiguous here,
         * gathered by the caller if they were not) */
        float d[XA_GEMM_SKINNY];
        for (int64_t j = n0; j < n1; j++) {
            const float *y = cv;
            if (g->w.dt != XA_W_F32) /* Y is W, kept in another type: row j converted */
                wt_seg(g->kt, g->w, K, j, 0, K, cv);
            else
                y = k->Y + j * k->ys_n;
            g->kt->dotn(k->X, k->xs_r, k->ms, y, K, d);
            for (int64_t r = 0; r < k->ms; r++) {
                float *c = k->R + r * k->rs_r + j * k->rs_n;
                *c = c_init(g, c, k->r_is_row ? j : r) + g->alpha * d[r];
            }
        }
    }
}

static int gemm_skinny(const gemm_job *g, int nt)
{
    (void)nt; /* without OpenMP */
    skinny k;
    if (g->M <= XA_GEMM_SKINNY) { /* C = op(A) op(B) */
        k = (skinny){.ms = g->M,
                     .nb = g->N,
                     .X = g->A,
                     .xs_r = g->ta ? 1 : g->lda,
                     .xs_k = g->ta ? g->lda : 1,
                     .Y = g->B,
                     .ys_k = g->tb ? 1 : g->ldb,
                     .ys_n = g->tb ? g->ldb : 1,
                     .R = g->C,
                     .rs_r = g->ldc,
                     .rs_n = 1,
                     .r_is_row = 1};
    } else { /* C^T = op(B)^T op(A)^T */
        k = (skinny){.ms = g->N,
                     .nb = g->M,
                     .X = g->B,
                     .xs_r = g->tb ? g->ldb : 1,
                     .xs_k = g->tb ? 1 : g->ldb,
                     .Y = g->A,
                     .ys_k = g->ta ? g->lda : 1,
                     .ys_n = g->ta ? 1 : g->lda,
                     .R = g->C,
                     .rs_r = 1,
                     .rs_n = g->ldc,
                     .r_is_row = 0};
    }
    xa_ws *ws = NULL, *wc = NULL;
    float *cv = NULL;
    if (g->w.dt != XA_W_F32) { /* a converted weight row per thread (M <= XA_GEMM_SKINNY) */
        if (!(wc = xa_ws_get(sizeof(float) * (size_t)(g->K * nt)))) return -1;
        cv = xa_ws_data(wc);
    }
    if (k.ys_n != 1 && k.xs_k != 1) { /* dot products need contiguous X rows: gather them */
        if (!(ws = xa_ws_get(sizeof(float) * (size_t)(k.ms * g->K)))) {
            xa_ws_put(wc);
            if (g->w.dt != XA_W_F32) return -1;
            xa_clear_error();
            gemm_direct(g);
            return 0;
        }
        float *x = xa_ws_data(ws);
        for (int64_t p = 0; p < g->K; p++)
            for (int64_t r = 0; r < k.ms; r++) x[r * g->K + p] = k.X[r * k.xs_r + p * k.xs_k];
        k.X = x;
        k.xs_r = g->K;
        k.xs_k = 1;
    }
#ifdef _OPENMP
    if (nt > 1) {
#pragma omp parallel num_threads(nt)
        {
            int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
            int64_t q = (k.nb + 15) / 16; /* 16-column units */
            skinny_range(g, &k, XA_MIN(k.nb, q * t / n * 16), XA_MIN(k.nb, q * (t + 1) / n * 16),
                         cv ? cv + t * g->K : NULL);
        }
    } else
#endif
        skinny_range(g, &k, 0, k.nb, cv);
    xa_ws_put(ws);
    xa_ws_put(wc);
    return 0;
}

/* C = beta*C (or bias): K == 0 or alpha == 0, A and B not referenced. */
static void gemm_scale_only(const gemm_job *g)
{
    for (int64_t i = 0; i < g->M; i++) {
        float *c = g->C + i * g->ldc;
        for (int64_t j = 0; j < g->N; j++) c[j] = c_init(g, c + j, j);
    }
}

/* Bytes of the per-core L1 data and L2 caches (sysconf where the C library reports them),
 * else 32 KB and 512 KB, the smallest of the x86-64 cores of the last years. */
void xa_cache_sizes(int64_t *l1, int64_t *l2)
{
    *l1 = 32 * 1024;
    *l2 = 512 * 1024;
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
    const long a = sysconf(_SC_LEVEL1_DCACHE_SIZE), b = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (a >= 8 * 1024 && a <= 1024 * 1024) *l1 = a;
    if (b >= 64 * 1024 && b <= 64 * 1024 * 1024) *l2 = b;
#endif
}

/*
 * Block sizes for a table and K, from the core's caches:
 *   KC: K is cut into equal blocks of at most 512 and at most what keeps an A panel
 *       (mr x KC) within half of L1, so there is no thin last block; a multiple of ka (8, or
 *       the bf16 micro-kernel's k granularity when larger: 32 for AMX tiles); a K of up to
 *       KC is one block, and with beta = 0 C is then written once and never read;
 *   NC: the B block KC x NC fills half of L2, leaving room for the A and C streams (512 KB
 *       on the 1 MB L2 the sizes were first tuned on; on a 512 KB L2, 1024^3 and
 *       4096 x 512 x 512 run as fast with 256 KB as with 512 KB, within this machine's noise);
 *   MC: bounds the A block (MC x KC, streamed from L3); B blocks are packed once per MC rows.
 * The shape and the CPU decide these, never the thread count, so results do not depend on it.
 */
static void block_sizes(int64_t mr, int64_t nr, int64_t ka, int64_t K, int64_t *MC, int64_t *KC,
                        int64_t *NC)
{
    int64_t l1, l2;
    xa_cache_sizes(&l1, &l2);
    int64_t kmax = XA_MIN((int64_t)512, (l1 / 2) / (mr * 4));
    kmax = XA_MAX((int64_t)64, kmax / ka * ka);
    const int64_t nkb = (K + kmax - 1) / kmax;
    int64_t kc = (K + nkb - 1) / nkb;
    kc = XA_MIN(kmax, (kc + ka - 1) / ka * ka);
    int64_t nc = (l2 / 2 / 4) / kc / nr * nr;
    *KC = kc;
    *NC = XA_MAX(nr, nc);
    *MC = (2048 + mr - 1) / mr * mr;
}

/* Returns 0, or -1 when out of memory with weights kept in another type (w->dt != XA_W_F32:
 * tb = 1, B NULL; a float32 GEMM falls back to the direct loops instead). */
static int gemm_run(const xa_kernels *kt, int ta, int tb, int64_t M, int64_t N, int64_t K,
                    float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                    float beta, const float *bias, float *C, int64_t ldc, const xa_wt *w, int bf16)
{
    if (M <= 0 || N <= 0) return 0;
    if (!kt) kt = xa_kern();
    gemm_job g = {.kt = kt,
                  .ta = ta,
                  .tb = tb,
                  .M = M,
                  .N = N,
                  .K = K,
                  .alpha = alpha,
                  .beta = beta,
                  .A = A,
                  .B = B,
                  .bias = bias,
                  .lda = lda,
                  .ldb = ldb,
                  .ldc = ldc,
                  .C = C,
                  .w = w ? *w : xa_wt_f32(NULL),
                  .bf16 = bf16};
    if (K <= 0 || alpha == 0.0f) {
        gemm_scale_only(&g);
        return 0;
    }
    /* M*N*K, saturating (only compared against thresholds) */
    double work = (double)M * (double)N * (double)K;
    const int direct = work < XA_GEMM_SMALL || kt->mr * kt->nr > XA_MAX_TILE ||
                       (bf16 && kt->ukr_bf16 && kt->mr_bf16 * kt->nr_bf16 > XA_MAX_TILE);
    if (bf16 && direct) { /* small: op(A) and op(B) rounded into copies, then float32 */
        xa_ws *wc = xa_ws_get(sizeof(float) * (size_t)((M + N) * K));
        if (!wc) return -1;
        float *A2 = xa_ws_data(wc), *B2 = A2 + M * K;
        for (int64_t i = 0; i < M; i++)
            for (int64_t p = 0; p < K; p++)
                A2[i * K + p] = xa_round_bf16(ta ? A[p * lda + i] : A[i * lda + p]);
        if (g.w.dt != XA_W_F32)
            xa_wt_rows_f32(kt, g.w, 0, N, K, B2);
        else
            for (int64_t j = 0; j < N; j++)
                for (int64_t p = 0; p < K; p++)
                    B2[j * K + p] = tb ? B[j * ldb + p] : B[p * ldb + j];
        round_bf16(B2, N * K);
        gemm_run(kt, 0, 1, M, N, K, alpha, A2, K, B2, K, beta, bias, C, ldc, NULL, 0);
        xa_ws_put(wc);
        return 0;
    }
    if (g.w.dt != XA_W_F32 &&
        (direct || (!bf16 && ((N <= XA_GEMM_SKINNY && M > XA_GEMM_SKINNY) || K == 1)))) {
        /* few weights (N * K below XA_GEMM_SMALL, at most 4 rows, or rows of one value):
         * converted whole, then the float32 product of the same shape */
        xa_ws *wc = xa_ws_get(sizeof(float) * (size_t)(N * K));
        if (!wc) return -1;
        float *Wf = xa_ws_data(wc);
        xa_wt_rows_f32(kt, g.w, 0, N, K, Wf);
        gemm_run(kt, ta, 1, M, N, K, alpha, A, lda, Wf, K, beta, bias, C, ldc, NULL, bf16);
        xa_ws_put(wc);
        return 0;
    }
    if (direct) {
        gemm_direct(&g);
        return 0;
    }
    int nt = 1;
#ifdef _OPENMP
    if (!omp_in_parallel()) {
        nt = xa_threads();
        double cap = work / XA_GEMM_PER_THREAD;
        if (cap < nt) nt = cap < 1 ? 1 : (int)cap;
    }
#endif
    if (!bf16 && (M <= XA_GEMM_SKINNY || N <= XA_GEMM_SKINNY)) {
        /* a few rows (e.g. one token through a linear layer) or columns: memory bound (in bf16
         * the blocked path, which rounds the operands as it packs them) */
        return gemm_skinny(&g, nt);
    }
    /* compute bf16 on a CPU with bf16 dot products: the table's bf16 micro-kernel */
    g.pairs = bf16 && kt->ukr_bf16;
    g.mr = g.pairs ? kt->mr_bf16 : kt->mr;
    g.nr = g.pairs ? kt->nr_bf16 : kt->nr;
    const int64_t kb = g.pairs ? kt->kb_bf16 : 1;
    block_sizes(g.mr, g.nr, XA_MAX((int64_t)8, kb), K, &g.MC, &g.KC, &g.NC);
    const int64_t mc = XA_MIN(g.MC, (M + g.mr - 1) / g.mr * g.mr);
    const int64_t kc = XA_MIN(g.KC, K), kcp = (kc + kb - 1) / kb * kb;
    const int64_t nc = XA_MIN(g.NC, (N + g.nr - 1) / g.nr * g.nr);

    /* largest thread count <= nt with a usable grid (a prime nt larger than both tile counts
     * would otherwise leave threads idle) */
    for (; nt > 1; nt--) {
        thread_grid(M, N, g.mr, g.nr, nt, &g.tm, &g.tn);
        if (g.tm * g.tn == nt) break;
    }
    if (nt == 1) g.tm = g.tn = 1;
    g.ap_size = (mc * kc + 15) & ~(int64_t)15; /* keeps every block 64-byte aligned */
    g.bp_size = (kc * nc + 15) & ~(int64_t)15;
    g.cv_size = g.w.dt != XA_W_F32 ? (g.nr * kc + 15) & ~(int64_t)15 : 0;
    g.ap2_size = g.pairs ? (mc * kcp / 2 + 15) & ~(int64_t)15 : 0;
    g.bp2_size = g.pairs ? (nc * kcp / 2 + 15) & ~(int64_t)15 : 0;
    const int64_t per_thread = g.ap_size + g.bp_size + g.cv_size + g.ap2_size + g.bp2_size;
    xa_ws *ws = xa_ws_get(sizeof(float) * (size_t)(per_thread * nt));
    if (!ws) { /* out of memory: slow but correct */
        if (g.w.dt != XA_W_F32 || bf16) return -1;
        xa_clear_error();
        gemm_direct(&g);
        return 0;
    }
    g.ws = xa_ws_data(ws);
#ifdef _OPENMP
    if (nt > 1) {
#pragma omp parallel num_threads(nt)
        {
            /* a smaller team than asked (OMP_DYNAMIC, limits) takes several rectangles each */
            int tid = omp_get_thread_num(), nth = omp_get_num_threads();
            for (int r = tid; r < nt; r += nth) gemm_part(&g, g.ws + (int64_t)tid * per_thread, r);
        }
    } else
#endif
        gemm_part(&g, g.ws, 0);
    xa_ws_put(ws);
    return 0;
}

int xa_gemm_wt(const xa_kernels *kt, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
               xa_wt w, const float *bias, int accumulate, float *C, int64_t ldc, int bf16)
{
    if (accumulate && bias && M > 0 && N > 0) { /* C + bias first, then C += A W^T */
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) C[i * ldc + j] += bias[j];
        bias = NULL;
    }
    const float *Wf = w.dt == XA_W_F32 ? (const float *)w.p : NULL;
    if (gemm_run(kt, 0, 1, M, N, K, 1.0f, A, lda, Wf, K, accumulate ? 1.0f : 0.0f, bias, C, ldc, &w,
                 bf16))
        return -1;
    return 0;
}

void xa_sgemm(const xa_kernels *kt, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
              float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
              float *C, int64_t ldc)
{
    gemm_run(kt, trans_a != 0, trans_b != 0, M, N, K, alpha, A, lda, B, ldb, beta, NULL, C, ldc,
             NULL, 0);
}

int xa_sgemm_bf16(const xa_kernels *kt, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                  float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                  float *C, int64_t ldc)
{
    return gemm_run(kt, trans_a != 0, trans_b != 0, M, N, K, alpha, A, lda, B, ldb, beta, NULL, C,
                    ldc, NULL, 1);
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
    gemm_run(NULL, 0, 1, M, N, K, 1.0f, x, K, W, K, 0.0f, b, y, N, NULL, 0);
    xa_clear_error();
    return XATTN_OK;
}
