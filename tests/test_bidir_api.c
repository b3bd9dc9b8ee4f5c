/*
 * The public bidirectional attention core (xattn_bidir_attention, xattn_bidir_attention_backward)
 * against a float64 transcription of bidirectional-cross-attention 0.1.0's attention core and of
 * its autograd, which materialise sim, attn and context_attn: outputs, both log-sum-exps, the
 * maps (after talking heads), and every gradient (qk, context qk, v, context v, rel_pos_bias
 * summed over the axes it broadcasts over, both talking-heads weights); -FLT_MAX masks with fully
 * masked rows and columns, masks shared by the batch, heads read in place from (B, N, H*dh) or
 * per-head contiguous, custom scales, lengths 1 and around the tiles; accumulate; the
 * log-sum-exps recomputed; lengths 0; bitwise equality across thread counts; argument errors.
 */
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 2024;
static int64_t rnd(int64_t lo, int64_t hi)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return lo + (int64_t)((rng >> 33) % (uint64_t)(hi - lo + 1));
}

typedef struct prob {
    int64_t B, H, I, J, dh;
    int inplace;      /* heads in place in (B, N, H*dh), else (B, H, N, dh) */
    int mask, cmask;  /* 0 none, 1 (B, n), 2 (1, n) shared by the batch */
    int bias;         /* 0 none, 1 (B, H, I, J), 2 (1, H, I, J), 3 (B, 1, I, J), 4 (1, 1, I, J) */
    int talk;         /* talking heads */
    int custom_scale; /* scale 0.3 instead of dh^-0.5 */
} prob;

/* strides (b, h, row) of a (B, H, n, dh) tensor */
static void lay(const prob *p, int64_t n, int64_t st[3])
{
    if (p->inplace)
        st[0] = n * p->H * p->dh, st[1] = p->dh, st[2] = p->H * p->dh;
    else
        st[0] = p->H * n * p->dh, st[1] = n * p->dh, st[2] = p->dh;
}

static void bias_strides(const prob *p, int64_t *sb, int64_t *sh)
{
    const int64_t IJ = p->I * p->J;
    *sb = (p->bias == 1) ? p->H * IJ : (p->bias == 3) ? IJ : 0;
    *sh = (p->bias == 1 || p->bias == 2) ? IJ : 0;
}

static int64_t bias_numel(const prob *p)
{
    const int64_t IJ = p->I * p->J;
    return p->bias == 1   ? p->B * p->H * IJ
           : p->bias == 2 ? p->H * IJ
           : p->bias == 3 ? p->B * IJ
                          : IJ;
}

#define AT(t, st, b, h, r) ((t) + (b) * (st)[0] + (h) * (st)[1] + (r) * (st)[2])

typedef struct bufs {
    float *qk, *cqk, *v, *cv, *out, *cout, *dout, *dcout, *bias, *talk, *ctalk;
    float *attn, *cattn, *lse, *clse;
    uint8_t *mask, *cmask;
    float *dqk, *dcqk, *dv, *dcv, *dbias, *dtalk, *dctalk;
    int64_t sI[3], sJ[3], nI, nJ, nmap;
} bufs;

static float *rf(int64_t n, float lo, float hi)
{
    float *x = malloc(sizeof(float) * (size_t)(n + 1));
    tu_fill_uniform(x, n, lo, hi, &rng);
    return x;
}

static void alloc_bufs(const prob *p, bufs *b)
{
    memset(b, 0, sizeof *b);
    const int64_t B = p->B, H = p->H, I = p->I, J = p->J;
    lay(p, I, b->sI);
    lay(p, J, b->sJ);
    b->nI = B * H * I * p->dh, b->nJ = B * H * J * p->dh, b->nmap = B * H * I * J;
    b->qk = rf(b->nI, -1.5f, 1.5f), b->cqk = rf(b->nJ, -1.5f, 1.5f);
    b->v = rf(b->nI, -1, 1), b->cv = rf(b->nJ, -1, 1);
    b->dout = rf(b->nI, -1, 1), b->dcout = rf(b->nJ, -1, 1);
    b->out = rf(b->nI, 0, 0), b->cout = rf(b->nJ, 0, 0);
    b->lse = rf(B * H * I, 0, 0), b->clse = rf(B * H * J, 0, 0);
    b->attn = rf(b->nmap, 0, 0), b->cattn = rf(b->nmap, 0, 0);
    b->dqk = rf(b->nI, 0, 0), b->dv = rf(b->nI, 0, 0);
    b->dcqk = rf(b->nJ, 0, 0), b->dcv = rf(b->nJ, 0, 0);
    if (p->bias) b->bias = rf(bias_numel(p), -2, 2), b->dbias = rf(bias_numel(p), 0, 0);
    if (p->talk) {
        b->talk = rf(H * H, -0.8f, 0.8f), b->ctalk = rf(H * H, -0.8f, 0.8f);
        b->dtalk = rf(H * H, 0, 0), b->dctalk = rf(H * H, 0, 0);
    }
    if (p->mask) {
        const int64_t n = (p->mask == 1 ? B : 1) * I;
        b->mask = malloc((size_t)n);
        for (int64_t x = 0; x < n; x++) b->mask[x] = rnd(0, 4) != 0;
        b->mask[0] = 0;                                               /* a fully masked row */
        if (p->mask == 1 && B > 1) memset(b->mask + I, 0, (size_t)I); /* batch 1: all masked */
    }
    if (p->cmask) {
        const int64_t n = (p->cmask == 1 ? B : 1) * J;
        b->cmask = malloc((size_t)n);
        for (int64_t x = 0; x < n; x++) b->cmask[x] = rnd(0, 4) != 0;
        b->cmask[J - 1] = 0; /* a fully masked column */
    }
}

static void free_bufs(bufs *b)
{
    float *f[] = {b->qk,   b->cqk,  b->v,     b->cv,    b->out,   b->cout,  b->dout, b->dcout,
                  b->bias, b->talk, b->ctalk, b->attn,  b->cattn, b->lse,   b->clse, b->dqk,
                  b->dcqk, b->dv,   b->dcv,   b->dbias, b->dtalk, b->dctalk};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) free(f[i]);
    free(b->mask), free(b->cmask);
}

static void setup(const prob *p, bufs *b, xattn_bidir_params *a, xattn_bidir_grads *g)
{
    xattn_bidir_init(a);
    xattn_bidir_grads_init(g);
    a->B = p->B, a->H = p->H, a->I = p->I, a->J = p->J, a->dh = p->dh;
    a->qk = b->qk, a->qk_sb = b->sI[0], a->qk_sh = b->sI[1], a->qk_si = b->sI[2];
    a->v = b->v, a->v_sb = b->sI[0], a->v_sh = b->sI[1], a->v_si = b->sI[2];
    a->out = b->out, a->o_sb = b->sI[0], a->o_sh = b->sI[1], a->o_si = b->sI[2];
    a->cqk = b->cqk, a->cqk_sb = b->sJ[0], a->cqk_sh = b->sJ[1], a->cqk_sj = b->sJ[2];
    a->cv = b->cv, a->cv_sb = b->sJ[0], a->cv_sh = b->sJ[1], a->cv_sj = b->sJ[2];
    a->cout = b->cout, a->co_sb = b->sJ[0], a->co_sh = b->sJ[1], a->co_sj = b->sJ[2];
    a->has_scale = p->custom_scale, a->scale = 0.3f;
    a->mask = b->mask, a->mask_sb = p->mask == 1 ? p->I : 0;
    a->cmask = b->cmask, a->cmask_sb = p->cmask == 1 ? p->J : 0;
    if (p->bias) a->bias = b->bias, bias_strides(p, &a->bias_sb, &a->bias_sh);
    a->talk = b->talk, a->ctalk = b->ctalk;
    a->attn = b->attn, a->cattn = b->cattn, a->lse = b->lse, a->clse = b->clse;
    g->dout = b->dout, g->do_sb = b->sI[0], g->do_sh = b->sI[1], g->do_si = b->sI[2];
    g->dcout = b->dcout, g->dco_sb = b->sJ[0], g->dco_sh = b->sJ[1], g->dco_sj = b->sJ[2];
    g->dqk = b->dqk, g->dqk_sb = b->sI[0], g->dqk_sh = b->sI[1], g->dqk_si = b->sI[2];
    g->dv = b->dv, g->dv_sb = b->sI[0], g->dv_sh = b->sI[1], g->dv_si = b->sI[2];
    g->dcqk = b->dcqk, g->dcqk_sb = b->sJ[0], g->dcqk_sh = b->sJ[1], g->dcqk_sj = b->sJ[2];
    g->dcv = b->dcv, g->dcv_sb = b->sJ[0], g->dcv_sh = b->sJ[1], g->dcv_sj = b->sJ[2];
    if (p->bias) g->dbias = b->dbias, bias_strides(p, &g->dbias_sb, &g->dbias_sh);
    g->dtalk = b->dtalk, g->dctalk = b->dctalk;
}

/* The reference's results, float64, in the layouts of the C tensors. */
typedef struct ref {
    double *out, *cout, *lse, *clse, *attn, *cattn;
    double *dqk, *dcqk, *dv, *dcv, *dbias, *dtalk, *dctalk;
} ref;

/* sim (masked), attn, context_attn of batch item b, every head: (H, I, J) each. */
static void ref_maps(const prob *p, const bufs *bf, int64_t b, double *S, double *A, double *C,
                     uint8_t *keep, ref *r)
{
    const int64_t H = p->H, I = p->I, J = p->J, IJ = I * J;
    const double scale =
        p->custom_scale ? (double)0.3f : (double)(float)(1.0 / sqrt((double)p->dh));
    int64_t bsb = 0, bsh = 0;
    if (p->bias) bias_strides(p, &bsb, &bsh);
    for (int64_t i = 0; i < I; i++)
        for (int64_t j = 0; j < J; j++)
            keep[i * J + j] = (!bf->mask || bf->mask[(p->mask == 1 ? b * I : 0) + i]) &&
                              (!bf->cmask || bf->cmask[(p->cmask == 1 ? b * J : 0) + j]);
    for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < I; i++)
            for (int64_t j = 0; j < J; j++) {
                double s = 0;
                const float *x = AT(bf->qk, bf->sI, b, h, i), *y = AT(bf->cqk, bf->sJ, b, h, j);
                for (int64_t d = 0; d < p->dh; d++) s += (double)x[d] * y[d];
                s *= scale;
                if (p->bias) s += bf->bias[b * bsb + h * bsh + i * J + j];
                S[h * IJ + i * J + j] = keep[i * J + j] ? s : -(double)FLT_MAX;
            }
    for (int64_t h = 0; h < H; h++) {
        double *s = S + h * IJ;
        for (int64_t i = 0; i < I; i++) {
            double m = -INFINITY, l = 0;
            for (int64_t j = 0; j < J; j++) m = tu_max(m, s[i * J + j]);
            for (int64_t j = 0; j < J; j++) l += exp(s[i * J + j] - m);
            for (int64_t j = 0; j < J; j++) A[h * IJ + i * J + j] = exp(s[i * J + j] - m) / l;
            r->lse[(b * H + h) * I + i] = m + log(l);
        }
        for (int64_t j = 0; j < J; j++) {
            double m = -INFINITY, l = 0;
            for (int64_t i = 0; i < I; i++) m = tu_max(m, s[i * J + j]);
            for (int64_t i = 0; i < I; i++) l += exp(s[i * J + j] - m);
            for (int64_t i = 0; i < I; i++) C[h * IJ + i * J + j] = exp(s[i * J + j] - m) / l;
            r->clse[(b * H + h) * J + j] = m + log(l);
        }
    }
}

/* y[g] = sum_h w[g][h] x[h] (w NULL: identity), or with the transpose of w. */
static void mix(const float *w, int transpose, const double *x, double *y, int64_t H, int64_t n)
{
    for (int64_t g = 0; g < H; g++)
        for (int64_t k = 0; k < n; k++) {
            double s = 0;
            for (int64_t h = 0; h < H; h++) {
                const double c = w ? (double)(transpose ? w[h * H + g] : w[g * H + h]) : (g == h);
                s += c * x[h * n + k];
            }
            y[g * n + k] = s;
        }
}

static void reference(const prob *p, const bufs *bf, ref *r)
{
    const int64_t H = p->H, I = p->I, J = p->J, IJ = I * J, dh = p->dh;
    const double scale = p->custom_scale ? (double)0.3f : (double)(float)(1.0 / sqrt((double)dh));
    double *S = malloc(sizeof(double) * (size_t)(H * IJ)),
           *A = malloc(sizeof(double) * (size_t)(H * IJ));
    double *C = malloc(sizeof(double) * (size_t)(H * IJ)),
           *Am = malloc(sizeof(double) * (size_t)(H * IJ));
    double *Cm = malloc(sizeof(double) * (size_t)(H * IJ)),
           *dAm = malloc(sizeof(double) * (size_t)(H * IJ));
    double *dCm = malloc(sizeof(double) * (size_t)(H * IJ)),
           *dA = malloc(sizeof(double) * (size_t)(H * IJ));
    double *dC = malloc(sizeof(double) * (size_t)(H * IJ));
    uint8_t *keep = malloc((size_t)IJ);
    int64_t bsb = 0, bsh = 0;
    if (p->bias) bias_strides(p, &bsb, &bsh);
    for (int64_t b = 0; b < p->B; b++) {
        ref_maps(p, bf, b, S, A, C, keep, r);
        mix(bf->talk, 0, A, Am, H, IJ);
        mix(bf->ctalk, 0, C, Cm, H, IJ);
        memcpy(r->attn + b * H * IJ, Am, sizeof(double) * (size_t)(H * IJ));
        memcpy(r->cattn + b * H * IJ, Cm, sizeof(double) * (size_t)(H * IJ));
        for (int64_t g = 0; g < H; g++) {
            for (int64_t i = 0; i < I; i++)
                for (int64_t d = 0; d < dh; d++) {
                    double o = 0, dv = 0;
                    for (int64_t j = 0; j < J; j++) {
                        o += Am[g * IJ + i * J + j] * AT(bf->cv, bf->sJ, b, g, j)[d];
                        dv += Cm[g * IJ + i * J + j] * AT(bf->dcout, bf->sJ, b, g, j)[d];
                    }
                    AT(r->out, bf->sI, b, g, i)[d] = o;
                    AT(r->dv, bf->sI, b, g, i)[d] = dv;
                }
            for (int64_t j = 0; j < J; j++)
                for (int64_t d = 0; d < dh; d++) {
                    double o = 0, dcv = 0;
                    for (int64_t i = 0; i < I; i++) {
                        o += Cm[g * IJ + i * J + j] * AT(bf->v, bf->sI, b, g, i)[d];
                        dcv += Am[g * IJ + i * J + j] * AT(bf->dout, bf->sI, b, g, i)[d];
                    }
                    AT(r->cout, bf->sJ, b, g, j)[d] = o;
                    AT(r->dcv, bf->sJ, b, g, j)[d] = dcv;
                }
            /* gradients of the mixed maps */
            for (int64_t i = 0; i < I; i++)
                for (int64_t j = 0; j < J; j++) {
                    double a = 0, c = 0;
                    for (int64_t d = 0; d < dh; d++) {
                        a += (double)AT(bf->dout, bf->sI, b, g, i)[d] *
                             AT(bf->cv, bf->sJ, b, g, j)[d];
                        c += (double)AT(bf->v, bf->sI, b, g, i)[d] *
                             AT(bf->dcout, bf->sJ, b, g, j)[d];
                    }
                    dAm[g * IJ + i * J + j] = a;
                    dCm[g * IJ + i * J + j] = c;
                }
        }
        for (int64_t g = 0; p->talk && g < H; g++) /* the 1x1 convolutions' weights */
            for (int64_t h = 0; h < H; h++)
                for (int64_t x = 0; x < IJ; x++) {
                    r->dtalk[g * H + h] += dAm[g * IJ + x] * A[h * IJ + x];
                    r->dctalk[g * H + h] += dCm[g * IJ + x] * C[h * IJ + x];
                }
        mix(bf->talk, 1, dAm, dA, H, IJ);
        mix(bf->ctalk, 1, dCm, dC, H, IJ);
        for (int64_t h = 0; h < H; h++) {
            double *a = A + h * IJ, *c = C + h * IJ, *da = dA + h * IJ, *dc = dC + h * IJ;
            double *dS = S + h * IJ;
            for (int64_t i = 0; i < I; i++) {
                double rs = 0;
                for (int64_t j = 0; j < J; j++) rs += da[i * J + j] * a[i * J + j];
                for (int64_t j = 0; j < J; j++) dS[i * J + j] = a[i * J + j] * (da[i * J + j] - rs);
            }
            for (int64_t j = 0; j < J; j++) {
                double cs = 0;
                for (int64_t i = 0; i < I; i++) cs += dc[i * J + j] * c[i * J + j];
                for (int64_t i = 0; i < I; i++) { /* masked_fill passes no gradient */
                    const double t = dS[i * J + j] + c[i * J + j] * (dc[i * J + j] - cs);
                    dS[i * J + j] = keep[i * J + j] ? t : 0.0;
                }
            }
            for (int64_t i = 0; i < I; i++)
                for (int64_t d = 0; d < dh; d++) {
                    double s = 0;
                    for (int64_t j = 0; j < J; j++)
                        s += dS[i * J + j] * AT(bf->cqk, bf->sJ, b, h, j)[d];
                    AT(r->dqk, bf->sI, b, h, i)[d] = scale * s;
                }
            for (int64_t j = 0; j < J; j++)
                for (int64_t d = 0; d < dh; d++) {
                    double s = 0;
                    for (int64_t i = 0; i < I; i++)
                        s += dS[i * J + j] * AT(bf->qk, bf->sI, b, h, i)[d];
                    AT(r->dcqk, bf->sJ, b, h, j)[d] = scale * s;
                }
            for (int64_t x = 0; p->bias && x < IJ; x++) r->dbias[b * bsb + h * bsh + x] += dS[x];
        }
    }
    free(S), free(A), free(C), free(Am), free(Cm), free(dAm), free(dCm), free(dA), free(dC);
    free(keep);
}

static double worst_fwd, worst_bwd;

static double close_to(const char *what, const char *part, const float *got, const double *want,
                       int64_t n, double tol)
{
    float *f = malloc(sizeof(float) * (size_t)(n + 1));
    for (int64_t x = 0; x < n; x++) f[x] = (float)want[x];
    char name[320];
    snprintf(name, sizeof name, "%s: %s", what, part);
    const double e = tu_check_close(name, got, f, n, tol);
    free(f);
    return e;
}

#define NEWD(n) calloc((size_t)(n) + 1, sizeof(double))

static void one(const prob *p)
{
    bufs b;
    alloc_bufs(p, &b);
    xattn_bidir_params a;
    xattn_bidir_grads g;
    setup(p, &b, &a, &g);
    CHECK_OK(xattn_bidir_attention(&a));
    CHECK_OK(xattn_bidir_attention_backward(&a, &g));
    const int64_t B = p->B, H = p->H, I = p->I, J = p->J;
    ref r = {NEWD(b.nI),          NEWD(b.nJ),  NEWD(B * H * I), NEWD(B * H * J), NEWD(b.nmap),
             NEWD(b.nmap),        NEWD(b.nI),  NEWD(b.nJ),      NEWD(b.nI),      NEWD(b.nJ),
             NEWD(bias_numel(p)), NEWD(H * H), NEWD(H * H)};
    reference(p, &b, &r);
    char what[256];
    snprintf(what, sizeof what,
             "B=%lld H=%lld I=%lld J=%lld dh=%lld inplace=%d mask=%d cmask=%d bias=%d talk=%d "
             "scale=%d",
             (long long)B, (long long)H, (long long)I, (long long)J, (long long)p->dh, p->inplace,
             p->mask, p->cmask, p->bias, p->talk, p->custom_scale);
    double e = 0;
    e = tu_max(e, close_to(what, "out", b.out, r.out, b.nI, TU_TOL));
    e = tu_max(e, close_to(what, "context out", b.cout, r.cout, b.nJ, TU_TOL));
    e = tu_max(e, close_to(what, "lse", b.lse, r.lse, B * H * I, TU_TOL));
    e = tu_max(e, close_to(what, "context lse", b.clse, r.clse, B * H * J, TU_TOL));
    e = tu_max(e, close_to(what, "attn", b.attn, r.attn, b.nmap, TU_TOL));
    e = tu_max(e, close_to(what, "context attn", b.cattn, r.cattn, b.nmap, TU_TOL));
    worst_fwd = tu_max(worst_fwd, e);
    e = 0;
    e = tu_max(e, close_to(what, "dqk", b.dqk, r.dqk, b.nI, 1e-4));
    e = tu_max(e, close_to(what, "dcqk", b.dcqk, r.dcqk, b.nJ, 1e-4));
    e = tu_max(e, close_to(what, "dv", b.dv, r.dv, b.nI, 1e-4));
    e = tu_max(e, close_to(what, "dcv", b.dcv, r.dcv, b.nJ, 1e-4));
    if (p->bias) e = tu_max(e, close_to(what, "dbias", b.dbias, r.dbias, bias_numel(p), 1e-4));
    if (p->talk) {
        e = tu_max(e, close_to(what, "dtalk", b.dtalk, r.dtalk, H * H, 1e-4));
        e = tu_max(e, close_to(what, "dctalk", b.dctalk, r.dctalk, H * H, 1e-4));
    }
    worst_bwd = tu_max(worst_bwd, e);

    /* the log-sum-exps recomputed: the same gradients; accumulate: added once more */
    float *keep = malloc(sizeof(float) * (size_t)(b.nJ + 1));
    memcpy(keep, b.dcqk, sizeof(float) * (size_t)b.nJ);
    a.lse = a.clse = NULL;
    CHECK_OK(xattn_bidir_attention_backward(&a, &g));
    tu_check_close("dcqk with the log-sum-exps recomputed", b.dcqk, keep, b.nJ, 1e-6);
    g.accumulate = 1;
    CHECK_OK(xattn_bidir_attention_backward(&a, &g));
    for (int64_t x = 0; x < b.nJ; x++) keep[x] *= 2.0f;
    tu_check_close("dcqk accumulated", b.dcqk, keep, b.nJ, 1e-6);
    free(keep);
    double *d[] = {r.out,  r.cout, r.lse, r.clse,  r.attn,  r.cattn, r.dqk,
                   r.dcqk, r.dv,   r.dcv, r.dbias, r.dtalk, r.dctalk};
    for (size_t x = 0; x < sizeof d / sizeof d[0]; x++) free(d[x]);
    free_bufs(&b);
}

static void random_problems(void)
{
    for (int t = 0; t < 48; t++) {
        prob p;
        memset(&p, 0, sizeof p);
        p.B = rnd(1, 3), p.H = rnd(1, 4);
        p.I = rnd(0, 9) < 2 ? 1 : rnd(1, 140);
        p.J = rnd(0, 9) < 2 ? 1 : rnd(1, 150);
        p.dh = rnd(0, 3) ? 8 * rnd(1, 8) : rnd(1, 70);
        p.inplace = (int)rnd(0, 1);
        p.mask = (int)rnd(0, 2), p.cmask = (int)rnd(0, 2);
        p.bias = (int)rnd(0, 4);
        p.talk = rnd(0, 2) == 0;
        p.custom_scale = rnd(0, 3) == 0;
        one(&p);
    }
    /* several tiles each way, every option at once */
    const prob big[2] = {{2, 3, 300, 270, 64, 1, 1, 2, 3, 1, 0},
                         {1, 4, 257, 129, 32, 0, 2, 1, 1, 0, 1}};
    for (int t = 0; t < 2; t++) one(&big[t]);
    printf("worst error: outputs, lse and maps %.2e; gradients %.2e\n", worst_fwd, worst_bwd);
}

static float *grads_copy(const bufs *b, int64_t n)
{
    float *c = malloc(sizeof(float) * (size_t)n);
    float *w = c;
    memcpy(w, b->dqk, sizeof(float) * (size_t)b->nI), w += b->nI;
    memcpy(w, b->dcqk, sizeof(float) * (size_t)b->nJ), w += b->nJ;
    memcpy(w, b->dv, sizeof(float) * (size_t)b->nI), w += b->nI;
    memcpy(w, b->dcv, sizeof(float) * (size_t)b->nJ), w += b->nJ;
    memcpy(w, b->out, sizeof(float) * (size_t)b->nI), w += b->nI;
    memcpy(w, b->cout, sizeof(float) * (size_t)b->nJ);
    return c;
}

/* 1, 2 and 3 threads: the same bits, with and without talking heads. */
static void threads(void)
{
    for (int t = 0; t < 2; t++) {
        const prob p = {2, 3, 190, 230, 40, 1, 1, 1, 2, t, 0};
        bufs b;
        alloc_bufs(&p, &b);
        xattn_bidir_params a;
        xattn_bidir_grads g;
        setup(&p, &b, &a, &g);
        const int64_t n = 3 * (b.nI + b.nJ);
        float *first = NULL;
        for (int th = 1; th <= 3; th++) {
            xattn_set_threads(th);
            CHECK_OK(xattn_bidir_attention(&a));
            CHECK_OK(xattn_bidir_attention_backward(&a, &g));
            float *c = grads_copy(&b, n);
            if (!first)
                first = c;
            else {
                CHECK(memcmp(c, first, sizeof(float) * (size_t)n) == 0);
                free(c);
            }
        }
        xattn_set_threads(0);
        free(first);
        free_bufs(&b);
    }
}

/* I = 0 or J = 0: zero outputs and gradients, log-sum-exp -inf. */
static void empty(void)
{
    for (int t = 0; t < 2; t++) {
        prob p = {2, 2, t ? 5 : 0, t ? 0 : 6, 8, 0, 0, 0, 0, 1, 0};
        bufs b;
        alloc_bufs(&p, &b);
        xattn_bidir_params a;
        xattn_bidir_grads g;
        setup(&p, &b, &a, &g);
        for (int64_t x = 0; x < b.nI; x++) b.out[x] = b.dqk[x] = 7.0f;
        for (int64_t x = 0; x < b.nJ; x++) b.cout[x] = b.dcv[x] = 7.0f;
        b.dtalk[0] = 7.0f;
        CHECK_OK(xattn_bidir_attention(&a));
        CHECK_OK(xattn_bidir_attention_backward(&a, &g));
        int ok = 1;
        for (int64_t x = 0; x < b.nI; x++) ok &= b.out[x] == 0.0f && b.dqk[x] == 0.0f;
        for (int64_t x = 0; x < b.nJ; x++) ok &= b.cout[x] == 0.0f && b.dcv[x] == 0.0f;
        for (int64_t x = 0; x < p.B * p.H * p.I; x++) ok &= b.lse[x] == -INFINITY;
        for (int64_t x = 0; x < p.B * p.H * p.J; x++) ok &= b.clse[x] == -INFINITY;
        CHECK(ok && b.dtalk[0] == 0.0f);
        free_bufs(&b);
    }
}

static void errors(void)
{
    const prob p = {1, 2, 3, 4, 8, 0, 1, 1, 1, 1, 0};
    bufs b;
    alloc_bufs(&p, &b);
    xattn_bidir_params a;
    xattn_bidir_grads g;
    setup(&p, &b, &a, &g);
    CHECK_FAIL(xattn_bidir_attention(NULL), XATTN_ERR_ARG);
    CHECK_FAIL(xattn_bidir_attention_backward(&a, NULL), XATTN_ERR_ARG);
    xattn_bidir_params e = a;
    e.cqk = NULL;
    CHECK_FAIL(xattn_bidir_attention(&e), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "cqk") != NULL);
    e = a, e.ctalk = NULL;
    CHECK_FAIL(xattn_bidir_attention(&e), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "talking heads") != NULL);
    e = a, e.dh = 0;
    CHECK_FAIL(xattn_bidir_attention(&e), XATTN_ERR_ARG);
    e = a, e.H = 0;
    CHECK_FAIL(xattn_bidir_attention(&e), XATTN_ERR_ARG);
    e = a, e.cv_sj = -1;
    CHECK_FAIL(xattn_bidir_attention(&e), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "cv_sj") != NULL);
    e = a, e.o_si = 0; /* rows of the output on top of each other */
    CHECK_FAIL(xattn_bidir_attention(&e), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "o_si") != NULL);
    e = a, e.has_scale = 1, e.scale = NAN;
    CHECK_FAIL(xattn_bidir_attention(&e), XATTN_ERR_ARG);
    e = a, e.reserved_[1] = 1;
    CHECK_FAIL(xattn_bidir_attention(&e), XATTN_ERR_ARG);
    CHECK_OK(xattn_bidir_attention(&a));
    CHECK(xattn_last_error()[0] == '\0');
    xattn_bidir_grads f = g;
    f.dcout = NULL;
    CHECK_FAIL(xattn_bidir_attention_backward(&a, &f), XATTN_ERR_ARG);
    f = g, f.dcqk_sb = 0; /* B = 1: a 0 batch stride is fine */
    CHECK_OK(xattn_bidir_attention_backward(&a, &f));
    f = g, f.dcqk_sj = 0;
    CHECK_FAIL(xattn_bidir_attention_backward(&a, &f), XATTN_ERR_ARG);
    CHECK(strstr(xattn_last_error(), "dcqk_sj") != NULL);
    f = g, f.reserved_[3] = 1;
    CHECK_FAIL(xattn_bidir_attention_backward(&a, &f), XATTN_ERR_ARG);
    e = a, e.talk = e.ctalk = NULL; /* the weights' gradients without the weights */
    CHECK_FAIL(xattn_bidir_attention_backward(&e, &g), XATTN_ERR_ARG);
    /* only some gradients asked for; a dbias summed over b and h without a bias */
    f = g, f.dqk = f.dv = NULL, f.dtalk = NULL;
    f.dbias_sb = f.dbias_sh = 0;
    CHECK_OK(xattn_bidir_attention_backward(&a, &f));
    free_bufs(&b);
}

int main(void)
{
    random_problems();
    threads();
    empty();
    errors();
    return tu_finish("test_bidir_api");
}
