/*
 * xattn_sdpa_backward against a float64 reference that materialises the attention (logits,
 * masks, softmax, and the gradients of masked_fill / softmax / the two products written out),
 * over random problems: strided heads read in place, element masks and key-padding masks,
 * full and broadcast biases with their reduced gradients, causal masks with offsets, both fill
 * semantics with fully masked rows, custom scales, lengths 1 and non-multiples of the tiles;
 * every kernel set against the scalar one; bitwise equality across thread counts and across
 * the head chunks the backward packs at a time; accumulate;
 * the log-sum-exp recomputed when not given; argument errors.
 */
#include "kernels/kernels.h"
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct prob {
    int64_t B, H, I, J, dh, dv;
    int inplace; /* heads read in place from (B, N, H*d) */
    int mask;    /* 0 none, 1 element (B, H, I, J), 2 key padding (B, 1, 1, J) */
    int bias;    /* 0 none, 1 full (B, H, I, J), 2 (1, H, I, J), 3 (B, 1, 1, J) */
    int causal;
    int64_t offset;
    xattn_fill fill;
    int custom_scale;
    float scale;
} prob;

typedef struct bufs {
    float *q, *k, *v, *out, *lse, *dout, *bias;
    uint8_t *mask;
    float *dq, *dk, *dv, *dbias;
    int64_t nq, nk, nv, no, nbias;
} bufs;

static int64_t rnd(uint64_t *s, int64_t lo, int64_t hi)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (int64_t)((*s >> 33) % (uint64_t)(hi - lo + 1));
}

/* strides of a (B, H, N, d) tensor: contiguous, or heads in place in (B, N, H*d) */
static void strides(const prob *p, int64_t N, int64_t d, int64_t *sb, int64_t *sh, int64_t *sr)
{
    if (p->inplace) {
        *sb = N * p->H * d;
        *sh = d;
        *sr = p->H * d;
    } else {
        *sb = p->H * N * d;
        *sh = N * d;
        *sr = d;
    }
}

static void bias_strides(const prob *p, int64_t *sb, int64_t *sh, int64_t *si)
{
    const int64_t IJ = p->I * p->J;
    switch (p->bias) {
    case 1: *sb = p->H * IJ, *sh = IJ, *si = p->J; break;
    case 2: *sb = 0, *sh = IJ, *si = p->J; break;
    default: *sb = p->J, *sh = 0, *si = 0; break;
    }
}

static void setup(const prob *p, xattn_sdpa_params *a, xattn_sdpa_grads *g, bufs *b)
{
    xattn_sdpa_init(a);
    xattn_sdpa_grads_init(g);
    a->B = p->B, a->H = p->H, a->I = p->I, a->J = p->J, a->dh = p->dh, a->dv = p->dv;
    a->q = b->q, a->k = b->k, a->v = b->v, a->out = b->out;
    strides(p, p->I, p->dh, &a->q_sb, &a->q_sh, &a->q_si);
    strides(p, p->J, p->dh, &a->k_sb, &a->k_sh, &a->k_sj);
    strides(p, p->J, p->dv, &a->v_sb, &a->v_sh, &a->v_sj);
    strides(p, p->I, p->dv, &a->o_sb, &a->o_sh, &a->o_si);
    a->has_scale = p->custom_scale, a->scale = p->scale;
    a->causal = p->causal, a->causal_offset = p->offset, a->fill = p->fill;
    a->lse = b->lse;
    if (p->mask == 1) {
        a->mask = b->mask, a->mask_sb = p->H * p->I * p->J, a->mask_sh = p->I * p->J;
        a->mask_si = p->J;
    } else if (p->mask == 2) {
        a->mask = b->mask, a->mask_sb = p->J;
    }
    if (p->bias) {
        a->bias = b->bias;
        bias_strides(p, &a->bias_sb, &a->bias_sh, &a->bias_si);
        g->dbias = b->dbias;
        bias_strides(p, &g->dbias_sb, &g->dbias_sh, &g->dbias_si);
    }
    g->dout = b->dout;
    strides(p, p->I, p->dv, &g->do_sb, &g->do_sh, &g->do_si);
    g->dq = b->dq, g->dk = b->dk, g->dv = b->dv;
    strides(p, p->I, p->dh, &g->dq_sb, &g->dq_sh, &g->dq_si);
    strides(p, p->J, p->dh, &g->dk_sb, &g->dk_sh, &g->dk_sj);
    strides(p, p->J, p->dv, &g->dv_sb, &g->dv_sh, &g->dv_sj);
}

#define AT(t, sb, sh, sr, b, h, r) ((t) + (b) * (sb) + (h) * (sh) + (r) * (sr))

/* float64 reference: gradients into dq, dk, dv (same layouts as the inputs) and dbias. */
static void reference(const prob *p, const xattn_sdpa_params *a, const xattn_sdpa_grads *g,
                      double *dq, double *dk, double *dv, double *dbias)
{
    const int64_t I = p->I, J = p->J;
    const double scale =
        p->custom_scale ? (double)p->scale : (double)(float)(1.0 / sqrt((double)p->dh));
    const double fill = p->fill == XATTN_FILL_NEG_INF ? -INFINITY : -(double)FLT_MAX;
    double *S = malloc(sizeof(double) * (size_t)(I * J)),
           *P = malloc(sizeof(double) * (size_t)(I * J));
    uint8_t *keep = malloc((size_t)(I * J));
    double *dO = malloc(sizeof(double) * (size_t)(I * p->dv)),
           *O = malloc(sizeof(double) * (size_t)(I * p->dv));
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t h = 0; h < p->H; h++) {
            for (int64_t i = 0; i < I; i++)
                for (int64_t j = 0; j < J; j++) {
                    double s = 0;
                    const float *qr = AT(a->q, a->q_sb, a->q_sh, a->q_si, b, h, i);
                    const float *kr = AT(a->k, a->k_sb, a->k_sh, a->k_sj, b, h, j);
                    for (int64_t d = 0; d < p->dh; d++) s += (double)qr[d] * kr[d];
                    s *= scale;
                    if (a->bias) s += AT(a->bias, a->bias_sb, a->bias_sh, a->bias_si, b, h, i)[j];
                    int kp = 1;
                    if (a->mask)
                        kp = AT(a->mask, a->mask_sb, a->mask_sh, a->mask_si, b, h, i)[j] != 0;
                    if (p->causal && j > i + p->offset) kp = 0;
                    keep[i * J + j] = (uint8_t)kp;
                    S[i * J + j] = kp ? s : fill;
                }
            for (int64_t i = 0; i < I; i++) {
                double m = -INFINITY, l = 0;
                for (int64_t j = 0; j < J; j++) m = tu_max(m, S[i * J + j]);
                for (int64_t j = 0; j < J; j++) {
                    P[i * J + j] = m == -INFINITY ? 0.0 : exp(S[i * J + j] - m);
                    l += P[i * J + j];
                }
                for (int64_t j = 0; j < J; j++) P[i * J + j] = l > 0 ? P[i * J + j] / l : 0.0;
                const float *dor = AT(g->dout, g->do_sb, g->do_sh, g->do_si, b, h, i);
                for (int64_t d = 0; d < p->dv; d++) {
                    double o = 0;
                    for (int64_t j = 0; j < J; j++)
                        o += P[i * J + j] * AT(a->v, a->v_sb, a->v_sh, a->v_sj, b, h, j)[d];
                    O[i * p->dv + d] = o;
                    dO[i * p->dv + d] = dor[d];
                }
            }
            for (int64_t j = 0; j < J; j++)
                for (int64_t d = 0; d < p->dv; d++) {
                    double s = 0;
                    for (int64_t i = 0; i < I; i++) s += P[i * J + j] * dO[i * p->dv + d];
                    AT(dv, a->v_sb, a->v_sh, a->v_sj, b, h, j)[d] = s;
                }
            for (int64_t i = 0; i < I; i++) {
                double D = 0;
                for (int64_t d = 0; d < p->dv; d++) D += dO[i * p->dv + d] * O[i * p->dv + d];
                for (int64_t j = 0; j < J; j++) {
                    double dp = 0;
                    for (int64_t d = 0; d < p->dv; d++)
                        dp += dO[i * p->dv + d] * AT(a->v, a->v_sb, a->v_sh, a->v_sj, b, h, j)[d];
                    /* softmax backward, then masked_fill's: no gradient where masked */
                    S[i * J + j] = keep[i * J + j] ? P[i * J + j] * (dp - D) : 0.0;
                }
            }
            for (int64_t i = 0; i < I; i++)
                for (int64_t d = 0; d < p->dh; d++) {
                    double s = 0;
                    for (int64_t j = 0; j < J; j++)
                        s += S[i * J + j] * AT(a->k, a->k_sb, a->k_sh, a->k_sj, b, h, j)[d];
                    AT(dq, a->q_sb, a->q_sh, a->q_si, b, h, i)[d] = scale * s;
                }
            for (int64_t j = 0; j < J; j++)
                for (int64_t d = 0; d < p->dh; d++) {
                    double s = 0;
                    for (int64_t i = 0; i < I; i++)
                        s += S[i * J + j] * AT(a->q, a->q_sb, a->q_sh, a->q_si, b, h, i)[d];
                    AT(dk, a->k_sb, a->k_sh, a->k_sj, b, h, j)[d] = scale * s;
                }
            for (int64_t i = 0; dbias && i < I; i++) {
                double *row = AT(dbias, g->dbias_sb, g->dbias_sh, g->dbias_si, b, h, i);
                for (int64_t j = 0; j < J; j++) row[j] += S[i * J + j];
            }
        }
    free(S), free(P), free(keep), free(dO), free(O);
}

static void to_float(const double *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = (float)x[i];
}

static void alloc_bufs(const prob *p, bufs *b, uint64_t *seed)
{
    memset(b, 0, sizeof *b);
    b->nq = p->B * p->H * p->I * p->dh;
    b->nk = p->B * p->H * p->J * p->dh;
    b->nv = p->B * p->H * p->J * p->dv;
    b->no = p->B * p->H * p->I * p->dv;
    b->nbias = p->B * p->H * p->I * p->J;
    b->q = malloc(sizeof(float) * (size_t)(b->nq + 1));
    b->k = malloc(sizeof(float) * (size_t)(b->nk + 1));
    b->v = malloc(sizeof(float) * (size_t)(b->nv + 1));
    b->out = malloc(sizeof(float) * (size_t)(b->no + 1));
    b->dout = malloc(sizeof(float) * (size_t)(b->no + 1));
    b->lse = malloc(sizeof(float) * (size_t)(p->B * p->H * p->I + 1));
    b->bias = malloc(sizeof(float) * (size_t)(b->nbias + 1));
    b->mask = malloc((size_t)(b->nbias + 1));
    b->dq = calloc((size_t)(b->nq + 1), sizeof(float));
    b->dk = calloc((size_t)(b->nk + 1), sizeof(float));
    b->dv = calloc((size_t)(b->nv + 1), sizeof(float));
    b->dbias = calloc((size_t)(b->nbias + 1), sizeof(float));
    tu_fill_uniform(b->q, b->nq, -1.5f, 1.5f, seed);
    tu_fill_uniform(b->k, b->nk, -1.5f, 1.5f, seed);
    tu_fill_uniform(b->v, b->nv, -1, 1, seed);
    tu_fill_uniform(b->dout, b->no, -1, 1, seed);
    tu_fill_uniform(b->bias, b->nbias, -1, 1, seed);
    for (int64_t i = 0; i < b->nbias; i++) b->mask[i] = rnd(seed, 0, 3) != 0;
    /* fully masked query rows and key columns */
    if (p->mask == 1 && p->I > 1)
        for (int64_t j = 0; j < p->J; j++) b->mask[(p->I - 1) * p->J + j] = 0;
    if (p->mask == 2) b->mask[0] = 0;
    if (p->mask == 2 && p->B > 1)
        for (int64_t j = 0; j < p->J; j++) b->mask[p->J + j] = 0; /* batch item 1: nothing kept */
}

static void free_bufs(bufs *b)
{
    free(b->q), free(b->k), free(b->v), free(b->out), free(b->dout), free(b->lse);
    free(b->bias), free(b->mask), free(b->dq), free(b->dk), free(b->dv), free(b->dbias);
}

static int64_t bias_numel(const prob *p)
{
    return p->bias == 1   ? p->B * p->H * p->I * p->J
           : p->bias == 2 ? p->H * p->I * p->J
                          : p->B * p->J;
}

static void one(const prob *p, uint64_t seed)
{
    bufs b;
    alloc_bufs(p, &b, &seed);
    xattn_sdpa_params a;
    xattn_sdpa_grads g;
    setup(p, &a, &g, &b);
    CHECK_OK(xattn_sdpa(&a));
    CHECK_OK(xattn_sdpa_backward(&a, &g));
    double *rq = calloc((size_t)b.nq + 1, sizeof(double)),
           *rk = calloc((size_t)b.nk + 1, sizeof(double));
    double *rv = calloc((size_t)b.nv + 1, sizeof(double)),
           *rb = calloc((size_t)b.nbias + 1, sizeof(double));
    reference(p, &a, &g, rq, rk, rv, p->bias ? rb : NULL);
    float *f = malloc(sizeof(float) * (size_t)(b.nbias + b.nq + b.nk + b.nv + 1));
    char what[256];
    snprintf(
        what, sizeof what,
        "B=%lld H=%lld I=%lld J=%lld dh=%lld dv=%lld inplace=%d mask=%d bias=%d causal=%d%+lld "
        "fill=%d",
        (long long)p->B, (long long)p->H, (long long)p->I, (long long)p->J, (long long)p->dh,
        (long long)p->dv, p->inplace, p->mask, p->bias, p->causal, (long long)p->offset,
        (int)p->fill);
    static double worst = 0;
    double e;
    to_float(rq, f, b.nq);
    e = tu_check_close(what, b.dq, f, b.nq, 1e-4);
    worst = tu_max(worst, e);
    to_float(rk, f, b.nk);
    e = tu_check_close(what, b.dk, f, b.nk, 1e-4);
    worst = tu_max(worst, e);
    to_float(rv, f, b.nv);
    e = tu_check_close(what, b.dv, f, b.nv, 1e-4);
    worst = tu_max(worst, e);
    if (p->bias) {
        to_float(rb, f, bias_numel(p));
        e = tu_check_close(what, b.dbias, f, bias_numel(p), 1e-4);
        worst = tu_max(worst, e);
    }
    if (seed % 7 == 0) printf("worst gradient error so far %.2e\n", worst);

    /* the log-sum-exp recomputed: the same gradients (to rounding) */
    float *keep = malloc(sizeof(float) * (size_t)(b.nq + 1));
    memcpy(keep, b.dq, sizeof(float) * (size_t)b.nq);
    a.lse = NULL;
    CHECK_OK(xattn_sdpa_backward(&a, &g));
    tu_check_close("dq with the lse recomputed", b.dq, keep, b.nq, 1e-6);
    /* accumulate: the same gradient added once more */
    g.accumulate = 1;
    CHECK_OK(xattn_sdpa_backward(&a, &g));
    for (int64_t i = 0; i < b.nq; i++) keep[i] *= 2.0f;
    tu_check_close("dq accumulated", b.dq, keep, b.nq, 1e-6);
    free(keep);
    free(f), free(rq), free(rk), free(rv), free(rb);
    free_bufs(&b);
}

/* Causal masks over several query and key tiles, both fills, offsets of both signs. */
static void causal_tiles(void)
{
    for (int t = 0; t < 6; t++) {
        prob p = {1,
                  2,
                  300,
                  280,
                  32,
                  32,
                  t & 1,
                  t < 2 ? 0 : 1,
                  t % 3 == 0 ? 1 : 0,
                  1,
                  (int64_t)(t * 37 - 90),
                  t & 1 ? XATTN_FILL_MIN_FLOAT : XATTN_FILL_NEG_INF,
                  0,
                  0};
        one(&p, 700 + (uint64_t)t);
    }
}

static void random_problems(void)
{
    uint64_t s = 12345;
    for (int t = 0; t < 60; t++) {
        prob p;
        memset(&p, 0, sizeof p);
        p.B = rnd(&s, 1, 3), p.H = rnd(&s, 1, 3);
        p.I = rnd(&s, 0, 9) < 2 ? 1 : rnd(&s, 1, 150);
        p.J = rnd(&s, 0, 9) < 2 ? 1 : rnd(&s, 1, 170);
        p.dh = rnd(&s, 0, 3) ? 8 * rnd(&s, 1, 9) : rnd(&s, 1, 70);
        p.dv = rnd(&s, 0, 2) ? p.dh : rnd(&s, 1, 70);
        p.inplace = (int)rnd(&s, 0, 1);
        p.mask = (int)rnd(&s, 0, 2);
        p.bias = (int)rnd(&s, 0, 3);
        p.causal = rnd(&s, 0, 2) == 0;
        p.offset = p.causal ? rnd(&s, -4, 4) : 0;
        p.fill = rnd(&s, 0, 1) ? XATTN_FILL_MIN_FLOAT : XATTN_FILL_NEG_INF;
        p.custom_scale = rnd(&s, 0, 3) == 0;
        p.scale = 0.3f;
        one(&p, s + (uint64_t)t);
    }
}

/* Copies of the four gradients. */
static float *snapshot(const bufs *b)
{
    float *c = malloc(sizeof(float) * (size_t)(b->nq + b->nk + b->nv + b->nbias));
    memcpy(c, b->dq, sizeof(float) * (size_t)b->nq);
    memcpy(c + b->nq, b->dk, sizeof(float) * (size_t)b->nk);
    memcpy(c + b->nq + b->nk, b->dv, sizeof(float) * (size_t)b->nv);
    memcpy(c + b->nq + b->nk + b->nv, b->dbias, sizeof(float) * (size_t)b->nbias);
    return c;
}

/* The same problem on 1, 2 and 3 threads, and on every kernel set: bitwise equal across
 * threads; every kernel set close to the scalar one. */
static void threads_and_kernels(void)
{
    const prob probs[2] = {{2, 3, 200, 257, 64, 64, 1, 1, 3, 1, 2, XATTN_FILL_MIN_FLOAT, 0, 0},
                           {1, 2, 333, 97, 40, 24, 0, 2, 1, 0, 0, XATTN_FILL_NEG_INF, 1, 0.2f}};
    for (int t = 0; t < 2; t++) {
        const prob *p = &probs[t];
        uint64_t s = 99 + (uint64_t)t;
        bufs b;
        alloc_bufs(p, &b, &s);
        xattn_sdpa_params a;
        xattn_sdpa_grads g;
        setup(p, &a, &g, &b);
        CHECK_OK(xattn_sdpa(&a));
        const size_t n = (size_t)(b.nq + b.nk + b.nv + b.nbias);
        xattn_set_threads(1);
        CHECK_OK(xattn_sdpa_backward(&a, &g));
        float *one_thread = snapshot(&b);
        for (int th = 2; th <= 3; th++) {
            xattn_set_threads(th);
            CHECK_OK(xattn_sdpa_backward(&a, &g));
            float *c = snapshot(&b);
            CHECK(memcmp(c, one_thread, n * sizeof(float)) == 0);
            free(c);
        }
        /* one head per chunk per thread: the same bits */
        const int64_t pack_bytes = xa_attn_bwd_pack_bytes;
        xa_attn_bwd_pack_bytes = 1;
        for (int th = 1; th <= 2; th++) {
            xattn_set_threads(th);
            CHECK_OK(xattn_sdpa_backward(&a, &g));
            float *c = snapshot(&b);
            CHECK(memcmp(c, one_thread, n * sizeof(float)) == 0);
            free(c);
        }
        xa_attn_bwd_pack_bytes = pack_bytes;
        xattn_set_threads(0);
        const char *isas[] = TU_ISAS;
        float *scalar = NULL;
        for (int k = 0; k < TU_N_ISAS; k++) {
            if (xattn_set_isa(isas[k]) != XATTN_OK) continue;
            CHECK_OK(xattn_sdpa(&a));
            CHECK_OK(xattn_sdpa_backward(&a, &g));
            float *c = snapshot(&b);
            if (!scalar)
                scalar = c;
            else {
                tu_check_close(isas[k], c, scalar, (int64_t)n, 1e-5);
                printf("kernel set %s against scalar: checked\n", isas[k]);
                free(c);
            }
        }
        CHECK_OK(xattn_set_isa("auto"));
        free(scalar);
        free(one_thread);
        free_bufs(&b);
    }
}

static void errors(void)
{
    prob p = {1, 1, 3, 4, 8, 8, 0, 0, 0, 0, 0, XATTN_FILL_NEG_INF, 0, 0};
    uint64_t s = 5;
    bufs b;
    alloc_bufs(&p, &b, &s);
    xattn_sdpa_params a;
    xattn_sdpa_grads g;
    setup(&p, &a, &g, &b);
    CHECK_OK(xattn_sdpa(&a));
    CHECK_FAIL(xattn_sdpa_backward(NULL, &g), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_sdpa_backward(&a, NULL), XATTN_ERR_ARG);
    g.dout = NULL;
    CHECK_FAIL(xattn_sdpa_backward(&a, &g), XATTN_ERR_ARG);
    g.dout = b.dout;
    g.reserved_[2] = 1;
    CHECK_FAIL(xattn_sdpa_backward(&a, &g), XATTN_ERR_ARG);
    g.reserved_[2] = 0;
    g.dq_si = -1;
    CHECK_FAIL(xattn_sdpa_backward(&a, &g), XATTN_ERR_ARG);
    g.dq_si = p.dh;
    a.out = NULL;
    CHECK_FAIL(xattn_sdpa_backward(&a, &g), XATTN_ERR_ARG);
    a.out = b.out;
    CHECK_OK(xattn_sdpa_backward(&a, &g));
    CHECK(xattn_last_error()[0] == '\0');
    /* only some gradients asked for */
    g.dq = g.dv = NULL;
    CHECK_OK(xattn_sdpa_backward(&a, &g));
    free_bufs(&b);
}

int main(void)
{
    causal_tiles();
    random_problems();
    threads_and_kernels();
    errors();
    return tu_finish("test_sdpa_backward");
}
