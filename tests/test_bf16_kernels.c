/*
 * The bf16 dot-product micro-kernels of compute bf16 (src/kernels/kernels_bf16.c: vdpbf16ps and
 * AMX-BF16 tiles) and the GEMM's path that packs bf16 pairs for them:
 *   - the CPU's own kernel sets "avx512bf16" and "amx", where it has them;
 *   - on every x86 build with SIMDe's headers, the same sets compiled over portable
 *     definitions of the intrinsics (tests/x86_emu.c: SIMDe's AVX-512, tests/amx_emu.h), so the
 *     kernels' indexing, tile configuration, padding and the GEMM's pair packing are checked on
 *     any CPU (the emulated sets' other kernels, AVX-512's, run the attention cases too).
 * Each is checked against a float64 product of the bf16-rounded operands with a bound from
 * float32 summation, on odd shapes (edge tiles, several K blocks, every transpose, alpha, beta,
 * bias, 16-bit and int8 weights), for the same bits at 1 and 2 threads, and through the ops
 * modules call (xa_op_linear, xa_op_linear_cm, xa_op_attention's logits) under compute bf16
 * with the table installed.
 */
#include "testutil.h"

#include "base/base.h"
#include "kernels/kernels.h"
#include "kernels/ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "x86_emu.h"

/* The table under test and the calls its bf16 kernel received (a check that the path ran). */
static xa_ukr_bf16_fn inner;
static long calls;
static void counting(int64_t k, const uint32_t *A, const uint32_t *B, float *C, int64_t ldc,
                     int accumulate)
{
    __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
    inner(k, A, B, C, ldc, accumulate);
}

static double bf(float x) { return (double)xa_round_bf16(x); }

/* float32 summation of n exact products: |error| <= n u sum|terms| (u = 2^-24), doubled. */
static double bound(int64_t n, double mag) { return 2.0 * (double)(n + 4) * 0x1p-24 * mag + 1e-30; }

/* ---- the micro-kernel alone ------------------------------------------------------------------ */

static uint32_t pair_of(float lo, float hi)
{
    return (uint32_t)xa_f32_to_half(lo, 0) | (uint32_t)xa_f32_to_half(hi, 0) << 16;
}

static void ukr_direct(const char *name, const xa_kernels *kt)
{
    const int64_t mr = kt->mr_bf16, nr = kt->nr_bf16, kb = kt->kb_bf16, hb = kb / 2;
    uint64_t st = 77;
    for (int64_t k = kb; k <= 5 * kb + 64; k += kb * (kb == 2 ? 13 : 1)) {
        const int64_t ldc = nr + 3;
        float *a = malloc(sizeof(float) * (size_t)(mr * k)),
              *b = malloc(sizeof(float) * (size_t)(k * nr));
        uint32_t *A = malloc(sizeof(uint32_t) * (size_t)(mr * k / 2));
        uint32_t *B = malloc(sizeof(uint32_t) * (size_t)(nr * k / 2));
        float *C = malloc(sizeof(float) * (size_t)(mr * ldc)),
              *C0 = malloc(sizeof(float) * (size_t)(mr * ldc));
        tu_fill_uniform(a, mr * k, -2.0f, 2.0f, &st);
        tu_fill_uniform(b, k * nr, -2.0f, 2.0f, &st);
        for (int64_t q = 0; q < k / 2; q++) {
            for (int64_t i = 0; i < mr; i++)
                A[((q / hb) * mr + i) * hb + q % hb] =
                    pair_of(a[i * k + 2 * q], a[i * k + 2 * q + 1]);
            for (int64_t j = 0; j < nr; j++)
                B[q * nr + j] = pair_of(b[(2 * q) * nr + j], b[(2 * q + 1) * nr + j]);
        }
        for (int acc = 0; acc < 2; acc++) {
            tu_fill_uniform(C0, mr * ldc, -1.0f, 1.0f, &st);
            memcpy(C, C0, sizeof(float) * (size_t)(mr * ldc));
            kt->ukr_bf16(k, A, B, C, ldc, acc);
            int bad = 0;
            for (int64_t i = 0; i < mr; i++) {
                for (int64_t j = 0; j < nr; j++) {
                    double s = acc ? C0[i * ldc + j] : 0.0, mag = fabs(s);
                    for (int64_t p = 0; p < k; p++) {
                        const double t = bf(a[i * k + p]) * bf(b[p * nr + j]);
                        s += t;
                        mag += fabs(t);
                    }
                    if (!(fabs(C[i * ldc + j] - s) <= bound(k, mag))) bad++;
                }
                for (int64_t j = nr; j < ldc; j++) /* past the tile: untouched */
                    if (C[i * ldc + j] != C0[i * ldc + j]) bad++;
            }
            if (bad)
                fprintf(stderr, "%s micro-kernel k %lld acc %d: %d wrong\n", name, (long long)k,
                        acc, bad);
            CHECK(bad == 0);
        }
        free(a), free(b), free(A), free(B), free(C), free(C0);
    }
}

/* ---- through the GEMM ---------------------------------------------------------------------- */

/* C = alpha op(A) op(B) + beta C against float64 on rounded operands (alpha a power of two, so
 * rounding alpha * a or a gives the same). Returns the worst error relative to the bound. */
static double gemm_case(const char *name, const xa_kernels *kt, int ta, int tb, int64_t M,
                        int64_t N, int64_t K, float alpha, float beta, uint64_t *st)
{
    const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
    const int64_t ar = ta ? K : M, br = tb ? N : K;
    float *A = malloc(sizeof(float) * (size_t)(ar * lda)),
          *B = malloc(sizeof(float) * (size_t)(br * ldb));
    float *C0 = malloc(sizeof(float) * (size_t)(M * ldc));
    float *C1 = malloc(sizeof(float) * (size_t)(M * ldc)),
          *C2 = malloc(sizeof(float) * (size_t)(M * ldc));
    tu_fill_uniform(A, ar * lda, -1.0f, 1.0f, st);
    tu_fill_uniform(B, br * ldb, -1.0f, 1.0f, st);
    tu_fill_uniform(C0, M * ldc, -1.0f, 1.0f, st);
    double worst = 0;
    memcpy(C1, C0, sizeof(float) * (size_t)(M * ldc));
    memcpy(C2, C0, sizeof(float) * (size_t)(M * ldc));
    xattn_set_threads(1);
    CHECK(xa_sgemm_bf16(kt, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C1, ldc) == 0);
    xattn_set_threads(2);
    CHECK(xa_sgemm_bf16(kt, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C2, ldc) == 0);
    xattn_set_threads(0);
    const int same = !memcmp(C1, C2, sizeof(float) * (size_t)(M * ldc));
    if (!same)
        fprintf(stderr, "%s gemm %lldx%lldx%lld: 1 and 2 threads differ\n", name, (long long)M,
                (long long)N, (long long)K);
    CHECK(same);
    int bad = 0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            const double c = beta == 0.0f ? 0.0 : (double)beta * C0[i * ldc + j];
            double s = 0, mag = fabs(c);
            for (int64_t p = 0; p < K; p++) {
                const float a = ta ? A[p * lda + i] : A[i * lda + p];
                const float b = tb ? B[j * ldb + p] : B[p * ldb + j];
                const double t = (double)alpha * bf(a) * bf(b);
                s += t;
                mag += fabs(t);
            }
            const double e = fabs(C1[i * ldc + j] - (s + c)) / bound(K, mag);
            worst = tu_max(worst, e);
            if (!(e <= 1.0)) bad++;
        }
    /* the padding columns of C are never written */
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = N; j < ldc; j++)
            if (C1[i * ldc + j] != C0[i * ldc + j]) bad++;
    if (bad)
        fprintf(stderr, "%s gemm ta %d tb %d %lldx%lldx%lld alpha %g beta %g: %d wrong\n", name, ta,
                tb, (long long)M, (long long)N, (long long)K, alpha, beta, bad);
    CHECK(bad == 0);
    free(A), free(B), free(C0), free(C1), free(C2);
    return worst;
}

/* y = x W^T + bias (+ y) with W kept as bf16 / f16 / int8 (converted as packed) under bf16. */
static double weights_case(const char *name, const xa_kernels *kt, int dt, int64_t M, int64_t N,
                           int64_t K, int with_bias, int acc, uint64_t *st)
{
    float *x = malloc(sizeof(float) * (size_t)(M * K)),
          *W = malloc(sizeof(float) * (size_t)(N * K));
    float *bias = malloc(sizeof(float) * (size_t)N), *y0 = malloc(sizeof(float) * (size_t)(M * N));
    float *y = malloc(sizeof(float) * (size_t)(M * N)), *sc = malloc(sizeof(float) * (size_t)N);
    uint16_t *h = malloc(sizeof(uint16_t) * (size_t)(N * K));
    int8_t *q = malloc((size_t)(N * K));
    tu_fill_uniform(x, M * K, -1.0f, 1.0f, st);
    tu_fill_uniform(W, N * K, -1.0f, 1.0f, st);
    tu_fill_uniform(bias, N, -1.0f, 1.0f, st);
    tu_fill_uniform(y0, M * N, -1.0f, 1.0f, st);
    xa_wt w = {h, NULL, dt};
    if (dt == XA_W_Q8) {
        for (int64_t r = 0; r < N; r++) {
            float mx = 0;
            for (int64_t p = 0; p < K; p++) mx = fmaxf(mx, fabsf(W[r * K + p]));
            sc[r] = mx / 127.0f;
            for (int64_t p = 0; p < K; p++) {
                q[r * K + p] = (int8_t)lrintf(W[r * K + p] / sc[r]);
                W[r * K + p] = (float)q[r * K + p] * sc[r]; /* the dequantised value */
            }
        }
        w = (xa_wt){q, sc, XA_W_Q8};
    } else {
        for (int64_t i = 0; i < N * K; i++) {
            h[i] = xa_f32_to_half(W[i], dt == XA_W_F16);
            W[i] = xa_half_to_f32(h[i], dt == XA_W_F16);
        }
    }
    memcpy(y, y0, sizeof(float) * (size_t)(M * N));
    CHECK(xa_gemm_wt(kt, M, N, K, x, K, w, with_bias ? bias : NULL, acc, y, N, 1) == 0);
    double worst = 0;
    int bad = 0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            const double c = (acc ? y0[i * N + j] : 0.0) + (with_bias ? bias[j] : 0.0);
            double s = 0, mag = fabs(c);
            for (int64_t p = 0; p < K; p++) {
                const double t = bf(x[i * K + p]) * bf(W[j * K + p]);
                s += t;
                mag += fabs(t);
            }
            const double e = fabs(y[i * N + j] - (s + c)) / bound(K, mag);
            worst = tu_max(worst, e);
            if (!(e <= 1.0)) bad++;
        }
    if (bad)
        fprintf(stderr, "%s weights %d %lldx%lldx%lld bias %d acc %d: %d wrong\n", name, dt,
                (long long)M, (long long)N, (long long)K, with_bias, acc, bad);
    CHECK(bad == 0);
    free(x), free(W), free(bias), free(y0), free(y), free(sc), free(h), free(q);
    return worst;
}

/* Module-level ops under compute bf16 with the table installed in the default context: the
 * same numbers as the default emulation (float32 kernels on rounded operands) within the
 * summation bound, the emulation's own results taken with the CPU's best float32 table. */
static void ops_case(const char *name, const xa_kernels *kt, uint64_t *st)
{
    const int64_t M = 67, N = 45, K = 130;
    float *x = malloc(sizeof(float) * (size_t)(M * K)),
          *W = malloc(sizeof(float) * (size_t)(N * K));
    float *b = malloc(sizeof(float) * (size_t)N);
    float *y1 = malloc(sizeof(float) * (size_t)(M * N)),
          *y2 = malloc(sizeof(float) * (size_t)(M * N));
    tu_fill_uniform(x, M * K, -1.0f, 1.0f, st);
    tu_fill_uniform(W, N * K, -1.0f, 1.0f, st);
    tu_fill_uniform(b, N, -1.0f, 1.0f, st);
    CHECK_OK(xattn_set_compute(XATTN_COMPUTE_BF16));
    for (int cm = 0; cm < 2; cm++) {
        const long before = calls;
        xa_ctx_set_kern(NULL, kt);
        if (cm)
            CHECK_OK(xa_op_linear_cm(x, M, K, W, b, N, y1)); /* x read as (K, M) */
        else
            CHECK_OK(xa_op_linear(x, M, K, W, b, N, y1, 0));
        xa_ctx_set_kern(NULL, NULL);
        CHECK(calls > before);
        if (cm)
            CHECK_OK(xa_op_linear_cm(x, M, K, W, b, N, y2));
        else
            CHECK_OK(xa_op_linear(x, M, K, W, b, N, y2, 0));
        char what[96];
        snprintf(what, sizeof what, "%s %s under compute bf16", name, cm ? "linear_cm" : "linear");
        tu_check_close(what, y1, y2, M * N, 1e-5);
    }
    CHECK_OK(xattn_set_compute(XATTN_COMPUTE_F32));
    free(x), free(W), free(b), free(y1), free(y2);
}

/* Fused attention under compute bf16 (xa_op_attention rounds q, k, v and marks the problem
 * bf16): with the table installed the logits run on its bf16 kernel; against the same call on
 * the CPU's best float32 table. Normal mode with lse and probabilities, causal, masks, bias,
 * a stats pass and a talking-heads (mixing) pass; head sizes not a multiple of the kernels'. */
typedef struct att_case {
    int64_t B, H, I, J, dh, dv;
    int causal, mask, bias, mix;
    xattn_fill fill;
} att_case;

static void run_attention(const att_case *t, const float *q, const float *k, const float *v,
                          const uint8_t *mask, const float *bias, const float *mix, float *out,
                          float *lse, float *probs, float *sm, float *sl)
{
    const int64_t B = t->B, H = t->H, I = t->I, J = t->J, dh = t->dh, dv = t->dv;
    xa_attn a;
    memset(&a, 0, sizeof a);
    a.B = B, a.H = H, a.I = I, a.J = J, a.dh = dh, a.dv = dv;
    a.q = q, a.q_sb = H * I * dh, a.q_sh = I * dh, a.q_si = dh;
    a.k = k, a.k_sb = H * J * dh, a.k_sh = J * dh, a.k_sj = dh;
    a.v = v, a.v_sb = H * J * dv, a.v_sh = J * dv, a.v_sj = dv;
    a.out = out, a.o_sb = H * I * dv, a.o_sh = I * dv, a.o_si = dv;
    a.scale = 1.0f / sqrtf((float)dh);
    a.fill = t->fill;
    a.causal = t->causal;
    if (t->mask) a.mask = mask, a.mask_sb = I * J, a.mask_si = J;
    if (t->bias) a.bias = bias, a.bias_sb = 0, a.bias_sh = I * J, a.bias_si = J, a.bias_sj = 1;
    a.fn = "test";
    if (t->mix) { /* the row statistics, then the mixed pass */
        xa_attn s0 = a;
        s0.stats_only = 1, s0.v = NULL, s0.out = NULL, s0.stat_m = sm, s0.stat_l = sl;
        CHECK_OK(xa_op_attention(&s0));
        a.mix = mix, a.row_m = sm, a.row_l = sl;
    } else {
        a.lse = lse;
    }
    a.probs = probs, a.p_sb = H * I * J, a.p_sh = I * J, a.p_si = J, a.p_sj = 1;
    CHECK_OK(xa_op_attention(&a));
}

static void attention_cases(const char *name, const xa_kernels *kt, uint64_t *st)
{
    static const att_case cases[] = {
        {2, 3, 70, 100, 64, 48, 0, 0, 0, 0, XATTN_FILL_NEG_INF},
        {1, 2, 37, 257, 40, 33, 1, 0, 0, 0, XATTN_FILL_NEG_INF},
        {2, 2, 5, 33, 17, 8, 0, 1, 1, 0, XATTN_FILL_MIN_FLOAT},
        {1, 3, 90, 75, 24, 24, 0, 1, 0, 1, XATTN_FILL_NEG_INF},
        {1, 1, 130, 300, 96, 64, 1, 0, 1, 0, XATTN_FILL_MIN_FLOAT},
    };
    CHECK_OK(xattn_set_compute(XATTN_COMPUTE_BF16));
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const att_case *t = &cases[ci];
        const int64_t B = t->B, H = t->H, I = t->I, J = t->J, nq = B * H * I * t->dh;
        const int64_t nk = B * H * J * t->dh, nv = B * H * J * t->dv, no = B * H * I * t->dv;
        const int64_t nl = B * H * I, np = B * H * I * J;
        float *q = malloc(sizeof(float) * (size_t)nq), *k = malloc(sizeof(float) * (size_t)nk);
        float *v = malloc(sizeof(float) * (size_t)nv),
              *bias = malloc(sizeof(float) * (size_t)(H * I * J));
        float *mix = malloc(sizeof(float) * (size_t)(H * H));
        uint8_t *mask = malloc((size_t)(B * I * J));
        float *o[2], *lse[2], *pr[2], *sm[2], *sl[2];
        for (int r = 0; r < 2; r++) {
            o[r] = calloc((size_t)no, sizeof(float)), lse[r] = calloc((size_t)nl, sizeof(float));
            pr[r] = calloc((size_t)np, sizeof(float)), sm[r] = calloc((size_t)nl, sizeof(float));
            sl[r] = calloc((size_t)nl, sizeof(float));
        }
        tu_fill_uniform(q, nq, -2.0f, 2.0f, st);
        tu_fill_uniform(k, nk, -2.0f, 2.0f, st);
        tu_fill_uniform(v, nv, -1.0f, 1.0f, st);
        tu_fill_uniform(bias, H * I * J, -1.0f, 1.0f, st);
        tu_fill_uniform(mix, H * H, -1.0f, 1.0f, st);
        for (int64_t x = 0; x < B * I * J; x++) mask[x] = (uint8_t)((x * 7 + x / 13) % 5 != 0);
        const long before = calls;
        xa_ctx_set_kern(NULL, kt);
        run_attention(t, q, k, v, mask, bias, mix, o[0], lse[0], pr[0], sm[0], sl[0]);
        xa_ctx_set_kern(NULL, NULL);
        CHECK(calls > before);
        run_attention(t, q, k, v, mask, bias, mix, o[1], lse[1], pr[1], sm[1], sl[1]);
        char what[128];
        snprintf(what, sizeof what, "%s attention case %zu out", name, ci);
        tu_check_close(what, o[0], o[1], no, 2e-5);
        snprintf(what, sizeof what, "%s attention case %zu probs", name, ci);
        tu_check_close(what, pr[0], pr[1], np, 2e-5);
        snprintf(what, sizeof what, "%s attention case %zu %s", name, ci,
                 t->mix ? "row max" : "lse");
        tu_check_close(what, t->mix ? sm[0] : lse[0], t->mix ? sm[1] : lse[1], nl, 2e-5);
        free(q), free(k), free(v), free(bias), free(mix), free(mask);
        for (int r = 0; r < 2; r++) free(o[r]), free(lse[r]), free(pr[r]), free(sm[r]), free(sl[r]);
    }
    CHECK_OK(xattn_set_compute(XATTN_COMPUTE_F32));
}

/* Bidirectional attention under compute bf16 (xa_op_bidir_attention): both sides' logits on
 * the table's bf16 kernel, with and without talking heads, masks and a bias; against the
 * CPU's best float32 table. */
static void bidir_cases(const char *name, const xa_kernels *kt, uint64_t *st)
{
    const int64_t B = 2, H = 3, I = 45, J = 70, dh = 24;
    const int64_t ni = B * H * I * dh, nj = B * H * J * dh;
    float *qk = malloc(sizeof(float) * (size_t)ni), *v = malloc(sizeof(float) * (size_t)ni);
    float *cqk = malloc(sizeof(float) * (size_t)nj), *cv = malloc(sizeof(float) * (size_t)nj);
    float *bias = malloc(sizeof(float) * (size_t)(H * I * J)), *talk = malloc(sizeof(float) * 9);
    float *ctalk = malloc(sizeof(float) * 9);
    uint8_t *mask = malloc((size_t)(B * I)), *cmask = malloc((size_t)(B * J));
    tu_fill_uniform(qk, ni, -2.0f, 2.0f, st);
    tu_fill_uniform(v, ni, -1.0f, 1.0f, st);
    tu_fill_uniform(cqk, nj, -2.0f, 2.0f, st);
    tu_fill_uniform(cv, nj, -1.0f, 1.0f, st);
    tu_fill_uniform(bias, H * I * J, -1.0f, 1.0f, st);
    tu_fill_uniform(talk, 9, -1.0f, 1.0f, st);
    tu_fill_uniform(ctalk, 9, -1.0f, 1.0f, st);
    for (int64_t x = 0; x < B * I; x++) mask[x] = (uint8_t)(x % 7 != 3);
    for (int64_t x = 0; x < B * J; x++) cmask[x] = (uint8_t)(x % 5 != 1);
    CHECK_OK(xattn_set_compute(XATTN_COMPUTE_BF16));
    for (int variant = 0; variant < 2; variant++) {
        float *o[2], *co[2];
        for (int r = 0; r < 2; r++) {
            o[r] = calloc((size_t)ni, sizeof(float));
            co[r] = calloc((size_t)nj, sizeof(float));
            xa_bidir p;
            memset(&p, 0, sizeof p);
            p.B = B, p.H = H, p.I = I, p.J = J, p.dh = dh, p.scale = 1.0f / sqrtf((float)dh);
            p.qk = qk, p.qk_sb = H * I * dh, p.qk_sh = I * dh, p.qk_si = dh;
            p.v = v, p.v_sb = H * I * dh, p.v_sh = I * dh, p.v_si = dh;
            p.cqk = cqk, p.cqk_sb = H * J * dh, p.cqk_sh = J * dh, p.cqk_sj = dh;
            p.cv = cv, p.cv_sb = H * J * dh, p.cv_sh = J * dh, p.cv_sj = dh;
            p.out = o[r], p.o_sb = H * I * dh, p.o_sh = I * dh, p.o_si = dh;
            p.cout = co[r], p.co_sb = H * J * dh, p.co_sh = J * dh, p.co_sj = dh;
            if (variant) {
                p.talk = talk, p.ctalk = ctalk;
                p.mask = mask, p.mask_sb = I, p.cmask = cmask, p.cmask_sb = J;
                p.bias = bias, p.bias_sb = 0, p.bias_sh = I * J;
            }
            const long before = calls;
            if (!r) xa_ctx_set_kern(NULL, kt);
            CHECK_OK(xa_op_bidir_attention(&p));
            xa_ctx_set_kern(NULL, NULL);
            if (!r) CHECK(calls > before);
        }
        char what[128];
        snprintf(what, sizeof what, "%s bidir %s out", name, variant ? "talking heads" : "plain");
        tu_check_close(what, o[0], o[1], ni, 2e-5);
        snprintf(what, sizeof what, "%s bidir %s context out", name,
                 variant ? "talking heads" : "plain");
        tu_check_close(what, co[0], co[1], nj, 2e-5);
        for (int r = 0; r < 2; r++) free(o[r]), free(co[r]);
    }
    CHECK_OK(xattn_set_compute(XATTN_COMPUTE_F32));
    free(qk), free(v), free(cqk), free(cv), free(bias), free(talk), free(ctalk), free(mask),
        free(cmask);
}

static void run_table(const char *name, const xa_kernels *kt)
{
    uint64_t st = 2024;
    ukr_direct(name, kt);
    /* M, N, K: edge tiles on both sides, K in several blocks (K > 512), K odd, one K block */
    static const int64_t shapes[][3] = {{37, 45, 33},   {70, 100, 129}, {33, 65, 1100},
                                        {100, 67, 515}, {5, 300, 77},   {129, 31, 64}};
    static const float ab[][2] = {{1.0f, 0.0f}, {0.5f, 1.0f}, {-2.0f, 0.5f}, {1.0f, 1.0f}};
    double worst = 0;
    const long before = calls;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int t = 0; t < 4; t++)
            worst =
                tu_max(worst, gemm_case(name, kt, t & 1, t >> 1, shapes[s][0], shapes[s][1],
                                        shapes[s][2], ab[(s + t) % 4][0], ab[(s + t) % 4][1], &st));
    CHECK(calls > before); /* the blocked products ran on the bf16 kernel */
    for (int dt = XA_W_BF16; dt <= XA_W_Q8; dt++)
        for (int mode = 0; mode < 4; mode++)
            worst =
                tu_max(worst, weights_case(name, kt, dt, 41, 70, 300, mode & 1, mode >> 1, &st));
    ops_case(name, kt, &st);
    attention_cases(name, kt, &st);
    bidir_cases(name, kt, &st);
    printf("%s: micro-kernel, GEMM and weights within %.2f of the float32 summation bound\n", name,
           worst);
}

static void with_counter(const char *name, const xa_kernels *base, xa_ukr_bf16_fn f, int mr, int nr,
                         int kb)
{
    xa_kernels t = *base;
    inner = f;
    t.ukr_bf16 = counting;
    t.mr_bf16 = mr;
    t.nr_bf16 = nr;
    t.kb_bf16 = kb;
    run_table(name, &t);
}

int main(void)
{
    int ran = 0;
    const xa_kernels *best = xa_kern_best();
    (void)best;
#if defined(XATTN_TEST_X86_EMU)
    const xa_kernels *emu[] = {&xa_kernels_avx512bf16_emu, &xa_kernels_amx_emu};
    for (int i = 0; i < 2; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s (emulated)", emu[i]->name);
        with_counter(name, emu[i], emu[i]->ukr_bf16, emu[i]->mr_bf16, emu[i]->nr_bf16,
                     emu[i]->kb_bf16);
    }
    ran += 2;
#else
    printf("emulated bf16 kernels not built (SIMDe's headers were not found at configure time)\n");
#endif
    static const char *native[] = {"avx512bf16", "amx"};
    for (int i = 0; i < 2; i++) {
        const xa_kernels *kt = xa_kern_by_name(native[i]);
        if (!kt) {
            printf("%s: not on this CPU\n", native[i]);
            /* a forced set the CPU lacks is refused with a message naming it */
            if (xa_kern_known(native[i])) {
                CHECK_FAIL(xattn_set_isa(native[i]), XATTN_ERR_UNSUPPORTED);
                CHECK(strstr(xattn_last_error(), native[i]) != NULL);
            }
            continue;
        }
        CHECK(kt->ukr_bf16 != NULL);
        with_counter(native[i], kt, kt->ukr_bf16, kt->mr_bf16, kt->nr_bf16, kt->kb_bf16);
        ran++;
    }
    printf("%d bf16 kernel(s) tested\n", ran);
    return tu_finish("test_bf16_kernels");
}
