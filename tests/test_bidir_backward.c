/*
 * Gradients of the bidirectional kernel (xa_bidir_backward) against a float64 transcription of
 * the reference's autograd that materialises sim, attn and context_attn: the gradient of the
 * shared similarity from both softmaxes, -FLT_MAX masks with fully masked rows and columns,
 * broadcast biases, talking heads (both weights' gradients), heads read in place, lengths around
 * the tiles; accumulate; bitwise equality across thread counts.
 */
#include "testutil.h"
#include "kernels/kernels.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 4242;
static int64_t rnd(int64_t n)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (int64_t)((rng >> 33) % (uint64_t)n);
}

typedef struct prob {
    int64_t B, H, I, J, dh;
    int mask, cmask, bias; /* bias: 0 none, 1 (B,H,I,J), 2 (1,H,I,J), 3 (B,1,I,J) */
    int talk;
} prob;

/* (b, h, n, d) of a (B, n, H*dh) buffer */
#define X(t, b, h, r, d) (t)[(((b)*n_##t + (r)) * H + (h)) * dh + (d)]

typedef struct ref {
    double *dqk, *dcqk, *dv, *dcv, *dbias, *dT, *dTc;
} ref;

static void reference(const prob *c, const float *qk, const float *cqk, const float *v,
                      const float *cv, const uint8_t *mask, const uint8_t *cmask, const float *bias,
                      const float *T, const float *Tc, const float *dout, const float *dcout,
                      float scale, ref *r)
{
    const int64_t B = c->B, H = c->H, I = c->I, J = c->J, dh = c->dh, IJ = I * J;
    const int64_t n_qk = I, n_cqk = J, n_v = I, n_cv = J, n_dout = I, n_dcout = J;
    double *S = malloc(sizeof(double) * H * IJ), *A = malloc(sizeof(double) * H * IJ),
           *C = malloc(sizeof(double) * H * IJ), *Am = malloc(sizeof(double) * H * IJ),
           *Cm = malloc(sizeof(double) * H * IJ), *dAp = malloc(sizeof(double) * H * IJ),
           *dCp = malloc(sizeof(double) * H * IJ);
    uint8_t *keep = malloc((size_t)IJ);
    for (int64_t b = 0; b < B; b++) {
        for (int64_t i = 0; i < I; i++)
            for (int64_t j = 0; j < J; j++)
                keep[i * J + j] = (!mask || mask[b * I + i]) && (!cmask || cmask[b * J + j]);
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < I; i++)
                for (int64_t j = 0; j < J; j++) {
                    double s = 0;
                    for (int64_t d = 0; d < dh; d++)
                        s += (double)X(qk, b, h, i, d) * X(cqk, b, h, j, d);
                    s *= scale;
                    if (bias) {
                        int64_t bb = c->bias == 2 ? 0 : b, hh = c->bias == 3 ? 0 : h;
                        int64_t nh = c->bias == 3 ? 1 : H;
                        s += bias[((bb * nh + hh) * I + i) * J + j];
                    }
                    S[h * IJ + i * J + j] = keep[i * J + j] ? s : -(double)FLT_MAX;
                }
        for (int64_t h = 0; h < H; h++) {
            for (int64_t i = 0; i < I; i++) {
                double m = -INFINITY, l = 0;
                for (int64_t j = 0; j < J; j++) m = tu_max(m, S[h * IJ + i * J + j]);
                for (int64_t j = 0; j < J; j++) l += exp(S[h * IJ + i * J + j] - m);
                for (int64_t j = 0; j < J; j++)
                    A[h * IJ + i * J + j] = exp(S[h * IJ + i * J + j] - m) / l;
            }
            for (int64_t j = 0; j < J; j++) {
                double m = -INFINITY, l = 0;
                for (int64_t i = 0; i < I; i++) m = tu_max(m, S[h * IJ + i * J + j]);
                for (int64_t i = 0; i < I; i++) l += exp(S[h * IJ + i * J + j] - m);
                for (int64_t i = 0; i < I; i++)
                    C[h * IJ + i * J + j] = exp(S[h * IJ + i * J + j] - m) / l;
            }
        }
        for (int64_t g = 0; g < H; g++)
            for (int64_t x = 0; x < IJ; x++) {
                double a = 0, cc = 0;
                for (int64_t h = 0; h < H; h++) {
                    a += (c->talk ? T[g * H + h] : (g == h)) * A[h * IJ + x];
                    cc += (c->talk ? Tc[g * H + h] : (g == h)) * C[h * IJ + x];
                }
                Am[g * IJ + x] = a;
                Cm[g * IJ + x] = cc;
            }
        for (int64_t g = 0; g < H; g++) {
            for (int64_t i = 0; i < I; i++)
                for (int64_t j = 0; j < J; j++) {
                    double a = 0, cc = 0;
                    for (int64_t d = 0; d < dh; d++) {
                        a += (double)X(dout, b, g, i, d) * X(cv, b, g, j, d);
                        cc += (double)X(v, b, g, i, d) * X(dcout, b, g, j, d);
                    }
                    dAp[g * IJ + i * J + j] = a;
                    dCp[g * IJ + i * J + j] = cc;
                }
            for (int64_t j = 0; j < J; j++)
                for (int64_t d = 0; d < dh; d++) {
                    double s = 0;
                    for (int64_t i = 0; i < I; i++)
                        s += Am[g * IJ + i * J + j] * X(dout, b, g, i, d);
                    r->dcv[((b * J + j) * H + g) * dh + d] = s;
                }
            for (int64_t i = 0; i < I; i++)
                for (int64_t d = 0; d < dh; d++) {
                    double s = 0;
                    for (int64_t j = 0; j < J; j++)
                        s += Cm[g * IJ + i * J + j] * X(dcout, b, g, j, d);
                    r->dv[((b * I + i) * H + g) * dh + d] = s;
                }
        }
        for (int64_t g = 0; g < H && c->talk; g++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t x = 0; x < IJ; x++) {
                    r->dT[g * H + h] += dAp[g * IJ + x] * A[h * IJ + x];
                    r->dTc[g * H + h] += dCp[g * IJ + x] * C[h * IJ + x];
                }
        for (int64_t h = 0; h < H; h++) {
            double *dA = malloc(sizeof(double) * IJ), *dC = malloc(sizeof(double) * IJ);
            for (int64_t x = 0; x < IJ; x++) {
                double a = 0, cc = 0;
                for (int64_t g = 0; g < H; g++) {
                    a += (c->talk ? T[g * H + h] : (g == h)) * dAp[g * IJ + x];
                    cc += (c->talk ? Tc[g * H + h] : (g == h)) * dCp[g * IJ + x];
                }
                dA[x] = a;
                dC[x] = cc;
            }
            double *dS = S + h * IJ; /* reused */
            for (int64_t i = 0; i < I; i++) {
                double rs = 0;
                for (int64_t j = 0; j < J; j++) rs += dA[i * J + j] * A[h * IJ + i * J + j];
                for (int64_t j = 0; j < J; j++)
                    dS[i * J + j] = A[h * IJ + i * J + j] * (dA[i * J + j] - rs);
            }
            for (int64_t j = 0; j < J; j++) {
                double cs = 0;
                for (int64_t i = 0; i < I; i++) cs += dC[i * J + j] * C[h * IJ + i * J + j];
                for (int64_t i = 0; i < I; i++)
                    dS[i * J + j] = keep[i * J + j] ? dS[i * J + j] + C[h * IJ + i * J + j] *
                                                                          (dC[i * J + j] - cs)
                                                    : 0.0;
            }
            for (int64_t i = 0; i < I; i++)
                for (int64_t d = 0; d < dh; d++) {
                    double s = 0;
                    for (int64_t j = 0; j < J; j++) s += dS[i * J + j] * X(cqk, b, h, j, d);
                    r->dqk[((b * I + i) * H + h) * dh + d] = scale * s;
                }
            for (int64_t j = 0; j < J; j++)
                for (int64_t d = 0; d < dh; d++) {
                    double s = 0;
                    for (int64_t i = 0; i < I; i++) s += dS[i * J + j] * X(qk, b, h, i, d);
                    r->dcqk[((b * J + j) * H + h) * dh + d] = scale * s;
                }
            if (bias) {
                int64_t bb = c->bias == 2 ? 0 : b, hh = c->bias == 3 ? 0 : h,
                        nh = c->bias == 3 ? 1 : H;
                for (int64_t x = 0; x < IJ; x++) r->dbias[(bb * nh + hh) * IJ + x] += dS[x];
            }
            free(dA), free(dC);
        }
    }
    free(S), free(A), free(C), free(Am), free(Cm), free(dAp), free(dCp), free(keep);
}

static float *rf(int64_t n, float lo, float hi)
{
    float *x = malloc(sizeof(float) * (size_t)(n + 1));
    static uint64_t s = 99;
    tu_fill_uniform(x, n, lo, hi, &s);
    return x;
}

static float *tof(const double *d, int64_t n)
{
    float *f = malloc(sizeof(float) * (size_t)(n + 1));
    for (int64_t i = 0; i < n; i++) f[i] = (float)d[i];
    return f;
}

static double worst;

static void one(const prob *c, int threads_check)
{
    const int64_t B = c->B, H = c->H, I = c->I, J = c->J, dh = c->dh;
    const int64_t nI = B * I * H * dh, nJ = B * J * H * dh;
    float *qk = rf(nI, -1, 1), *cqk = rf(nJ, -1, 1), *v = rf(nI, -1, 1), *cv = rf(nJ, -1, 1);
    float *dout = rf(nI, -1, 1), *dcout = rf(nJ, -1, 1), *out = rf(nI, 0, 0), *cout = rf(nJ, 0, 0);
    float *T = c->talk ? rf(H * H, -0.8f, 0.8f) : NULL,
          *Tc = c->talk ? rf(H * H, -0.8f, 0.8f) : NULL;
    const int64_t nb = c->bias == 1 ? B * H * I * J : c->bias == 2 ? H * I * J : B * I * J;
    float *bias = c->bias ? rf(nb, -2, 2) : NULL;
    uint8_t *mask = c->mask ? malloc((size_t)(B * I)) : NULL,
            *cmask = c->cmask ? malloc((size_t)(B * J)) : NULL;
    for (int64_t i = 0; mask && i < B * I; i++) mask[i] = rnd(4) != 0;
    for (int64_t j = 0; cmask && j < B * J; j++) cmask[j] = rnd(4) != 0;
    if (mask) mask[0] = 0;
    if (cmask) cmask[J - 1] = 0;
    if (cmask && B > 1) memset(cmask + J, 0, (size_t)J); /* batch item 1: no context kept */
    xa_bidir p;
    memset(&p, 0, sizeof p);
    p.B = B, p.H = H, p.I = I, p.J = J, p.dh = dh;
    p.qk = qk, p.qk_sb = I * H * dh, p.qk_sh = dh, p.qk_si = H * dh;
    p.cqk = cqk, p.cqk_sb = J * H * dh, p.cqk_sh = dh, p.cqk_sj = H * dh;
    p.v = v, p.v_sb = I * H * dh, p.v_sh = dh, p.v_si = H * dh;
    p.cv = cv, p.cv_sb = J * H * dh, p.cv_sh = dh, p.cv_sj = H * dh;
    p.out = out, p.o_sb = I * H * dh, p.o_sh = dh, p.o_si = H * dh;
    p.cout = cout, p.co_sb = J * H * dh, p.co_sh = dh, p.co_sj = H * dh;
    p.scale = 1.0f / sqrtf((float)dh);
    p.mask = mask, p.mask_sb = I, p.cmask = cmask, p.cmask_sb = J;
    if (bias) {
        p.bias = bias;
        p.bias_sb = c->bias == 2 ? 0 : (c->bias == 3 ? I * J : H * I * J);
        p.bias_sh = c->bias == 3 ? 0 : I * J;
    }
    p.talk = T, p.ctalk = Tc;
    CHECK_OK(xa_bidir_attention(&p));
    float *dqk = calloc((size_t)nI, 4), *dcqk = calloc((size_t)nJ, 4), *dv = calloc((size_t)nI, 4),
          *dcv = calloc((size_t)nJ, 4), *db = calloc((size_t)nb + 1, 4),
          *dT = calloc((size_t)H * H, 4), *dTc = calloc((size_t)H * H, 4);
    xa_bidir_grad g;
    memset(&g, 0, sizeof g);
    g.dout = dout, g.do_sb = p.o_sb, g.do_sh = dh, g.do_si = H * dh;
    g.dcout = dcout, g.dco_sb = p.co_sb, g.dco_sh = dh, g.dco_sj = H * dh;
    g.dqk = dqk, g.dqk_sb = p.qk_sb, g.dqk_sh = dh, g.dqk_si = H * dh;
    g.dcqk = dcqk, g.dcqk_sb = p.cqk_sb, g.dcqk_sh = dh, g.dcqk_sj = H * dh;
    g.dv = dv, g.dv_sb = p.v_sb, g.dv_sh = dh, g.dv_si = H * dh;
    g.dcv = dcv, g.dcv_sb = p.cv_sb, g.dcv_sh = dh, g.dcv_sj = H * dh;
    if (bias) g.dbias = db, g.dbias_sb = p.bias_sb, g.dbias_sh = p.bias_sh;
    if (c->talk) g.dtalk = dT, g.dctalk = dTc;
    CHECK_OK(xa_bidir_backward(&p, &g));
    ref r;
    r.dqk = calloc((size_t)nI, 8), r.dcqk = calloc((size_t)nJ, 8), r.dv = calloc((size_t)nI, 8);
    r.dcv = calloc((size_t)nJ, 8), r.dbias = calloc((size_t)nb + 1, 8);
    r.dT = calloc((size_t)H * H, 8), r.dTc = calloc((size_t)H * H, 8);
    reference(c, qk, cqk, v, cv, mask, cmask, bias, T, Tc, dout, dcout, p.scale, &r);
    char what[160];
    snprintf(what, sizeof what, "B=%lld H=%lld I=%lld J=%lld dh=%lld mask=%d/%d bias=%d talk=%d",
             (long long)B, (long long)H, (long long)I, (long long)J, (long long)dh, c->mask,
             c->cmask, c->bias, c->talk);
    float *f;
    worst = tu_max(worst, tu_check_close(what, dqk, f = tof(r.dqk, nI), nI, 1e-4)), free(f);
    worst = tu_max(worst, tu_check_close(what, dcqk, f = tof(r.dcqk, nJ), nJ, 1e-4)), free(f);
    worst = tu_max(worst, tu_check_close(what, dv, f = tof(r.dv, nI), nI, 1e-4)), free(f);
    worst = tu_max(worst, tu_check_close(what, dcv, f = tof(r.dcv, nJ), nJ, 1e-4)), free(f);
    if (bias)
        worst = tu_max(worst, tu_check_close(what, db, f = tof(r.dbias, nb), nb, 1e-4)), free(f);
    if (c->talk) {
        worst = tu_max(worst, tu_check_close(what, dT, f = tof(r.dT, H * H), H * H, 1e-4)), free(f);
        worst = tu_max(worst, tu_check_close(what, dTc, f = tof(r.dTc, H * H), H * H, 1e-4)),
        free(f);
    }
    /* the forward's log-sum-exps given to the backward: the same gradients */
    float *lse = malloc(sizeof(float) * (size_t)(B * H * I)),
          *clse = malloc(sizeof(float) * (size_t)(B * H * J));
    float *dqk0 = malloc(sizeof(float) * (size_t)nI);
    memcpy(dqk0, dqk, sizeof(float) * (size_t)nI);
    p.lse = lse, p.clse = clse;
    CHECK_OK(xa_bidir_attention(&p));
    g.lse = lse, g.clse = clse;
    CHECK_OK(xa_bidir_backward(&p, &g));
    tu_check_close("dqk with the forward's lse", dqk, dqk0, nI, 1e-6);
    g.lse = g.clse = NULL;
    free(lse), free(clse), free(dqk0);
    /* accumulate: the gradients once more */
    float *keep = malloc(sizeof(float) * (size_t)nJ);
    memcpy(keep, dcqk, sizeof(float) * (size_t)nJ);
    g.accumulate = 1;
    CHECK_OK(xa_bidir_backward(&p, &g));
    for (int64_t i = 0; i < nJ; i++) keep[i] *= 2;
    tu_check_close("accumulated dcqk", dcqk, keep, nJ, 1e-6);
    g.accumulate = 0;
    if (threads_check) {
        xattn_set_threads(1);
        CHECK_OK(xa_bidir_backward(&p, &g));
        float *one_t = malloc(sizeof(float) * (size_t)(nI + nJ));
        memcpy(one_t, dqk, sizeof(float) * (size_t)nI);
        memcpy(one_t + nI, dcqk, sizeof(float) * (size_t)nJ);
        xattn_set_threads(3);
        CHECK_OK(xa_bidir_backward(&p, &g));
        CHECK(!memcmp(one_t, dqk, sizeof(float) * (size_t)nI) &&
              !memcmp(one_t + nI, dcqk, sizeof(float) * (size_t)nJ));
        xattn_set_threads(0);
        free(one_t);
    }
    free(keep);
    free(r.dqk), free(r.dcqk), free(r.dv), free(r.dcv), free(r.dbias), free(r.dT), free(r.dTc);
    free(dqk), free(dcqk), free(dv), free(dcv), free(db), free(dT), free(dTc);
    free(qk), free(cqk), free(v), free(cv), free(dout), free(dcout), free(out), free(cout);
    free(T), free(Tc), free(bias), free(mask), free(cmask);
}

int main(void)
{
    static const int64_t lens[] = {1, 2, 17, 64, 65, 97, 130};
    for (int t = 0; t < 40; t++) {
        prob c;
        c.B = 1 + rnd(2), c.H = 1 + rnd(3), c.I = lens[rnd(7)], c.J = lens[rnd(7)];
        c.dh = (int64_t[]){1, 8, 16, 64, 13}[rnd(5)];
        c.mask = rnd(2), c.cmask = rnd(2), c.bias = (int)rnd(4), c.talk = t % 2;
        one(&c, t < 4);
    }
    printf("bidirectional backward against float64: max rel error %.2e\n", worst);
    return tu_finish("test_bidir_backward");
}
