/*
 * The bidirectional kernel (xa_bidir_attention) against a float64 transcription of the
 * reference math that materialises sim, attn and context_attn, on random shapes: lengths
 * around the tile sizes, masks with fully masked rows and columns, broadcast biases, talking
 * heads, maps requested or not, every kernel set, threads 1 and 2.
 */
#include "testutil.h"
#include "kernels/kernels.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 777;
static int64_t rnd(int64_t n)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (int64_t)((rng >> 33) % (uint64_t)n);
}

typedef struct prob {
    int64_t B, H, I, J, dh;
    int masks, bias_kind, talking;
} prob;

/* tensors as (B, N, H*dh); reference outputs (B, N, H*dh) and maps (B, H, I, J) */
static void reference(const prob *c, const float *qk, const float *cqk, const float *v,
                      const float *cv, const uint8_t *mask, const uint8_t *cmask, const float *bias,
                      const float *T, const float *CT, double *out, double *cout, double *attn,
                      double *cattn)
{
    const int64_t B = c->B, H = c->H, I = c->I, J = c->J, dh = c->dh, W = H * dh;
    const double scale = 1.0 / sqrt((double)dh);
    double *sim = malloc(sizeof(double) * (size_t)(H * I * J));
    double *a = malloc(sizeof(double) * (size_t)(H * I * J)),
           *ca = malloc(sizeof(double) * (size_t)(H * I * J));
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < I; i++)
                for (int64_t j = 0; j < J; j++) {
                    double s = 0;
                    for (int64_t d = 0; d < dh; d++)
                        s += (double)qk[(b * I + i) * W + h * dh + d] *
                             cqk[(b * J + j) * W + h * dh + d];
                    s *= scale;
                    if (c->bias_kind == 1) s += bias[((b * H + h) * I + i) * J + j];
                    if (c->bias_kind == 2) s += bias[(h * I + i) * J + j];
                    if (c->bias_kind == 3) s += bias[(b * I + i) * J + j];
                    if (c->masks && !(mask[b * I + i] && cmask[b * J + j])) s = -(double)FLT_MAX;
                    sim[(h * I + i) * J + j] = s;
                }
        for (int64_t h = 0; h < H; h++) {
            for (int64_t i = 0; i < I; i++) { /* softmax over j */
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < J; j++) mx = tu_max(mx, sim[(h * I + i) * J + j]);
                for (int64_t j = 0; j < J; j++) sum += exp(sim[(h * I + i) * J + j] - mx);
                for (int64_t j = 0; j < J; j++)
                    a[(h * I + i) * J + j] = exp(sim[(h * I + i) * J + j] - mx) / sum;
            }
            for (int64_t j = 0; j < J; j++) { /* softmax over i */
                double mx = -INFINITY, sum = 0;
                for (int64_t i = 0; i < I; i++) mx = tu_max(mx, sim[(h * I + i) * J + j]);
                for (int64_t i = 0; i < I; i++) sum += exp(sim[(h * I + i) * J + j] - mx);
                for (int64_t i = 0; i < I; i++)
                    ca[(h * I + i) * J + j] = exp(sim[(h * I + i) * J + j] - mx) / sum;
            }
        }
        for (int64_t g = 0; g < H; g++)
            for (int64_t e = 0; e < I * J; e++) {
                double x = 0, y = 0;
                for (int64_t h = 0; h < H; h++) {
                    x += (c->talking ? T[g * H + h] : (g == h)) * a[h * I * J + e];
                    y += (c->talking ? CT[g * H + h] : (g == h)) * ca[h * I * J + e];
                }
                attn[(b * H + g) * I * J + e] = x;
                cattn[(b * H + g) * I * J + e] = y;
            }
        for (int64_t g = 0; g < H; g++) {
            const double *A = attn + (b * H + g) * I * J, *C = cattn + (b * H + g) * I * J;
            for (int64_t i = 0; i < I; i++)
                for (int64_t d = 0; d < dh; d++) {
                    double s = 0;
                    for (int64_t j = 0; j < J; j++)
                        s += A[i * J + j] * cv[(b * J + j) * W + g * dh + d];
                    out[(b * I + i) * W + g * dh + d] = s;
                }
            for (int64_t j = 0; j < J; j++)
                for (int64_t d = 0; d < dh; d++) {
                    double s = 0;
                    for (int64_t i = 0; i < I; i++)
                        s += C[i * J + j] * v[(b * I + i) * W + g * dh + d];
                    cout[(b * J + j) * W + g * dh + d] = s;
                }
        }
    }
    free(sim);
    free(a);
    free(ca);
}

static float *fl(const double *d, int64_t n)
{
    float *f = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) f[i] = (float)d[i];
    return f;
}

static double run(const prob *c, const char *label)
{
    const int64_t B = c->B, H = c->H, I = c->I, J = c->J, dh = c->dh, W = H * dh;
    float *qk = malloc(sizeof(float) * (size_t)(B * I * W)),
          *v = malloc(sizeof(float) * (size_t)(B * I * W));
    float *cqk = malloc(sizeof(float) * (size_t)(B * J * W)),
          *cv = malloc(sizeof(float) * (size_t)(B * J * W));
    tu_fill_uniform(qk, B * I * W, -1.5f, 1.5f, &rng);
    tu_fill_uniform(v, B * I * W, -1.0f, 1.0f, &rng);
    tu_fill_uniform(cqk, B * J * W, -1.5f, 1.5f, &rng);
    tu_fill_uniform(cv, B * J * W, -1.0f, 1.0f, &rng);
    uint8_t *mask = malloc((size_t)(B * I)), *cmask = malloc((size_t)(B * J));
    for (int64_t x = 0; x < B * I; x++) mask[x] = rnd(4) != 0;
    for (int64_t x = 0; x < B * J; x++) cmask[x] = rnd(4) != 0;
    if (c->masks && B > 1) memset(mask + I, 0, (size_t)I); /* batch 1: every x row masked */
    if (c->masks) cmask[0] = 0;                            /* a masked context column */
    int64_t nb = c->bias_kind == 1   ? B * H * I * J
                 : c->bias_kind == 2 ? H * I * J
                 : c->bias_kind == 3 ? B * I * J
                                     : 1;
    float *bias = malloc(sizeof(float) * (size_t)nb);
    tu_fill_uniform(bias, nb, -2.0f, 2.0f, &rng);
    float T[256], CT[256];
    tu_fill_uniform(T, H * H, -1.0f, 1.0f, &rng);
    tu_fill_uniform(CT, H * H, -1.0f, 1.0f, &rng);

    int64_t nmap = B * H * I * J;
    double *ro = malloc(sizeof(double) * (size_t)(B * I * W)),
           *rco = malloc(sizeof(double) * (size_t)(B * J * W));
    double *ra = malloc(sizeof(double) * (size_t)nmap),
           *rca = malloc(sizeof(double) * (size_t)nmap);
    reference(c, qk, cqk, v, cv, mask, cmask, bias, T, CT, ro, rco, ra, rca);
    float *fo = fl(ro, B * I * W), *fco = fl(rco, B * J * W), *fa = fl(ra, nmap),
          *fca = fl(rca, nmap);

    float *out = malloc(sizeof(float) * (size_t)(B * I * W)),
          *cout = malloc(sizeof(float) * (size_t)(B * J * W));
    float *attn = malloc(sizeof(float) * (size_t)nmap),
          *cattn = malloc(sizeof(float) * (size_t)nmap);
    xa_bidir p;
    memset(&p, 0, sizeof p);
    p.B = B;
    p.H = H;
    p.I = I;
    p.J = J;
    p.dh = dh;
    p.qk = qk;
    p.qk_sb = I * W;
    p.qk_sh = dh;
    p.qk_si = W;
    p.v = v;
    p.v_sb = I * W;
    p.v_sh = dh;
    p.v_si = W;
    p.cqk = cqk;
    p.cqk_sb = J * W;
    p.cqk_sh = dh;
    p.cqk_sj = W;
    p.cv = cv;
    p.cv_sb = J * W;
    p.cv_sh = dh;
    p.cv_sj = W;
    p.out = out;
    p.o_sb = I * W;
    p.o_sh = dh;
    p.o_si = W;
    p.cout = cout;
    p.co_sb = J * W;
    p.co_sh = dh;
    p.co_sj = W;
    p.scale = (float)(1.0 / sqrt((double)dh));
    if (c->masks) {
        p.mask = mask;
        p.mask_sb = I;
        p.cmask = cmask;
        p.cmask_sb = J;
    }
    if (c->bias_kind) {
        p.bias = bias;
        p.bias_sb = c->bias_kind == 1 ? H * I * J : c->bias_kind == 3 ? I * J : 0;
        p.bias_sh = c->bias_kind == 3 ? 0 : I * J;
    }
    if (c->talking) {
        p.talk = T;
        p.ctalk = CT;
    }
    char what[256];
    double worst = 0;
    for (int maps = 0; maps < 2; maps++) {
        p.attn = maps ? attn : NULL;
        p.cattn = maps ? cattn : NULL;
        CHECK_OK(xa_bidir_attention(&p));
        snprintf(what, sizeof what,
                 "%s B=%lld H=%lld I=%lld J=%lld dh=%lld masks=%d bias=%d talk=%d maps=%d", label,
                 (long long)B, (long long)H, (long long)I, (long long)J, (long long)dh, c->masks,
                 c->bias_kind, c->talking, maps);
        char w2[300];
        snprintf(w2, sizeof w2, "%s out", what);
        worst = tu_max(worst, tu_check_close(w2, out, fo, B * I * W, TU_TOL));
        snprintf(w2, sizeof w2, "%s context_out", what);
        worst = tu_max(worst, tu_check_close(w2, cout, fco, B * J * W, TU_TOL));
        if (maps) {
            snprintf(w2, sizeof w2, "%s attn", what);
            worst = tu_max(worst, tu_check_close(w2, attn, fa, nmap, TU_TOL));
            snprintf(w2, sizeof w2, "%s context_attn", what);
            worst = tu_max(worst, tu_check_close(w2, cattn, fca, nmap, TU_TOL));
        }
    }
    free(qk);
    free(v);
    free(cqk);
    free(cv);
    free(mask);
    free(cmask);
    free(bias);
    free(ro);
    free(rco);
    free(ra);
    free(rca);
    free(fo);
    free(fco);
    free(fa);
    free(fca);
    free(out);
    free(cout);
    free(attn);
    free(cattn);
    return worst;
}

int main(void)
{
    static const int64_t lens[] = {1, 2, 5, 31, 33, 64, 65, 100, 257, 300};
    static const int64_t dhs[] = {1, 3, 8, 16, 64};
    const char *isas[] = TU_ISAS;
    double worst = 0;
    int n = 0;
    for (int is = 0; is < TU_N_ISAS; is++) {
        if (xattn_set_isa(isas[is]) != XATTN_OK) continue;
        for (int t = 0; t < 24; t++) {
            prob c;
            c.B = 1 + rnd(3);
            c.H = 1 + rnd(4);
            c.I = lens[rnd(10)];
            c.J = lens[rnd(10)];
            if (c.I * c.J > 20000) c.J = 33;
            c.dh = dhs[rnd(5)];
            c.masks = t % 2;
            c.bias_kind = (t / 2) % 4;
            c.talking = (t / 8) % 2 || t % 5 == 0;
            xattn_set_threads(1 + t % 2);
            worst = tu_max(worst, run(&c, isas[is]));
            n++;
        }
    }
    xattn_set_isa("auto");
    xattn_set_threads(0);
    printf("bidirectional kernel: %d random problems, max rel error %.3g\n", n, worst);
    return tu_finish("test_bidir_kernel");
}
